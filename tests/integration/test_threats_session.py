"""THREATS.md 3.4 (ids 46-60), 61 and 73: multi-statement strings, session state on pooled
server connections, the protocol itself, routing and log injection, through the running
proxy. See test_threats.py for what each SQL-level check asserts."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
import time
import uuid

import psycopg
import pytest

from proxy.sample import SampleInfo
from tests.helpers import (backend_query, error_fields, message,
                           parse_messages, raw_connect, recv_until_closed, start_proxy,
                           startup_packet, table_checksum)
from tests.integration.test_threats import (ACME, APP, GLOBEX, HOOLI, STATE_SQL, A,
                                            LoginFailed, assert_no_victim_data, errors_in,
                                            expect_refused, expected_state, kinds,
                                            raw_session)

CANCEL_REQUEST = 80877102
GSSENC_REQUEST = 80877104


def side_of(attack, default=GLOBEX):
    return {"acme": ACME}.get(attack.extra.get("side"), default)


@pytest.fixture(scope="module")
def session_proxy(pg, sample, tmp_path_factory):
    """pool_mode: session — SQL PREPARE, WITH HOLD and LISTEN are allowed, and checked."""
    running = start_proxy(pg, sample, workdir=tmp_path_factory.mktemp("session"),
                          pool_mode="session")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def pool1(pg, sample, tmp_path_factory):
    """Transaction pooling with one server connection per database."""
    running = start_proxy(pg, sample, workdir=tmp_path_factory.mktemp("pool1"), pool_size=1)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def small_messages(pg, sample, tmp_path_factory):
    running = start_proxy(pg, sample, workdir=tmp_path_factory.mktemp("small"),
                          extra="max_message_size: 4096")
    yield running
    running.stop()


@pytest.fixture
def bystander(proxy):
    """hooli, connected through every abuse: it must keep working, with its own rows."""
    conn = proxy.connect(HOOLI.user, APP)
    assert tuple(map(str, conn.execute(STATE_SQL).fetchone())) == expected_state(HOOLI)
    yield conn
    assert tuple(map(str, conn.execute(STATE_SQL).fetchone())) == expected_state(HOOLI)
    conn.close()
    assert proxy.returncode is None


def count_is_3(reply) -> bool:
    return ("D", b"\x00\x01\x00\x00\x00\x013") in reply


# -- 46: multi-statement strings ---------------------------------------------------------------

MULTI = [
    ("SELECT 1; SET app.tenant_id = 'hooli'; SELECT * FROM items", "42501"),
    ("DELETE FROM items; SELECT secret FROM hooli.items", "42P01"),
    ("INSERT INTO items (name) VALUES ('tg-x'); SET ROLE hooli; SELECT * FROM items", "42501"),
    ("UPDATE items SET secret = 'pwned'; COMMIT; SET search_path = hooli", "42501"),
    ("select 1;select 2;;;select current_user;DISCARD ALL", "0A000"),
    ("BEGIN; DELETE FROM items; SELECT query_to_xml('select 1', true, false, ''); COMMIT",
     "42501"),
    ("SELECT 'a;b'; SET ROLE hooli", "42501"),
    ("SELECT $$;$$; SET ROLE hooli --;", "42501"),
    ("SELECT count(*) FROM items; TABLE hooli.items", "42P01"),
    ("DELETE FROM items; PREPARE TRANSACTION 'tg'", "42501"),
]


@pytest.mark.parametrize("sql,code", MULTI)
def test_t46_multi_statement_string_is_refused_whole(proxy, pg, sql, code) -> None:
    """One refused statement refuses the whole Query: nothing before it ran or answered."""
    before = {t: table_checksum(pg, "shared", t) for t in ("globex.items", "hooli.items")}
    session = raw_session(proxy, GLOBEX.user)
    try:
        reply = session.query(sql)
        assert kinds(reply) == ["E", "Z"], f"partial results before the refusal: {reply}"
        fields = errors_in(reply)[0]
        assert fields["C"] == code and fields["M"].startswith("tenantgate:"), fields
        assert reply[-1][1] == b"I"
        assert_no_victim_data(GLOBEX, b"".join(body for _, body in reply))
        assert count_is_3(session.query("SELECT count(*) FROM items"))
    finally:
        session.close()
    assert {t: table_checksum(pg, "shared", t) for t in before} == before


@pytest.mark.parametrize("attack", [A(sql, via, code=code)
                                    for sql, code in MULTI[:4] for via in ("simple", "psql")])
def test_t46_multi_statement_string_through_clients(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, GLOBEX, attack, attack.extra["code"])


# -- 47: SQL-level PREPARE / EXECUTE / DEALLOCATE -------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("PREPARE stolen AS SELECT * FROM hooli.items", code="0A000"),
    A("prepare q (int) as select secret from items where id = $1", code="0A000"),
    A("EXECUTE stolen", code="0A000"),
    A("execute q(3)", code="0A000"),
    A("DEALLOCATE PREPARE stolen", code="26000"),  # the session knows no such statement
    A("DEALLOCATE stolen; SELECT 1", code="0A000"),  # answered by the session only alone
    A("PREPARE p AS SELECT 1; EXECUTE p", code="0A000"),
    A("PREPARE p AS SELECT 1", "extended", code="0A000"),
    A("EXECUTE p", "asyncpg", code="0A000"),
    A("prepare p as select 1", "psql", code="0A000"),
    A("SELECT name FROM pg_prepared_statements", code="42501"),
    A("PREPARE p AS SELECT 1", side="acme", code="0A000", id="acme:PREPARE"),
])
def test_t47_sql_prepare_in_transaction_pooling(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, attack.extra["code"])


@pytest.mark.parametrize("attack", [
    A("PREPARE s AS SELECT * FROM hooli.items", code="42P01"),
    A("PREPARE s AS DELETE FROM hooli.items", code="42P01"),
    A("PREPARE s(int) AS SELECT secret FROM \"hooli\".items WHERE id = $1", code="42P01"),
    A("PREPARE s AS SELECT set_config('role', 'hooli', false)", code="42501"),
    A("PREPARE s(text) AS SELECT query_to_xml($1, true, false, '')", code="42501"),
    A("PREPARE s AS SELECT 1; EXECUTE s; SELECT * FROM hooli.items", code="42P01"),
    A("PREPARE s AS SELECT * FROM hooli.items", "asyncpg", code="42P01"),
    A("PREPARE s AS SELECT * FROM umbrella.public.items", side="acme", code="0A000",
      id="acme:PREPARE three-part"),
])
def test_t47_sql_prepare_is_validated_in_session_pooling(session_proxy, pg, attack) -> None:
    expect_refused(session_proxy, pg, side_of(attack), attack, attack.extra["code"])


def test_t47_session_prepare_stays_with_its_tenant(session_proxy, pg) -> None:
    with session_proxy.connect(GLOBEX.user, APP) as globex, \
            session_proxy.connect(HOOLI.user, APP) as hooli:
        globex.execute("PREPARE mine AS SELECT secret FROM items ORDER BY id")
        assert "CANARY-globex" in str(globex.execute("EXECUTE mine").fetchall())
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            hooli.execute("EXECUTE mine")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            hooli.execute("SELECT * FROM pg_prepared_statements")


# -- refusal inside a transaction, then a new prepared statement (THREATS 48-50) ------------------

@pytest.mark.parametrize("client", ["psycopg", "asyncpg"])
def test_new_prepared_statement_after_a_refusal_in_a_transaction(pool1, client) -> None:
    """After a refusal inside BEGIN, a statement prepared for the first time gets 25P02
    (its Parse fails on the server), and the same text works again after ROLLBACK, for
    this client and for another tenant on the same server connection (pool_size 1)."""
    text = f"SELECT count(*) AS tg_{uuid.uuid4().hex[:12]} FROM items"
    answers = []
    for user in (GLOBEX.user, GLOBEX.user, HOOLI.user):
        if client == "psycopg":
            with pool1.connect(user, APP) as conn:
                conn.execute("BEGIN")
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("SELECT query_to_xml('select 1', true, false, '')")
                try:
                    conn.execute(text, prepare=True)
                    answers.append("no error")
                except psycopg.Error as exc:
                    answers.append(exc.sqlstate)
                conn.execute("ROLLBACK")
                try:
                    answers.append(conn.execute(text, prepare=True).fetchone()[0])
                except psycopg.Error as exc:
                    answers.append(f"{exc.sqlstate} {exc.diag.message_primary}")
        else:
            answers += asyncio.run(_asyncpg_after_refusal(pool1, user, text))
    assert answers == ["25P02", 3] * 3, answers


async def _asyncpg_after_refusal(running, user: str, text: str) -> list:
    import asyncpg
    out = []
    conn = await running.aconnect(user, APP)
    try:
        await conn.execute("BEGIN")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT query_to_xml('select 1', true, false, '')")
        try:
            await conn.fetchval(text)
            out.append("no error")
        except asyncpg.PostgresError as exc:
            out.append(exc.sqlstate)
        await conn.execute("ROLLBACK")
        try:
            out.append(await conn.fetchval(text))
        except asyncpg.PostgresError as exc:
            out.append(f"{exc.sqlstate} {exc.args[0]}")
    finally:
        conn.terminate()
    return out


# -- 51: transaction control against the tenant context -------------------------------------------

@pytest.mark.parametrize("attack", [
    A("PREPARE TRANSACTION 'tg-x'"),
    A("commit prepared 'tg-x'"),
    A("ROLLBACK PREPARED 'tg-x'"),
    A("SELECT 1; COMMIT; SET ROLE hooli"),
    A("BEGIN; SET LOCAL search_path = hooli; COMMIT"),
    A("SAVEPOINT a; SET LOCAL ROLE hooli; ROLLBACK TO a"),
    A("SET SESSION AUTHORIZATION hooli; ROLLBACK"),
    A("START TRANSACTION ISOLATION LEVEL SERIALIZABLE; SET ROLE hooli"),
    A("CALL tg_commit_proc()"),
    A("COMMIT PREPARED 'tg-x'", "extended"),
    A("PREPARE TRANSACTION 'tg-x'", "asyncpg"),
    A("prepare transaction 'tg-x'", "psql"),
    A("COMMIT PREPARED 'tg-x'", side="acme", id="acme:COMMIT PREPARED"),
])
def test_t51_transaction_control_tricks(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501")
    assert backend_query(pg, "postgres", "SELECT count(*) FROM pg_prepared_xacts") == [(0,)]


@pytest.mark.parametrize("steps", [
    ["BEGIN", "SAVEPOINT s", "SET LOCAL statement_timeout = '5s'", "ROLLBACK TO s", "COMMIT"],
    ["BEGIN", "SAVEPOINT s", "RESET ALL", "ROLLBACK TO SAVEPOINT s", "RELEASE s", "COMMIT"],
    ["SELECT 1; COMMIT; SELECT 2"],
    ["BEGIN", "SELECT 1; COMMIT; BEGIN", "ROLLBACK"],
    ["START TRANSACTION READ ONLY", "ROLLBACK"],
    ["BEGIN", "SAVEPOINT a", "SAVEPOINT b", "ROLLBACK TO a", "ROLLBACK"],
], ids=lambda s: " / ".join(s))
def test_t51_context_survives_transaction_control(pool1, pg, steps) -> None:
    """Across savepoints, mid-string COMMITs and other tenants using the same server
    connection in between, the context is re-established every time."""
    with pool1.connect(GLOBEX.user, APP) as globex, pool1.connect(HOOLI.user, APP) as hooli:
        for sql in steps:
            globex.execute(sql)
            if globex.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                assert tuple(map(str, hooli.execute(STATE_SQL).fetchone())) == \
                    expected_state(HOOLI)
            assert tuple(map(str, globex.execute(STATE_SQL).fetchone())) == \
                expected_state(GLOBEX)


# -- 52: cursors that outlive the transaction -----------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM items", code="0A000"),
    A('declare "C" no scroll cursor with hold for select secret from items', code="0A000"),
    A("DECLARE c BINARY INSENSITIVE SCROLL CURSOR WITH HOLD FOR SELECT 1", code="0A000"),
    A("BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT * FROM items; COMMIT", code="0A000"),
    A("DECLARE c CURSOR FOR SELECT * FROM hooli.items", code="42P01"),
    A("DECLARE c CURSOR FOR SELECT set_config('role', 'hooli', true)", code="42501"),
    A("SELECT * FROM pg_cursors", code="42501"),
    A("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "asyncpg", code="0A000"),
    A("declare c cursor with hold for select 1", "psql", code="0A000"),
    A("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM items", side="acme", code="0A000",
      id="acme:WITH HOLD"),
])
def test_t52_cursor_with_hold_in_transaction_pooling(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, attack.extra["code"])


@pytest.mark.parametrize("attack", [
    A("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM hooli.items", code="42P01"),
    A("DECLARE c CURSOR WITH HOLD FOR SELECT query_to_xml('select 1', true, false, '')",
      code="42501"),
    A("DECLARE c SCROLL CURSOR WITH HOLD FOR SELECT secret FROM items "
      "UNION SELECT secret FROM hooli.items", code="42P01"),
])
def test_t52_cursor_query_is_validated_in_session_pooling(session_proxy, pg, attack) -> None:
    expect_refused(session_proxy, pg, GLOBEX, attack, attack.extra["code"])


def test_t52_a_cursor_does_not_reach_the_next_tenant(pool1, pg) -> None:
    with pool1.connect(GLOBEX.user, APP) as globex, pool1.connect(HOOLI.user, APP) as hooli:
        globex.execute("BEGIN")
        globex.execute("DECLARE gcur CURSOR FOR SELECT secret FROM items ORDER BY id")
        globex.execute("FETCH 1 FROM gcur")
        globex.execute("COMMIT")
        with pytest.raises(psycopg.errors.InvalidCursorName) as info:
            hooli.execute("FETCH ALL FROM gcur")
        assert "CANARY" not in str(info.value)
        assert tuple(map(str, hooli.execute(STATE_SQL).fetchone())) == expected_state(HOOLI)


# -- 53: LISTEN / NOTIFY --------------------------------------------------------------------------

@pytest.fixture
def victim_listener(pg):
    """A session of the shared database listening on hooli's channel, directly."""
    conn = psycopg.connect(pg.dsn(dbname="shared"), autocommit=True)
    conn.execute("LISTEN hooli_events")
    yield conn
    conn.close()


