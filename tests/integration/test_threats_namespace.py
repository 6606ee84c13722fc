"""THREATS.md 3.2 (ids 16-27) and 31, 32, 39-42, 77, 78: reaching objects outside the
tenant's schema or database, through the running proxy. See test_threats.py for what each
check asserts.

`planted` puts real targets on the server for the duration of the module (statistics on
hooli.items, a large object holding hooli's canary, a view and SECURITY DEFINER routines in
the shared schema that read or write hooli.items), so an attack the proxy let through would
actually return or change the victim's data.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.helpers import backend_query
from tests.integration.test_threats import (ACME, APP, GLOBEX, A, expect_refused,
                                            victim_markers)

RELATION_REACH = "42P01"
# README: `sequence-function` / `reg-cast` 42501 for names "not a literal the tenant may
# reach", `relation-reach` 42P01 for "a relation outside the own and shared schemas" and
# "other schemas answer 42P01": a relation named in a string may get either.
NAMED_RELATION = {"42P01", "42501"}


def side_of(attack, default=GLOBEX):
    return {"acme": ACME}.get(attack.extra.get("side"), default)


@pytest.fixture(scope="module")
def planted(pg):
    """Targets on the server that an attack let through would really reach."""
    backend_query(pg, "shared", "ANALYZE hooli.items")
    lo = backend_query(pg, "shared",
                       "SELECT lo_from_bytea(0, convert_to('CANARY-hooli', 'UTF8'))")[0][0]
    backend_query(pg, "shared", f"GRANT SELECT, UPDATE ON LARGE OBJECT {lo} TO globex, hooli")
    for sql in [
        # THREATS 31: a view owned by the table owner runs with the owner's rights
        "CREATE VIEW common.tg_hooli_view AS SELECT id, name, secret FROM hooli.items",
        "GRANT SELECT ON common.tg_hooli_view TO globex, hooli",
        # THREATS 32: SECURITY DEFINER routines over tenant data
        "CREATE FUNCTION common.tg_hooli_report() RETURNS SETOF text LANGUAGE sql "
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp "
        "AS 'SELECT secret FROM hooli.items'",
        "CREATE PROCEDURE common.tg_hooli_plant() LANGUAGE sql SECURITY DEFINER "
        "SET search_path = pg_catalog, pg_temp "
        "AS $$INSERT INTO hooli.items (name) VALUES ('tg-planted')$$",
    ]:
        backend_query(pg, "shared", sql)
    yield {"lo": lo}
    backend_query(pg, "shared", f"SELECT lo_unlink({lo})")
    for sql in ["DROP VIEW IF EXISTS common.tg_hooli_view",
                "DROP FUNCTION IF EXISTS common.tg_hooli_report()",
                "DROP PROCEDURE IF EXISTS common.tg_hooli_plant()",
                "DELETE FROM hooli.items WHERE name = 'tg-planted'"]:
        backend_query(pg, "shared", sql)


# -- 16: another tenant's schema, wherever it is named -------------------------------------------

@pytest.mark.parametrize("attack", [
    A("DELETE FROM items USING hooli.items h WHERE h.id = items.id"),
    A("UPDATE items SET secret = h.secret FROM hooli.items h WHERE h.id = items.id"),
    A("MERGE INTO items t USING hooli.items h ON t.id = h.id "
      "WHEN MATCHED THEN UPDATE SET secret = h.secret"),
    A("MERGE INTO hooli.items t USING items g ON t.id = g.id WHEN MATCHED THEN DELETE"),
    A("SELECT name FROM items ORDER BY (SELECT max(secret) FROM hooli.items)"),
    A("SELECT name FROM items WHERE EXISTS (SELECT 1 FROM hooli.items h "
      "WHERE h.secret LIKE 'CANARY%')"),
    A("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 2) "
      "SELECT * FROM r, hooli.items"),
    A("TABLE hooli.items"),
    A("SELECT * FROM ONLY hooli.items"),
    A("SELECT name FROM items INTERSECT SELECT name FROM hooli.items"),
    A("SELECT name FROM items EXCEPT ALL SELECT secret FROM hooli.items"),
    A("VALUES ((SELECT secret FROM hooli.items WHERE id = 3))"),
    A("SELECT length((SELECT string_agg(secret, ',') FROM hooli.items))"),
    A("SELECT count(*) FROM items GROUP BY name "
      "HAVING count(*) > (SELECT count(*) FROM hooli.items)"),
    A("SELECT row_number() OVER (ORDER BY (SELECT 1 FROM hooli.items LIMIT 1)) FROM items"),
    A("INSERT INTO items (name) VALUES ('tg-x') ON CONFLICT (id) "
      "DO UPDATE SET secret = (SELECT secret FROM hooli.items LIMIT 1)"),
    A("INSERT INTO items (name) VALUES ('tg-x') "
      "RETURNING (SELECT secret FROM hooli.items LIMIT 1)"),
    A("SELECT row_to_json(h) FROM hooli.items AS h"),
    A("SELECT * FROM hooli.items FOR UPDATE NOWAIT"),
    A("SELECT * FROM items WHERE id = ANY (ARRAY(SELECT id FROM hooli.items))"),
    A("SELECT * FROM items JOIN LATERAL (SELECT * FROM hooli.items h "
      "WHERE h.id = items.id) x ON true"),
    A("SELECT * FROM items NATURAL FULL JOIN hooli.items"),
    A("SELECT * FROM items WHERE name IN "
      "(WITH c AS (SELECT name FROM hooli.items) SELECT * FROM c)"),
    A("WITH d AS (DELETE FROM hooli.items RETURNING *) SELECT * FROM d"),
    A("WITH u AS (UPDATE hooli.items SET secret = 'x' RETURNING secret) SELECT 1"),
    A("SELECT * FROM generate_series(1, 3) g "
      "WHERE g IN (SELECT id FROM hooli.items)"),
    A("SELECT * FROM items TABLESAMPLE bernoulli (100), hooli.items"),
    A("SELECT json_agg(h.*) FILTER (WHERE h.id > 0) FROM hooli.items h"),
    A("DECLARE c CURSOR FOR SELECT * FROM hooli.items"),
    A("COPY hooli.items TO STDOUT"),
    A("COPY (SELECT * FROM hooli.items) TO STDOUT WITH (FORMAT csv)"),
    A("copy hooli.items (name) from stdin"),
    A("SELECT secret FROM hooli.items WHERE id = %s", "extended", (3,)),
    A("SELECT secret FROM hooli.items WHERE id = %s", "prepared", (3,)),
    A("SELECT secret FROM hooli.items WHERE name <> %s", "client", ("x",)),
    A("SELECT secret FROM hooli.items WHERE id = $1", "asyncpg", (3,)),
    A("UPDATE hooli.items SET secret = $1 WHERE id = $2", "asyncpg", ("pwned", 3)),
    A("select secret from Hooli.Items", "psql"),
    A("SELECT 1; DELETE FROM hooli.items", "psql"),
])
def test_t16_other_tenant_relation_anywhere(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, GLOBEX, attack, RELATION_REACH)


# -- 17: search_path ------------------------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("SET LOCAL search_path = hooli"),
    A('set SEARCH_PATH to "hooli"'),
    A("SET search_path = globex, hooli"),
    A("SET search_path TO globex, common"),
    A("SET search_path = '$user', public"),
    A("SET search_path = pg_temp, globex"),
    A("SET SCHEMA 'hooli'"),
    A("SET search_path FROM CURRENT"),
    A("SELECT set_config('search_path', 'hooli', true) FROM items"),
    A("SELECT set_config(U&'search\\005Fpath', 'hooli', false)"),
    A("SELECT set_config('SEARCH_PATH', 'hooli, common', false)"),
    A("UPDATE pg_settings SET setting = 'hooli' WHERE name = 'search_path'"),
    A("SET search_path = hooli; SELECT * FROM items"),
    A("SET search_path = hooli", "extended"),
    A("SELECT set_config(%s, %s, false)", "prepared", ("search_path", "hooli")),
    A("SELECT set_config($1, $2, false)", "asyncpg", ("search_path", "hooli")),
    A("SET search_path = pg_catalog, hooli", "psql"),
])
def test_t17_search_path_change(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, GLOBEX, attack, "42501")


# -- 18: objects named in strings -----------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("SELECT 'hooli.items'::regclass"),
    A("SELECT CAST('\"hooli\".\"items\"' AS pg_catalog.regclass)::oid"),
    A("SELECT regclass 'hooli.items'"),
    A("SELECT to_regclass('HOOLI.items')"),
    A("SELECT 'hooli.items_id_seq'::regclass::oid"),
    A("SELECT nextval('hooli.items_id_seq')"),
    A("SELECT currval('\"hooli\".items_id_seq')"),
    A("SELECT setval('hooli.items_id_seq', 1000, false)"),
    A("SELECT pg_get_serial_sequence('hooli.items', 'id')"),
    A("SELECT format_type(atttypid, NULL) FROM pg_attribute "
      "WHERE attrelid = 'hooli.items'::regclass"),
    A("SELECT * FROM items WHERE tableoid = 'hooli.items'::regclass"),
    A("SELECT to_regclass(%s)", "client", ("hooli.items",)),
    A("SELECT 'hooli.items'::regclass", "extended"),
    A("SELECT nextval('hooli.items_id_seq'::regclass)", "asyncpg"),
    A("select currval('hooli.items_id_seq')", "psql"),
])
def test_t18_relation_named_in_a_string(proxy, pg, attack, planted) -> None:
    expect_refused(proxy, pg, GLOBEX, attack, NAMED_RELATION,
                   extra=[("shared", "hooli.items_id_seq")])


@pytest.mark.parametrize("attack", [
    A("SELECT nextval(('hooli' || '.items_id_seq')::regclass)"),
    A("SELECT nextval(concat('hooli.', 'items_id_seq'))"),
    A("SELECT (SELECT 'hooli.items')::regclass"),
    A("SELECT 'hooli.items'::text::regclass"),
    A("SELECT pg_relation_size('hooli.items')"),
    A("SELECT pg_table_size('hooli.items'::regclass)"),
    A("SELECT has_table_privilege('hooli.items', 'SELECT')"),
    A("SELECT pg_get_viewdef('hooli.items')"),
    A("SELECT obj_description('hooli.items'::regclass, 'pg_class')"),
    A("SELECT nextval(%s)", "extended", ("hooli.items_id_seq",)),
    A("SELECT setval(%s, 1)", "prepared", ("hooli.items_id_seq",)),
    A("SELECT nextval($1::regclass)", "asyncpg", ("hooli.items_id_seq",)),
    A("SELECT currval($1)", "asyncpg", ("hooli.items_id_seq",)),
])
def test_t18_computed_names_and_name_taking_functions(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, GLOBEX, attack, "42501",
                   extra=[("shared", "hooli.items_id_seq")])


@pytest.mark.parametrize("attack", [
    A("SELECT 'hooli'::regnamespace"),
    A("SELECT to_regnamespace('hooli')"),
    A("SELECT 'hooli.items'::regtype"),
    A("SELECT (NULL::hooli.items).secret"),
    A("SELECT 'hooli.tg_fn'::regproc"),
    A("SELECT to_regprocedure('hooli.tg_fn(int)')"),
    A("SELECT name COLLATE hooli.\"C\" FROM items"),
])
def test_t18_other_schema_object_names_answer_like_relations(proxy, pg, attack) -> None:
    """README: "other schemas answer 42P01 (the same text whether they exist or not)";
    reg* lookups of names the tenant may not reach: `reg-cast` 42501."""
    expect_refused(proxy, pg, GLOBEX, attack, {"42P01", "42501"})


ORACLE_FORMS = [
    "SELECT * FROM {s}.items",
    "SELECT '{s}.items'::regclass",
    "SELECT nextval('{s}.items_id_seq')",
    "SELECT '{s}'::regnamespace",
    "SELECT (NULL::{s}.items).id",
    "SELECT {s}.tg_fn()",
    "SELECT to_tsvector('{s}.english', 'x')",
    "SELECT plainto_tsquery('{s}.simple', 'x')",
]


@pytest.mark.parametrize("form", ORACLE_FORMS)
def test_t18_no_existence_oracle(proxy, pg, form) -> None:
    """Naming hooli's schema answers exactly like naming a schema that does not exist."""
    answers = []
    with proxy.connect(GLOBEX.user, APP) as conn:
        for schema in ("hooli", "nosuchschema"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(form.format(s=schema))
            text = " ".join(filter(None, [info.value.diag.message_primary,
                                          info.value.diag.message_detail,
                                          info.value.diag.message_hint]))
            answers.append((info.value.sqlstate, text.replace(schema, "<schema>")))
            assert not any(m in text for m in victim_markers(GLOBEX)), text
    assert answers[0] == answers[1], f"existence oracle: {answers}"


# -- 19: functions that run SQL text --------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("SELECT query_to_xml('select * from hooli.items', true, false, '')"),
    A("SELECT pg_catalog.query_to_xmlschema('SELECT 1', false, false, '')"),
    A("SELECT \"query_to_xml_and_xmlschema\"('select secret from hooli.items', "
      "true, true, '')"),
    A("SELECT table_to_xml('hooli.items', true, false, '')"),
    A("SELECT table_to_xmlschema('items', true, false, '')"),
    A("SELECT schema_to_xml('hooli', true, false, '')"),
    A("SELECT schema_to_xml_and_xmlschema('hooli', true, true, '')"),
    A("SELECT database_to_xml(true, false, '')"),
    A("SELECT database_to_xmlschema(true, false, '')"),
    A("SELECT cursor_to_xml('c', 10, false, false, '')"),
    A("SELECT * FROM ts_stat('SELECT to_tsvector(secret) FROM hooli.items')"),
    A("WITH x AS (SELECT xmlagg(query_to_xml('select 1', true, false, '')) AS v) "
      "SELECT * FROM x"),
    A("SELECT name FROM items "
      "WHERE name = (SELECT QUERY_TO_XML('select 1', true, false, '')::text)"),
    A("SELECT U&\"\\0071uery_to_xml\"('select 1', true, false, '')"),
    A("SELECT dblink('', 'select secret from hooli.items')"),
    A("SELECT query_to_xml(%s, true, false, '')", "extended",
      ("select secret from hooli.items",)),
    A("SELECT table_to_xml($1::regclass, true, false, '')", "asyncpg", ("hooli.items",)),
    A("select * from ts_stat('select to_tsvector(secret) from hooli.items')", "psql"),
    A("SELECT query_to_xml('select secret from items', true, false, '')", side="acme",
      id="acme:query_to_xml"),
])
def test_t19_functions_that_run_sql(proxy, pg, attack, planted) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501")


