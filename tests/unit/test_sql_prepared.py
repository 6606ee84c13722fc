"""Which row rewrites the server may prepare, and the Bind each statement of a shape gets
(proxy.sql.prepared). The types given to number literals are checked against PostgreSQL
itself in tests/integration/test_row_prepared.py."""

from __future__ import annotations

import dataclasses

import pytest

from proxy.protocol import decoders
from proxy.sql import Analyzer, analyze_uncached, prepared
from tests.unit.test_sql_row_rewrite import SCOPE

pytestmark = pytest.mark.timeout(60)

PGBENCH = "SELECT abalance FROM pgbench_accounts WHERE aid = {}"


def messages(data: bytes) -> list[tuple[str, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 1:pos + 5], "big")
        out.append((chr(data[pos]), data[pos:pos + 1 + length]))
        pos += 1 + length
    return out


def bind_of(decision) -> tuple[str, list[tuple[int, bytes | None]], str]:
    """(statement name, parameters, message types) of what a decision sends."""
    statement, sent = decision.bound
    found = messages(sent)
    bind = found[0][1]
    assert decoders.decode_bind(bind).statement == statement.server_name
    return (statement.server_name, decoders.bind_parameters(bind),
            "".join(kind for kind, _ in found))


@pytest.mark.parametrize("sql", [
    PGBENCH.format(5),
    "SELECT id, total FROM orders WHERE id = 5 AND total > 1.5 LIMIT 10",
    "UPDATE orders SET total = total + 5 WHERE id = 7",
    "UPDATE orders SET total = total + 5 WHERE id = 7 RETURNING total",
    "DELETE FROM orders WHERE id = -3",
    "INSERT INTO orders (id, total) VALUES (1, 2), (3, 4.5)",
    "SELECT count(*) FROM orders WHERE total > 100 GROUP BY user_id",
    "SELECT id FROM orders WHERE id = 5 ORDER BY total + 1",
])
def test_numbers_only_rewrites_are_prepared(sql: str) -> None:
    decision = analyze_uncached(sql, SCOPE)
    assert decision.action == "rewrite"
    assert decision.server_form is not None and decision.bound is not None
    assert "$1" in decision.server_form.sql and "'initech'" in decision.server_form.sql


@pytest.mark.parametrize("sql", [
    "SELECT id FROM orders WHERE status = 'open'",  # a string: unknown-typed, may not resolve
    "SELECT * FROM orders WHERE id = 5",  # result columns change with the table
    "SELECT o.* FROM orders o WHERE id = 5",
    "UPDATE orders SET total = 1 WHERE id = 5 RETURNING *",
    "SELECT id, total FROM orders WHERE id > 5 ORDER BY 2",  # a position, not a value
    "SELECT user_id, count(*) FROM orders WHERE id > 5 GROUP BY 1",
    "SELECT user_id, count(*) FROM orders WHERE id > 5 GROUP BY ROLLUP (1)",
    "SELECT DISTINCT ON (1) user_id FROM orders WHERE id > 5",
    "SELECT id FROM orders WHERE id = 5; SELECT id FROM orders WHERE id = 6",
    "SELECT id FROM orders WHERE id = 5 UNION SELECT * FROM orders WHERE id = 6",
])
def test_other_rewrites_stay_simple_queries(sql: str) -> None:
    decision = analyze_uncached(sql, SCOPE)
    assert decision.action == "rewrite"
    assert decision.server_form is None and decision.bound is None


def test_row_prepare_off_prepares_nothing() -> None:
    decision = analyze_uncached(PGBENCH.format(5), dataclasses.replace(SCOPE, row_prepare=False))
    assert decision.action == "rewrite" and decision.bound is None


def test_every_statement_of_a_shape_binds_its_own_literals_to_one_statement() -> None:
    analyzer = Analyzer()
    names = set()
    for aid in (5, 123456, 42):
        decision = analyzer.analyze(PGBENCH.format(aid), SCOPE)
        name, params, kinds = bind_of(decision)
        names.add(name)
        assert params == [(0, str(aid).encode())]
        assert kinds == "BDES"  # Bind, Describe (the RowDescription), Execute, Sync
    assert len(names) == 1
    assert analyzer.misses == 1


def test_a_statement_without_result_rows_is_not_described() -> None:
    decision = analyze_uncached("UPDATE orders SET total = total + 5 WHERE id = 7", SCOPE)
    assert bind_of(decision)[1:] == ([(0, b"5"), (0, b"7")], "BES")


def test_a_folded_minus_goes_with_its_number() -> None:
    decision = Analyzer().analyze(PGBENCH.format("- 12"), SCOPE)
    assert bind_of(decision)[1] == [(0, b"-12")]


def test_a_number_beyond_int4_is_another_statement() -> None:
    analyzer = Analyzer()
    small = bind_of(analyzer.analyze(PGBENCH.format(5), SCOPE))[0]
    large = bind_of(analyzer.analyze(PGBENCH.format(5_000_000_000), SCOPE))[0]
    assert small != large  # int4 and int8 parameters: two server statements


@pytest.mark.parametrize("value, oid", [
    ("5", prepared.INT4), ("-5", prepared.INT4), ("999999999", prepared.INT4),
    ("2147483647", prepared.INT4), ("-2147483648", prepared.INT4),
    ("2147483648", prepared.INT8), ("-9223372036854775808", prepared.INT8),
    ("9223372036854775808", prepared.NUMERIC), ("1.5", prepared.NUMERIC),
    (".5", prepared.NUMERIC), ("5.", prepared.NUMERIC), ("-1e3", prepared.NUMERIC),
])
def test_number_types_follow_postgresqls_constants(value: str, oid: int) -> None:
    assert prepared.number_type(value) == oid


@pytest.mark.parametrize("value", ["0x1F", "1_000", "\u0663", "1e", "--5", "", "5 "])
def test_anything_but_a_plain_decimal_number_is_not_bound(value: str) -> None:
    assert prepared.number_type(value) is None


def test_a_literal_that_is_not_plain_goes_as_text() -> None:
    form = analyze_uncached(PGBENCH.format(5), SCOPE).server_form
    text = PGBENCH.format("1_000")
    start = text.index("1_000")
    assert form.bind(text, ((start, start + 5),)) is None