def no_notifications(conn) -> None:
    got = list(conn.notifies(timeout=0.3, stop_after=1))
    assert got == [], f"the victim received {got}"


@pytest.mark.parametrize("attack", [
    A("LISTEN hooli_events"),
    A('listen "hooli_events"'),
    A("NOTIFY hooli_events, 'spoofed'"),
    A("notify hooli_events"),
    A("SELECT pg_notify('hooli_events', 'spoofed')"),
    A("SELECT count(*) FROM items WHERE pg_notify('hooli_events', 'x') IS NULL"),
    A("UNLISTEN *; LISTEN hooli_events"),
    A("SELECT pg_catalog.pg_notify(%s, %s)", "extended", ("hooli_events", "spoofed")),
    A("SELECT pg_notify($1, $2)", "asyncpg", ("hooli_events", "spoofed")),
    A("notify hooli_events, 'spoofed'", "psql"),
])
def test_t53_notification_channels_shared_database(proxy, pg, victim_listener, attack) -> None:
    expect_refused(proxy, pg, GLOBEX, attack, "42501")
    no_notifications(victim_listener)


@pytest.mark.parametrize("attack", [
    A("LISTEN umbrella_events"),
    A("listen x; select 1"),
    A("LISTEN x", "asyncpg"),
])
def test_t53_listen_in_transaction_pooling(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, ACME, attack, "0A000")


