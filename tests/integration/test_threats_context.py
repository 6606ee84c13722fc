"""THREATS.md 3.1 (ids 1-15) and 65: tampering with the tenant context, and parser
differentials, through the running proxy. See test_threats.py for what each check asserts."""

from __future__ import annotations

import psycopg
import pytest

from proxy.sample import SampleInfo, canary
from tests.helpers import backend_query, message, start_proxy, table_checksum
from tests.integration.test_threats import (ACME, APP, GLOBEX, HOOLI, A, LoginFailed,
                                            assert_no_victim_data, errors_in,
                                            expect_refused, expected_state, kinds,
                                            raw_session, STATE_SQL)

STARTUP_REFUSAL = {"28000", "42501", "08P01"}  # README: refused, no single code given


def side_of(attack, default=GLOBEX):
    return {"acme": ACME}.get(attack.extra.get("side"), default)


# -- 1: SET of a reserved setting -----------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("set APP.TENANT_ID to 'hooli'"),
    A('SET SESSION "app"."tenant_id" = hooli'),
    A("SET /* c1 */ app . tenant_id /* c2 */ = 'hooli'"),
    A("set local app.tenant_id = 'hooli'"),
    A("SET app.tenant_id TO DEFAULT"),
    A("SET app.tenant_id FROM CURRENT"),
    A("SET myapp.anything = 1"),
    A('SET "app.tenant_id" TO \'hooli\''),
    A("SET U&\"app\\002Etenant_id\" = 'hooli'"),
    A("SET app.tenant_id = E'hoo\\154i'", "extended"),
    A("SET app.tenant_id = $$hooli$$", "prepared"),
    A("SET app.tenant_id = 'hooli'", "asyncpg"),
    A("SeT aPp.TeNaNt_Id = 'hooli'", "psql"),
    A("SELECT 1; SET app.tenant_id = 'hooli'; SELECT * FROM items"),
    A("SET app.tenant_id = 'umbrella'", side="acme", id="acme:SET app.tenant_id"),
    A("set app.tenant_id to umbrella", "asyncpg", side="acme", id="acme:asyncpg"),
])
def test_t01_set_reserved_setting(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501")


# -- 2: RESET of reserved settings; RESET ALL keeps the context ------------------------------

@pytest.mark.parametrize("attack", [
    A("RESET app.tenant_id"),
    A("reset APP.Tenant_Id"),
    A('RESET "app"."tenant_id"'),
    A("RESET app.tenant_id; SELECT count(*) FROM items"),
    A("RESET tenantgate.tenant", "extended"),
    A("RESET app.tenant_id", "asyncpg"),
    A("reset app . tenant_id", "psql"),
    A("RESET app.tenant_id", side="acme", id="acme:RESET app.tenant_id"),
])
def test_t02_reset_reserved_setting(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501")


@pytest.mark.parametrize("sql", [
    "RESET ALL",
    "reset all",
    "RESET ALL; SELECT 1",
    "SELECT 1; RESET ALL",
    "BEGIN; RESET ALL; COMMIT",
])
@pytest.mark.parametrize("side", [GLOBEX, ACME], ids=lambda s: s.tenant)
def test_t02_reset_all_keeps_the_tenant_context(proxy, pg, sql, side) -> None:
    before = table_checksum(pg, side.victim_db, side.victim_table)
    with proxy.connect(side.user, APP) as conn:
        conn.execute(sql)
        assert tuple(map(str, conn.execute(STATE_SQL).fetchone())) == expected_state(side)
        if side is GLOBEX:
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn.execute("SELECT * FROM hooli.items")
        # inside a transaction block, the next statement still sees the pinned context
        conn.execute("BEGIN")
        conn.execute(sql.replace("BEGIN; ", "").replace("; COMMIT", ""))
        assert tuple(map(str, conn.execute(STATE_SQL).fetchone())) == expected_state(side)
        conn.execute("COMMIT")
    assert table_checksum(pg, side.victim_db, side.victim_table) == before


async def test_t02_reset_all_from_asyncpg_keeps_the_context(proxy, pg) -> None:
    conn = await proxy.aconnect(GLOBEX.user, APP)
    try:
        await conn.execute("RESET ALL")
        row = await conn.fetchrow(STATE_SQL)
        assert tuple(str(v) for v in row) == expected_state(GLOBEX)
    finally:
        await conn.close()


# -- 3: set_config anywhere -------------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("SELECT name FROM items ORDER BY (SELECT set_config('app.tenant_id', 'hooli', false))"),
    A("WITH x AS (SELECT pg_catalog.set_config('app.tenant_id', 'hooli', false)) "
      "SELECT * FROM x"),
    A("SELECT length(U&\"\\0073et_config\"('app.tenant_id', 'hooli', false))"),
    A("SELECT U&\"!0073et_config\" UESCAPE '!' ('app.tenant_id', 'hooli', false) AS x"),
    A("SELECT \"set_config\"('app.tenant_id', 'hooli', false)"),
    A("SELECT PG_CATALOG.SET_CONFIG('APP.TENANT_ID', 'hooli', FALSE)"),
    A("SELECT set_config(setting_name => 'app.tenant_id', new_value => 'hooli', "
      "is_local => false)"),
    A("SELECT * FROM set_config('app.tenant_id', 'hooli', false)"),
    A("SELECT * FROM items WHERE set_config('app.tenant_id', 'hooli', true) IS NOT NULL"),
    A("SELECT count(*) FROM items GROUP BY name "
      "HAVING set_config('app.tenant_id', 'hooli', false) <> ''"),
    A("SELECT CASE WHEN id = 1 THEN set_config('app.tenant_id', 'hooli', false) END FROM items"),
    A("SELECT coalesce(NULL, set_config('app.tenant_id', 'hooli', false))"),
    A("SELECT ARRAY[set_config('app.tenant_id', 'hooli', false)]"),
    A("SELECT json_build_object('k', set_config('app.tenant_id', 'hooli', false))"),
    A("SELECT row_number() OVER (ORDER BY set_config('app.tenant_id', 'hooli', false)) "
      "FROM items"),
    A("SELECT * FROM items, LATERAL (SELECT set_config('app.tenant_id', 'hooli', false)) s"),
    A("SELECT * FROM items WHERE EXISTS (SELECT set_config('app.tenant_id', 'hooli', false))"),
    A("VALUES (set_config('app.tenant_id', 'hooli', false))"),
    A("INSERT INTO items (name) VALUES (set_config('app.tenant_id', 'hooli', false))"),
    A("UPDATE items SET name = name WHERE false "
      "RETURNING set_config('app.tenant_id', 'hooli', false)"),
    A("DELETE FROM items WHERE set_config('app.tenant_id', 'hooli', false) = 'x'"),
    A("SELECT set_config('app.tenant_id', 'hooli', false) FROM items"),
    A("SELECT DISTINCT set_config('app.tenant_id', 'hooli', false)"),
    A("SELECT set_config('app.tenant_id', 'hooli', false) WHERE true"),
    A("SELECT set_config('app.tenant_id'::text, 'hooli'::text, false::boolean)"),
    A("SELECT set_config('app.tenant_id', 'hooli', false)"),
    A("SELECT set_config('app.tenant_id', 'hooli', false) AS t"),
    A("select (select set_config('app.tenant_id', 'hooli', false))", "extended"),
    A("SELECT name FROM items WHERE name <> set_config('app.tenant_id', 'hooli', false)",
      "prepared"),
    A("SELECT lower(set_config('app.tenant_id', 'hooli', false))", "asyncpg"),
    A("SELECT upper(pg_catalog.set_config('app.tenant_id', 'hooli', true))", "psql"),
    A("SELECT * FROM items WHERE set_config('app.tenant_id', 'umbrella', false) IS NULL",
      side="acme", id="acme:set_config in WHERE"),
])
def test_t03_set_config_anywhere(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501")


# -- 4: set_config with a computed name or Bind parameters --------------------------------------

@pytest.mark.parametrize("attack", [
    A("SELECT set_config(chr(97) || 'pp.tenant_id', 'hooli', false)"),
    A("SELECT set_config(chr(114) || 'ole', 'hooli', false)"),
    A("SELECT set_config(concat('search', '_path'), 'hooli', false)"),
    A("SELECT set_config(lower('ROLE'), 'hooli', false)"),
    A("SELECT set_config((SELECT 'role'), 'hooli', false)"),
    A("SELECT set_config(format('%s', 'role'), 'hooli', false)"),
    A("SELECT set_config(name, 'hooli', false) FROM (VALUES ('role')) v(name)"),
    A("SELECT set_config(%s, %s, false)", "extended", ("role", "hooli")),
    A("SELECT set_config(%s, %s, %s)", "prepared", ("search_path", "hooli", False)),
    A("SELECT set_config(%s, %s, false)", "client", ("app.tenant_id", "hooli")),
    A("SELECT set_config(%s::text, %s, true)", "client", ("role", "hooli")),
    A("SELECT set_config($1, $2, $3)", "asyncpg", ("role", "hooli", False)),
    A("SELECT set_config($1::text, 'hooli', false)", "asyncpg", ("search_path",)),
    A("SELECT set_config('role', $1, false)", "asyncpg", ("hooli",)),
    A("SELECT set_config($1, 'x', false)", "asyncpg", ("app.tenant_id",), side="acme",
      id="acme:asyncpg param name"),
])
def test_t04_set_config_with_computed_name_or_params(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501")


# -- 5: role changes -----------------------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A('set role "hooli"'),
    A("SET ROLE 'hooli'"),
    A("SET role = hooli"),
    A('SET "role" TO \'hooli\''),
    A('SET "ROLE" TO hooli'),
    A("SET LOCAL role TO hooli"),
    A("SET ROLE postgres"),
    A("SET ROLE tenantgate"),
    A("SET SESSION AUTHORIZATION 'postgres'"),
    A("set session_authorization = postgres"),
    A("SELECT set_config('ROLE', 'hooli', false)"),
    A("SELECT set_config(U&'r\\006Fle', 'hooli', true)"),
    A("SELECT set_config(E'r\\157le', 'hooli', false)"),
    A("SELECT set_config($$session_authorization$$, 'postgres', false)"),
    A("SELECT count(*) FROM items WHERE set_config('role', 'hooli', true) IS NOT NULL"),
    A("SET ROLE hooli; SELECT secret FROM items"),
    A("RESET role"),
    A("SET ROLE hooli", "extended"),
    A("SET SESSION ROLE hooli", "prepared"),
    A("SET ROLE hooli", "asyncpg"),
    A("set local role none", "psql"),
    A("SET ROLE postgres", side="acme", id="acme:SET ROLE postgres"),
    A("SET SESSION AUTHORIZATION postgres", "asyncpg", side="acme", id="acme:asyncpg"),
])
def test_t05_role_change(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501")


# -- 6: DISCARD -----------------------------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("DISCARD PLANS"),
    A("DISCARD SEQUENCES"),
    A("DISCARD TEMP"),
    A("Discard Temporary"),
    A("SELECT 1; DISCARD ALL"),
    A("DISCARD ALL; SELECT secret FROM items"),
    A("DISCARD ALL", "extended"),
    A("DISCARD TEMP", "asyncpg"),
    A("discard plans", "psql"),
    A("DISCARD SEQUENCES", side="acme", id="acme:DISCARD SEQUENCES"),
])
def test_t06_discard(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "0A000")


