"""Escape attempts from THREATS.md, in several spellings each: exact SQLSTATE and rule."""

from __future__ import annotations

import pytest

from proxy.sql import Scope, analyze_uncached

DATABASE = Scope("database")
SCHEMA = Scope("schema", schemas=("globex",), shared_schemas=("common",),
               pinned_settings=(("search_path", "globex, common"), ("role", "globex")))
ROW = Scope("row", row_column="tenant_id", tenant_key="initech")
BOTH = [DATABASE, SCHEMA]


def denied(sql: str, scope: Scope, sqlstate: str, rule: str) -> str:
    decision = analyze_uncached(sql, scope)
    assert decision.action == "deny", f"{sql!r} was allowed for {scope.strategy}"
    assert (decision.error.sqlstate, decision.error.rule) == (sqlstate, rule), \
        decision.error.message
    assert decision.error.message.startswith("tenantgate: ")
    assert f"(rule {rule})" in decision.error.message
    return decision.error.message


SC = "set_config('app.tenant_id', 'b', false)"
SET_CONFIG_HIDDEN = [  # THREATS 3: anywhere in the tree
    f"SELECT {SC} FROM users",
    f"SELECT * FROM users WHERE {SC} IS NOT NULL",
    f"SELECT * FROM users ORDER BY {SC}",
    f"SELECT * FROM users GROUP BY {SC}",
    f"SELECT count(*) FROM users HAVING {SC} = ''",
    f"WITH x AS (SELECT {SC}) SELECT * FROM x",
    f"SELECT * FROM users, LATERAL (SELECT {SC}) s",
    f"SELECT lower({SC})",
    f"SELECT jsonb_build_object('a', {SC})",
    f"INSERT INTO users (name) VALUES ({SC})",
    f"INSERT INTO users (name) SELECT {SC}",
    f"UPDATE users SET name = {SC}",
    f"DELETE FROM users WHERE name = {SC}",
    f"SELECT * FROM {SC}",
    f"SELECT CASE WHEN true THEN {SC} END",
    f"SELECT (SELECT {SC})",
    f"SELECT 1 WHERE EXISTS (SELECT {SC})",
    f"SELECT 1 WHERE 'x' IN (SELECT {SC})",
    f"SELECT 1 UNION SELECT {SC}",
    f"SELECT count(*) FILTER (WHERE {SC} = '') FROM users",
    f"SELECT sum(1) OVER (ORDER BY {SC}) FROM users",
    f"SELECT coalesce(NULL, {SC})",
    f"SELECT pg_catalog.{SC} FROM users",
    f"SELECT pg_catalog . {SC} FROM users",
    f'SELECT "set_config"(\'a.b\', \'c\', false) FROM users',
    'SELECT U&"\\0073et_config"(\'a.b\', \'c\', false) FROM users',
    f"SELECT/**/{SC}/**/FROM users",
    f"SELECT 1; SELECT {SC} FROM users",
    "SELECT set_config(chr(97) || 'pp.tenant_id', 'b', false)",  # THREATS 4
    "SELECT set_config($1, $2, false)",
    "SELECT set_config('timezone', $1, false)",
    "SELECT set_config('timezone', 'UTC', false), 1",
    f"MERGE INTO users u USING (SELECT {SC} AS v) s ON true WHEN MATCHED THEN DELETE",
    f"COPY (SELECT {SC}) TO STDOUT",
    f"DECLARE c CURSOR FOR SELECT {SC}",
]


@pytest.mark.parametrize("scope", BOTH, ids=["database", "schema"])
@pytest.mark.parametrize("sql", SET_CONFIG_HIDDEN)
def test_set_config_is_denied_wherever_it_hides(sql: str, scope: Scope) -> None:
    denied(sql, scope, "42501", "function-allowlist")