def test_t53_database_tenant_notify_stays_in_its_database(proxy, pg) -> None:
    listener = psycopg.connect(pg.dsn(dbname="umbrella"), autocommit=True)
    try:
        listener.execute("LISTEN umbrella_events")
        with proxy.connect(ACME.user, APP) as acme:
            acme.execute("NOTIFY umbrella_events, 'from acme'")
            acme.execute("SELECT pg_notify('umbrella_events', 'from acme')")
        no_notifications(listener)
    finally:
        listener.close()


# -- 54: advisory locks ---------------------------------------------------------------------------

ADVISORY = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"


@pytest.mark.parametrize("attack", [
    A("SELECT pg_advisory_lock(42)", code="42501"),
    A("SELECT pg_try_advisory_lock(42)", code="42501"),
    A("SELECT pg_advisory_xact_lock(1, 2)", code="42501"),
    A("select PG_CATALOG.pg_try_advisory_xact_lock_shared(7)", code="42501"),
    A("SELECT * FROM items WHERE pg_try_advisory_lock(id)", code="42501"),
    A("SELECT pg_advisory_lock_shared(%s)", "extended", (42,), code="42501"),
    A("SELECT pg_try_advisory_lock($1)", "asyncpg", (42,), code="42501"),
    A("select pg_advisory_lock(42)", "psql", code="42501"),
    A("SELECT pg_advisory_lock(42)", side="acme", code="0A000", id="acme:session lock"),
    A("SELECT pg_try_advisory_lock_shared(1, 2)", side="acme", code="0A000",
      id="acme:session lock shared"),
    A("SELECT pg_advisory_lock($1)", "asyncpg", (1,), side="acme", code="0A000",
      id="acme:asyncpg session lock"),
])
def test_t54_advisory_locks(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, attack.extra["code"])
    assert backend_query(pg, "postgres", ADVISORY) == [(0,)]


