"""The shortcut of the template key (template.fast_shape) against the server's lexer,
and the analysis cache's entries for statements alike but for digits.

Whatever it accepts, each of its spans must be exactly a constant token pglast's scan
finds (a constant it leaves, like `.5` in `t1.5`, stays in the key as text), and two
statements with the same plain key must scan to the same tokens apart from the
constants' contents. The cache may use a plain key as an alias of the normalized shape
only where normalize replaced the very same constants.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from pglast import parser

from proxy.sql import Analyzer, Scope, analyze_uncached, template
from proxy.sql.cache import _normalized_alike

from tests.unit.test_sql_row_rewrite import SCOPE
from tests.unit.test_sql_row_template import calls, same_tree  # noqa: F401  (fixture)

TENANT_SCHEMA = Scope("schema", schemas=("t1",))

CONSTANT_TOKENS = {"SCONST", "ICONST", "FCONST", "BCONST", "XCONST", "USCONST"}

# Pieces that meet at every boundary the lexer has: words and numbers glued together,
# dots, signs and exponents, quotes in every role, and everything outside the subset.
FRAGMENTS = ["SELECT", " ", "a", "t1", "_x", "e", "E", "U&", "B", "x", ".", "..", "1", "42",
             "1.5", ".5", "1e5", "2E-3", "'", "''", "'a'", "'it''s'", "' '", ",", "(", ")",
             "=", "-", "--", "/*", "*/", "*", "/", ":", "::", "[", "]", "$", "$1", "$$", '"',
             "\\", "\n", "\t", ";", "é", "😀", "+", "<", ">", "!", "&", "|", "%", "#", "@"]


def constant_spans(sql: str) -> list[tuple[int, int]] | None:
    """(start, end) of every constant token the server's lexer finds; None if it fails."""
    try:
        tokens = parser.scan(sql)
    except Exception:
        return None
    return [(t.start, t.end + 1) for t in tokens if t.name in CONSTANT_TOKENS]


def token_names(sql: str) -> list[str]:
    """The tokens, constants by kind only (integer and float alike: a template slot holds
    either as the text the client wrote, and normalize makes both `$n`)."""
    kinds = {"ICONST": "number", "FCONST": "number"}
    return [kinds.get(t.name, t.name) if t.name in CONSTANT_TOKENS
            else f"{t.name}:{sql[t.start:t.end + 1]}" for t in parser.scan(sql)]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=14))
def test_a_plain_shape_masks_only_whole_constant_tokens(pieces: list[str]) -> None:
    sql = "".join(pieces)
    found = template.fast_shape(sql)
    if found is None:
        return
    spans = constant_spans(sql)
    if spans is not None:  # text the lexer rejects is refused by the analysis anyway
        assert set(found.spans) <= set(spans), sql


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=10),
       st.lists(st.sampled_from(FRAGMENTS), max_size=10))
def test_one_plain_key_means_one_token_sequence(one: list[str], two: list[str]) -> None:
    first, second = "".join(one), "".join(two)
    a, b = template.fast_shape(first), template.fast_shape(second)
    if a is None or b is None or a.key != b.key:
        return
    if constant_spans(first) is None or constant_spans(second) is None:
        return
    assert token_names(first) == token_names(second), (first, second)


@pytest.mark.parametrize("sql", [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 123456;",
    "SELECT * FROM t1 WHERE a = 'x''y' AND b IN (1, 2.5, .5e3, 1.) AND c = '$1 -- /*'",
    "select 'a'''", "SELECT 'é' || '😀'", "SELECT - 5, t2.c3 - -4",
])
def test_plain_statements_take_the_shortcut(sql: str) -> None:
    found = template.fast_shape(sql)
    assert found is not None and found.plain
    assert list(found.spans) == constant_spans(sql)


@pytest.mark.parametrize("sql", [
    "SELECT E'a'", "SELECT U&'a'", "SELECT B'01'", "SELECT x'1F'", "SELECT 'a'\n'b'",
    "SELECT 'a", "SELECT 'a''", "SELECT $1", "SELECT $$a$$", 'SELECT "a\'b"',
    "SELECT 1 -- it's", "SELECT 1 /* ' */", "SELECT é1", "SELECT \\'a'", "SELECT 'a\x00'",
])
def test_anything_beyond_the_subset_is_scanned(sql: str) -> None:
    assert template.fast_shape(sql) is None


@pytest.mark.parametrize("sql, alike", [
    ("SELECT * FROM t WHERE a = 1 AND b = 'x'", True),
    ("SELECT 1::varchar(10)", False),  # normalize keeps the type modifier
    ("SELECT * FROM t WHERE a = -1", False),  # normalize folds the sign into the constant
    ("COPY t TO STDOUT WITH (FORMAT 'csv')", False),  # normalize keeps utility options
])
def test_a_plain_key_is_an_alias_only_where_normalize_agrees(sql: str, alike: bool) -> None:
    assert _normalized_alike(template.fast_shape(sql), parser.normalize(sql)) is alike


def test_a_statement_the_row_rewrite_leaves_alone_is_served_by_its_plain_key(calls) -> None:
    analyzer = Analyzer()
    for value in range(1, 51):
        decision = analyzer.analyze(f"SELECT {value} + {value * 3}, 'v{value}'", SCOPE)
        assert decision.action == "allow"
    assert len(calls) == 1


def test_a_constant_normalize_keeps_is_not_shared_by_the_plain_key(calls) -> None:
    analyzer = Analyzer()
    analyzer.analyze("SELECT 1::varchar(10)", SCOPE)
    analyzer.analyze("SELECT 1::varchar(20)", SCOPE)
    assert calls == ["SELECT 1::varchar(10)", "SELECT 1::varchar(20)"]


DIGIT_STATEMENTS = [  # {n}: a digit, in a constant or in a name
    "SELECT * FROM t{0}.items WHERE id = {1}{2}",
    "SELECT * FROM orders WHERE id = {0} AND status = 'x{1}' LIMIT {2}",
    "SELECT c{0} FROM orders o{1} WHERE o{1}.id = {2}.{3}",
    "SELECT * FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = {0}{1} OR o.id = {2}",
    "UPDATE orders SET total = {0}.{1}e{2} WHERE id = {3}",
    "INSERT INTO orders (id, tenant_id) VALUES ({0}, 'initech')",
    "SELECT * FROM orders WHERE tenant_id = 'initech{0}' AND id = {1}",
]


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(DIGIT_STATEMENTS), st.sampled_from([SCOPE, TENANT_SCHEMA]),
       st.lists(st.integers(0, 9), min_size=4, max_size=4),
       st.lists(st.integers(0, 9), min_size=4, max_size=4))
def test_a_statement_alike_by_digits_gets_what_a_fresh_analysis_gives(
        statement: str, scope, first: list[int], second: list[int]) -> None:
    analyzer = Analyzer()
    analyzer.analyze(statement.format(*first), scope)
    sql = statement.format(*second)
    got, fresh = analyzer.analyze(sql, scope), analyze_uncached(sql, scope, templates=False)
    assert (got.action, got.rule) == (fresh.action, fresh.rule), sql
    if fresh.action == "rewrite":
        assert same_tree(got.sql, fresh.sql), (got.sql, fresh.sql)
