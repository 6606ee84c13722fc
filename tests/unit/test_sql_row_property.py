"""Property tests of the row rewrite: random SELECTs over a small catalog (joins of all
kinds, subqueries, LATERAL, set operations, CTEs). Whatever the nesting, the rewritten SQL
parses again, and every tenant-table reference in it is, by an independent reading of
the tree, either filtered where the filter confines it — a top-level conjunct of the ON
of the nearest outer join that null-extends it, else of its level's WHERE — or the only
FROM item of a derived table carrying the tenant predicate, and the latter only where a
filter could not stand (a FULL JOIN's side, a refname used twice); none is lost or
doubled, and a statement served from a template is the statement a fresh rewrite would
send."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser

from proxy.sql import Analyzer, Scope, analyze_uncached, nodes
from proxy.sql.rowmodel import RowCatalog, RowTable

pytestmark = pytest.mark.timeout(120)

TENANT = {"orders", "users", "items"}
CATALOG = RowCatalog("tenant_id", (
    RowTable("public", "orders", ("id", "tenant_id", "user_id")),
    RowTable("public", "users", ("id", "tenant_id", "name")),
    RowTable("app", "items", ("id", "tenant_id", "name")),
), shared_tables=(("public", "countries"),), search_path=("app", "public"))
SCOPE = Scope("row", row_column="tenant_id", tenant_key="initech", row_catalog=CATALOG)
HOLE = "\x01"  # where a literal goes

TABLES = ["orders", "users", "items", "public.orders", "app.items", "ONLY orders",
          "countries", "public.countries"]
JOINS = ["JOIN", "INNER JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN", "LEFT OUTER JOIN"]
names = iter(range(10**9))


def alias() -> str:
    return f"a{next(names)}"


@st.composite
def table(draw: Any, ctes: tuple[str, ...]) -> str:
    name = draw(st.sampled_from(TABLES + list(ctes)))
    if name in TABLES[:3] and draw(st.booleans()):
        return f"{name} TABLESAMPLE SYSTEM ({HOLE})"
    return f"{name} AS {alias()}" if draw(st.booleans()) else name


def from_item(depth: int, ctes: tuple[str, ...]) -> st.SearchStrategy[str]:
    leaf = table(ctes)
    if depth <= 0:
        return leaf
    inner = from_item(depth - 1, ctes)
    return st.one_of(
        leaf,
        st.tuples(inner, st.sampled_from(JOINS), inner, condition(depth - 1, ctes)).map(
            lambda t: f"{t[0]} {t[1]} {t[2]} ON {t[3]}"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]} CROSS JOIN {t[1]}"),
        select(depth - 1, ctes).map(lambda q: f"({q}) AS {alias()}"),
        select(depth - 1, ctes).map(lambda q: f"LATERAL ({q}) AS {alias()}"),
    )


def condition(depth: int, ctes: tuple[str, ...]) -> st.SearchStrategy[str]:
    leaf = st.sampled_from(["true", f"1 = {HOLE}", f"'x' <> {HOLE}", "1 IS NOT NULL"])
    if depth <= 0:
        return leaf
    sub = select(depth - 1, ctes)
    inner = condition(depth - 1, ctes)
    return st.one_of(
        leaf,
        sub.map(lambda q: f"EXISTS ({q})"),
        sub.map(lambda q: f"1 IN ({q})"),
        sub.map(lambda q: f"(SELECT 1 FROM ({q}) AS {alias()} LIMIT 1) IS NULL"),
        st.tuples(inner, st.sampled_from(["AND", "OR"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda c: f"NOT ({c})"),
    )


def select(depth: int, ctes: tuple[str, ...]) -> st.SearchStrategy[str]:
    target = st.sampled_from(["1", "*", "count(*)", f"{HOLE}"])
    return st.tuples(
        target, st.lists(from_item(depth, ctes), min_size=1, max_size=2),
        st.none() | condition(depth, ctes), st.booleans(),
    ).map(lambda t: (f"SELECT {t[0]} FROM {', '.join(t[1])}"
                     + (f" WHERE {t[2]}" if t[2] else "")
                     + (f" ORDER BY 1 LIMIT {HOLE}" if t[3] else "")))


@st.composite
def query(draw: Any) -> str:
    depth = draw(st.integers(0, 2))
    shape = draw(st.sampled_from(["plain", "setop", "with", "recursive"]))
    if shape == "plain":
        return draw(select(depth, ()))
    if shape == "setop":
        op = draw(st.sampled_from(["UNION", "UNION ALL", "INTERSECT", "EXCEPT"]))
        return f"({draw(select(depth, ()))}) {op} ({draw(select(depth, ()))})"
    first = draw(select(depth, ()))
    if shape == "recursive":
        step = draw(select(depth, ("c1",)))
        return (f"WITH RECURSIVE c1 AS (({first}) UNION ALL ({step})) "
                f"{draw(select(depth, ('c1',)))}")
    second = draw(select(depth, ("c1",)))
    return f"WITH c1 AS ({first}), c2 AS ({second}) {draw(select(depth, ('c1', 'c2')))}"


def fill(sql: str, literals: list[int]) -> str:
    parts = sql.split(HOLE)
    return "".join(p + (str(literals[i % len(literals)]) if i < len(parts) - 1 else "")
                   for i, p in enumerate(parts))


# --- an independent reading of the rewritten tree -----------------------------------------

def range_vars(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[dict, tuple]]:
    """Every RangeVar with the chain above it: (node type, its fields, the field below)."""
    if isinstance(node, list):
        for item in node:
            yield from range_vars(item, path)
    elif isinstance(node, dict):
        if set(node) == {"RangeVar"}:
            yield node["RangeVar"], path
            return
        for key, value in node.items():
            if key[:1].isupper() and isinstance(value, dict):
                for field, inner in value.items():
                    if key == "SelectStmt" and field in ("larg", "rarg"):
                        inner = {"SelectStmt": inner}  # set operation branches are bare
                    yield from range_vars(inner, path + ((key, value, field),))
            else:
                yield from range_vars(value, path)


def is_filter(node: Any, ref: str) -> bool:
    where = (node or {}).get("A_Expr", {})
    column = [f["String"]["sval"] for f in where.get("lexpr", {}).get("ColumnRef", {})
              .get("fields", [])]
    return (where.get("name") == [{"String": {"sval": "="}}]
            and column == [ref, "tenant_id"]
            and where["rexpr"].get("A_Const", {}).get("sval", {}).get("sval") == "initech")


def conjuncts(node: Any) -> list[Any]:
    boolean = (node or {}).get("BoolExpr", {})
    if boolean.get("boolop") == "AND_EXPR":
        return [c for arg in boolean["args"] for c in conjuncts(arg)]
    return [node]


NO_FILTER = object()  # a position where a filter cannot confine the table


def filter_place(path: tuple) -> Any:
    """The condition that must hold the filter of a table read at the end of `path`: the
    ON of the nearest join that null-extends it, else its level's WHERE (None if it has
    none yet); NO_FILTER where no filter can confine it."""
    for kind, fields, field in reversed(path):
        if kind == "RangeTableSample":
            continue
        if kind == "SelectStmt":
            return fields.get("whereClause") if field == "fromClause" else NO_FILTER
        if kind != "JoinExpr" or field not in ("larg", "rarg"):
            return NO_FILTER
        nullable = {"JOIN_LEFT": ("rarg",), "JOIN_RIGHT": ("larg",),
                    "JOIN_FULL": ("larg", "rarg")}.get(fields["jointype"], ())
        if field in nullable:
            full = fields["jointype"] == "JOIN_FULL"
            return NO_FILTER if full or not fields.get("quals") else fields["quals"]
        if fields.get("alias"):
            return NO_FILTER  # the names below are hidden above the join
    return NO_FILTER


def level_names(path: tuple) -> list[str]:
    """The refnames of the FROM items of the level the path's table is read at."""
    for kind, fields, field in reversed(path):
        if kind == "SelectStmt":
            names: list[str] = []
            for item in fields.get("fromClause", []):
                collect_names(item, names)
            return names
    return []