def test_t54_advisory_lock_of_the_victim_cannot_be_probed(proxy, pg) -> None:
    holder = psycopg.connect(pg.dsn(dbname="shared"), autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(4242)")
        expect_refused(proxy, pg, GLOBEX, A("SELECT pg_try_advisory_lock(4242)").values[0],
                       "42501")
        expect_refused(proxy, pg, GLOBEX,
                       A("SELECT pg_advisory_xact_lock(4242)").values[0], "42501")
    finally:
        holder.close()


# -- 55: the FunctionCall message -----------------------------------------------------------------

def function_call(oid: int, *args: bytes) -> bytes:
    """FunctionCall: text-format arguments, text result."""
    body = struct.pack("!IhhH", oid, 1, 0, len(args))
    for arg in args:
        body += struct.pack("!i", len(arg)) + arg
    return message(b"F", body + struct.pack("!h", 0))


def oid_of(pg, signature: str) -> int:
    return backend_query(pg, "shared", f"SELECT '{signature}'::regprocedure::oid")[0][0]


FAST_PATH = [
    ("set_config(text,text,boolean)", (b"role", b"hooli", b"false")),
    ("set_config(text,text,boolean)", (b"search_path", b"hooli", b"false")),
    ("lo_import(text)", (b"/etc/passwd",)),
    ("lo_get(oid)", (b"1",)),
    ("pg_read_file(text)", (b"/etc/passwd",)),
    ("query_to_xml(text,boolean,boolean,text)",
     (b"select secret from hooli.items", b"true", b"false", b"")),
]


@pytest.mark.parametrize("signature,args", FAST_PATH, ids=lambda v: v if isinstance(v, str)
                         else None)
@pytest.mark.parametrize("when", ["idle", "in-transaction", "acme"])
def test_t55_function_call_message(proxy, pg, bystander, signature, args, when) -> None:
    side = ACME if when == "acme" else GLOBEX
    before = {t: table_checksum(pg, *t) for t in (("shared", "hooli.items"),
                                                  ("shared", "globex.items"))}
    lo_before = backend_query(pg, "shared", "SELECT count(*) FROM pg_largeobject_metadata")
    session = raw_session(proxy, side.user)
    try:
        if when == "in-transaction":
            assert kinds(session.query("BEGIN")) == ["C", "Z"]
        session.sock.sendall(function_call(oid_of(pg, signature), *args))
        session.sock.settimeout(5)
        reply = recv_until_closed(session.sock)
    finally:
        session.close()
    messages = parse_messages(reply)
    assert messages and messages[-1][0] == "E", messages
    fields = error_fields(messages[-1][1])
    assert (fields["S"], fields["C"]) == ("FATAL", "08P01"), fields
    assert fields["M"].startswith("tenantgate:"), fields
    assert "V" not in [k for k, _ in messages], "a FunctionCallResponse came back"
    assert_no_victim_data(side, reply)
    assert {t: table_checksum(pg, *t) for t in before} == before
    assert backend_query(pg, "shared",
                         "SELECT count(*) FROM pg_largeobject_metadata") == lo_before


async def _hooli_can_query(running) -> None:
    conn = await running.aconnect(HOOLI.user, APP)
    try:
        assert await conn.fetchval("SELECT count(*) FROM items", timeout=5) == 3
    finally:
        conn.terminate()


@pytest.mark.parametrize("follow_up", [
    pytest.param(lambda pg: function_call(oid_of(pg, "set_config(text,text,boolean)"),
                                          b"role", b"hooli", b"false"), id="F-set_config"),
    pytest.param(lambda pg: function_call(oid_of(pg, "lo_import(text)"), b"/etc/passwd"),
                 id="F-lo_import"),
    pytest.param(lambda pg: message(b"p", b"password\0"), id="password-message"),
    pytest.param(lambda pg: message(b"\x01", b"\0\0\0\0"), id="unknown-type"),
])
def test_t55_function_call_right_after_a_query(proxy_factory, pg, follow_up) -> None:
    """Q and F in one packet: the F arrives while the proxy is leasing (and resetting:
    hooli used it last) the server connection for the Q. Still FATAL 08P01 at once, and
    the server connection is not lost to the other tenants of the database (pool_size 1)."""
    running = proxy_factory(pool_size=1, extra="shutdown_timeout: 1")
    asyncio.run(_hooli_can_query(running))  # the only server connection now carries hooli
    problems = []
    session = raw_session(running, GLOBEX.user)
    try:
        session.sock.sendall(message(b"Q", b"SELECT 1\0") + follow_up(pg))
        session.sock.settimeout(5)
        try:
            reply = recv_until_closed(session.sock)
            messages = parse_messages(reply)
            fields = error_fields(messages[-1][1]) if messages and messages[-1][0] == "E" else {}
            if (fields.get("S"), fields.get("C")) != ("FATAL", "08P01"):
                problems.append(f"expected FATAL 08P01, got {messages}")
        except (TimeoutError, socket.timeout):
            problems.append("no answer and no close within 5 s after the Query")
    finally:
        session.close()
    try:
        asyncio.run(_hooli_can_query(running))
    except Exception as exc:  # noqa: BLE001 - reported below
        problems.append(f"afterwards hooli cannot query (server connection lost): {exc!r}")
    assert not problems, problems


# -- 56: replication connections ------------------------------------------------------------------

@pytest.mark.parametrize("user,password", [("app.acme", APP), ("app.globex", APP),
                                           ("migrator", "migrator-secret")])
@pytest.mark.parametrize("value", ["database", "true", "on", "yes", "1", "TRUE"])
def test_t56_replication_startup(proxy, pg, bystander, user, password, value) -> None:
    with pytest.raises(LoginFailed) as info:
        raw_session(proxy, user, password, "shared" if user == "migrator" else "app",
                    params={"replication": value}).close()
    fields = info.value.fields
    assert (fields.get("S"), fields.get("C")) == ("FATAL", "08P01"), fields
    assert fields.get("M", "").startswith("tenantgate:"), fields


# -- 57: resource settings ------------------------------------------------------------------------

PINNED = {"statement_timeout": "5s", "lock_timeout": "5s", "work_mem": "4MB",
          "idle_in_transaction_session_timeout": "0"}


@pytest.mark.parametrize("attack", [
    A("SET work_mem = '64GB'"),
    A("set WORK_MEM to 2097151"),
    A("SET maintenance_work_mem = '8GB'"),
    A("SET LOCAL work_mem = '1TB'"),
    A("SELECT set_config('work_mem', '64GB', false)"),
    A("SET temp_file_limit = -1"),
    A("SET max_parallel_workers_per_gather = 64"),
    A("SET statement_timeout = 0"),
    A("SET statement_timeout TO '0'"),
    A("set STATEMENT_TIMEOUT = '0ms'"),
    A("SET statement_timeout = '-1'"),
    A("SET LOCAL statement_timeout = DEFAULT"),
    A("RESET statement_timeout"),
    A("SELECT set_config('statement_timeout', '0', false)"),
    A("SET lock_timeout = 0"),
    A("SET idle_in_transaction_session_timeout = '1h'"),
    A("SET idle_session_timeout = 0"),
    # below 1 ms the server rounds to 0, which disables the timeout
    A("SET statement_timeout = 0.4"),
    A("SET statement_timeout = '100us'"),
    A("SET lock_timeout = '0.2ms'"),
    A("SELECT set_config('statement_timeout', '0.3', false)"),
    A("SET statement_timeout = 0", "extended"),
    A("SET statement_timeout = 0", "asyncpg"),
    A("SET work_mem = '64GB'", side="acme", id="acme:work_mem"),
    A("SET statement_timeout = '0.1'", side="acme", id="acme:statement_timeout 0.1"),
])
def test_t57_resource_settings(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501",
                   setup=["SET statement_timeout = '5s'", "SET lock_timeout = '5s'"],
                   settings=PINNED)


# -- 58: cancelling or terminating other sessions -------------------------------------------------

@pytest.fixture
def victim_in_transaction(proxy):
    """hooli inside a transaction: its server connection is busy, its pid known."""
    conn = proxy.connect(HOOLI.user, APP)
    conn.execute("BEGIN")
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    yield pid
    # not terminated: the transaction is still there and commits
    assert conn.execute("SELECT count(*) FROM items").fetchone() == (3,)
    conn.execute("COMMIT")
    conn.close()


@pytest.mark.parametrize("template,via", [
    ("SELECT pg_terminate_backend({pid})", "simple"),
    ("select PG_CATALOG.pg_terminate_backend({pid}, 1000)", "simple"),
    ("SELECT pg_cancel_backend({pid})", "simple"),
    ("SELECT count(*) FROM items WHERE pg_terminate_backend({pid})", "simple"),
    ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "simple"),
    ("SELECT * FROM items, LATERAL (SELECT pg_terminate_backend({pid})) x", "simple"),
    ("SELECT pg_terminate_backend(%s)", "extended"),
    ("SELECT pg_terminate_backend($1)", "asyncpg"),
    ("select pg_terminate_backend({pid})", "psql"),
])
def test_t58_terminate_or_cancel_another_session(proxy, pg, victim_in_transaction,
                                                 template, via) -> None:
    pid = victim_in_transaction
    params = (pid,) if via in ("extended", "asyncpg") else None
    expect_refused(proxy, pg, GLOBEX, A(template.format(pid=pid), via, params).values[0],
                   "42501")


