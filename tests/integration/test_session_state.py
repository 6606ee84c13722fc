"""Session state under transaction pooling (DESIGN.md 5, THREATS 47, 52-54, 57).

A client's settings (SET, RESET, startup parameters) must hold on every server connection it
lands on, and only for it: other clients churning a pool of one or two connections in between
see their own. Session features that cannot survive pooling are refused with 0A000/42501, SQL
PREPARE works in session mode, and a server connection left inside a transaction is never
handed to the next client.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import psycopg
import pytest

from proxy.sample import canary
from tests.helpers import backend_query, sqlstate

APP = "app-secret"
NEW_YORK = "America/New_York"
TOKYO = "Asia/Tokyo"
# A fixed instant, shown in the session's TimeZone (no DST ambiguity: January).
INSTANT = "SELECT '2024-01-15 12:00:00+00'::timestamptz::text"
SHOWN = {NEW_YORK: "2024-01-15 07:00:00-05", TOKYO: "2024-01-15 21:00:00+09"}

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def server_timezone(pg) -> str:
    """The TimeZone a session gets without any SET (the server's default)."""
    with psycopg.connect(pg.dsn("tenantgate", "tenantgate-secret", "acme"),
                         connect_timeout=10) as conn:
        return conn.execute("SHOW TimeZone").fetchone()[0]


@pytest.fixture(scope="module")
def default_instant(pg) -> str:
    with psycopg.connect(pg.dsn("tenantgate", "tenantgate-secret", "acme"),
                         connect_timeout=10) as conn:
        return conn.execute(INSTANT).fetchone()[0]


@pytest.fixture
def small_pool(proxy_factory):
    """A proxy whose pool has one server connection: every client takes turns on it."""
    return proxy_factory(pool_size=1)


def timezone_of(conn: psycopg.Connection) -> tuple[str, str]:
    return conn.execute("SHOW TimeZone").fetchone()[0], conn.execute(INSTANT).fetchone()[0]


def churn(*conns: psycopg.Connection) -> None:
    """Other clients use the pool (and leave their own state on its connections)."""
    for conn in conns:
        conn.execute("SELECT 1")


# -- SET / RESET / SET LOCAL ---------------------------------------------------------------------

@pytest.mark.parametrize("pool_size", [1, 2])
def test_set_timezone_holds_for_its_client_only(proxy_factory, server_timezone,
                                                default_instant, pool_size) -> None:
    proxy = proxy_factory(pool_size=pool_size)
    with proxy.connect("app.acme", APP) as setter, proxy.connect("app.acme", APP) as plain, \
            proxy.connect("app.acme", APP) as tokyo:
        setter.execute(f"SET TimeZone TO '{NEW_YORK}'")
        tokyo.execute(f"SET TimeZone TO '{TOKYO}'")
        for _ in range(25):
            assert timezone_of(setter) == (NEW_YORK, SHOWN[NEW_YORK])
            assert timezone_of(plain) == (server_timezone, default_instant)
            assert timezone_of(tokyo) == (TOKYO, SHOWN[TOKYO])
            setter.execute("BEGIN")  # a transaction pins a connection for a while
            assert timezone_of(setter) == (NEW_YORK, SHOWN[NEW_YORK])
            if pool_size > 1:  # with one server connection the others would wait
                churn(plain, tokyo)
            setter.execute("COMMIT")
        assert setter.info.parameter_status("TimeZone") == NEW_YORK
        assert plain.info.parameter_status("TimeZone") == server_timezone


@pytest.mark.timeout(120)
async def test_set_timezone_under_concurrent_churn(proxy_factory, server_timezone) -> None:
    proxy = proxy_factory(pool_size=2)

    async def client(zone: str | None, rounds: int) -> list[str]:
        conn = await proxy.aconnect("app.acme", APP, timeout=30)
        try:
            if zone is not None:
                await conn.execute(f"SET TimeZone TO '{zone}'")
            seen = set()
            for n in range(rounds):
                if n % 2:
                    async with conn.transaction():
                        seen.add(await conn.fetchval("SHOW TimeZone"))
                else:
                    seen.add(await conn.fetchval("SHOW TimeZone"))
            return sorted(seen)
        finally:
            await conn.close()

    zones = [NEW_YORK, None, TOKYO, None, NEW_YORK, TOKYO] * 2
    results = await asyncio.wait_for(asyncio.gather(*(client(z, 40) for z in zones)), 100)
    assert results == [[z or server_timezone] for z in zones]


def test_set_local_ends_with_its_transaction(small_pool, server_timezone) -> None:
    with small_pool.connect("app.acme", APP) as conn, \
            small_pool.connect("app.acme", APP) as other:
        conn.execute("BEGIN")
        conn.execute(f"SET LOCAL TimeZone TO '{TOKYO}'")
        assert timezone_of(conn) == (TOKYO, SHOWN[TOKYO])
        conn.execute("COMMIT")
        assert timezone_of(conn)[0] == server_timezone
        for _ in range(5):
            churn(other)
            assert timezone_of(conn)[0] == server_timezone
        assert conn.info.parameter_status("TimeZone") == server_timezone


def test_reset_timezone(small_pool, server_timezone) -> None:
    with small_pool.connect("app.acme", APP) as conn, \
            small_pool.connect("app.acme", APP) as other:
        conn.execute(f"SET TimeZone TO '{NEW_YORK}'")
        churn(other)
        assert timezone_of(conn)[0] == NEW_YORK
        conn.execute("RESET TimeZone")
        assert timezone_of(conn)[0] == server_timezone
        for _ in range(5):
            churn(other)
            assert timezone_of(conn)[0] == server_timezone
        conn.execute(f"SET timezone = '{TOKYO}'")  # any spelling of the name
        churn(other)
        assert timezone_of(conn)[0] == TOKYO
        conn.execute("SET TIME ZONE DEFAULT")
        churn(other)
        assert timezone_of(conn)[0] == server_timezone


@pytest.mark.parametrize("undo", ["ROLLBACK", "error-then-ROLLBACK", "ROLLBACK TO SAVEPOINT"])
def test_set_undone_by_rollback_stays_undone(small_pool, server_timezone, undo) -> None:
    """PostgreSQL undoes a SET made in a transaction that rolls back; so must the settings
    the proxy restores on the next server connection."""
    with small_pool.connect("app.acme", APP) as conn, \
            small_pool.connect("app.acme", APP) as other:
        conn.execute("BEGIN")
        if undo == "ROLLBACK TO SAVEPOINT":
            conn.execute("SAVEPOINT s")
        conn.execute(f"SET TimeZone TO '{NEW_YORK}'")
        if undo == "error-then-ROLLBACK":
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1/0")
        if undo == "ROLLBACK TO SAVEPOINT":
            conn.execute("ROLLBACK TO SAVEPOINT s")
            assert timezone_of(conn)[0] == server_timezone
            conn.execute("COMMIT")
        else:
            conn.execute("ROLLBACK")
        assert timezone_of(conn)[0] == server_timezone
        other.execute(f"SET TimeZone TO '{TOKYO}'")  # takes the only server connection
        for _ in range(3):
            churn(other)
            assert timezone_of(conn)[0] == server_timezone


SET_NY, SET_TOKYO = f"SET TimeZone TO '{NEW_YORK}'", f"SET TimeZone TO '{TOKYO}'"
# Statements run one after another (a string with ';' is one simple Query); PostgreSQL
# decides which SET lasts, and the proxy must restore the same on the next lease.
TRANSACTION_CASES = {
    "commit": ["BEGIN", SET_NY, "COMMIT"],
    "commit-of-a-failed-transaction": ["BEGIN", SET_NY, "SELECT 1/0", "COMMIT"],
    "savepoint-released": ["BEGIN", "SAVEPOINT a", SET_NY, "RELEASE a", "COMMIT"],
    "inner-savepoint-rolled-back": ["BEGIN", SET_NY, "SAVEPOINT a", SET_TOKYO,
                                    "ROLLBACK TO a", "COMMIT"],
    "outer-savepoint-rolled-back": ["BEGIN", "SAVEPOINT a", SET_NY, "SAVEPOINT b", SET_TOKYO,
                                    "ROLLBACK TO a", "COMMIT"],
    "error-after-a-savepoint": ["BEGIN", SET_NY, "SAVEPOINT a", "SELECT 1/0", "ROLLBACK TO a",
                                "COMMIT"],
    "set-local-over-set": ["BEGIN", SET_TOKYO, SET_NY.replace("SET", "SET LOCAL"), "COMMIT"],
    "commit-and-chain": ["BEGIN", SET_NY, "COMMIT AND CHAIN", SET_TOKYO, "ROLLBACK"],
    "set-config-rolled-back": ["BEGIN", f"SELECT set_config('TimeZone', '{TOKYO}', false)",
                               "ROLLBACK"],
    "one-string-commit": [f"BEGIN; {SET_NY}; COMMIT"],
    "one-string-rollback": [f"BEGIN; {SET_NY}; ROLLBACK"],
    "one-string-error": [f"{SET_NY}; SELECT 1/0"],
    "one-string-commit-then-error": [f"{SET_NY}; COMMIT; SELECT 1/0"],
    "one-string-rollback-to": [f"BEGIN; SAVEPOINT a; {SET_NY}; ROLLBACK TO a; {SET_TOKYO}; "
                               "COMMIT"],
    "one-string-set-then-begin-then-error": [f"{SET_NY}; BEGIN; SELECT 1/0", "ROLLBACK"],
}


@pytest.mark.parametrize("case,protocol", [
    (case, protocol) for case, statements in TRANSACTION_CASES.items()
    for protocol in ("simple", "extended")
    if protocol == "simple" or not any(";" in sql for sql in statements)])
def test_settings_last_as_postgresql_keeps_them(small_pool, pg, case, protocol) -> None:
    """`extended`: each statement by Parse/Bind/Execute/Sync (psycopg does that for binary
    results), unnamed: psycopg answers a ROLLBACK of its named statements with DEALLOCATE
    ALL, refused in transaction mode."""
    statements = TRANSACTION_CASES[case]
    def run(conn: psycopg.Connection) -> str:
        with conn.cursor(binary=protocol == "extended") as cur:
            for sql in statements:
                try:
                    cur.execute(sql)
                except psycopg.errors.DivisionByZero:
                    pass
            return cur.execute("SHOW TimeZone").fetchone()[0]

    with psycopg.connect(pg.dsn("tenantgate", "tenantgate-secret", "acme"), autocommit=True,
                         connect_timeout=10, prepare_threshold=None) as direct:
        expected = run(direct)
    with small_pool.connect("app.acme", APP, prepare_threshold=None) as conn, \
            small_pool.connect("app.acme", APP) as other:
        assert run(conn) == expected
        other.execute("SET TimeZone TO 'Europe/Paris'")  # takes the only server connection
        churn(other)
        assert timezone_of(conn)[0] == expected  # as the proxy restored it


def test_set_by_a_prepared_statement_executed_again_is_kept(small_pool, server_timezone) -> None:
    """psycopg with prepare_threshold=0 prepares the SET once and executes the prepared
    statement the second time: the setting is the client's, and only the client's."""
    with small_pool.connect("app.acme", APP, prepare_threshold=0) as conn, \
            small_pool.connect("app.acme", APP) as plain, \
            small_pool.connect("app.acme", APP) as tokyo:
        tokyo.execute(f"SET TimeZone TO '{TOKYO}'")
        conn.execute(f"SET TimeZone TO '{NEW_YORK}'")
        conn.execute("RESET TimeZone")
        conn.execute(f"SET TimeZone TO '{NEW_YORK}'")  # the prepared statement again
        assert timezone_of(conn)[0] == NEW_YORK
        for _ in range(3):
            assert timezone_of(plain)[0] == server_timezone
            assert timezone_of(conn)[0] == NEW_YORK
            assert timezone_of(tokyo)[0] == TOKYO
            assert timezone_of(conn)[0] == NEW_YORK


# -- startup parameters ----------------------------------------------------------------------------

def test_application_name_restored_on_each_lease(small_pool) -> None:
    with small_pool.connect("app.acme", APP, application_name="tg-reports") as named, \
            small_pool.connect("app.acme", APP) as plain, \
            small_pool.connect("app.acme", APP, application_name="tg-other") as other:
        for _ in range(10):
            assert named.execute("SHOW application_name").fetchone() == ("tg-reports",)
            assert other.execute("SHOW application_name").fetchone() == ("tg-other",)
            assert plain.execute("SHOW application_name").fetchone()[0] not in (
                "tg-reports", "tg-other")
        named.execute("SET application_name TO 'tg-renamed'")
        churn(other, plain)
        assert named.execute("SHOW application_name").fetchone() == ("tg-renamed",)
        named.execute("RESET application_name")
        churn(other, plain)
        assert named.execute("SHOW application_name").fetchone() == ("tg-reports",)


async def test_asyncpg_server_settings_restored_on_each_lease(small_pool) -> None:
    settings = {"application_name": "tg-async", "DateStyle": "SQL, DMY",
                "IntervalStyle": "iso_8601", "TimeZone": TOKYO, "extra_float_digits": "1"}
    conn = await small_pool.aconnect("app.acme", APP, server_settings=settings)
    other = await small_pool.aconnect("app.acme", APP)
    try:
        for _ in range(5):
            await other.execute("SET TimeZone TO 'UTC'")
            got = {name: await conn.fetchval(f"SHOW {name}") for name in settings}
            assert got == settings
            assert await conn.fetchval("SELECT '2024-01-15'::date::text") == "15/01/2024"
            assert await conn.fetchval("SELECT '1 day'::interval::text") == "P1D"
            assert await other.fetchval("SHOW DateStyle") != "SQL, DMY"
    finally:
        await conn.close()
        await other.close()


# -- asyncpg pool reset keeps the schema tenant pinned ----------------------------------------

async def test_asyncpg_pool_reset_keeps_schema_tenant_pinned(small_pool, server_timezone) -> None:
    pool = await asyncpg.create_pool(host=small_pool.host, port=small_pool.port,
                                     user="app.globex", password=APP, database="app",
                                     min_size=1, max_size=1, timeout=10)
    hooli = await small_pool.aconnect("app.hooli", APP)
    try:
        for n in range(6):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW search_path") == "globex, common"
                assert await conn.fetchval("SELECT current_user") == "globex"
                assert await conn.fetchval("SHOW TimeZone") == server_timezone
                assert await conn.fetchval("SELECT secret FROM items WHERE id = 3") == \
                    canary("globex")
                await conn.execute(f"SET TimeZone TO '{TOKYO}'")
                assert await conn.fetchval("SHOW TimeZone") == TOKYO
            # released: asyncpg's reset (RESET ALL …) ran; the other tenant takes the connection
            assert await hooli.fetchval("SELECT secret FROM items WHERE id = 3") == \
                canary("hooli")
            assert await hooli.fetchval("SHOW search_path") == "hooli, common"
    finally:
        await hooli.close()
        await pool.close()


def test_reset_all_keeps_schema_tenant_pinned(small_pool) -> None:
    with small_pool.connect("app.globex", APP) as conn:
        conn.execute("BEGIN")
        conn.execute("RESET ALL")
        assert conn.execute("SHOW search_path").fetchone() == ("globex, common",)
        assert conn.execute("SELECT current_user").fetchone() == ("globex",)
        conn.execute("COMMIT")
        conn.execute("RESET ALL")
        assert conn.execute("SHOW search_path").fetchone() == ("globex, common",)
        assert conn.execute("SELECT secret FROM items WHERE id = 3").fetchone() == \
            (canary("globex"),)


# -- session features refused in transaction mode -------------------------------------------------

@pytest.mark.parametrize("sql,state", [
    ("DISCARD TEMP", "0A000"),
    ("PREPARE s1 AS SELECT 1", "0A000"),
    ("EXECUTE s1", "0A000"),
    ("DEALLOCATE s1; SELECT 1", "0A000"),  # alone it is answered: test_extended.py
    ("LISTEN tenant_events", "0A000"),
    ("CREATE TEMP TABLE t_tmp (a int)", "42501"),
    ("CREATE TEMPORARY TABLE t_tmp AS SELECT 1 AS a", "42501"),
    ("SELECT 1 AS a INTO TEMP t_tmp", "42501"),
])
def test_session_features_refused_in_transaction_mode(proxy, sql, state) -> None:
    with proxy.connect("app.acme", APP) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql)
        assert sqlstate(info.value) == state, str(info.value)
        assert str(info.value).startswith("tenantgate:")
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.execute("BEGIN")  # inside a transaction the refusal aborts it
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql)
        assert sqlstate(info.value) == state
        assert conn.info.transaction_status.name == "INERROR"
        conn.execute("ROLLBACK")