@pytest.mark.parametrize("sql, rule", [
    ("SELECT set_config('app.tenant_id', 'b', false)", "reserved-setting"),
    ("SELECT pg_catalog.set_config('tenantgate.tenant', 'b', true)", "reserved-setting"),
    ("SELECT set_config('role', 'tenant_b', false)", "role"),
    ("SELECT set_config('session_authorization', 'x', false)", "role"),
    ("SELECT set_config('standard_conforming_strings', 'off', false)", "lexing-setting"),
    ("SELECT set_config('work_mem', '64GB', false)", "setting-allowlist"),
    ("SELECT set_config('statement_timeout', '0', false)", "setting-value"),
])
def test_bare_set_config_follows_the_set_rules(sql: str, rule: str) -> None:
    for scope in BOTH:
        denied(sql, scope, "42501", rule)


def test_unknown_function_spelling_is_not_set_config_but_still_denied() -> None:
    message = denied('SELECT "SET_CONFIG"(\'a.b\', \'c\', false)', SCHEMA, "42501",
                     "function-allowlist")
    assert "SET_CONFIG" in message


@pytest.mark.parametrize("call", [
    "query_to_xml('select * from orders', true, true, '')", "table_to_xml('t', true, true, '')",
    "schema_to_xml('hooli', true, true, '')", "database_to_xml(true, true, '')",
    "cursor_to_xml('c', 1, true, true, '')", "query_to_xmlschema('select 1', true, true, '')",
    "ts_stat('select v from t')", "ts_rewrite('a'::tsquery, 'select 1')",
    "lo_get(1)", "lo_from_bytea(0, 'x')", "lo_import('/etc/passwd')", "lo_open(1, 1)",
    "pg_read_file('/etc/passwd')", "pg_ls_dir('.')", "pg_stat_file('x')",
    "dblink('dbname=b', 'select 1')", "dblink_exec('dbname=b', 'select 1')",
    "pg_cancel_backend(1)", "pg_terminate_backend(1)", "obj_description(1, 'pg_class')",
    "has_table_privilege('t', 'select')", "pg_relation_size('t')", "pg_get_viewdef(1)",
    "pg_get_userbyid(10)", "setseed(0.5)", "pg_reload_conf()", "pg_stat_get_activity(1)",
    "row_security_active('t')", "pg_input_is_valid('1', 'int')", "public.my_function()",
    "globex.my_function()", "pg_catalog.pg_read_binary_file('x')", "other.db.f()",
    "crypt('a', 'b')", "pg_current_snapshot()", "pg_export_snapshot()",
])
def test_functions_off_the_allowlist_are_denied(call: str) -> None:
    for scope in BOTH:
        denied(f"SELECT {call}", scope, "42501", "function-allowlist")
        denied(f"SELECT * FROM users WHERE id IN (SELECT {call})", scope, "42501",
               "function-allowlist")


def test_operators_from_other_schemas_are_denied() -> None:
    denied("SELECT 1 OPERATOR(hooli.===) 2", SCHEMA, "42501", "function-allowlist")
    denied("SELECT 1 FROM t ORDER BY a USING OPERATOR(public.<)", DATABASE, "42501",
           "function-allowlist")
    assert analyze_uncached("SELECT 1 OPERATOR(pg_catalog.+) 2", SCHEMA).action == "allow"


CATALOGS = [
    "pg_roles", "pg_authid", "pg_catalog.pg_database", "pg_stat_activity",
    "pg_stat_user_tables", "pg_statio_user_tables", "pg_locks", "pg_settings",
    "pg_prepared_statements", "pg_cursors", "pg_prepared_xacts", "pg_stats",
    "pg_stats_ext", "pg_statistic", "pg_largeobject", "pg_largeobject_metadata",
    "pg_shdescription", "pg_policies", "pg_user", "pg_shadow", "pg_file_settings",
    "pg_hba_file_rules", "pg_proc", "pg_description", "pg_tables", "PG_ROLES",
    '"pg_roles"', "pg_catalog.pg_stat_database", "information_schema.tables",
    "INFORMATION_SCHEMA.columns", "pg_toast.pg_toast_1234", "pg_catalog.pg_user_mappings",
]


