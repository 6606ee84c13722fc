"""Routing and schema isolation through the running proxy (DESIGN.md sections 3-4).

Database tenants reach only their database; schema tenants see only their schema (+ `common`,
read-only). Another tenant's schema is answered like a missing one (42P01, same text), changes of
search_path / role are refused (42501), and a refusal inside a transaction aborts it on the
server too (THREATS 5, 16, 17). Every attack also checks, directly on PostgreSQL, that the other
tenant's rows did not come back and did not change.
"""

from __future__ import annotations

import asyncio
import re
import uuid

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from proxy.sample import COUNTRIES, canary, sample_items
from tests.helpers import backend_query, error_message, run_psql, sqlstate, table_checksum

APP_PASSWORD = "app-secret"
CLIENTS = ["psycopg", "asyncpg", "psql"]
ALL_CANARIES = {canary(t) for t in ("acme", "umbrella", "globex", "hooli")}


def as_text(rows) -> list[tuple[str | None, ...]]:
    return [tuple(None if v is None else str(v) for v in row) for row in rows]


def expected_items(tenant: str) -> list[tuple[str | None, ...]]:
    return as_text(sample_items(tenant))


def query(client: str, proxy, pg, user: str, sql: str) -> list[tuple[str | None, ...]]:
    """Rows of one statement sent by a real client through the proxy, as text (NULL = None)."""
    if client == "psycopg":
        with proxy.connect(user, APP_PASSWORD) as conn:
            return as_text(conn.execute(sql).fetchall())
    if client == "asyncpg":
        async def go():
            conn = await proxy.aconnect(user, APP_PASSWORD)
            try:
                return await conn.fetch(sql)
            finally:
                await conn.close()
        return as_text(asyncio.run(go()))
    done = run_psql(proxy.dsn(user, APP_PASSWORD), sql, psql=pg.bin("psql"))
    assert done.returncode == 0, done.stderr
    return [tuple(f if f != "" else None for f in line.split("|"))
            for line in done.stdout.splitlines()]


def query_error(client: str, proxy, pg, user: str, sql: str) -> tuple[str | None, str]:
    """(SQLSTATE, primary message) of a statement that must fail, sent by a real client."""
    if client == "psycopg":
        with proxy.connect(user, APP_PASSWORD) as conn:
            with pytest.raises(psycopg.Error) as info:
                conn.execute(sql)
            # the connection stays usable after the refusal
            assert conn.execute("SELECT 1").fetchone() == (1,)
        return sqlstate(info.value), error_message(info.value)
    if client == "asyncpg":
        import asyncpg

        async def go():
            conn = await proxy.aconnect(user, APP_PASSWORD)
            try:
                with pytest.raises(asyncpg.PostgresError) as info:
                    await conn.fetch(sql)
                assert await conn.fetchval("SELECT 1") == 1
                return info.value
            finally:
                await conn.close()
        err = asyncio.run(go())
        return err.sqlstate, err.args[0] if err.args else str(err)
    done = run_psql(proxy.dsn(user, APP_PASSWORD), sql, psql=pg.bin("psql"))
    assert done.returncode != 0, done.stdout
    match = re.search(r"ERROR:\s+([0-9A-Z]{5}): (.*)", done.stderr)
    assert match, done.stderr
    return match.group(1), match.group(2).strip()


def globex_rows(conn: psycopg.Connection) -> list[tuple]:
    return as_text(conn.execute("SELECT id, name, secret FROM items ORDER BY id").fetchall())


# -- database strategy ------------------------------------------------------------------------

@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("tenant", ["acme", "umbrella"])
def test_database_tenant_reaches_only_its_database(proxy, pg, client, tenant) -> None:
    user = f"app.{tenant}"
    assert query(client, proxy, pg, user, "SELECT current_database()") == [(tenant,)]
    rows = query(client, proxy, pg, user, "SELECT id, name, secret FROM items ORDER BY id")
    assert rows == expected_items(tenant)
    secrets = {r[2] for r in rows}
    assert secrets & ALL_CANARIES == {canary(tenant)}


# -- schema strategy ---------------------------------------------------------------------------

@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("tenant", ["globex", "hooli"])
def test_schema_tenant_sees_only_its_schema_unqualified(proxy, pg, client, tenant) -> None:
    rows = query(client, proxy, pg, f"app.{tenant}",
                 "SELECT id, name, secret FROM items ORDER BY id")
    assert rows == expected_items(tenant)
    assert {r[2] for r in rows} & ALL_CANARIES == {canary(tenant)}