# -- 20: temporary objects that shadow tenant tables ----------------------------------------------

TEMP_RELATIONS = "SELECT count(*) FROM pg_class WHERE relpersistence = 't'"


@pytest.mark.parametrize("attack", [
    A("CREATE TEMP TABLE items (id int, name text, secret text)"),
    A("create temporary table items as select * from items"),
    A("CREATE LOCAL TEMPORARY VIEW items AS SELECT 1 AS id"),
    A("CREATE TABLE pg_temp.items (id int)"),
    A("CREATE TEMP SEQUENCE items_id_seq"),
    A("CREATE TEMP TABLE x ON COMMIT PRESERVE ROWS AS SELECT 1"),
    A("CREATE UNLOGGED TABLE items (id int)"),
    A("SELECT * INTO TEMP items FROM common.countries"),
    A("SELECT * FROM pg_temp.items"),
    A("INSERT INTO pg_temp.items VALUES (1)"),
    A("SELECT * FROM pg_temp_3.items"),
    A('SELECT * FROM "pg_temp".items'),
    A("CREATE TEMP TABLE items (id int)", "extended"),
    A("CREATE TEMP TABLE items (id int)", "asyncpg"),
    A("create temp table items (id int)", "psql"),
    A("CREATE TEMP TABLE items (id int)", side="acme", id="acme:CREATE TEMP TABLE"),
])
def test_t20_temporary_objects(proxy, pg, attack) -> None:
    side = side_of(attack)
    expect_refused(proxy, pg, side, attack, "42501")
    assert backend_query(pg, side.db, TEMP_RELATIONS) == [(0,)]