@pytest.mark.parametrize("relation", CATALOGS)
def test_catalogs_off_the_driver_allowlist_are_denied(relation: str) -> None:
    for scope in [DATABASE, SCHEMA, ROW]:
        denied(f"SELECT * FROM {relation}", scope, "42501", "catalog")


@pytest.mark.parametrize("sql", [
    "SELECT * FROM users WHERE name IN (SELECT rolname FROM pg_roles)",
    "WITH r AS (SELECT * FROM pg_catalog.pg_authid) SELECT 1",
    "SELECT * FROM users JOIN pg_stat_activity a ON true",
    "SELECT (SELECT count(*) FROM pg_database)",
    "SELECT * FROM users, LATERAL (SELECT * FROM pg_locks) l",
    "SELECT 1 UNION ALL SELECT 1 FROM pg_shadow",
    "WITH pg_authid AS (SELECT * FROM pg_authid) SELECT * FROM pg_authid",
    "SELECT 'pg_authid'::regclass",
    "INSERT INTO pg_catalog.pg_type SELECT * FROM pg_type",
    "UPDATE pg_class SET relname = 'x'",
    "COPY pg_authid TO STDOUT",
])
def test_catalogs_are_denied_wherever_they_hide(sql: str) -> None:
    for scope in BOTH:
        denied(sql, scope, "42501", "catalog")


def test_temp_schema_is_denied() -> None:
    for scope in BOTH:
        denied("SELECT * FROM pg_temp.orders", scope, "42501", "temp-schema")
        denied("SELECT * FROM pg_temp_3.orders", scope, "42501", "temp-schema")


OTHER_TENANT = [  # THREATS 16
    "SELECT * FROM hooli.items",
    "SELECT * FROM HOOLI.ITEMS",
    'SELECT * FROM "hooli"."items"',
    'SELECT * FROM U&"hool\\0069".items',
    "SELECT * FROM ONLY hooli.items",
    "TABLE hooli.items",
    "SELECT * FROM users u JOIN hooli.items i ON true",
    "SELECT * FROM users WHERE id IN (SELECT id FROM hooli.items)",
    "WITH x AS (SELECT * FROM hooli.items) SELECT * FROM x",
    "SELECT * FROM users u, LATERAL (SELECT * FROM hooli.items) x",
    "SELECT id FROM users UNION SELECT id FROM hooli.items",
    "SELECT coalesce((SELECT 1 FROM hooli.items), 0)",
    "SELECT * FROM users ORDER BY (SELECT max(id) FROM hooli.items)",
    "INSERT INTO hooli.items VALUES (1)",
    "INSERT INTO users SELECT * FROM hooli.items",
    "UPDATE hooli.items SET x = 1",
    "UPDATE users SET x = 1 FROM hooli.items i WHERE i.id = users.id",
    "DELETE FROM hooli.items",
    "DELETE FROM users USING hooli.items i WHERE i.id = users.id",
    "MERGE INTO hooli.items t USING users s ON t.id = s.id WHEN MATCHED THEN DELETE",
    "MERGE INTO users t USING hooli.items s ON t.id = s.id WHEN MATCHED THEN DELETE",
    "COPY hooli.items TO STDOUT",
    "COPY hooli.items FROM STDIN",
    "COPY (SELECT * FROM hooli.items) TO STDOUT",
    "SELECT 'hooli.items'::regclass",
    "SELECT CAST('hooli.items' AS regclass)",
    "SELECT regclass 'hooli.items'",
    "SELECT 'hooli.items'::pg_catalog.regclass",
    "SELECT to_regclass('hooli.items')",
    "SELECT nextval('hooli.items')",
    "SELECT nextval('hooli.items'::regclass)",
    "SELECT nextval('\"hooli\".items')",
    "SELECT currval('hooli.items')",
    "SELECT setval('hooli.items', 5)",
    "SELECT 1; SELECT * FROM hooli.items",
    "COMMIT; SELECT * FROM hooli.items",
    "DECLARE c CURSOR FOR SELECT * FROM hooli.items",
]