@pytest.mark.parametrize("client", CLIENTS)
def test_other_tenant_schema_is_indistinguishable_from_a_missing_one(proxy, pg, client) -> None:
    before = table_checksum(pg, "shared", "hooli.items")
    state_h, text_h = query_error(client, proxy, pg, "app.globex", "SELECT * FROM hooli.items")
    state_n, text_n = query_error(client, proxy, pg, "app.globex", "SELECT * FROM nosuch.items")
    assert state_h == state_n == "42P01"
    assert text_h.replace("hooli", "<schema>") == text_n.replace("nosuch", "<schema>")
    assert "CANARY" not in text_h
    assert table_checksum(pg, "shared", "hooli.items") == before


@pytest.mark.parametrize("sql", [
    "SELECT g.name FROM items g JOIN hooli.items h ON h.id = g.id",
    "SELECT name FROM items WHERE secret IN (SELECT secret FROM hooli.items)",
    "SELECT (SELECT secret FROM hooli.items WHERE id = 3) AS s",
    "WITH x AS (SELECT * FROM hooli.items) SELECT * FROM x",
    "SELECT name FROM items UNION ALL SELECT secret FROM hooli.items",
    "SELECT * FROM items, LATERAL (SELECT secret FROM \"hooli\".items) h",
    "SELECT * FROM HOOLI.ITEMS",
    "UPDATE hooli.items SET secret = 'pwned'",
    "DELETE FROM hooli.items",
    "INSERT INTO hooli.items (name) VALUES ('planted')",
    "INSERT INTO items (name, secret) SELECT name, secret FROM hooli.items",
])
def test_other_tenant_schema_is_unreachable_everywhere(proxy, pg, sql) -> None:
    before = table_checksum(pg, "shared", "hooli.items")
    globex_before = table_checksum(pg, "shared", "globex.items")
    with proxy.connect("app.globex", APP_PASSWORD) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable) as info:
            conn.execute(sql)
        assert "CANARY" not in str(info.value)
        assert globex_rows(conn) == expected_items("globex")
    assert table_checksum(pg, "shared", "hooli.items") == before
    assert table_checksum(pg, "shared", "globex.items") == globex_before


def test_three_part_names_give_no_existence_oracle(proxy, pg) -> None:
    """`shared.hooli.items` (catalog.schema.table) is refused exactly like a missing schema."""
    before = table_checksum(pg, "shared", "hooli.items")
    answers = []
    with proxy.connect("app.globex", APP_PASSWORD) as conn:
        for schema in ("hooli", "nosuch"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(f"SELECT * FROM shared.{schema}.items")
            answers.append((info.value.sqlstate,
                            error_message(info.value).replace(schema, "<schema>")))
            assert "CANARY" not in str(info.value)
        assert globex_rows(conn) == expected_items("globex")
    assert answers[0] == answers[1]
    assert answers[0][0] in ("42P01", "0A000")
    assert table_checksum(pg, "shared", "hooli.items") == before


@pytest.mark.parametrize("sql", [
    "SET search_path TO hooli",
    "SET search_path = hooli, common",
    "SET SESSION search_path TO DEFAULT",
    "RESET search_path",
    "SELECT set_config('search_path', 'hooli', false)",
])
def test_search_path_change_is_refused_and_session_stays_pinned(proxy, pg, sql) -> None:
    before = table_checksum(pg, "shared", "hooli.items")
    with proxy.connect("app.globex", APP_PASSWORD) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(sql)
        assert error_message(info.value).startswith("tenantgate:")
        assert globex_rows(conn) == expected_items("globex")
        assert conn.execute("SELECT code FROM countries ORDER BY code").fetchall() == \
            [(c,) for c, _ in COUNTRIES]
    assert table_checksum(pg, "shared", "hooli.items") == before


@pytest.mark.parametrize("sql", [
    "SET ROLE hooli",
    "SET SESSION ROLE hooli",
    "SET ROLE NONE",
    "RESET ROLE",
    "SET SESSION AUTHORIZATION tenantgate",
    "SET SESSION AUTHORIZATION DEFAULT",
    "RESET SESSION AUTHORIZATION",
    "SELECT set_config('role', 'hooli', false)",
])
def test_role_change_is_refused_and_session_stays_globex(proxy, pg, sql) -> None:
    before = table_checksum(pg, "shared", "hooli.items")
    with proxy.connect("app.globex", APP_PASSWORD) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(sql)
        assert error_message(info.value).startswith("tenantgate:")
        assert globex_rows(conn) == expected_items("globex")
        # and the other tenant's rows are still out of reach on this very connection
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM hooli.items")
    assert table_checksum(pg, "shared", "hooli.items") == before


def test_set_local_role_inside_a_transaction_is_refused(proxy, pg) -> None:
    before = table_checksum(pg, "shared", "hooli.items")
    with proxy.connect("app.globex", APP_PASSWORD) as conn:
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET LOCAL ROLE hooli")
        assert conn.info.transaction_status == TransactionStatus.INERROR
        conn.execute("ROLLBACK")
        assert globex_rows(conn) == expected_items("globex")
    assert table_checksum(pg, "shared", "hooli.items") == before


# -- refusals inside a transaction block ---------------------------------------------------------

@pytest.fixture
def probe_name(pg):
    name = f"probe-{uuid.uuid4().hex[:12]}"
    yield name
    backend_query(pg, "shared", "DELETE FROM globex.items WHERE name = %s", (name,))


def backend_count(pg, name: str) -> int:
    return backend_query(pg, "shared", "SELECT count(*) FROM globex.items WHERE name = %s",
                         (name,))[0][0]


def test_refusal_aborts_the_transaction_and_commit_commits_nothing(proxy, pg, probe_name) -> None:
    hooli_before = table_checksum(pg, "shared", "hooli.items")
    with proxy.connect("app.globex", APP_PASSWORD) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO items (name) VALUES (%s)", (probe_name,))
        assert conn.execute("SELECT count(*) FROM items WHERE name = %s",
                            (probe_name,)).fetchone() == (1,)
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM hooli.items")
        assert conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction) as info:
            conn.execute("SELECT count(*) FROM items")
        assert "current transaction is aborted" in str(info.value)
        cur = conn.execute("COMMIT")
        assert cur.statusmessage == "ROLLBACK"  # what PostgreSQL answers to COMMIT here
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM items WHERE name = %s",
                            (probe_name,)).fetchone() == (0,)
    assert backend_count(pg, probe_name) == 0
    assert table_checksum(pg, "shared", "hooli.items") == hooli_before