@pytest.mark.parametrize("tenant, other", [("globex", "hooli"), ("acme", "umbrella")])
def test_t06_discard_all_alone_keeps_the_tenant_context(proxy, pg, tenant, other) -> None:
    """DISCARD ALL alone is answered by the proxy (it resets the client's statements and
    settings, which is all a client keeps in transaction pooling): the pinned search path,
    role and the tenant's own data stay, nothing of the other tenant comes back."""
    with proxy.connect(f"app.{tenant}", "app-secret") as conn:
        path = conn.execute("SHOW search_path").fetchone()
        conn.execute("SET application_name = 'before-discard'")
        conn.execute("discard all")
        assert conn.execute("SHOW application_name").fetchone() != ("before-discard",)
        assert conn.execute("SHOW search_path").fetchone() == path
        secrets = {row[0] for row in conn.execute("SELECT secret FROM items")}
    assert canary(tenant) in secrets and canary(other) not in secrets


# -- 7: what the pool leaves on a server connection between tenants -------------------------------

@pytest.fixture(scope="module")
def pool1(pg, sample, tmp_path_factory):
    """A proxy with one server connection per database: every tenant of `shared` uses it."""
    running = start_proxy(pg, sample, workdir=tmp_path_factory.mktemp("pool1"), pool_size=1)
    yield running
    running.stop()