# -- 21: user-defined functions -------------------------------------------------------------------

USER_ROUTINES = ("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                 "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')")


@pytest.mark.parametrize("attack", [
    A("CREATE FUNCTION pg_temp.leak(text) RETURNS boolean LANGUAGE plpgsql COST 0.0001 "
      "AS $$BEGIN RAISE NOTICE '%', $1; RETURN true; END$$"),
    A("create or replace function leak(t text) returns bool language sql immutable "
      "as 'select true'"),
    A("CREATE FUNCTION globex.leak() RETURNS SETOF hooli.items LANGUAGE sql "
      "AS 'SELECT * FROM hooli.items'"),
    A("CREATE PROCEDURE p() LANGUAGE sql AS $$DELETE FROM items$$"),
    A("CREATE AGGREGATE agg(text) (sfunc = textcat, stype = text)"),
    A("CREATE OPERATOR === (leftarg = text, rightarg = text, procedure = texteq)"),
    A("CREATE CAST (text AS int) WITH INOUT"),
    A("CREATE TRIGGER t BEFORE INSERT ON items FOR EACH ROW "
      "EXECUTE FUNCTION suppress_redundant_updates_trigger()"),
    A("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "extended"),
    A("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "asyncpg"),
    A("create function f() returns int language sql as 'select 1'", "psql"),
    A("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", side="acme",
      id="acme:CREATE FUNCTION"),
])
def test_t21_user_defined_functions(proxy, pg, attack, planted) -> None:
    side = side_of(attack)
    before = backend_query(pg, side.db, USER_ROUTINES)
    expect_refused(proxy, pg, side, attack, "42501")
    assert backend_query(pg, side.db, USER_ROUTINES) == before


# -- 22: catalog enumeration ----------------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("SELECT nspname FROM pg_catalog.pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner"),
    A('SELECT rolname FROM "pg_roles"'),
    A("TABLE pg_catalog.pg_authid"),
    A("SELECT * FROM PG_DATABASE"),
    A("SELECT table_schema, table_name FROM information_schema.tables"),
    A('select * from INFORMATION_SCHEMA."columns"'),
    A("SELECT schemaname FROM pg_tables"),
    A("SELECT * FROM pg_policies"),
    A("SELECT prosrc FROM pg_proc"),
    A("SELECT obj_description(c.oid) FROM pg_class c"),
    A("SELECT col_description('items'::regclass, 1)"),
    A("SELECT n_live_tup FROM pg_stat_user_tables"),
    A("SELECT definition FROM pg_views"),
    A("SELECT * FROM pg_description"),
    A("WITH s AS (SELECT * FROM pg_settings) SELECT count(*) FROM s"),
    A("SELECT * FROM pg_file_settings"),
    A("SELECT * FROM pg_hba_file_rules"),
    A("SELECT pg_get_userbyid(10)"),
    A("SELECT * FROM pg_shadow"),
    A("SELECT * FROM items WHERE name IN (SELECT relname FROM pg_statio_user_tables)"),
    A("SELECT * FROM information_schema.schemata WHERE schema_name = %s", "extended",
      ("hooli",)),
    A("SELECT * FROM information_schema.schemata WHERE schema_name = $1", "asyncpg",
      ("hooli",)),
    A("select usename from pg_user", "psql"),
])
def test_t22_catalog_enumeration(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, GLOBEX, attack, "42501")


# -- 23: planner statistics -----------------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("SELECT most_common_vals, histogram_bounds FROM pg_stats WHERE schemaname = 'hooli'"),
    A("select * from pg_catalog.PG_STATS"),
    A("SELECT * FROM pg_stats_ext"),
    A("SELECT * FROM pg_stats_ext_exprs"),
    A("SELECT stavalues1 FROM pg_statistic"),
    A("SELECT * FROM pg_statistic_ext_data"),
    A("SELECT * FROM pg_statistic_ext"),
    A("SELECT name FROM items WHERE name IN "
      "(SELECT unnest(most_common_vals::text::text[]) FROM pg_stats)"),
    A("SELECT histogram_bounds FROM pg_stats WHERE tablename = %s", "extended", ("items",)),
    A("SELECT histogram_bounds FROM pg_stats WHERE tablename = $1", "asyncpg", ("items",)),
    A("select histogram_bounds from pg_stats", "psql"),
])
def test_t23_planner_statistics(proxy, pg, attack, planted) -> None:
    expect_refused(proxy, pg, GLOBEX, attack, "42501")