def test_t58_cancel_of_a_running_query_is_refused(proxy, pg) -> None:
    result: dict = {}
    victim = proxy.connect(HOOLI.user, APP)

    def run() -> None:
        try:
            result["rows"] = victim.execute("SELECT pg_sleep(1.5), 'done'").fetchall()
        except psycopg.Error as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        pid = None
        while pid is None and time.monotonic() < deadline:
            rows = backend_query(pg, "shared", "SELECT pid FROM pg_stat_activity "
                                 "WHERE query LIKE 'SELECT pg_sleep(1.5)%'")
            pid = rows[0][0] if rows else None
        assert pid is not None
        expect_refused(proxy, pg, GLOBEX,
                       A(f"SELECT pg_cancel_backend({pid})").values[0], "42501",
                       in_transaction=False)
    finally:
        thread.join(10)
        victim.close()
    assert "error" not in result, result
    assert result["rows"] == [("", "done")]


# -- 59: forged CancelRequests --------------------------------------------------------------------

def send_cancel(proxy, pid: int, key: bytes) -> None:
    with raw_connect(proxy.host, proxy.port) as sock:
        sock.sendall(struct.pack("!III", 12 + len(key), CANCEL_REQUEST, pid) + key)
        try:
            sock.recv(1)  # the proxy closes the connection without answering
        except (TimeoutError, ConnectionResetError, socket.timeout):
            pass