def test_sql_prepare_works_in_session_mode(proxy_factory) -> None:
    proxy = proxy_factory(pool_mode="session", pool_size=1)
    for _ in range(3):  # one server connection, used by one client after another
        with proxy.connect("app.acme", APP) as conn:
            conn.execute("PREPARE by_id(int) AS SELECT name FROM items WHERE id = $1")
            assert conn.execute("EXECUTE by_id(2)").fetchone() == ("acme-beta",)
            assert conn.execute("EXECUTE by_id(3)").fetchone() == ("acme-vault",)
            conn.execute("DEALLOCATE by_id")
            conn.execute("PREPARE left_behind AS SELECT 1")


def test_session_mode_next_client_gets_a_clean_connection(proxy_factory) -> None:
    """Session mode, one server connection: protocol-level prepared statements (psycopg names
    them _pg3_0, _pg3_1, ... per connection) must not survive into the next client's session."""
    proxy = proxy_factory(pool_mode="session", pool_size=1)
    for n in range(3):
        with proxy.connect("app.acme", APP, prepare_threshold=0) as conn:
            for row_id, name in ((1, "acme-alpha"), (2, "acme-beta"), (1, "acme-alpha")):
                assert conn.execute("SELECT name FROM items WHERE id = %s",
                                    (row_id,)).fetchone() == (name,), n
            assert conn.execute("SELECT %s::int + 1", (n,)).fetchone() == (n + 1,)