PROBE = ("SELECT pg_backend_pid(), current_user, current_setting('search_path'), "
         "current_setting('application_name'), current_setting('statement_timeout'), "
         "current_setting('default_transaction_read_only'), current_setting('TimeZone'), "
         "coalesce(current_setting('app.tenant_id', true), ''), "
         "(SELECT string_agg(name, ',' ORDER BY id) FROM items)")


@pytest.mark.parametrize("dirty", [
    ["SET application_name = 'globex-app'", "SET statement_timeout = '3s'"],
    ["SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "SET TimeZone = 'Asia/Tokyo'"],
    ["RESET ALL"],
    ["BEGIN", "SET LOCAL statement_timeout = '7s'", "COMMIT"],
    ["SELECT set_config('application_name', 'globex-app', false)"],
    ["BEGIN", "SELECT 1", "ROLLBACK"],
], ids=lambda d: " / ".join(d))
def test_t07_server_connection_is_reset_between_tenants(pool1, pg, dirty) -> None:
    with pool1.connect(GLOBEX.user, APP) as globex, pool1.connect(HOOLI.user, APP) as hooli:
        clean = hooli.execute(PROBE).fetchone()
        for sql in dirty:
            globex.execute(sql)
        globex_state = globex.execute(PROBE).fetchone()
        assert globex_state[1:3] == ("globex", "globex, common")
        hooli_state = hooli.execute(PROBE).fetchone()
        assert hooli_state[0] == globex_state[0], "the test needs both on one server connection"
        # hooli gets its own role, search_path and the server defaults, nothing of globex
        assert hooli_state[1:] == clean[1:]
        assert hooli_state[1:3] == ("hooli", "hooli, common")
        assert "globex" not in " ".join(map(str, hooli_state[1:]))
        # and globex gets its own session back
        assert globex.execute(PROBE).fetchone()[1:] == globex_state[1:]


# -- 8: persistent settings through DDL -----------------------------------------------------------

SETTINGS_SQL = ("SELECT coalesce(string_agg(array_to_string(setconfig, ','), ';' "
                "ORDER BY setdatabase, setrole), '') FROM pg_db_role_setting")
PROCONFIG_SQL = "SELECT count(*) FROM pg_proc WHERE proconfig IS NOT NULL"


@pytest.mark.parametrize("attack", [
    A("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.tenant_id = 'hooli' "
      "AS 'SELECT 1'"),
    A("create or replace function globex.f() returns void language plpgsql "
      "set search_path = hooli as $$begin end$$"),
    A("ALTER FUNCTION pg_catalog.now() SET search_path = hooli"),
    A("ALTER ROLE globex SET search_path = hooli"),
    A("ALTER ROLE CURRENT_USER SET role = 'hooli'"),
    A("ALTER USER tenantgate IN DATABASE shared SET search_path TO hooli"),
    A("ALTER ROLE ALL SET app.tenant_id = 'hooli'"),
    A("ALTER DATABASE shared SET search_path = hooli"),
    A('alter database "shared" reset all'),
    A("ALTER SYSTEM SET search_path = 'hooli'"),
    A("ALTER ROLE globex SET search_path = hooli", "asyncpg"),
    A("alter role current_user set search_path to hooli", "psql"),
    A("ALTER DATABASE acme SET search_path = umbrella", side="acme", id="acme:ALTER DATABASE"),
])
def test_t08_persistent_settings_ddl(proxy, pg, attack) -> None:
    before = (backend_query(pg, "postgres", SETTINGS_SQL),
              backend_query(pg, "shared", PROCONFIG_SQL))
    expect_refused(proxy, pg, side_of(attack), attack, "42501")
    assert (backend_query(pg, "postgres", SETTINGS_SQL),
            backend_query(pg, "shared", PROCONFIG_SQL)) == before


# -- 9 and 10: startup parameters and the options string ------------------------------------------

def expect_startup_refused(proxy, pg, user: str, params: dict[str, str],
                           codes=STARTUP_REFUSAL, password: str = APP) -> dict[str, str]:
    before = table_checksum(pg, "shared", "hooli.items")
    try:
        session = raw_session(proxy, user, password, params=params)
    except LoginFailed as exc:
        fields = exc.fields
    else:
        rows = session.query(STATE_SQL)
        session.close()
        pytest.fail(f"NOT REFUSED: startup {user} {params!r} logged in: {rows}")
    assert fields.get("S") == "FATAL", fields
    assert fields.get("C") in codes, fields
    assert fields.get("M", "").startswith("tenantgate:"), fields
    assert_no_victim_data(GLOBEX, repr(fields))
    assert table_checksum(pg, "shared", "hooli.items") == before
    return fields


@pytest.mark.parametrize("user,params", [
    ("app.globex", {"search_path": "hooli"}),
    ("app.globex", {"role": "hooli"}),
    ("app.globex", {"app.tenant_id": "hooli"}),
    ("app.globex", {"session_authorization": "postgres"}),
    ("app.globex", {"default_transaction_read_only": "on", "search_path": "hooli,common"}),
    ("app.globex", {"options": "-csearch_path=hooli"}),
    ("app.globex", {"options": "-c role=hooli"}),
    ("app", {"options": "-c tenant=globex -c role=hooli"}),
    ("app", {"options": "-c role=hooli -c tenant=globex"}),
    ("app", {"options": "--app.tenant_id=hooli -c tenant=globex"}),
    ("app", {"options": "-c tenant=globex --search-path=hooli"}),
    ("app.acme", {"options": "-c search_path=umbrella"}),
], ids=lambda v: v if isinstance(v, str) else repr(v))
def test_t09_startup_parameters_never_reach_the_server(proxy, pg, user, params) -> None:
    expect_startup_refused(proxy, pg, user, params)


@pytest.mark.parametrize("options", [
    "-c tenant=globex\\ -c\\ search_path=hooli",
    "-c tenant=globex\\\\ -c search_path=hooli",
    "-c\\ tenant=globex -c search_path=hooli",
    "-c tenant=hooli\\ -c\\ role=globex",
    "-c tenant=globex -c\\ search_path=hooli",
])
def test_t10_options_escaping_cannot_smuggle_settings(proxy, pg, options) -> None:
    expect_startup_refused(proxy, pg, "app", {"options": options})


# -- 11: DO blocks --------------------------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("do language plpgsql $body$ begin execute 'select 1 from hooli.items'; end $body$"),
    A("DO 'BEGIN PERFORM 1; END'"),
    A("DO LANGUAGE plpgsql 'BEGIN EXECUTE format(''SET ROLE %I'', ''hooli''); END'"),
    A("DO $x$ DECLARE r record; BEGIN FOR r IN SELECT * FROM items LOOP "
      "RAISE NOTICE '%', r; END LOOP; END $x$"),
    A("SELECT 1; DO $$ BEGIN DELETE FROM items; END $$"),
    A("DO $$ BEGIN PERFORM pg_catalog.set_config('role', 'hooli', false); END $$",
      "extended"),
    A("DO $$ BEGIN UPDATE items SET secret = 'pwned'; END $$", "asyncpg"),
    A("do $$begin delete from items; end$$", "psql"),
    A("DO $$BEGIN DELETE FROM items; END$$", side="acme", id="acme:DO delete"),
])
def test_t11_do_block(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501")


# -- 12 and 13: settings that change how the server lexes SQL -------------------------------------

SCS_PAYLOAD = "SELECT 'x\\' , ' ; DELETE FROM items; --'"
SCS_ROW = ("x\\", " ; DELETE FROM items; --")
GBK_PAYLOAD = "SELECT E'中\\' ; DELETE FROM items; --'"
GBK_ROW = ("中' ; DELETE FROM items; --",)


def assert_payload_is_one_harmless_select(proxy, side, payload: str, row: tuple) -> None:
    """The smuggling payload is one SELECT returning `row`; nothing is deleted (the
    transaction is rolled back, so a successful smuggle cannot damage other tests)."""
    with proxy.connect(side.user, APP) as conn:
        conn.execute("BEGIN")
        assert conn.execute(payload).fetchone() == row
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (3,)
        conn.execute("ROLLBACK")
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
        assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)


