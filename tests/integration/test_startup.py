"""Startup: authentication and tenant resolution through the running proxy (DESIGN.md section 3).

Refusals are checked with asyncpg (it reports the SQLSTATE of a FATAL during startup) and, where
the driver matters, psycopg/libpq; each refusal must also be explained in the proxy's log.
"""

from __future__ import annotations

import re
import struct
import uuid

import asyncpg
import psycopg
import pytest

from proxy.sample import canary, sample_items
from tests.helpers import (LoginRefused, error_fields, raw_connect, raw_login, read_message,
                           startup_packet, table_checksum)

APP = "app-secret"


async def refused(proxy, user: str, password: str, database: str = "app",
                  **kwargs) -> asyncpg.PostgresError:
    """The error of a connection attempt that the proxy must refuse during startup."""
    with pytest.raises(asyncpg.PostgresError) as info:
        conn = await proxy.aconnect(user, password, database, **kwargs)
        await conn.close()
    return info.value


async def fetch_one(proxy, user: str, password: str, sql: str, database: str = "app",
                    **kwargs):
    conn = await proxy.aconnect(user, password, database, **kwargs)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def auth_request(proxy, user: str) -> tuple[int, bytes]:
    """(code, rest) of the proxy's first AuthenticationXXX reply to a startup for `user`."""
    with raw_connect(proxy.host, proxy.port) as sock:
        sock.sendall(startup_packet({"user": user, "database": "app"}))
        msg = read_message(sock)
    assert msg is not None and msg[0] == "R", msg if msg is None else error_fields(msg[1])
    (code,) = struct.unpack("!I", msg[1][:4])
    return code, msg[1][4:]


# -- tenant resolution ---------------------------------------------------------------------------

async def test_unknown_tenant_is_refused_with_28000(proxy) -> None:
    ghost = f"ghost{uuid.uuid4().hex[:8]}"
    mark = proxy.log_mark()
    err = await refused(proxy, f"app.{ghost}", APP)
    assert err.sqlstate == "28000"
    assert ghost in str(err)
    proxy.wait_for_log(re.escape(ghost), since=mark)


async def test_no_tenant_at_all_is_refused_never_defaulted(proxy) -> None:
    mark = proxy.log_mark()
    err = await refused(proxy, "app", APP, "app")
    assert err.sqlstate == "28000"
    proxy.wait_for_log(r"\bapp\b.*(tenant)|(tenant).*\bapp\b", since=mark)


async def test_login_may_act_only_for_its_tenants(proxy) -> None:
    assert await fetch_one(proxy, "limited.acme", "limited-secret",
                           "SELECT current_database()") == "acme"
    mark = proxy.log_mark()
    err = await refused(proxy, "limited.umbrella", "limited-secret")
    assert err.sqlstate == "28000"
    assert "umbrella" in str(err)
    proxy.wait_for_log(r"limited.*umbrella|umbrella.*limited", since=mark)


async def test_wrong_password_is_28p01(proxy) -> None:
    mark = proxy.log_mark()
    err = await refused(proxy, "limited.acme", "not-the-password")
    assert err.sqlstate == "28P01"
    assert "not-the-password" not in proxy.logs()
    proxy.wait_for_log(r"limited.*(password|auth)|(password|auth).*limited", since=mark)


async def test_unknown_login_is_28p01(proxy) -> None:
    """An unknown login is refused before any tenant is looked at."""
    nobody = f"nobody{uuid.uuid4().hex[:8]}"
    mark = proxy.log_mark()
    err = await refused(proxy, f"{nobody}.acme", "whatever")
    assert err.sqlstate in ("28P01", "28000")
    proxy.wait_for_log(re.escape(nobody), since=mark)


def test_scram_is_the_default_and_md5_login_gets_md5(proxy) -> None:
    code, rest = auth_request(proxy, "app.acme")
    assert code == 10 and b"SCRAM-SHA-256\0" in rest  # AuthenticationSASL
    code, rest = auth_request(proxy, "acme_reporting")
    assert code == 5 and len(rest) == 4  # AuthenticationMD5Password + 4-byte salt


@pytest.mark.parametrize("user", ["acme_reporting", "acme_reporting.acme"])
async def test_md5_login_bound_to_acme(proxy, user) -> None:
    """md5 salts with the startup user name as the client sent it (libpq, asyncpg)."""
    conn = await proxy.aconnect(user, "reporting-secret", "app")
    try:
        assert await conn.fetchval("SELECT current_database()") == "acme"
        rows = await conn.fetch("SELECT id, name, secret FROM items ORDER BY id")
        assert [tuple(r) for r in rows] == sample_items("acme")
    finally:
        await conn.close()


@pytest.mark.parametrize("how", ["suffix", "options", "database"])
async def test_bound_login_cannot_pick_another_tenant(proxy, pg, how) -> None:
    before = table_checksum(pg, "umbrella", "public.items")
    mark = proxy.log_mark()
    if how == "suffix":
        err = await refused(proxy, "acme_reporting.umbrella", "reporting-secret")
    elif how == "options":
        err = await refused(proxy, "acme_reporting", "reporting-secret", "app",
                            server_settings={"options": "-c tenant=umbrella"})
    else:
        err = await refused(proxy, "acme_reporting", "reporting-secret", "umbrella")
    allowed = {"suffix": ("28000",), "options": ("28000",), "database": ("28000", "3D000")}
    assert err.sqlstate in allowed[how]
    assert canary("umbrella") not in str(err)
    proxy.wait_for_log(r"acme_reporting.*(umbrella|tenant|password)", since=mark)
    assert table_checksum(pg, "umbrella", "public.items") == before


