"""The analysis cache: shape sharing without conflating what literals decide."""

from __future__ import annotations

import pytest

import proxy.sql.cache as cache_module
from proxy.sql import Analyzer, Scope, analysis
from proxy.sql.cache import MAX_CACHED_CHARS

from tests.unit.test_sql_attacks import DATABASE, SCHEMA


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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


def test_statements_that_differ_in_literals_share_one_analysis(calls) -> None:
    analyzer = Analyzer()
    first = analyzer.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1", SCHEMA)
    second = analyzer.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 2", SCHEMA)
    third = analyzer.analyze("select abalance from pgbench_accounts where aid = 'x'", SCHEMA)
    assert first is second and first.action == "allow"
    assert len(calls) == 2  # a different spelling is a different shape
    assert (analyzer.hits, analyzer.misses) == (1, 2)
    assert third.action == "allow"


def test_exact_repeats_hit(calls) -> None:
    analyzer = Analyzer()
    for _ in range(3):
        analyzer.analyze("SET search_path TO a", DATABASE)
    assert len(calls) == 1 and analyzer.hits == 2


def test_denials_without_literals_are_shared_by_shape(calls) -> None:
    analyzer = Analyzer()
    one = analyzer.analyze("SELECT * FROM hooli.items WHERE id = 1", SCHEMA)
    two = analyzer.analyze("SELECT * FROM hooli.items WHERE id = 2", SCHEMA)
    assert one is two and one.action == "deny" and len(calls) == 1


@pytest.mark.parametrize("scope, pair", [
    (DATABASE, ("SET search_path TO a", "SET search_path TO b")),
    (SCHEMA, ("SELECT nextval('globex.s')", "SELECT nextval('hooli.s')")),
    (SCHEMA, ("SELECT 'globex.t'::regclass", "SELECT 'hooli.t'::regclass")),
    (SCHEMA, ("SELECT $1::regclass", "SELECT 'hooli.t'::regclass")),
    (SCHEMA, ("SELECT to_regclass('globex.t')", "SELECT to_regclass('hooli.t')")),
    (SCHEMA, ("SET statement_timeout = '5s'", "SET statement_timeout = 0")),
    (SCHEMA, ("SET statement_timeout = 5", "SET statement_timeout = 0.4")),
    (SCHEMA, ("SELECT to_tsvector('english', 'x')", "SELECT to_tsvector('hooli.english', 'x')")),
    (SCHEMA, ("SELECT to_tsvector($1, 'x')", "SELECT to_tsvector('english', 'x')")),
    (SCHEMA, ("SELECT 'globex'::regnamespace", "SELECT 'hooli'::regnamespace")),
    (SCHEMA, ("SET client_encoding = 'UTF8'", "SET client_encoding = 'GBK'")),
    (SCHEMA, ("SELECT set_config('timezone', 'UTC', false)",
              "SELECT set_config('app.tenant', 'UTC', false)")),
    (SCHEMA, ("SELECT set_config('timezone', 'UTC', false)",
              "SELECT set_config('timezone', 'Europe/Paris', false)")),
])
def test_decisions_that_read_literals_are_not_conflated(calls, scope, pair) -> None:
    analyzer = Analyzer()
    first, second = (analyzer.analyze(sql, scope) for sql in pair)
    assert len(calls) == 2
    for sql, cached in zip(pair, (first, second)):
        fresh = analysis.analyze_uncached(sql, scope)
        assert (cached.action, cached.settings, cached.rule) == \
               (fresh.action, fresh.settings, fresh.rule)
    assert (first.action, first.settings, first.rule) != \
           (second.action, second.settings, second.rule)


def test_rewrites_are_cached_by_exact_text_only(calls) -> None:
    analyzer = Analyzer()
    a = analyzer.analyze("RESET ALL; SELECT 1", SCHEMA)
    b = analyzer.analyze("RESET ALL; SELECT 2", SCHEMA)
    assert a.action == b.action == "rewrite" and a.sql != b.sql
    assert len(calls) == 2


def test_row_filters_are_never_shared_between_tenants(calls) -> None:
    """The same text for two row tenants: each rewrite carries its own key in every
    filter (the WHERE and the outer join's ON), and each comes from its own analysis."""
    from tests.unit.test_sql_row_rewrite import CATALOG

    analyzer = Analyzer()
    sql = ("SELECT o.id, o.status, count(u.id) FROM orders o LEFT JOIN users u "
           "ON u.id = o.user_id GROUP BY o.id")
    for key in ("initech", "globex", "initech", "globex"):
        scope = Scope("row", row_column="tenant_id", tenant_key=key, row_catalog=CATALOG)
        got = analyzer.analyze(sql, scope)
        assert got.action == "rewrite"
        assert got.sql.count(f"'{key}'") == 2 and got.sql.count("'") == 4, got.sql
    assert len(calls) == 2


def test_scopes_never_share_entries(calls) -> None:
    analyzer = Analyzer()
    assert analyzer.analyze("SELECT * FROM hooli.items", DATABASE).action == "allow"
    assert analyzer.analyze("SELECT * FROM hooli.items", SCHEMA).action == "deny"
    other = Scope("schema", schemas=("hooli",))
    assert analyzer.analyze("SELECT * FROM hooli.items", other).action == "allow"
    assert len(calls) == 3