def sleeping_victim(proxy):
    victim = raw_session(proxy, HOOLI.user)
    victim.sock.sendall(message(b"Q", b"SELECT pg_sleep(1.2), 'done'\0"))
    time.sleep(0.3)  # the query is running on the server
    return victim


@pytest.mark.parametrize("forge", [
    "wrong-key", "other-pid", "zero-key", "server-pid", "attacker-own-key", "long-key",
    "key-of-closed-session",
])
def test_t59_forged_cancel_request_cancels_nothing(proxy, pg, forge) -> None:
    attacker = raw_session(proxy, GLOBEX.user)
    closed = raw_session(proxy, GLOBEX.user)
    closed.close()
    victim = sleeping_victim(proxy)
    try:
        pid, key = victim.pid, victim.key
        server_pid = backend_query(pg, "shared", "SELECT pid FROM pg_stat_activity "
                                   "WHERE query LIKE 'SELECT pg_sleep(1.2)%'")
        forged = {
            "wrong-key": (pid, bytes([key[0] ^ 1]) + key[1:]),
            "other-pid": (pid ^ 2, key),
            "zero-key": (pid, b"\0" * len(key)),
            "server-pid": (server_pid[0][0] if server_pid else pid, key),
            "attacker-own-key": (attacker.pid, attacker.key),
            "long-key": (pid, key + b"\0\0\0\0"),
            "key-of-closed-session": (closed.pid, closed.key),
        }[forge]
        send_cancel(proxy, *forged)
        reply = victim.until_ready()
    finally:
        victim.close()
        attacker.close()
    assert not errors_in(reply), f"the victim's query was cancelled: {errors_in(reply)}"
    assert kinds(reply)[-2:] == ["C", "Z"], reply