def collect_names(node: dict, names: list[str]) -> None:
    (kind, fields), = node.items()
    if kind == "RangeVar":
        names.append((fields.get("alias") or {}).get("aliasname") or fields["relname"])
    elif kind == "RangeTableSample":
        collect_names(fields["relation"], names)
    elif kind == "JoinExpr":
        collect_names(fields["larg"], names)
        collect_names(fields["rarg"], names)
    else:
        names.append(fields.get("alias", {}).get("aliasname", "?"))


def ref_name(rv: dict) -> str:
    return (rv.get("alias") or {}).get("aliasname") or rv["relname"]


def admits_filter(rv: dict, path: tuple) -> bool:
    """Can a filter confine this table where it stands (else: a derived table)?"""
    return (filter_place(path) is not NO_FILTER and level_names(path).count(ref_name(rv)) == 1
            and not (rv.get("alias") or {}).get("colnames"))


def is_filtered(rv: dict, path: tuple) -> bool:
    """Is this table confined by its filter? (The table inside a derived table is: it is
    the only FROM item of the derived table's query, filtered in its WHERE.)"""
    return admits_filter(rv, path) and any(is_filter(c, ref_name(rv))
                                           for c in conjuncts(filter_place(path)))


def derived_tables(tree: Any) -> int:
    return json.dumps(tree).count('"RangeSubselect"')


