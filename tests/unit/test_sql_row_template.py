"""Rewritten SQL shared by statement shape: templates filled with each statement's literals
(pgbench -S in simple mode sends a new literal every time)."""

from __future__ import annotations

import pytest

import proxy.sql.analysis as analysis
import proxy.sql.cache as cache_module
from proxy.sql import Analyzer, Scope, analyze_uncached, nodes, template
from proxy.sql.rowmodel import RowCatalog, RowTable

from tests.unit.test_sql_row_rewrite import CATALOG, SCOPE

pytestmark = pytest.mark.timeout(60)

PGBENCH = "SELECT abalance FROM pgbench_accounts WHERE aid = {}"


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL text that reached the uncached analysis."""
    seen: list[str] = []
    real = cache_module.analyze_uncached

    def counting(sql: str, scope: Scope):
        seen.append(sql)
        return real(sql, scope)

    monkeypatch.setattr(cache_module, "analyze_uncached", counting)
    return seen


def same_tree(one: str, two: str) -> bool:
    """Do two SQL texts parse to the same statements (positions aside)?"""
    return [(s.kind, nodes.strip_locations(s.fields)) for s in nodes.parse(one)] == \
        [(s.kind, nodes.strip_locations(s.fields)) for s in nodes.parse(two)]


def test_pgbench_select_only_is_served_from_one_template(calls) -> None:
    analyzer = Analyzer()
    for aid in range(1, 1001):
        decision = analyzer.analyze(PGBENCH.format(aid * 7919 % 100000), SCOPE)
        assert decision.action == "rewrite"
    assert len(calls) == 1
    assert analyzer.hits / (analyzer.hits + analyzer.misses) > 0.99
    # the tenant's filter sits next to the client's qual: no subquery, the index on aid serves
    assert decision.sql == (f"SELECT abalance FROM public.pgbench_accounts WHERE "
                            f"aid = {aid * 7919 % 100000} AND "
                            f"pgbench_accounts.tenant_id = 'initech'")


@pytest.mark.parametrize("first, second", [
    (PGBENCH.format(1), PGBENCH.format(123456789)),
    (PGBENCH.format(-1), PGBENCH.format(- 5)),
    (PGBENCH.format("- 1"), PGBENCH.format("- 7")),
    (PGBENCH.format("1.5"), PGBENCH.format("2.75e3")),
    ("SELECT * FROM orders WHERE status = 'a'", "SELECT * FROM orders WHERE status = 'it''s'"),
    ("SELECT * FROM orders WHERE status = 'a'", "SELECT * FROM orders WHERE status = '$1'"),
    ("SELECT * FROM orders WHERE status = 'a'",
     "SELECT * FROM orders WHERE status = ') OR true --'"),
    ("SELECT * FROM orders WHERE status = E'a\\n'", "SELECT * FROM orders WHERE status = E'\\''"),
    ("SELECT * FROM orders WHERE status = $$a$$", "SELECT * FROM orders WHERE status = $$'$$"),
    ("SELECT * FROM orders WHERE status = $t$a$t$", "SELECT * FROM orders WHERE status = $t$$$t$"),
    ("SELECT * FROM orders WHERE status = 'a'\n'b'",
     "SELECT * FROM orders WHERE status = 'c'\n'd'"),
    ("SELECT * FROM orders WHERE status = B'01'", "SELECT * FROM orders WHERE status = B'1'"),
    ("SELECT * FROM orders WHERE id = $1 AND status = 'x'",
     "SELECT * FROM orders WHERE id = $1 AND status = 'y'"),
    ("SELECT * FROM orders WHERE id = 1 /* $1 */ AND status = 'x' -- $2",
     "SELECT * FROM orders WHERE id = 2 /* $1 */ AND status = 'y' -- $2"),
    ("SELECT ('{1,2}'::int[])[1], date '2020-01-01' + interval '1 day' FROM orders LIMIT 1",
     "SELECT ('{3}'::int[])[2], date '2021-02-02' + interval '2 days' FROM orders LIMIT 9"),
    ("SELECT * FROM orders WHERE id IN (1, 2) ORDER BY 1 OFFSET 5",
     "SELECT * FROM orders WHERE id IN (3, 4) ORDER BY 2 OFFSET 6"),
    ("SELECT extract('day' from now()), 'é' FROM orders",
     "SELECT extract('year' from now()), 'ü😀' FROM orders"),
    ("UPDATE orders SET status = 'a' WHERE id = 1", "UPDATE orders SET status = 'b' WHERE id = 2"),
    ("INSERT INTO orders (id, total) VALUES (1, 2.5), (3, -4)",
     "INSERT INTO orders (id, total) VALUES (5, 6.5), (7, -8)"),
    ("INSERT INTO orders (id, tenant_id) VALUES (1, 'initech')",
     "INSERT INTO orders (id, tenant_id) VALUES (2, 'initech')"),
    ("BEGIN; SELECT * FROM orders WHERE id = 1; COMMIT",
     "BEGIN; SELECT * FROM orders WHERE id = 2; COMMIT"),
    ("SELECT 1; SELECT * FROM orders WHERE id = 1", "SELECT 1; SELECT * FROM orders WHERE id = 2"),
    ("COPY (SELECT * FROM orders WHERE id = 1) TO STDOUT",
     "COPY (SELECT * FROM orders WHERE id = 22) TO STDOUT"),
    # filters in ONs and WHEREs, fallbacks, writes with FROM items
    ("SELECT u.id, count(o.id) FROM users u LEFT JOIN orders o ON o.user_id = u.id "
     "AND o.total > 5 WHERE u.id < 10 OR u.email = 'x' GROUP BY u.id",
     "SELECT u.id, count(o.id) FROM users u LEFT JOIN orders o ON o.user_id = u.id "
     "AND o.total > 7 WHERE u.id < 12 OR u.email = 'y' GROUP BY u.id"),
    ("SELECT * FROM users u FULL JOIN orders o ON o.total = 1",
     "SELECT * FROM users u FULL JOIN orders o ON o.total = 2"),
    ("UPDATE orders o SET total = 1 FROM users u WHERE u.id = 2",
     "UPDATE orders o SET total = 3 FROM users u WHERE u.id = 4"),
    ("SELECT * FROM orders WHERE status = 'initech'", "SELECT * FROM orders WHERE status = 'x'"),
])
def test_a_hit_sends_what_a_fresh_rewrite_would(calls, first: str, second: str) -> None:
    analyzer = Analyzer()
    analyzer.analyze(first, SCOPE)
    decision = analyzer.analyze(second, SCOPE)
    assert calls == [first], "the second statement must come from the template"
    fresh = analyze_uncached(second, SCOPE, templates=False)
    assert decision.action == fresh.action == "rewrite"
    assert same_tree(decision.sql, fresh.sql), (decision.sql, fresh.sql)


@pytest.mark.parametrize("first, second", [
    # constants the template does not hold must be spelled the same
    ("SELECT total::numeric(10,2) FROM orders WHERE id = 1",
     "SELECT total::numeric(12,2) FROM orders WHERE id = 1"),
    ("SELECT * FROM orders WHERE status = U&'d\\0061t'",
     "SELECT * FROM orders WHERE status = U&'x\\0061t'"),
    ("COPY orders TO STDOUT WITH (DELIMITER ',')", "COPY orders TO STDOUT WITH (DELIMITER ';')"),
    # the literal compared with the tenant key is part of what is checked
    ("INSERT INTO orders (id, tenant_id) VALUES (1, 'initech')",
     "INSERT INTO orders (id, tenant_id) VALUES (1, 'globex')"),
    # different token types or comments are different shapes
    (PGBENCH.format(1), PGBENCH.format("'1'")),
    (PGBENCH.format(1), PGBENCH.format(-1)),
    (PGBENCH.format(1), PGBENCH.format("1 -- x")),
    # a comment between the sign and the number: the negative constant is not templated
    (PGBENCH.format("- /* x */ 1"), PGBENCH.format("- /* x */ 7")),
])
def test_what_the_template_does_not_hold_is_analysed_afresh(calls, first: str,
                                                             second: str) -> None:
    analyzer = Analyzer()
    analyzer.analyze(first, SCOPE)
    decision = analyzer.analyze(second, SCOPE)
    assert calls == [first, second]
    fresh = analyze_uncached(second, SCOPE)
    assert (decision.action, decision.sql, decision.rule) == (fresh.action, fresh.sql,
                                                              fresh.rule)


def test_a_tenant_key_refusal_is_not_shared_by_shape(calls) -> None:
    analyzer = Analyzer()
    sql = "INSERT INTO orders (id, tenant_id) VALUES (1, {})"
    assert analyzer.analyze(sql.format("'globex'"), SCOPE).action == "deny"
    assert analyzer.analyze(sql.format("'initech'"), SCOPE).action == "rewrite"
    assert analyzer.analyze(sql.format("'globex'"), SCOPE).action == "deny"
    assert len(calls) == 2  # the last one from the exact-text cache


@pytest.mark.parametrize("sql", [
    PGBENCH,
    "SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id AND o.total > {}",
    "SELECT * FROM users u FULL JOIN orders o ON o.total > {}",
    "DELETE FROM orders USING users u WHERE u.id = {}",
])
def test_templates_are_per_scope(calls, sql: str) -> None:
    """The tenant key in a filter is never a template slot; another tenant's statement of
    the same shape gets its own analysis and its own key in every filter."""
    analyzer = Analyzer()
    other = Scope("row", row_column="tenant_id", tenant_key="globex", row_catalog=CATALOG)
    mine = analyzer.analyze(sql.format(1), SCOPE)
    theirs = analyzer.analyze(sql.format(2), other)
    again = analyzer.analyze(sql.format(3), SCOPE)
    assert "'initech'" in mine.sql and "'globex'" not in mine.sql
    assert "'globex'" in theirs.sql and "'initech'" not in theirs.sql
    assert mine.sql.count("'initech'") == theirs.sql.count("'globex'")  # one per filter
    assert again.sql == analyze_uncached(sql.format(3), SCOPE, templates=False).sql
    assert len(calls) == 2  # the third from the first one's template


def test_literals_go_back_in_parentheses_unless_that_cannot_matter() -> None:
    def sql(text: str) -> str:
        where = analyze_uncached(text, SCOPE).sql.split("FROM public.orders ")[-1]
        return where.removesuffix(" AND orders.tenant_id = 'initech'")

    assert sql("SELECT * FROM orders WHERE id = 5") == "WHERE id = 5"
    assert sql("SELECT * FROM orders WHERE id = -5") == "WHERE id = (-5)"
    assert sql("SELECT * FROM orders WHERE id IN (1, 2)") == "WHERE id IN (1, 2)"
    assert sql("SELECT * FROM orders WHERE id::text = '1'") == \
        "WHERE CAST(id AS text) = '1'"
    assert analyze_uncached("SELECT ('{1}'::int[])[1] FROM orders", SCOPE).sql.startswith(
        "SELECT (CAST('{1}' AS integer[]))[1] FROM")


def test_a_template_that_fails_its_check_falls_back_to_a_plain_rewrite(monkeypatch) -> None:
    real_finish = template.Templater.finish

    def broken(self, text):
        made = real_finish(self, text)
        return template.Template(made.key, (b"SELECT * FROM public.orders",), (), ())

    monkeypatch.setattr(template.Templater, "finish", broken)
    decision = analyze_uncached(PGBENCH.format(1), SCOPE)
    assert decision.action == "rewrite" and decision.template is None
    assert decision.sql == ("SELECT abalance FROM public.pgbench_accounts WHERE aid = 1 "
                            "AND pgbench_accounts.tenant_id = 'initech'")


def test_decisions_that_read_a_literal_get_no_template() -> None:
    decision = analyze_uncached("SELECT 'users'::regclass FROM orders", SCOPE)
    assert decision.action == "rewrite" and decision.template is None


def test_shape_masks_constants_only() -> None:
    one = template.shape("SELECT a FROM t WHERE x = 'p' AND y = 12 AND z = $1")
    two = template.shape("SELECT a FROM t WHERE x = 'q''r' AND y = 345 AND z = $1")
    assert one.key == two.key
    assert [two.text[s:e] for s, e in two.spans] == ["'q''r'", "345"]
    assert template.shape("SELECT a FROM t WHERE x = 'p' AND y = 12 AND z = $2").key != one.key
    assert template.shape("SELECT 'a\x00'") is None
    assert template.shape("SELECT " + "1, " * 5000 + "1") is None


def test_the_cache_counts_template_hits_and_clears_them() -> None:
    analyzer = Analyzer()
    for aid in range(5):
        analyzer.analyze(PGBENCH.format(aid), SCOPE)
    assert (analyzer.hits, analyzer.misses) == (4, 1)
    assert len(analyzer) >= 2
    analyzer.clear()
    assert len(analyzer) == 0


def test_templates_expire_with_the_ttl(calls) -> None:
    now = [1000.0]
    analyzer = Analyzer(ttl=10, clock=lambda: now[0])
    analyzer.analyze(PGBENCH.format(1), SCOPE)
    now[0] += 11
    analyzer.analyze(PGBENCH.format(2), SCOPE)
    assert len(calls) == 2


def test_big_catalogs_hash_once() -> None:
    tables = tuple(RowTable("public", f"t{i}", tuple(f"c{j}" for j in range(20)))
                   for i in range(500))
    catalog = RowCatalog("tenant_id", tables)
    assert hash(catalog) == hash(RowCatalog("tenant_id", tables))
    assert catalog == RowCatalog("tenant_id", tables)
    assert catalog != RowCatalog("tenant_id", tables[1:])
    assert hash(Scope("row", row_catalog=catalog)) == hash(Scope("row", row_catalog=catalog))


def test_row_catalog_resolution() -> None:
    assert CATALOG.table(None, "items") == RowTable("app", "items", ("id", "tenant_id", "name"))
    assert CATALOG.table("public", "orders").columns[1] == "tenant_id"
    assert CATALOG.table("app", "orders") is None
    assert CATALOG.table(None, "countries") is None and CATALOG.is_shared(None, "countries")
    assert CATALOG.is_shared("ref", "currencies") and not CATALOG.is_shared(None, "currencies")
    assert CATALOG.resolve(None, "pg_class") is None  # pg_catalog comes first
    both = RowCatalog("t", (RowTable("b", "x"),), shared_tables=(("a", "x"),),
                      search_path=("a", "b"))
    assert both.is_shared(None, "x") and both.table("b", "x") is not None
    assert analysis.Decision("allow") == analysis.Decision("allow")
