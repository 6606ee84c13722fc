"""Views in shared schemas (THREATS 31): the SharedCatalog and what schema tenants may read."""

from __future__ import annotations

import dataclasses

import pytest
from pglast import parser

from proxy.sql import Analyzer, Scope, analyze_uncached
from proxy.sql.nodes import parse
from proxy.sql.sharedmodel import SharedCatalog, relations_query

from tests.unit.test_sql_attacks import DATABASE, ROW, SCHEMA, denied

CATALOG = SharedCatalog.from_rows([
    ["common", "countries", "r"],
    ["common", "events", "p"],
    ["common", "ids", "S"],
    ["common", "tg_hooli_view", "v"],
    ["common", "snapshot", "m"],
    ["common", "remote", "f"],
    ["common", "parted", "x"],  # a partition lives in another schema
])
SHARED = dataclasses.replace(SCHEMA, shared_catalog=CATALOG)


@pytest.mark.parametrize("sql, what", [
    ("SELECT * FROM common.tg_hooli_view", "common.tg_hooli_view: it is a view"),
    ("SELECT secret FROM tg_hooli_view", "common.tg_hooli_view: it is a view"),
    ('SELECT * FROM "common"."TG_HOOLI_VIEW"', None),  # another name: unknown, allowed
    ("SELECT * FROM COMMON.TG_HOOLI_VIEW", "common.tg_hooli_view: it is a view"),
    ("SELECT name FROM items WHERE name IN (SELECT name FROM common.tg_hooli_view)",
     "common.tg_hooli_view: it is a view"),
    ("SELECT secret FROM common.tg_hooli_view WHERE id = $1", "common.tg_hooli_view: it is a view"),
    ("WITH x AS (SELECT * FROM tg_hooli_view) SELECT * FROM x", "common.tg_hooli_view: it is a view"),
    ("SELECT * FROM items JOIN LATERAL (SELECT * FROM common.tg_hooli_view v "
     "WHERE v.id = items.id) x ON true", "common.tg_hooli_view: it is a view"),
    ("COPY (SELECT * FROM tg_hooli_view) TO STDOUT", "common.tg_hooli_view: it is a view"),
    ("DECLARE c CURSOR FOR TABLE common.tg_hooli_view", "common.tg_hooli_view: it is a view"),
    ("SELECT * FROM common.snapshot", "common.snapshot: it is a materialized view"),
    ("SELECT * FROM remote", "common.remote: it is a foreign table"),
    ("SELECT count(*) FROM ONLY common.parted",
     "common.parted: it is a table with partitions or child tables in other schemas"),
    # a CTE of the same name is refused too (the CTE's own body would read the view)
    ("WITH tg_hooli_view AS (SELECT * FROM tg_hooli_view) SELECT * FROM tg_hooli_view",
     "common.tg_hooli_view: it is a view"),
])
def test_views_in_shared_schemas_are_denied(sql: str, what: str | None) -> None:
    if what is None:
        assert analyze_uncached(sql, SHARED).action == "allow"
        return
    message = denied(sql, SHARED, "42501", "shared-view")
    where, kind = what.split(": ")
    assert message.startswith(f"tenantgate: reading {where} is not allowed: {kind}, ")


@pytest.mark.parametrize("sql", [
    "SELECT * FROM common.countries", "SELECT * FROM countries",
    "SELECT * FROM common.events", "SELECT last_value FROM common.ids",
    "SELECT * FROM common.created_after_the_catalog",  # unknown: the server decides
    "SELECT * FROM globex.tg_hooli_view",  # the tenant's own schema
    "SELECT * FROM items", "SELECT 'common.countries'::regclass",
])
def test_tables_of_shared_schemas_stay_readable(sql: str) -> None:
    assert analyze_uncached(sql, SHARED).action == "allow"


@pytest.mark.parametrize("sql", [
    "DELETE FROM common.tg_hooli_view", "INSERT INTO common.countries VALUES ('x')",
])
def test_shared_schemas_stay_read_only(sql: str) -> None:
    denied(sql, SHARED, "42501", "shared-read-only")


STANDARD = dataclasses.replace(SHARED, isolation_level="standard")  # DDL allowed