# -- a connection left inside a transaction is not reused dirty -----------------------------------

@pytest.mark.parametrize("leave", ["terminate", "drop-socket"])
def test_open_transaction_of_a_departed_client_is_not_reused(small_pool, pg, leave) -> None:
    marker = f"left-open-{uuid.uuid4().hex[:12]}"
    conn = small_pool.connect("app.acme", APP)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO items (name) VALUES (%s)", (marker,))
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    assert conn.execute("SELECT txid_current_if_assigned() IS NOT NULL").fetchone() == (True,)
    if leave == "terminate":
        conn.close()  # sends Terminate in the middle of the transaction
    else:
        import socket
        sock = socket.socket(fileno=conn.pgconn.socket)
        sock.shutdown(socket.SHUT_RDWR)
        sock.detach()
        conn.close()
    notices: list[str] = []
    with small_pool.connect("app.acme", APP) as fresh:
        fresh.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        assert fresh.execute("SELECT txid_current_if_assigned()").fetchone() == (None,)
        assert fresh.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
        fresh.execute("BEGIN")
        assert fresh.execute("SELECT count(*) FROM items WHERE name = %s",
                             (marker,)).fetchone() == (0,)
        fresh.execute("COMMIT")
    assert notices == []  # no "there is already a transaction in progress"
    assert backend_query(pg, "acme", "SELECT count(*) FROM items WHERE name = %s",
                         (marker,)) == [(0,)]