async def test_tenant_from_options(proxy) -> None:
    assert await fetch_one(proxy, "app", APP, "SELECT current_database()",
                           server_settings={"options": "-c tenant=acme"}) == "acme"


def test_tenant_from_libpq_options_with_psycopg(proxy) -> None:
    with psycopg.connect(proxy.dsn("app", APP), options="-c tenant=globex",
                         autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute("SELECT id, name, secret FROM items ORDER BY id").fetchall()
    assert rows == sample_items("globex")


def test_tenant_from_database_name(proxy) -> None:
    with proxy.connect("app", APP, dbname="umbrella") as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("umbrella",)


@pytest.mark.parametrize("options,needle", [
    ("-c search_path=hooli", "search_path"),
    ("-c role=hooli", "role"),
    ("-c tenant=globex -c statement_timeout=0", "statement_timeout"),
    ("--search_path=hooli", "search_path"),
])
async def test_any_other_startup_option_is_refused(proxy, pg, options, needle) -> None:
    before = table_checksum(pg, "shared", "hooli.items")
    mark = proxy.log_mark()
    user = "app" if "tenant=" in options else "app.globex"
    err = await refused(proxy, user, APP, server_settings={"options": options})
    assert err.sqlstate in ("28000", "42501", "08P01")
    proxy.wait_for_log(re.escape(needle), since=mark)
    assert table_checksum(pg, "shared", "hooli.items") == before


@pytest.mark.parametrize("encoding", ["LATIN1", "SJIS", "GBK"])
def test_client_encoding_other_than_utf8_is_refused(proxy, encoding) -> None:
    """A startup packet (raw, so the parameter is sent exactly once) asking for another
    client_encoding is refused, whether before or after authentication (THREATS 13)."""
    mark = proxy.log_mark()
    with pytest.raises(LoginRefused) as info:
        raw_login(proxy.host, proxy.port, "app.acme", APP, "app",
                  params={"client_encoding": encoding})
    assert info.value.fields["C"] in ("08P01", "42501")
    assert info.value.fields["S"] == "FATAL"
    proxy.wait_for_log(encoding, since=mark)


@pytest.mark.parametrize("encoding", ["UTF8", "utf-8", "unicode"])
def test_client_encoding_utf8_spellings_are_accepted(proxy, encoding) -> None:
    sock = raw_login(proxy.host, proxy.port, "app.acme", APP, "app",
                     params={"client_encoding": encoding})
    sock.close()


def test_client_encoding_latin1_from_libpq_is_refused(proxy) -> None:
    mark = proxy.log_mark()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn("app.acme", APP), client_encoding="LATIN1",
                        connect_timeout=10).close()
    proxy.wait_for_log("latin1", since=mark)


# -- bypass login ------------------------------------------------------------------------------

async def test_bypass_login_reaches_shared_and_both_schemas(proxy) -> None:
    conn = await proxy.aconnect("migrator", "migrator-secret", "shared")
    try:
        assert await conn.fetchval("SELECT current_database()") == "shared"
        # not rewritten: the backend role itself (NOINHERIT) is refused by PostgreSQL
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as info:
            await conn.fetch("SELECT * FROM hooli.items")
        assert not info.value.args[0].startswith("tenantgate:")
        for tenant in ("globex", "hooli"):
            async with conn.transaction():
                await conn.execute(f"SET LOCAL ROLE {tenant}")
                rows = await conn.fetch(f"SELECT id, name, secret FROM {tenant}.items ORDER BY id")
            assert [tuple(r) for r in rows] == sample_items(tenant)
    finally:
        await conn.close()


def test_an_empty_database_name_means_the_login_name_as_in_postgresql(proxy, pg) -> None:
    """A startup packet with `database` empty: PostgreSQL takes the user name. The bypass
    login's server connection goes to the database `migrator`, not to the one PostgreSQL
    would pick for the proxy's backend role."""
    from tests.helpers import message

    pg.run_sql("CREATE DATABASE migrator;")
    try:
        sock = raw_login("127.0.0.1", proxy.port, "migrator", "migrator-secret", database="")
        try:
            sock.sendall(message(b"Q", b"SELECT current_database()\0"))
            replies = []
            while not replies or replies[-1][0] != "Z":
                replies.append(read_message(sock))
        finally:
            sock.close()
        assert [kind for kind, _ in replies] == ["T", "D", "C", "Z"], replies
        assert replies[1][1][6:] == b"migrator"
    finally:
        pg.run_sql("DROP DATABASE migrator WITH (FORCE);")


async def test_bypass_login_wrong_password(proxy) -> None:
    err = await refused(proxy, "migrator", "wrong", "shared")
    assert err.sqlstate == "28P01"


async def test_row_tenant_on_a_database_without_tenant_tables_is_refused(proxy_factory,
                                                                          pg) -> None:
    """Fail closed: database `shared` has no table with the tenant column, so the proxy
    cannot verify RLS there and serves no row tenant from it; everyone else is served."""
    row_proxy = proxy_factory(extra_tenants=(
        'initech: {strategy: row, cluster: main, database: shared, key: "initech"}\n'))
    err = await refused(row_proxy, "app.initech", "app-secret")
    assert err.sqlstate == "08004"
    assert "not set up safely for row isolation" in str(err)
    row_proxy.wait_for_log("no table has the tenant column")
    assert await fetch_one(row_proxy, "app.acme", "app-secret", "SELECT current_database()") == "acme"