# -- 24: EXPLAIN ----------------------------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("explain select * from items"),
    A("EXPLAIN (ANALYZE, FORMAT JSON) DELETE FROM items"),
    A("EXPLAIN ANALYZE UPDATE items SET secret = 'pwned'"),
    A("EXPLAIN (COSTS OFF) SELECT * FROM hooli.items"),
    A("EXPLAIN VERBOSE SELECT * FROM items WHERE secret = 'x'"),
    A("SELECT 1; EXPLAIN ANALYZE DELETE FROM items"),
    A("EXPLAIN SELECT * FROM items WHERE id = %s", "extended", (1,)),
    A("EXPLAIN SELECT * FROM items WHERE id = $1", "asyncpg", (1,)),
    A("explain (analyze) insert into items (name) values ('tg-x')", "psql"),
    A("EXPLAIN ANALYZE DELETE FROM items", side="acme", id="acme:EXPLAIN ANALYZE DELETE"),
])
def test_t24_explain(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501")


# -- 25: other sessions' statements, locks, prepared state ----------------------------------------

@pytest.mark.parametrize("attack", [
    A("SELECT query FROM pg_stat_activity"),
    A("SELECT * FROM pg_catalog.pg_stat_activity WHERE usename = current_user"),
    A("SELECT * FROM pg_stat_statements"),
    A("SELECT * FROM pg_locks"),
    A("SELECT * FROM pg_prepared_statements"),
    A("SELECT * FROM pg_cursors"),
    A("SELECT * FROM pg_prepared_xacts"),
    A("SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s"),
    A("SELECT pg_blocking_pids(pg_backend_pid())"),
    A("SELECT * FROM pg_stat_get_activity(NULL)"),
    A("SELECT query FROM pg_stat_activity WHERE pid <> %s", "extended", (0,)),
    A("SELECT query FROM pg_stat_activity WHERE pid <> $1", "asyncpg", (0,)),
    A("select query from pg_stat_activity", "psql"),
    A("SELECT query FROM pg_stat_activity", side="acme", id="acme:pg_stat_activity"),
])
def test_t25_other_sessions(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501")


# -- 26: large objects ----------------------------------------------------------------------------

LARGE_OBJECTS = "SELECT count(*) FROM pg_largeobject_metadata"


@pytest.mark.parametrize("template", [
    "SELECT lo_get({lo})",
    "SELECT convert_from(lo_get({lo}), 'UTF8')",
    "SELECT loread(lo_open({lo}, 262144), 100)",
    "SELECT pg_catalog.lo_get({lo}, 0, 100)",
    "SELECT lo_from_bytea(0, '\\x41'::bytea)",
    "SELECT lo_import('/etc/passwd')",
    "SELECT lo_export({lo}, '/tmp/tg-threats-lo')",
    "SELECT lo_creat(-1)",
    "SELECT lo_put({lo}, 0, '\\x00')",
    "SELECT lo_unlink({lo})",
    "SELECT data FROM pg_largeobject",
    "SELECT oid FROM pg_catalog.pg_largeobject_metadata",
    "SELECT * FROM items WHERE name = (SELECT convert_from(lo_get({lo}), 'UTF8'))",
])
def test_t26_large_objects(proxy, pg, planted, template) -> None:
    before = backend_query(pg, "shared", LARGE_OBJECTS)
    expect_refused(proxy, pg, GLOBEX, A(template.format(lo=planted["lo"])).values[0], "42501")
    assert backend_query(pg, "shared", LARGE_OBJECTS) == before


@pytest.mark.parametrize("via", ["extended", "asyncpg"])
def test_t26_large_objects_with_parameters(proxy, pg, planted, via) -> None:
    sql = "SELECT lo_get(%s)" if via == "extended" else "SELECT lo_get($1)"
    expect_refused(proxy, pg, GLOBEX, A(sql, via, (planted["lo"],)).values[0], "42501")


# -- 27: sequences --------------------------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("SELECT last_value FROM hooli.items_id_seq", code=RELATION_REACH),
    A('SELECT * FROM "hooli".items_id_seq', code=RELATION_REACH),
    A("SELECT last_value, is_called FROM hooli.items_id_seq WHERE %s", "extended", (True,),
      code=RELATION_REACH),
    A("SELECT currval('hooli.items_id_seq')", code=NAMED_RELATION),
    A("SELECT nextval('hooli.items_id_seq'::regclass)", code=NAMED_RELATION),
    A("SELECT setval('HOOLI.ITEMS_ID_SEQ', 1)", code=NAMED_RELATION),
    A("SELECT nextval($1)", "asyncpg", ("hooli.items_id_seq",), code="42501"),
    A("SELECT pg_sequence_last_value('hooli.items_id_seq')", code="42501"),
    A("SELECT * FROM pg_sequences", code="42501"),
    A("SELECT last_value FROM hooli.items_id_seq", "psql", code=RELATION_REACH),
])
def test_t27_other_tenant_sequence(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, GLOBEX, attack, attack.extra["code"],
                   extra=[("shared", "hooli.items_id_seq")])