@pytest.mark.parametrize("attack", [
    A("SET standard_conforming_strings = off"),
    A("set STANDARD_CONFORMING_STRINGS to false"),
    A('SET SESSION "standard_conforming_strings" = 0'),
    A("SET LOCAL standard_conforming_strings TO 'off'"),
    A("RESET standard_conforming_strings"),
    A("SET standard_conforming_strings TO DEFAULT"),
    A("SELECT set_config('standard_conforming_strings', 'off', false)"),
    A("SELECT set_config('Standard_Conforming_Strings', 'off', true)"),
    A("SELECT count(*) FROM items "
      "WHERE set_config('standard_conforming_strings', 'off', false) = 'off'"),
    A("UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'"),
    A("update pg_catalog.pg_settings set setting = 'off' "
      "where name = 'standard_conforming_strings'"),
    A("SET backslash_quote = on"),
    A("set backslash_quote to 'safe_encoding'"),
    A("SET standard_conforming_strings = off; " + SCS_PAYLOAD),
    A("SET standard_conforming_strings = off", "extended"),
    A("SELECT set_config($1, $2, false)", "asyncpg", ("standard_conforming_strings", "off")),
    A("SET standard_conforming_strings = off", "asyncpg"),
    A("set standard_conforming_strings = off", "psql"),
    A("SET standard_conforming_strings = off", side="acme", id="acme:SET scs off"),
])
def test_t12_standard_conforming_strings(proxy, pg, attack) -> None:
    side = side_of(attack)
    lexing = {"standard_conforming_strings": "on", "backslash_quote": "safe_encoding"}
    expect_refused(proxy, pg, side, attack, "42501",
                   settings=lexing if attack.via != "psql" else None)
    assert_payload_is_one_harmless_select(proxy, side, SCS_PAYLOAD, SCS_ROW)