@pytest.mark.parametrize("sql", OTHER_TENANT)
def test_other_tenant_relations_look_missing(sql: str) -> None:
    message = denied(sql, SCHEMA, "42P01", "relation-reach")
    assert message == 'tenantgate: relation "hooli.items" does not exist (rule relation-reach)'


def test_missing_and_existing_relations_read_the_same() -> None:
    a = analyze_uncached("SELECT * FROM hooli.items", SCHEMA).error
    b = analyze_uncached("SELECT * FROM hooli.nothing_here", SCHEMA).error
    assert a.fields()["C"] == b.fields()["C"] == "42P01"
    assert a.message.replace("items", "X") == b.message.replace("nothing_here", "X")


@pytest.mark.parametrize("sql, noun", [
    ("SELECT 'hooli.t'::regtype", 'type "hooli.t"'),
    ("SELECT to_regtype('hooli.t')", 'type "hooli.t"'),
    ("SELECT 'hooli'::regnamespace", 'schema "hooli"'),
    ("SELECT to_regnamespace('hooli')", 'schema "hooli"'),
    ("SELECT 'hooli.f'::regproc", 'function "hooli.f"'),
    ("SELECT 'hooli.f(int)'::regprocedure", 'function "hooli.f"'),
    ("SELECT to_regprocedure('hooli.f(int)')", 'function "hooli.f"'),
    ("SELECT NULL::hooli.mytype", 'type "hooli.mytype"'),
    ("SELECT (NULL::hooli.items).secret", 'type "hooli.items"'),
    ("SELECT 'a' COLLATE hooli.c", 'collation "hooli.c"'),
    ("SELECT 'hooli.english'::regconfig", 'text search configuration "hooli.english"'),
    ("SELECT to_tsvector('hooli.english', 'x')", 'text search configuration "hooli.english"'),
    ("SELECT plainto_tsquery('HOOLI.simple', 'x')", 'text search configuration "hooli.simple"'),
    ("SELECT websearch_to_tsquery('\"hooli\".simple', 'x')",
     'text search configuration "hooli.simple"'),
    ("SELECT ts_headline('hooli.english', 'doc', 'q'::tsquery, 'MaxWords=5')",
     'text search configuration "hooli.english"'),
    ("SELECT ts_headline('hooli.english', 'doc', 'q'::tsquery)",
     'text search configuration "hooli.english"'),
    ("SELECT to_tsquery('hooli.english'::unknown, 'x')",
     'text search configuration "hooli.english"'),
    ("SELECT to_tsquery('hooli.english' COLLATE \"C\", 'x')",
     'text search configuration "hooli.english"'),
])
def test_other_tenant_objects_named_in_strings_look_missing(sql, noun) -> None:
    """DESIGN 4: any object of another tenant's schema answers 42P01, whatever it is."""
    message = denied(sql, SCHEMA, "42P01", "relation-reach")
    assert message == f"tenantgate: {noun} does not exist (rule relation-reach)"
    assert analyze_uncached(sql, DATABASE).action == "allow"


@pytest.mark.parametrize("sql", [
    "SELECT to_tsvector('{s}.english', 'x')",
    "SELECT '{s}'::regnamespace",
    "SELECT 'a' COLLATE {s}.\"C\"",
    "SELECT '{s}.f(int)'::regprocedure",
])
def test_other_schemas_read_the_same_whether_or_not_they_exist(sql: str) -> None:
    answers = [analyze_uncached(sql.format(s=schema), SCHEMA).error
               for schema in ("hooli", "nosuchschema")]
    assert [e.fields()["C"] for e in answers] == ["42P01", "42P01"]
    assert answers[0].message.replace("hooli", "X") == \
        answers[1].message.replace("nosuchschema", "X")


