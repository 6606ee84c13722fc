"""`standard` isolation: DDL inside the tenant's own schema or database only."""

from __future__ import annotations

import pytest

from proxy.sql import Scope, analyze_uncached

from tests.unit.test_sql_attacks import denied

SCHEMA = Scope("schema", isolation_level="standard", schemas=("globex",),
               shared_schemas=("common",))
DATABASE = Scope("database", isolation_level="standard")

OWN_DDL = [
    "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL "
    "DEFAULT 'x', created_at timestamptz DEFAULT now(), CHECK (length(name) > 0))",
    "CREATE TABLE globex.t (a int REFERENCES globex.parent (id) ON DELETE CASCADE)",
    "CREATE TABLE t2 (LIKE t INCLUDING ALL)",
    "CREATE UNLOGGED TABLE cache (k text PRIMARY KEY, v jsonb) WITH (fillfactor = 70)",
    "CREATE TABLE p (id int, at date) PARTITION BY RANGE (at)",
    "CREATE TABLE p2024 PARTITION OF p FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_name ON t (lower(name)) WHERE name <> ''",
    "CREATE UNIQUE INDEX ON globex.t USING btree (a, b DESC)",
    "CREATE VIEW v AS SELECT * FROM t JOIN common.countries c ON true",
    "CREATE OR REPLACE VIEW globex.v WITH (security_invoker = true) AS SELECT 1 AS x",
    "CREATE SEQUENCE s START 10 OWNED BY t.id", "ALTER SEQUENCE s RESTART WITH 5",
    "CREATE TABLE t3 AS SELECT * FROM t WHERE false",
    "ALTER TABLE t ADD COLUMN b int DEFAULT 0", "ALTER TABLE t DROP COLUMN b",
    "ALTER TABLE t ALTER COLUMN name TYPE varchar(100) USING name::varchar",
    "ALTER TABLE t ADD CONSTRAINT c CHECK (id > 0)", "ALTER TABLE t RENAME TO t4",
    "ALTER TABLE t RENAME COLUMN a TO b", "ALTER INDEX t_name RENAME TO t_name2",
    "ALTER TABLE p ATTACH PARTITION p2025 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
    "DROP TABLE t", "DROP TABLE IF EXISTS globex.t, t2 CASCADE", "DROP INDEX t_name",
    "DROP VIEW v", "DROP SEQUENCE s", "TRUNCATE t", "TRUNCATE globex.t RESTART IDENTITY",
    "COMMENT ON TABLE t IS 'x'", "COMMENT ON COLUMN globex.t.a IS 'x'",
    "CREATE TYPE mood AS ENUM ('sad', 'ok')", "ALTER TYPE mood ADD VALUE 'happy'",
    "CREATE TYPE pair AS (a int, b text)", "DROP TYPE mood",
    "CREATE DOMAIN posint AS int CHECK (VALUE > 0)",
]


@pytest.mark.parametrize("sql", OWN_DDL)
def test_standard_allows_ddl_in_the_tenants_own_schema(sql: str) -> None:
    for scope in [SCHEMA, DATABASE]:
        decision = analyze_uncached(sql, scope)
        assert decision.action == "allow", decision.error and decision.error.message


@pytest.mark.parametrize("sql", OWN_DDL[:6])
def test_strict_refuses_the_same_ddl(sql: str) -> None:
    denied(sql, Scope("schema", schemas=("globex",)), "42501", "statement-type")