def test_t12_standard_conforming_strings_at_startup(proxy, pg) -> None:
    expect_startup_refused(proxy, pg, "app.globex", {"standard_conforming_strings": "off"})
    expect_startup_refused(proxy, pg, "app", {"options": "-c tenant=globex "
                                                         "-c standard_conforming_strings=off"})
    assert_payload_is_one_harmless_select(proxy, GLOBEX, SCS_PAYLOAD, SCS_ROW)


@pytest.mark.parametrize("attack", [
    A("SET client_encoding = 'GBK'"),
    A("SET NAMES 'SJIS'"),
    A('SET CLIENT_ENCODING TO "BIG5"'),
    A("set client_encoding = 'latin1'"),
    A("SET SESSION client_encoding = 'win1252'"),
    A("SET LOCAL client_encoding TO 'EUC_CN'"),
    A("SET NAMES 'gb18030'"),
    A("SELECT set_config('client_encoding', 'GBK', false)"),
    A("SELECT set_config('CLIENT_ENCODING', 'sjis', true)"),
    A("SELECT * FROM items WHERE set_config('client_encoding', 'GBK', false) IS NOT NULL"),
    A("UPDATE pg_settings SET setting = 'GBK' WHERE name = 'client_encoding'"),
    A("SET client_encoding = 'GBK'; " + GBK_PAYLOAD),
    A("SET NAMES 'SJIS'", "extended"),
    A("SELECT set_config(%s, %s, false)", "client", ("client_encoding", "GBK")),
    A("SELECT set_config($1, $2, false)", "asyncpg", ("client_encoding", "BIG5")),
    A("set names 'sjis'", "psql"),
    A("SET client_encoding = 'GBK'", side="acme", id="acme:SET client_encoding GBK"),
])
def test_t13_client_encoding(proxy, pg, attack) -> None:
    side = side_of(attack)
    expect_refused(proxy, pg, side, attack, "42501",
                   settings={"client_encoding": "UTF8"} if attack.via != "psql" else None)
    assert_payload_is_one_harmless_select(proxy, side, GBK_PAYLOAD, GBK_ROW)