@pytest.mark.parametrize("attack", [
    A("SELECT nextval('umbrella.public.items_id_seq')"),
    A("SELECT last_value FROM umbrella.public.items_id_seq"),
])
def test_t27_other_database_sequence(proxy, pg, attack) -> None:
    """README: three-part names `cross-database` 0A000; a sequence name literal the
    tenant may not reach `sequence-function` 42501."""
    expect_refused(proxy, pg, ACME, attack, {"0A000", "42501"},
                   extra=[("umbrella", "public.items_id_seq")])


# -- 31: views ------------------------------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("CREATE VIEW v AS SELECT * FROM items"),
    A("create or replace view globex.v with (security_barrier) as select 1 as x"),
    A("CREATE VIEW v WITH (security_invoker = false) AS SELECT * FROM items"),
    A("CREATE MATERIALIZED VIEW mv AS SELECT * FROM items"),
    A("CREATE RECURSIVE VIEW r (n) AS SELECT 1"),
    A("CREATE VIEW v AS SELECT * FROM items", "asyncpg"),
    A("CREATE VIEW v AS SELECT * FROM items", side="acme", id="acme:CREATE VIEW"),
])
def test_t31_creating_views(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501")


@pytest.mark.parametrize("attack", [
    A("SELECT * FROM common.tg_hooli_view"),
    A("SELECT secret FROM tg_hooli_view"),
    A("SELECT name FROM items WHERE name IN (SELECT name FROM common.tg_hooli_view)"),
    A("SELECT secret FROM common.tg_hooli_view WHERE id = $1", "asyncpg", (3,)),
])
def test_t31_view_over_another_tenants_table(proxy, pg, planted, attack) -> None:
    """THREATS 31: a view runs with its owner's rights, so a view over hooli's table
    (here one a DBA put in the shared schema) is opaque to the proxy's relation check:
    REJECT 42501 unless allowlisted and security_invoker."""
    expect_refused(proxy, pg, GLOBEX, attack, "42501")


# -- 32: functions and procedures over tenant data ------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("SELECT * FROM tg_hooli_report()"),
    A("SELECT common.tg_hooli_report()"),
    A('SELECT "common"."tg_hooli_report"()'),
    A("SELECT name FROM items WHERE name IN (SELECT tg_hooli_report())"),
    A("CALL tg_hooli_plant()"),
    A("call common.tg_hooli_plant()"),
    A("SELECT globex.report()"),
    A("SELECT hooli.anything()"),
    A("SELECT * FROM ROWS FROM (common.tg_hooli_report()) AS r"),
    A("SELECT common.tg_hooli_report() WHERE %s", "extended", (True,)),
    A("CALL tg_hooli_plant()", "asyncpg"),
    A("select tg_hooli_report()", "psql"),
    A("CALL p()", side="acme", id="acme:CALL p()"),
])
def test_t32_functions_and_procedures(proxy, pg, planted, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501")


# -- 39: COPY to or from files and programs -------------------------------------------------------

COPY_TEMPLATES = [
    "COPY items TO '{path}'",
    "copy items to '{path}' with (format csv)",
    "COPY (SELECT * FROM items) TO PROGRAM 'cat > {path}'",
    "COPY items FROM '/etc/hostname'",
    "COPY items (name) FROM PROGRAM 'echo tg-x'",
    "COPY common.countries TO '{path}'",
    "COPY (SELECT 1) TO STDOUT; COPY items TO '{path}'",
]
COPY_CASES = [pytest.param(t, side, via, id=f"{side.tenant}-{via}-{t[:40]}")
              for t in COPY_TEMPLATES for side in (GLOBEX, ACME)
              for via in ("simple", "asyncpg", "psql")
              # a multi-statement string goes by the simple protocol only
              if ";" not in t or via != "asyncpg"]


@pytest.mark.parametrize("template,side,via", COPY_CASES)
def test_t39_copy_file_or_program(proxy, pg, tmp_path, template, side, via) -> None:
    path = tmp_path / "stolen.csv"
    expect_refused(proxy, pg, side, A(template.format(path=path), via).values[0], "42501",
                   extra=[("shared", "common.countries")])
    assert not path.exists()


# -- 40: TRUNCATE ---------------------------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("TRUNCATE items"),
    A("truncate table only items restart identity"),
    A("TRUNCATE hooli.items"),
    A("TRUNCATE items, hooli.items CASCADE"),
    A("TRUNCATE common.countries"),
    A("SELECT 1; TRUNCATE items"),
    A("TRUNCATE items", "extended"),
    A("TRUNCATE items", "asyncpg"),
    A("truncate items", "psql"),
    A("TRUNCATE TABLE items", side="acme", id="acme:TRUNCATE"),
])
def test_t40_truncate(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, side_of(attack), attack, "42501",
                   extra=[("shared", "common.countries")])