def test_refusal_in_extended_protocol_then_rollback_and_all_works(proxy, pg, probe_name) -> None:
    with proxy.connect("app.globex", APP_PASSWORD) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO items (name) VALUES (%s)", (probe_name,))
        with pytest.raises(psycopg.errors.UndefinedTable):  # Parse/Bind/Execute with a param
            conn.execute("SELECT secret FROM hooli.items WHERE id = %s", (3,))
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT name FROM items WHERE id = %s", (1,))
        conn.execute("ROLLBACK")
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute("SELECT name FROM items WHERE id = %s", (1,)).fetchone() == \
            ("globex-alpha",)
        # a normal transaction commits as usual afterwards
        with conn.transaction():
            conn.execute("INSERT INTO items (name) VALUES (%s)", (probe_name,))
    assert backend_count(pg, probe_name) == 1


def test_refusal_with_non_autocommit_driver_commit(proxy, pg, probe_name) -> None:
    """psycopg's default (non-autocommit) mode: the driver's own BEGIN, then commit()."""
    with proxy.connect("app.globex", APP_PASSWORD, autocommit=False) as conn:
        conn.execute("INSERT INTO items (name) VALUES (%s)", (probe_name,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET search_path TO hooli")
        conn.commit()  # the server turns this into ROLLBACK
        assert conn.execute("SELECT count(*) FROM items WHERE name = %s",
                            (probe_name,)).fetchone() == (0,)
        conn.rollback()
    assert backend_count(pg, probe_name) == 0


# -- the shared schema ---------------------------------------------------------------------------

@pytest.mark.parametrize("tenant", ["globex", "hooli"])
def test_shared_schema_is_readable_not_writable(proxy, pg, tenant) -> None:
    before = table_checksum(pg, "shared", "common.countries")
    with proxy.connect(f"app.{tenant}", APP_PASSWORD) as conn:
        assert conn.execute("SELECT code, name FROM common.countries ORDER BY code").fetchall() \
            == list(COUNTRIES)
        assert conn.execute("SELECT count(*) FROM countries").fetchone() == (len(COUNTRIES),)
        for sql in ["INSERT INTO common.countries VALUES ('XX', 'Nowhere')",
                    "UPDATE common.countries SET name = 'pwned'",
                    "DELETE FROM countries WHERE code = 'DE'",
                    "TRUNCATE common.countries"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
        assert conn.execute("SELECT count(*) FROM countries").fetchone() == (len(COUNTRIES),)
    assert table_checksum(pg, "shared", "common.countries") == before