INVALID_UTF8 = [
    # the GBK bytes of 中 then a backslash: invalid UTF-8 that GBK would read as one character
    pytest.param(b"SELECT '\xd6\xd0\\' ; DELETE FROM items; --'", id="gbk"),
    pytest.param(b"SELECT E'\xd6\xd0\\' ; DELETE FROM items; --'", id="gbk-estring"),
    pytest.param(b"SELECT '\x81\\' ; DELETE FROM items; --'", id="sjis"),
    pytest.param(b"SELECT 1; DELETE FROM items WHERE name <> '\xff'", id="latin1"),
]


def _count_is_3(reply) -> bool:
    return ("D", b"\x00\x01\x00\x00\x00\x013") in reply


@pytest.mark.parametrize("payload", INVALID_UTF8)
def test_t13_invalid_utf8_query_is_refused_and_never_forwarded(proxy, pg, payload) -> None:
    """README: `encoding` 22021 is a refusal: the connection stays usable."""
    before = table_checksum(pg, "shared", "globex.items")
    session = raw_session(proxy, GLOBEX.user)
    try:
        reply = session.query(payload + b"\0")
        fields = errors_in(reply)[0] if errors_in(reply) else {}
        assert fields.get("C") == "22021", reply
        assert fields.get("M", "").startswith("tenantgate:"), fields
        assert kinds(reply) == ["E", "Z"] and reply[-1][1] == b"I", \
            f"after the 22021 refusal the proxy did not answer ReadyForQuery: {reply}"
        assert _count_is_3(session.query("SELECT count(*) FROM items"))
    finally:
        session.close()
    assert table_checksum(pg, "shared", "globex.items") == before