# -- 41: LOCK -------------------------------------------------------------------------------------

STRONG_LOCKS = ("SELECT count(*) FROM pg_locks WHERE locktype = 'relation' AND mode IN "
                "('AccessExclusiveLock', 'ExclusiveLock', 'ShareRowExclusiveLock', "
                "'ShareLock') AND database IN (SELECT oid FROM pg_database "
                "WHERE datname IN ('shared', 'acme', 'umbrella'))")


@pytest.mark.parametrize("attack", [
    A("LOCK items"),
    A("lock table hooli.items in access exclusive mode"),
    A("LOCK TABLE ONLY common.countries IN SHARE MODE NOWAIT"),
    A("LOCK items, hooli.items"),
    A("LOCK TABLE items IN EXCLUSIVE MODE", "extended"),
    A("LOCK TABLE items IN ACCESS EXCLUSIVE MODE", "asyncpg"),
    A("LOCK TABLE items IN ACCESS EXCLUSIVE MODE", side="acme", id="acme:LOCK"),
])
def test_t41_lock(proxy, pg, attack) -> None:
    def no_strong_lock() -> None:
        assert backend_query(pg, "postgres", STRONG_LOCKS) == [(0,)]
    expect_refused(proxy, pg, side_of(attack), attack, "42501",
                   during_transaction=no_strong_lock)