def test_t59_the_right_key_still_cancels(proxy, pg) -> None:
    """Control for the test above: a cancel with the client's own key works."""
    victim = sleeping_victim(proxy)
    try:
        send_cancel(proxy, victim.pid, victim.key)
        reply = victim.until_ready()
    finally:
        victim.close()
    assert [e["C"] for e in errors_in(reply)] == ["57014"], reply


# -- 60: framing ----------------------------------------------------------------------------------

def expect_fatal_08p01(reply: bytes) -> dict[str, str]:
    messages = parse_messages(reply)
    assert messages and messages[-1][0] == "E", messages
    fields = error_fields(messages[-1][1])
    assert (fields.get("S"), fields.get("C")) == ("FATAL", "08P01"), fields
    assert fields.get("M", "").startswith("tenantgate:"), fields
    return fields


FRAMING = {
    "nul-before-delete": message(b"Q", b"SELECT 1\0DELETE FROM items\0"),
    "nul-before-set-role": message(b"Q", b"SELECT 1\0SET ROLE hooli\0"),
    "no-terminating-nul": message(b"Q", b"DELETE FROM items"),
    "two-nuls": message(b"Q", b"SELECT 1\0\0"),
    "parse-nul-in-query": message(b"P", b"\0SELECT 1\0DELETE FROM items\0\0\0")
    + message(b"S", b""),
    "parse-trailing-bytes": message(b"P", b"\0SELECT 1\0\0\0junk") + message(b"S", b""),
    "length-below-4": b"P" + struct.pack("!I", 3),
    "huge-parse": b"P" + struct.pack("!I", 0x7FFFFFFF),
    "huge-bind": b"B" + struct.pack("!I", 0x7FFFFFF0),
    "huge-copydata": b"d" + struct.pack("!I", 0x40000000),
    "negative-length": b"Q" + struct.pack("!i", -5),
    "bind-truncated-param": message(b"P", b"\0SELECT $1::text\0\0\0")
    + message(b"B", b"\0\0\0\0\0\x01\0\0\0\x10ab") + message(b"S", b""),
    "bind-param-count-lies": message(b"P", b"\0SELECT 1\0\0\0")
    + message(b"B", b"\0\0\0\0\0\x05") + message(b"S", b""),
    "execute-truncated": message(b"P", b"\0SELECT 1\0\0\0")
    + message(b"B", b"\0\0\0\0\0\0\0\0") + message(b"E", b"\0") + message(b"S", b""),
}


@pytest.mark.parametrize("name", list(FRAMING))
def test_t60_malformed_framing_after_login(proxy, pg, bystander, name) -> None:
    before = table_checksum(pg, "shared", "globex.items")
    session = raw_session(proxy, GLOBEX.user)
    try:
        session.sock.sendall(FRAMING[name])
        session.sock.settimeout(5)
        reply = recv_until_closed(session.sock)
    finally:
        session.close()
    expect_fatal_08p01(reply)
    assert table_checksum(pg, "shared", "globex.items") == before


@pytest.mark.parametrize("size,ok", [(3000, True), (5000, False), (100_000, False)])
def test_t60_max_message_size(small_messages, pg, size, ok) -> None:
    session = raw_session(small_messages, GLOBEX.user)
    try:
        sql = b"SELECT length('" + b"x" * size + b"')\0"
        session.sock.sendall(message(b"Q", sql))
        if ok:
            reply = session.until_ready()
            assert kinds(reply) == ["T", "D", "C", "Z"], reply
        else:
            session.sock.settimeout(5)
            expect_fatal_08p01(recv_until_closed(session.sock))
    finally:
        session.close()


@pytest.mark.parametrize("junk", [
    b"junk",
    startup_packet({"user": "app.acme", "database": "app"}),
])
def test_t60_junk_after_gssenc_request(proxy, bystander, junk) -> None:
    with raw_connect(proxy.host, proxy.port) as sock:
        sock.sendall(struct.pack("!II", 8, GSSENC_REQUEST) + junk)
        reply = recv_until_closed(sock)
    assert reply[:1] in (b"N", b"E"), reply
    expect_fatal_08p01(reply[1:] if reply[:1] == b"N" else reply)


# -- 61: routing by the authenticated identity only -----------------------------------------------

PASSWORDS = SampleInfo().logins