@pytest.mark.parametrize("payload", INVALID_UTF8[:2])
def test_t13_invalid_utf8_in_a_transaction_aborts_it(proxy, pg, payload) -> None:
    before = table_checksum(pg, "shared", "globex.items")
    session = raw_session(proxy, GLOBEX.user)
    try:
        assert kinds(session.query("BEGIN")) == ["C", "Z"]
        reply = session.query(payload + b"\0")
        assert errors_in(reply) and errors_in(reply)[0].get("C") == "22021", reply
        assert reply[-1] == ("Z", b"E"), f"transaction not aborted after 22021: {reply}"
        assert errors_in(session.query("SELECT count(*) FROM items"))[0]["C"] == "25P02"
        session.query("ROLLBACK")
        assert _count_is_3(session.query("SELECT count(*) FROM items"))
    finally:
        session.close()
    assert table_checksum(pg, "shared", "globex.items") == before


@pytest.mark.parametrize("payload", INVALID_UTF8[:2])
def test_t13_invalid_utf8_in_parse_is_refused(proxy, pg, payload) -> None:
    before = table_checksum(pg, "shared", "globex.items")
    session = raw_session(proxy, GLOBEX.user)
    try:
        session.sock.sendall(message(b"P", b"\0" + payload + b"\0\0\0")
                             + message(b"B", b"\0\0\0\0\0\0\0\0")
                             + message(b"E", b"\0\0\0\0\0") + message(b"S", b""))
        reply = session.until_ready()
        assert errors_in(reply) and errors_in(reply)[0].get("C") == "22021", reply
        assert "D" not in kinds(reply) and "C" not in kinds(reply), reply
        assert reply[-1] == ("Z", b"I"), f"no ReadyForQuery after the 22021 refusal: {reply}"
        assert _count_is_3(session.query("SELECT count(*) FROM items"))
    finally:
        session.close()
    assert table_checksum(pg, "shared", "globex.items") == before


# -- 14: what pglast cannot parse is never forwarded ----------------------------------------------