@pytest.mark.parametrize("texts", [
    ("SELECT * FROM hooli.items", "SELECT * FROM hooli.items"),  # the exact-text entry
    ("SELECT * FROM hooli.items WHERE id = 1", "SELECT * FROM hooli.items WHERE id = 2"),
    ("SELECT * FROM hooli.items WHERE id = 1", "SELECT * FROM hooli.items WHERE id = 12"),
])
def test_scopes_whose_hashes_collide_never_share_entries(calls, texts) -> None:
    """The maps are keyed by `Scope.hash_value`; a scope with the same value is still
    another scope: the tenant that may not read hooli gets its own analysis (a denial)
    by exact text, by digits (the same zeroed text) and by shape."""
    analyzer = Analyzer()
    collides = Scope("schema", schemas=("acme",))
    object.__setattr__(collides, "hash_value", DATABASE.hash_value)
    assert analyzer.analyze(texts[0], DATABASE).action == "allow"
    denied = analyzer.analyze(texts[1], collides)
    assert denied.action == "deny", denied
    assert calls == list(texts)
    assert analyzer.analyze(texts[1], DATABASE).action == "allow"  # its entry is still there


def test_syntax_errors_are_cached_by_exact_text(calls) -> None:
    analyzer = Analyzer()
    assert analyzer.analyze("SELEC 1", SCHEMA).rule == "parse"
    assert analyzer.analyze("SELEC 1", SCHEMA).rule == "parse"
    assert analyzer.analyze("SELEC 2", SCHEMA).rule == "parse"
    assert len(calls) == 2


def test_entries_expire_after_ttl(calls) -> None:
    clock = Clock()
    analyzer = Analyzer(ttl=10.0, clock=clock)
    analyzer.analyze("SELECT 1", SCHEMA)
    clock.now += 9.9
    analyzer.analyze("SELECT 1", SCHEMA)
    analyzer.analyze("SELECT 2", SCHEMA)  # same shape, still fresh
    assert len(calls) == 1
    clock.now += 0.2
    analyzer.analyze("SELECT 1", SCHEMA)
    analyzer.analyze("SELECT 3", SCHEMA)  # stored again at the new time
    assert len(calls) == 2


def test_size_is_bounded_and_oldest_go_first(calls) -> None:
    analyzer = Analyzer(max_entries=16)
    names = [f"c{'x' * i}" for i in range(100)]  # not alike by digits: each its own entry
    for name in names:
        analyzer.analyze(f"SELECT {name} FROM t", SCHEMA)
    assert len(analyzer) <= 3 * 16  # exact, shape and digits-only maps (no templates here)
    analyzer.analyze(f"SELECT {names[-1]} FROM t", SCHEMA)  # young: still cached
    assert len(calls) == 100
    analyzer.analyze(f"SELECT {names[0]} FROM t", SCHEMA)  # old: evicted
    assert len(calls) == 101


def test_very_long_statements_are_not_cached(calls) -> None:
    analyzer = Analyzer()
    sql = "SELECT " + " + ".join(["1"] * (MAX_CACHED_CHARS // 3))
    analyzer.analyze(sql, SCHEMA)
    analyzer.analyze(sql, SCHEMA)
    assert len(calls) == 2 and len(analyzer) == 0


def test_clear_forgets_everything(calls) -> None:
    analyzer = Analyzer()
    analyzer.analyze("SELECT 1", SCHEMA)
    analyzer.clear()
    analyzer.analyze("SELECT 1", SCHEMA)
    assert len(calls) == 2


# -- digits only: statements that differ from a cached one in digits inside its constants ---

def test_digits_inside_constants_share_the_decision_without_normalize(calls, monkeypatch) -> None:
    analyzer = Analyzer()
    analyzer.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1234 AND note = 'a1'",
                     SCHEMA)
    normalized: list[str] = []
    real = cache_module._shape
    monkeypatch.setattr(cache_module, "_shape", lambda sql: normalized.append(sql) or real(sql))
    for aid in (5678, 9012, 3456):
        decision = analyzer.analyze(
            f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid} AND note = 'a{aid % 7}'",
            SCHEMA)
        assert decision.action == "allow"
    assert len(calls) == 1 and normalized == []


def test_a_digit_outside_the_constants_is_not_alike(calls) -> None:
    scope = Scope("schema", schemas=("t1",))
    analyzer = Analyzer()
    assert analyzer.analyze("SELECT * FROM t1.items WHERE id = 10", scope).action == "allow"
    decision = analyzer.analyze("SELECT * FROM t2.items WHERE id = 20", scope)
    assert decision.action == "deny"  # same text with digits zeroed: the schema name differs
    assert calls == ["SELECT * FROM t1.items WHERE id = 10", "SELECT * FROM t2.items WHERE id = 20"]


def test_a_statement_beyond_the_plain_subset_is_not_cut_again_on_every_hit(calls,
                                                                            monkeypatch) -> None:
    from proxy.sql import template
    cuts: list[str] = []
    real = template.fast_shape
    monkeypatch.setattr(template, "fast_shape", lambda sql: cuts.append(sql) or real(sql))
    analyzer = Analyzer()
    for value in range(1, 10):  # a comment: never plain; the same digits zeroed each time
        assert analyzer.analyze(f"SELECT {value} /* app:orders */", SCHEMA).action == "allow"
    assert len(calls) == 1 and len(cuts) == 1