@pytest.mark.parametrize("user,database,params,codes", [
    ("app.acme", "umbrella", {}, {"3D000", "28000"}),
    ("app.globex", "hooli", {}, {"3D000", "28000"}),
    ("app", "umbrella", {"options": "-c tenant=acme"}, {"3D000", "28000"}),
    ("app.acme", "app", {"options": "-c tenant=umbrella"}, {"28000"}),
    ("acme_reporting.umbrella", "app", {}, {"28000"}),
    ("acme_reporting", "app", {"options": "-c tenant=umbrella"}, {"28000"}),
    ("acme_reporting", "umbrella", {}, {"3D000", "28000"}),
    ("limited.umbrella", "app", {}, {"28000"}),
    ("limited", "umbrella", {}, {"3D000", "28000"}),
    ("app.nosuch", "app", {}, {"28000"}),
    ("app", "app", {}, {"28000"}),
    ("app.ACME", "app", {}, {"28000"}),
    ("app.acme.umbrella", "app", {}, {"28000"}),
    ("migrator.umbrella", "app", {}, {"28000"}),
], ids=lambda v: v if isinstance(v, str) else repr(v))
def test_t61_tenant_spoofing_at_startup(proxy, pg, bystander, user, database, params,
                                        codes) -> None:
    login = user.split(".")[0]
    before = table_checksum(pg, "umbrella", "public.items")
    with pytest.raises(LoginFailed) as info:
        session = raw_session(proxy, user, PASSWORDS[login], database, params=params)
        rows = session.query("SELECT current_database(), string_agg(name, ',') FROM items")
        session.close()
        pytest.fail(f"NOT REFUSED: {user}@{database} {params} logged in: {rows}")
    fields = info.value.fields
    assert fields.get("S") == "FATAL" and fields.get("C") in codes, fields
    assert fields.get("M", "").startswith("tenantgate:"), fields
    assert table_checksum(pg, "umbrella", "public.items") == before


async def test_t61_asyncpg_cannot_pick_another_database(proxy, pg) -> None:
    import asyncpg
    with pytest.raises(asyncpg.PostgresError) as info:
        await proxy.aconnect(ACME.user, APP, "umbrella")
    assert info.value.sqlstate in ("3D000", "28000")
    conn = await proxy.aconnect(ACME.user, APP, "acme")  # its own database name is fine
    try:
        assert await conn.fetchval("SELECT current_database()") == "acme"
    finally:
        await conn.close()


# -- 73: control characters in names that reach logs and settings ---------------------------------

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
INJECTED = "x\nFAKE-LOG-LINE tenant=hooli\x1b[31m\r\x07"


def test_t73_application_name_from_startup_is_sanitised(proxy, pg) -> None:
    session = raw_session(proxy, ACME.user, params={"application_name": INJECTED})
    try:
        for name, value in session.parameters.items():
            assert not CONTROL.search(value), f"ParameterStatus {name}={value!r}"
        reply = session.query("SHOW application_name")
        shown = [body for kind, body in reply if kind == "D"]
        assert shown and not CONTROL.search(shown[0][6:].decode("utf-8", "replace")), shown
    finally:
        session.close()


@pytest.mark.parametrize("sql", [
    "SET application_name = E'a\\nFAKE-LOG-LINE\\x1b[2K\\r'",
    "SELECT set_config('application_name', E'b\\r\\nFAKE-LOG-LINE', false)",
    "SET application_name TO U&'c\\000AFAKE-LOG-LINE'",
])
def test_t73_application_name_from_sql_is_sanitised(proxy, pg, sql) -> None:
    with proxy.connect(ACME.user, APP) as conn:
        conn.execute(sql)
        (shown,) = conn.execute("SHOW application_name").fetchone()
        assert not CONTROL.search(shown), repr(shown)
        assert not CONTROL.search(conn.info.parameter_status("application_name") or ""), \
            conn.info.parameter_status("application_name")


@pytest.mark.parametrize("user,database,application_name", [
    ("app.no\nFAKE-LOG-LINE tenant=hooli", "app", "a"),
    ("app\r\nFAKE-LOG-LINE login=migrator", "app", "a"),
    ("app.acme\x1b[2K\rFAKE-LOG-LINE", "app", "a"),
    ("app.acme", "app\nFAKE-LOG-LINE", "a"),
    ("app.acme", "app", "a\nFAKE-LOG-LINE"),
], ids=["user-lf", "user-crlf", "user-ansi", "database-lf", "application-name-lf"])
def test_t73_no_log_line_injection(proxy, user, database, application_name) -> None:
    mark = proxy.log_mark()
    with raw_connect(proxy.host, proxy.port) as sock:
        sock.sendall(startup_packet({"user": user, "database": database,
                                     "application_name": application_name}))
        first = recv_until_first_auth(sock)
        if first == b"R":  # answer SCRAM with garbage: the login fails and is logged
            bogus = b"n,,n=*,r=tenantgatethreats"
            sock.sendall(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(bogus))
                                 + bogus))
            sock.settimeout(2)
            try:
                sock.recv(65536)
                sock.sendall(message(b"p", b"c=biws,r=x,p=AAAA"))
                recv_until_closed(sock)
            except (TimeoutError, socket.timeout, ConnectionResetError):
                pass
    time.sleep(0.3)
    for line in proxy.logs(since=mark).splitlines():
        assert not line.lstrip("\r\x1b[2K").startswith("FAKE-LOG-LINE"), line
        assert "\x1b" not in line and "\r" not in line, repr(line)


def recv_until_first_auth(sock) -> bytes:
    head = b""
    while len(head) < 1:
        chunk = sock.recv(1)
        if not chunk:
            return b""
        head += chunk
    return head