@pytest.mark.parametrize("sql", [
    "CREATE TABLE tg_hooli_view (id int)",
    "CREATE TABLE IF NOT EXISTS remote (id int)",
    "CREATE TABLE snapshot AS SELECT * FROM countries",
    "CREATE SEQUENCE snapshot",
    "CREATE TYPE remote AS (a int)",
    "CREATE VIEW tg_hooli_view AS SELECT * FROM items",
])
def test_a_relation_created_under_a_shared_views_bare_name_is_allowed(sql: str) -> None:
    # Unqualified, PostgreSQL creates it in the first schema of the pinned search path,
    # the tenant's own: the shared view of that name is not what the statement reaches.
    assert analyze_uncached(sql, STANDARD).action == "allow"


@pytest.mark.parametrize("sql", [
    "CREATE TABLE mine AS SELECT * FROM tg_hooli_view",  # reads it
    "CREATE TABLE mine (LIKE tg_hooli_view)",
    "CREATE TABLE mine () INHERITS (tg_hooli_view)",
    "CREATE TABLE mine PARTITION OF tg_hooli_view FOR VALUES IN (1)",
    "CREATE INDEX ON tg_hooli_view (id)",  # names an existing relation: the view
    "ALTER SEQUENCE snapshot RESTART",
    "ALTER TABLE tg_hooli_view ADD COLUMN x int",
    "INSERT INTO tg_hooli_view VALUES (1)",
])
def test_a_statement_that_reaches_a_shared_view_by_its_bare_name_stays_refused(sql: str) -> None:
    denied(sql, STANDARD, "42501", "shared-view")


def test_creating_in_a_shared_schema_stays_refused() -> None:
    denied("CREATE TABLE common.tg_hooli_view2 (id int)", STANDARD, "42501",
           "shared-read-only")


def test_unqualified_names_resolve_in_search_path_order() -> None:
    catalog = SharedCatalog.from_rows([["a", "x", "r"], ["b", "x", "v"], ["b", "y", "v"]])
    first_table = Scope("schema", schemas=("globex",), shared_schemas=("a", "b"),
                        shared_catalog=catalog)
    assert analyze_uncached("SELECT * FROM x", first_table).action == "allow"
    denied("SELECT * FROM y", first_table, "42501", "shared-view")
    first_view = dataclasses.replace(first_table, shared_schemas=("b", "a"))
    denied("SELECT * FROM x", first_view, "42501", "shared-view")


def test_without_a_catalog_views_cannot_be_told_apart() -> None:
    # Scope.shared_catalog None: the tenancy layer loaded none; the server-side backstop
    # (restrict_nonsystem_relation_kind) is what stops views then.
    assert analyze_uncached("SELECT * FROM common.tg_hooli_view", SCHEMA).action == "allow"


def test_other_strategies_ignore_the_shared_catalog() -> None:
    for scope in (DATABASE, ROW):
        with_catalog = dataclasses.replace(scope, shared_catalog=CATALOG)
        assert analyze_uncached("SELECT * FROM tg_hooli_view", with_catalog).action == "allow"


def test_a_new_catalog_is_a_new_cache_key() -> None:
    analyzer = Analyzer()
    before = dataclasses.replace(SCHEMA, shared_catalog=SharedCatalog.from_rows(
        [["common", "countries", "r"]]))
    sql = "SELECT * FROM tg_hooli_view WHERE id = 1"
    assert analyzer.analyze(sql, before).action == "allow"
    assert analyzer.analyze(sql.replace("1", "2"), SHARED).action == "deny"
    assert analyzer.analyze(sql, SHARED).action == "deny"


def test_catalogs_compare_by_content() -> None:
    again = SharedCatalog.from_rows(list(reversed([[s, n, k] for s, n, k in
                                                   CATALOG.relations])) + [[None, "x", "v"]])
    assert again == CATALOG and hash(again) == hash(CATALOG)
    assert dataclasses.replace(SCHEMA, shared_catalog=again) == SHARED
    assert SharedCatalog.from_rows([["common", "countries", "v"]]) != CATALOG


@pytest.mark.parametrize("schemas", [("common",), ("common", "it's", 'a"b', "a\\b")])
def test_relations_query_names_each_schema_as_a_literal(schemas) -> None:
    sql = relations_query(schemas)
    (statement,) = parse(sql)
    assert statement.kind == "SelectStmt"
    literals = [t for t in parser.scan(sql) if t.name == "SCONST"]
    assert [sql[t.start:t.end + 1] for t in literals][:len(schemas)] == [
        "'" + s.replace("'", "''") + "'" for s in schemas]