@pytest.mark.parametrize("attack", [
    A("SELEC * FROM items"),
    A("SELECT * FRM items"),
    A("SELECT 'unterminated"),
    A("SELECT (1"),
    A("SELECT 1 /* unterminated comment"),
    A("SELECT $q$never closed"),
    A("DELETE FROM items; SELEC 1"),
    A("UPDATE items SET secret = 'pwned'; SELECT FROM WHERE"),
    A("INSERT INTO items (name) VALUES ('x'); SET ROLE"),
    A("SELEC 1", "extended"),
    A("DELETE FROM items WHERE id = %s; SELEC", "prepared", (1,)),
    A("SELEC $1", "asyncpg", (1,)),
    A("delete from items; selec", "psql"),
    A("DELETE FROM items; SELEC 1", side="acme", id="acme:delete then garbage"),
])
def test_t14_parse_error_is_refused_by_the_proxy(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42601")


# -- 15: lexical tricks ---------------------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("SET/**/app.tenant_id/**/=/**/'hooli'", code="42501"),
    A("/* /* nested */ SELECT 1; */ SET ROLE hooli", code="42501"),
    A("SELECT 1 -- ; SET ROLE globex\n; SET ROLE hooli", code="42501"),
    A('SET "ROLE" TO \'hooli\'', code="42501"),
    A('SET "Search_Path" = hooli', code="42501"),
    A("SELECT set_config(E'\\x72ole', 'hooli', false)", code="42501"),
    A("SELECT set_config(U&'r\\+00006Fle', 'hooli', false)", code="42501"),
    A("SELECT $tag$ $$ ; $tag$, secret FROM hooli.items", code="42P01"),
    A("SELECT E'\\'' AS q, secret FROM \"hooli\".\"items\"", code="42P01"),
    A("SELECT secret FROM U&\"hoo\\006Ci\".items", code="42P01"),
    A("SELECT secret FROM U&\"!0068ooli\" UESCAPE '!' . items", code="42P01"),
    A("SELECT secret FROM HOOLI . ITEMS", code="42P01"),
    A("SELECT secret FROM hooli -- comment\n . /* c */ items", code="42P01"),
    A("SELECT secret FROM hooli.items" + "x" * 70, code="42P01"),
    A("SELECT 'it''s', secret FROM hooli.items WHERE name <> $$'$$", code="42P01"),
    A("SELECT secret FROM U&\"hoo\\006Ci\".items WHERE id = %s", "extended", (3,), code="42P01"),
    A("SELECT secret FROM \"hooli\" . items WHERE id = $1", "asyncpg", (3,), code="42P01"),
    A("select secret from U&\"\\0068ooli\".items", "psql", code="42P01"),
])
def test_t15_lexical_tricks(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, GLOBEX, attack, attack.extra["code"])


# -- 65: no in-band control plane -----------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("SET tenantgate.tenant = 'hooli'"),
    A("set TENANTGATE.bypass to on"),
    A("SET LOCAL tenantgate.tenant TO hooli"),
    A('SET "tenantgate"."strategy" = \'bypass\''),
    A("SET tenantgate.tenant = DEFAULT"),
    A("RESET tenantgate.tenant"),
    A("SELECT set_config('tenantgate.tenant', 'hooli', false)"),
    A("SELECT set_config('tenantgate.strategy', 'bypass', true) FROM items"),
    A("SELECT 1; SET tenantgate.tenant = 'hooli'; SELECT * FROM items"),
    A("SET tenantgate.tenant = 'hooli'", "extended"),
    A("SELECT set_config($1, $2, false)", "asyncpg", ("tenantgate.tenant", "hooli")),
    A("set tenantgate.admin = on", "psql"),
    A("SET tenantgate.tenant = 'umbrella'", side="acme", id="acme:SET tenantgate.tenant"),
])
def test_t65_in_band_control_settings(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501")


def test_t65_bypass_login_name_cannot_be_borrowed_by_a_tenant(proxy, pg) -> None:
    """`migrator` bypasses isolation; naming a tenant with it must not give a bypass
    session on that tenant (nor a tenant session with the bypass login)."""
    expect_startup_refused(proxy, pg, "migrator.hooli", {}, {"28000"},
                           password=SampleInfo().password("migrator"))
    expect_startup_refused(proxy, pg, "migrator", {"options": "-c tenant=hooli"}, {"28000"},
                           password=SampleInfo().password("migrator"))