@pytest.mark.parametrize("sql", [
    "SELECT to_tsvector('english', body) FROM docs",
    "SELECT to_tsvector('pg_catalog.english', body) FROM docs",
    "SELECT to_tsvector('common.english', body) FROM docs",
    "SELECT to_tsvector('globex.english', body) FROM docs",
    "SELECT to_tsvector(body) FROM docs",
    "SELECT to_tsvector(lang, body) FROM docs",
    "SELECT to_tsvector('english'::regconfig, body) FROM docs",
    "SELECT ts_headline(body, to_tsquery('x')) FROM docs",
    "SELECT ts_headline('a.b c', to_tsquery('x'), 'MaxWords=5')",
    "SELECT ts_headline($1, to_tsquery('x'), 'MaxWords=5')",
    "SELECT to_tsquery($1)",
])
def test_text_search_configurations_in_reach(sql: str) -> None:
    assert analyze_uncached(sql, SCHEMA).action == "allow"


@pytest.mark.parametrize("sql", [
    "SELECT to_tsvector($1, 'x')",
    "SELECT plainto_tsquery($1::unknown, 'x')",
    "SELECT ts_headline($1, 'doc', 'q'::tsquery, 'MaxWords=5')",
])
def test_text_search_configuration_from_a_parameter_is_denied(sql: str) -> None:
    for scope in BOTH:
        denied(sql, scope, "42501", "reg-cast")


@pytest.mark.parametrize("sql, rule", [
    ("SELECT (name || 'x')::regclass FROM users", "reg-cast"),
    ("SELECT lower('A')::regclass", "reg-cast"),
    ("SELECT '{a,b}'::regclass[]", "reg-cast"),
    ("SELECT proname::regproc FROM t", "reg-cast"),
    ("SELECT $1::regproc", "reg-cast"),
    ("SELECT 'tenant_b'::regrole", "reg-cast"),
    ("SELECT relowner::regrole FROM pg_class", "reg-cast"),
    ("SELECT to_regrole('x')", "reg-cast"),
    ("SELECT 'x'::text::regclass", "reg-cast"),
    ("SELECT nextval(name) FROM users", "sequence-function"),
    ("SELECT nextval(concat('hooli', '.items'))", "sequence-function"),
    ("SELECT nextval($1)", "sequence-function"),
])
def test_lookups_of_computed_names_are_denied(sql: str, rule: str) -> None:
    for scope in BOTH:
        denied(sql, scope, "42501", rule)


@pytest.mark.parametrize("sql", [
    "INSERT INTO common.countries VALUES ('x')", "UPDATE common.countries SET name = 'x'",
    "DELETE FROM common.countries", "COPY common.countries FROM STDIN",
    "SELECT nextval('common.seq')", "SELECT setval('common.seq', 1)",
    "WITH d AS (DELETE FROM common.countries RETURNING *) SELECT * FROM d",
    "MERGE INTO common.countries c USING users u ON true WHEN MATCHED THEN DELETE",
])
def test_shared_schemas_are_read_only(sql: str) -> None:
    denied(sql, SCHEMA, "42501", "shared-read-only")


def test_cross_database_names_are_not_supported() -> None:
    for scope in BOTH:
        denied("SELECT * FROM otherdb.hooli.items", scope, "0A000", "cross-database")


def test_identifiers_are_truncated_like_the_server_does() -> None:
    schema = "a" * 63
    scope = Scope("schema", schemas=(schema,))
    assert analyze_uncached(f"SELECT * FROM {'a' * 70}.t", scope).action == "allow"
    denied(f"SELECT * FROM {'a' * 62}.t", scope, "42P01", "relation-reach")