# -- 42: DDL and maintenance ----------------------------------------------------------------------

SHAPE = ("SELECT string_agg(format('%s.%s:%s:%s:%s:%s:%s', n.nspname, c.relname, c.relkind, "
         "c.relrowsecurity, c.relhasindex, c.relacl, "
         "(SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 "
         "AND NOT a.attisdropped)), ';' ORDER BY n.nspname, c.relname) "
         "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
         "WHERE n.nspname IN ('globex', 'hooli', 'common', 'public')")
EXTRAS = ("SELECT (SELECT count(*) FROM pg_description), (SELECT count(*) FROM pg_policy), "
          "(SELECT count(*) FROM pg_rewrite), (SELECT count(*) FROM pg_trigger), "
          "(SELECT count(*) FROM pg_namespace)")


@pytest.mark.parametrize("attack", [
    A("ALTER TABLE items DISABLE ROW LEVEL SECURITY"),
    A("alter table hooli.items add column x int"),
    A("CREATE INDEX ON items (secret)"),
    A("DROP TABLE hooli.items"),
    A("DROP TABLE IF EXISTS items CASCADE"),
    A("GRANT SELECT ON items TO PUBLIC"),
    A("REVOKE ALL ON items FROM globex"),
    A("CREATE POLICY p ON items USING (true)"),
    A("ALTER POLICY p ON items USING (true)"),
    A("CREATE RULE r AS ON INSERT TO items DO INSTEAD NOTHING"),
    A("COMMENT ON COLUMN items.secret IS 'tg-x'"),
    A("VACUUM (FULL, ANALYZE) items"),
    A("ANALYZE hooli.items"),
    A("CLUSTER items USING items_pkey"),
    A("REINDEX TABLE items"),
    A("REFRESH MATERIALIZED VIEW common.mv"),
    A("SELECT * INTO stolen FROM items"),
    A("CREATE TABLE stolen AS SELECT * FROM common.countries"),
    A("ALTER SEQUENCE items_id_seq RESTART 1"),
    A("SECURITY LABEL ON TABLE items IS 'x'"),
    A("CREATE SCHEMA evil"),
    A("ALTER SCHEMA globex RENAME TO hooli2"),
    A("ALTER TABLE items RENAME TO items2"),
    A("ALTER TABLE items OWNER TO globex"),
    A("CHECKPOINT"),
    A("LOAD 'plpgsql'"),
    A("DROP TABLE items", "extended"),
    A("DROP TABLE items", "asyncpg"),
    A("drop table items", "psql"),
    A("DROP TABLE items", side="acme", id="acme:DROP TABLE"),
    A("ALTER TABLE items DISABLE ROW LEVEL SECURITY", "asyncpg", side="acme",
      id="acme:asyncpg ALTER TABLE"),
])
def test_t42_ddl_and_maintenance(proxy, pg, attack) -> None:
    side = side_of(attack)
    before = (backend_query(pg, side.db, SHAPE), backend_query(pg, side.db, EXTRAS))
    expect_refused(proxy, pg, side, attack, "42501", extra=[("shared", "common.countries")])
    assert (backend_query(pg, side.db, SHAPE), backend_query(pg, side.db, EXTRAS)) == before