@pytest.mark.parametrize("sql, sqlstate, rule", [
    ("CREATE TEMP TABLE orders (a int)", "42501", "temp-object"),
    ("CREATE TEMPORARY VIEW v AS SELECT 1", "42501", "temp-object"),
    ("CREATE TEMP SEQUENCE s", "42501", "temp-object"),
    ("CREATE TABLE pg_temp.orders (a int)", "42501", "temp-schema"),
    ("CREATE TEMP TABLE x AS SELECT 1", "42501", "temp-object"),
    ("CREATE TABLE hooli.t (a int)", "42P01", "relation-reach"),
    ("CREATE TABLE common.t (a int)", "42501", "shared-read-only"),
    ("CREATE INDEX ON hooli.items (a)", "42P01", "relation-reach"),
    ("CREATE INDEX ON common.countries (a)", "42501", "shared-read-only"),
    ("CREATE VIEW v AS SELECT * FROM hooli.items", "42P01", "relation-reach"),
    ("CREATE TABLE t AS SELECT * FROM hooli.items", "42P01", "relation-reach"),
    ("CREATE TABLE t (a int REFERENCES hooli.items (id))", "42P01", "relation-reach"),
    ("CREATE TABLE t (a int REFERENCES common.countries (id))", "42501", "shared-read-only"),
    ("CREATE TABLE t (LIKE hooli.items)", "42P01", "relation-reach"),
    ("CREATE TABLE t PARTITION OF hooli.p FOR VALUES IN (1)", "42P01", "relation-reach"),
    ("CREATE TABLE t () INHERITS (common.countries)", "42501", "shared-read-only"),
    ("ALTER TABLE t INHERIT hooli.p", "42P01", "relation-reach"),
    ("ALTER TABLE hooli.items ADD b int", "42P01", "relation-reach"),
    ("ALTER TABLE common.countries ADD b int", "42501", "shared-read-only"),
    ("CREATE SEQUENCE s OWNED BY hooli.items.id", "42P01", "relation-reach"),
    ("DROP TABLE hooli.items", "42P01", "relation-reach"),
    ("DROP TABLE t, common.countries", "42501", "shared-read-only"),
    ("DROP TYPE hooli.mood", "42P01", "relation-reach"),
    ("TRUNCATE common.countries", "42501", "shared-read-only"),
    ("TRUNCATE t, hooli.items", "42P01", "relation-reach"),
    ("COMMENT ON COLUMN hooli.items.id IS 'x'", "42P01", "relation-reach"),
    ("CREATE TYPE hooli.mood AS ENUM ('a')", "42P01", "relation-reach"),
    ("CREATE TABLE t (a int DEFAULT set_config('app.x', 'y', false))", "42501",
     "function-allowlist"),
    ("CREATE INDEX ON t (pg_catalog.set_config('a.b', a, false))", "42501",
     "function-allowlist"),
    ("ALTER TABLE t ADD CHECK (current_setting('x') <> set_config('a.b', 'c', true))",
     "42501", "function-allowlist"),
    ("CREATE TABLE t (a int) TABLESPACE fast", "42501", "statement-type"),
    ("ALTER TABLE t SET TABLESPACE fast", "42501", "statement-type"),
    ("ALTER TABLE t ENABLE ROW LEVEL SECURITY", "42501", "statement-type"),
    ("ALTER TABLE t NO FORCE ROW LEVEL SECURITY", "42501", "statement-type"),
    ("ALTER TABLE t OWNER TO postgres", "42501", "statement-type"),
    ("ALTER TABLE t DISABLE TRIGGER ALL", "42501", "statement-type"),
    ("ALTER TABLE t SET SCHEMA hooli", "42501", "statement-type"),
    ("CREATE MATERIALIZED VIEW mv AS SELECT 1", "42501", "statement-type"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'", "42501",
     "statement-type"),
    ("CREATE TRIGGER tr AFTER INSERT ON t EXECUTE FUNCTION f()", "42501", "statement-type"),
    ("CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING", "42501", "statement-type"),
    ("CREATE POLICY p ON t USING (true)", "42501", "statement-type"),
    ("CREATE EXTENSION hstore", "42501", "statement-type"),
    ("CREATE SCHEMA s", "42501", "statement-type"),
    ("GRANT SELECT ON t TO public", "42501", "statement-type"),
    ("SELECT 1 INTO t", "42501", "statement-type"),
    ("DROP SCHEMA globex CASCADE", "42501", "statement-type"),
    ("DROP FUNCTION f()", "42501", "statement-type"),
    ("COMMENT ON SCHEMA globex IS 'x'", "42501", "statement-type"),
])
def test_standard_still_refuses_ddl_outside_the_own_schema(sql, sqlstate, rule) -> None:
    denied(sql, SCHEMA, sqlstate, rule)


def test_database_tenants_may_use_any_schema_but_not_catalogs() -> None:
    assert analyze_uncached("CREATE TABLE reporting.t (a int)", DATABASE).action == "allow"
    denied("CREATE TABLE pg_catalog.t (a int)", DATABASE, "42501", "catalog")
    denied("CREATE TABLE information_schema.t (a int)", DATABASE, "42501", "catalog")
    denied("DROP TABLE pg_catalog.pg_class", DATABASE, "42501", "catalog")


def test_standard_lets_tenants_call_their_own_functions() -> None:
    assert analyze_uncached("SELECT globex.report(1)", SCHEMA).action == "allow"
    denied("SELECT common.report(1)", SCHEMA, "42501", "function-allowlist")
    denied("SELECT hooli.report(1)", SCHEMA, "42501", "function-allowlist")
    denied("SELECT report(1)", SCHEMA, "42501", "function-allowlist")
    assert analyze_uncached("SELECT public.report(1)", DATABASE).action == "allow"
    denied("SELECT information_schema._pg_expandarray(a) FROM t", DATABASE, "42501",
           "function-allowlist")


def test_every_statement_ddl_checks_is_audited_as_ddl():
    """The audit's DDL test (prefixes and a list) covers every kind `ddl` checks."""
    from proxy.sql import ddl
    from proxy.sql.analysis import DDL_KINDS, DDL_PREFIXES

    assert [kind for kind in ddl.STATEMENTS
            if not (kind.startswith(DDL_PREFIXES) or kind in DDL_KINDS)] == []