def tenant_refs(tree: Any) -> list[dict]:
    return [rv for rv, _ in range_vars(tree) if rv["relname"] in TENANT]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query(), st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=4))
def test_every_tenant_reference_is_confined_whatever_the_nesting(sql: str,
                                                                 literals: list[int]) -> None:
    sql = fill(sql, literals)
    decision = analyze_uncached(sql, SCOPE)
    assert decision.action in ("rewrite", "allow"), (sql, decision.error.message)
    original = json.loads(parser.parse_sql_json(sql))
    if decision.action == "allow":
        assert not tenant_refs(original)
        return
    tree = json.loads(parser.parse_sql_json(decision.sql))
    confined = 0
    for rv, path in range_vars(tree):
        if rv["relname"] in TENANT:
            assert rv.get("schemaname") in ("public", "app"), decision.sql
            assert is_filtered(rv, path), (sql, decision.sql)
            confined += 1
        elif rv["relname"] == "countries":
            assert rv.get("schemaname") == "public"
        else:
            assert "schemaname" not in rv and rv["relname"] in ("c1", "c2")
    # a derived table (one more RangeSubselect) exactly where no filter could stand
    fallbacks = sum(not admits_filter(rv, path) for rv, path in range_vars(original)
                    if rv["relname"] in TENANT)
    assert derived_tables(tree) == derived_tables(original) + fallbacks, (sql, decision.sql)
    assert confined == len(tenant_refs(original)), (sql, decision.sql)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query(), st.lists(st.integers(0, 10**6), min_size=1, max_size=3),
       st.lists(st.integers(-10**9, 10**9), min_size=1, max_size=3))
def test_a_template_hit_sends_what_a_fresh_rewrite_would(sql: str, first: list[int],
                                                         second: list[int]) -> None:
    analyzer = Analyzer()
    one = analyzer.analyze(fill(sql, first), SCOPE)
    two = analyzer.analyze(fill(sql, second), SCOPE)
    fresh = analyze_uncached(fill(sql, second), SCOPE, templates=False)
    assert (two.action, two.rule) == (fresh.action, fresh.rule)
    if fresh.action == "rewrite":
        got = [(s.kind, nodes.strip_locations(s.fields)) for s in nodes.parse(two.sql)]
        want = [(s.kind, nodes.strip_locations(s.fields)) for s in nodes.parse(fresh.sql)]
        assert got == want, (two.sql, fresh.sql)
    if one.template is not None and all(x >= 0 for x in second):
        assert analyzer.hits >= 1  # same token types: served from the template