# -- 77: cluster-wide catalogs (database strategy) ------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("SELECT datname FROM pg_database"),
    A("select rolname, rolsuper from PG_ROLES"),
    A("SELECT datname, query FROM pg_stat_activity"),
    A("SELECT * FROM pg_stat_database WHERE datname = 'umbrella'"),
    A("SELECT * FROM pg_locks"),
    A("SELECT * FROM pg_shdescription"),
    A("SELECT * FROM pg_catalog.pg_shdepend"),
    A("SELECT * FROM pg_tablespace"),
    A("SELECT * FROM pg_db_role_setting"),
    A("SELECT * FROM pg_auth_members"),
    A("TABLE pg_replication_slots"),
    A("SELECT * FROM pg_stat_replication"),
    A("SELECT pg_database_size('umbrella')"),
    A("SELECT has_database_privilege('umbrella', 'CONNECT')"),
    A("SELECT shobj_description(1, 'pg_database')"),
    A("SELECT 'tenantgate'::regrole"),
    A("SELECT to_regrole('postgres')"),
    A("SELECT pg_stat_get_db_numbackends(1)"),
    A("SELECT * FROM items WHERE name IN (SELECT datname FROM pg_database)"),
    A("SELECT datname FROM pg_database WHERE datname = %s", "extended", ("umbrella",)),
    A("SELECT datname FROM pg_database WHERE datname = $1", "asyncpg", ("umbrella",)),
    A("\\l", "psql", id="psql:\\l"),
    A("select datname from pg_database", "psql"),
])
def test_t77_cluster_wide_catalogs(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, ACME, attack, "42501")


# -- 78: reaching another database ----------------------------------------------------------------

@pytest.mark.parametrize("attack", [
    A("SELECT * FROM dblink('dbname=umbrella', 'select secret from items') AS t(s text)",
      code="42501"),
    A("SELECT dblink_connect('u', 'dbname=umbrella')", code="42501"),
    A("SELECT dblink_exec('dbname=umbrella', 'delete from items')", code="42501"),
    A("CREATE EXTENSION IF NOT EXISTS dblink", code="42501"),
    A("CREATE EXTENSION postgres_fdw", code="42501"),
    A("CREATE SERVER u FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname 'umbrella')",
      code="42501"),
    A("CREATE USER MAPPING FOR CURRENT_USER SERVER u", code="42501"),
    A("CREATE FOREIGN TABLE ft (s text) SERVER u", code="42501"),
    A("IMPORT FOREIGN SCHEMA public FROM SERVER u INTO public", code="42501"),
    A("CREATE DATABASE stolen TEMPLATE umbrella", code="42501"),
    A("ALTER DATABASE umbrella RENAME TO x", code="42501"),
    A("DROP DATABASE umbrella", code="42501"),
    A("SELECT * FROM umbrella.public.items", code="0A000"),
    A('select secret from "umbrella".public."items"', code="0A000"),
    A("UPDATE umbrella.public.items SET secret = 'pwned'", code="0A000"),
    A("SELECT * FROM items i JOIN umbrella.public.items u USING (id)", code="0A000"),
    A("SELECT 'umbrella.public.items'::regclass", code="0A000"),
    A("SELECT NULL::umbrella.public.items", code="0A000"),
    A("SELECT * FROM umbrella.public.items WHERE id = %s", "prepared", (3,), code="0A000"),
    A("SELECT * FROM umbrella.public.items WHERE id = $1", "asyncpg", (3,), code="0A000"),
    A("select dblink('dbname=umbrella', 'select 1')", "psql", code="42501"),
])
def test_t78_cross_database(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, ACME, attack, attack.extra["code"])


@pytest.mark.parametrize("attack", [
    A("SELECT * FROM acme.public.items"),
    A("SELECT * FROM shared.hooli.items JOIN acme.public.items USING (id)"),
])
def test_t78_cross_database_from_a_schema_tenant(proxy, pg, attack) -> None:
    expect_refused(proxy, pg, GLOBEX, attack, {"0A000", "42P01"},
                   extra=[("acme", "public.items")])

