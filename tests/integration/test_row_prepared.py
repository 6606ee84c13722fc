"""Row rewrites of numbers-only shapes go to the server as prepared statements
(proxy.sql.prepared), and the client gets exactly what its simple Query would get.

Every proxy here has pool_size 1, so the one server connection's `pg_stat_activity.query`
tells how the last statement reached PostgreSQL: a prepared statement shows its `$n` text.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.localpg import LocalPostgres
from proxy.sample import SampleInfo
from tests.helpers import (RunningProxy, backend_query, error_fields, message, raw_login,
                           read_message, row_sample_copy, sqlstate, start_proxy,
                           table_checksum)

pytestmark = pytest.mark.timeout(120)

ROWDB = f"rowprepared_{os.getpid()}"
SHAPE = "SELECT item, amount FROM orders WHERE id = {}"


@pytest.fixture(scope="module")
def row_sample(pg: LocalPostgres, sample: SampleInfo) -> Iterator[SampleInfo]:
    """A copy of the row sample of its own: these tests write rows and alter a column."""
    with row_sample_copy(pg, sample, ROWDB) as info:
        yield info


@pytest.fixture(scope="module", params=("both", "rewrite"))
def proxy(request, pg: LocalPostgres, row_sample: SampleInfo,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    running = start_proxy(pg, row_sample, workdir=tmp_path_factory.mktemp("prepared"),
                          row_tenants=True, row_enforce=request.param, pool_size=1)
    try:
        yield running
    finally:
        running.stop()


def connect(proxy: RunningProxy, sample: SampleInfo, tenant: str,
            application_name: str = "prepared") -> psycopg.Connection:
    """The proxy restores application_name on the server connection it leases: it tells
    that connection from other proxies' in `last_server_query`."""
    return proxy.connect(f"app.{tenant}", sample.password("app"), autocommit=True,
                         application_name=application_name)


def order_ids(pg: LocalPostgres, tenant: str) -> list[int]:
    return [row[0] for row in backend_query(
        pg, ROWDB, f"SELECT id FROM public.orders WHERE tenant_id = '{tenant}' ORDER BY id")]


def last_server_query(pg: LocalPostgres, application_name: str = "prepared") -> str:
    """The last statement of the one server connection serving `application_name`."""
    rows = backend_query(pg, ROWDB, "SELECT query FROM pg_stat_activity WHERE datname = "
                         "current_database() AND application_name = %s", (application_name,))
    assert len(rows) == 1, rows
    return rows[0][0]


def read_answers(sock, count: int) -> list[list[tuple[str, bytes]]]:
    """The messages of the next `count` answers (each up to its ReadyForQuery)."""
    answers: list[list[tuple[str, bytes]]] = [[]]
    while len(answers) <= count:
        kind, body = read_message(sock)
        answers[-1].append((kind, body))
        if kind == "Z":
            answers.append([])
    return answers[:count]


def test_a_numbers_only_shape_is_prepared_and_answers_as_the_backend(proxy, row_sample,
                                                                    pg) -> None:
    ids = order_ids(pg, "initech")
    with connect(proxy, row_sample, "initech") as conn:
        for order_id in ids:
            cur = conn.execute(SHAPE.format(order_id))
            got = (cur.fetchall(), [(c.name, c.type_code) for c in cur.description],
                   cur.statusmessage)
            assert "id = $1" in last_server_query(pg)
            with psycopg.connect(pg.dsn(dbname=ROWDB), autocommit=True) as direct:
                cur = direct.execute(f"SELECT item, amount FROM public.orders WHERE id = "
                                     f"{order_id}")
                want = (cur.fetchall(), [(c.name, c.type_code) for c in cur.description],
                        cur.statusmessage)
            assert got == want


def test_number_literals_get_the_type_postgresql_gives_them(proxy, row_sample, pg) -> None:
    """Each number goes as a parameter typed as PostgreSQL types the literal."""
    literals = ["5", "-5", "- 7", "2147483647", "2147483648", "-2147483648", "-2147483649",
                "9223372036854775807", "9223372036854775808", "-9223372036854775808",
                "00000000001", "1.5", ".5", "5.", "1e3", "-1.5e-3",
                "123456789012345678901234567890"]
    order_id = order_ids(pg, "initech")[0]
    with connect(proxy, row_sample, "initech") as conn, \
            psycopg.connect(pg.dsn(dbname=ROWDB), autocommit=True) as direct:
        for literal in literals:
            sql = f"SELECT pg_typeof({literal})::text, {literal} FROM orders WHERE id = {order_id}"
            got = conn.execute(sql).fetchall()
            assert "pg_typeof($1)" in last_server_query(pg), literal
            want = direct.execute(f"SELECT pg_typeof({literal})::text, {literal}").fetchall()
            assert got == want, literal


NUMBER_LITERALS = st.one_of(
    st.integers(min_value=-10**25, max_value=10**25).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(literal=NUMBER_LITERALS)
def test_any_number_literal_has_the_type_and_value_it_has_in_postgresql(
        proxy, row_sample, pg, literal: str) -> None:
    """Property: through the prepared rewrite, a number literal's type and value are those
    PostgreSQL gives it in a simple Query (compared with the backend directly)."""
    order_id = order_ids(pg, "initech")[0]
    with connect(proxy, row_sample, "initech") as conn, \
            psycopg.connect(pg.dsn(dbname=ROWDB), autocommit=True) as direct:
        got = conn.execute(f"SELECT pg_typeof({literal})::text, ({literal})::text FROM orders "
                           f"WHERE id = {order_id}").fetchall()
        want = direct.execute(f"SELECT pg_typeof({literal})::text, ({literal})::text").fetchall()
        assert "pg_typeof($1)" in last_server_query(pg)  # it went as a parameter
    assert got == want


def test_another_tenants_rows_do_not_come_back_or_change(proxy, row_sample, pg) -> None:
    theirs = order_ids(pg, "vandelay")
    before = table_checksum(pg, ROWDB, "public.orders")
    with connect(proxy, row_sample, "initech") as conn:
        for order_id in theirs:
            assert conn.execute(SHAPE.format(order_id)).fetchall() == []
            cur = conn.execute(f"UPDATE orders SET amount = amount + 1 WHERE id = {order_id}")
            assert cur.statusmessage == "UPDATE 0"
            assert conn.execute(f"DELETE FROM orders WHERE id = {order_id} "
                                f"RETURNING amount").fetchall() == []
            assert "id = $1" in last_server_query(pg)
    assert table_checksum(pg, ROWDB, "public.orders") == before


def test_tenants_alternating_on_one_connection_each_use_their_own_statement(
        proxy, row_sample, pg) -> None:
    mine, theirs = order_ids(pg, "initech"), order_ids(pg, "vandelay")
    with connect(proxy, row_sample, "initech") as initech, \
            connect(proxy, row_sample, "vandelay") as vandelay:
        for _ in range(3):
            for order_id in mine + theirs:
                got_initech = initech.execute(SHAPE.format(order_id)).fetchall()
                got_vandelay = vandelay.execute(SHAPE.format(order_id)).fetchall()
                assert bool(got_initech) == (order_id in mine)
                assert bool(got_vandelay) == (order_id in theirs)


def test_dml_keeps_its_command_tag_and_a_rolled_back_update_changes_nothing(
        proxy, row_sample, pg) -> None:
    order_id = order_ids(pg, "initech")[0]
    before = table_checksum(pg, ROWDB, "public.orders")
    with connect(proxy, row_sample, "initech") as conn:
        conn.execute("BEGIN")
        cur = conn.execute(f"UPDATE orders SET amount = amount + 5 WHERE id = {order_id}")
        assert cur.statusmessage == "UPDATE 1" and cur.description is None
        assert "amount + $1" in last_server_query(pg)
        returned = conn.execute(f"UPDATE orders SET amount = amount - 2 WHERE id = {order_id} "
                                "RETURNING amount").fetchall()
        conn.execute("ROLLBACK")
    original = backend_query(pg, ROWDB, f"SELECT amount FROM public.orders WHERE id = {order_id}")
    assert returned == [(original[0][0] + 3,)]
    assert table_checksum(pg, ROWDB, "public.orders") == before


def test_after_an_error_the_shape_is_prepared_again_and_works(proxy, row_sample, pg) -> None:
    """The failed statement stays prepared on the server: it is closed before the next Parse
    (else 42P05 'already exists'). In a transaction the error aborts it, as for a Query."""
    first, second = order_ids(pg, "initech")[:2]
    divided = "SELECT item FROM orders WHERE id = {} / {}"
    with connect(proxy, row_sample, "initech") as conn:
        assert conn.execute(divided.format(first, 1)).fetchall()
        with pytest.raises(psycopg.Error) as failed:
            conn.execute(divided.format(first, 0))
        assert sqlstate(failed.value) == "22012"
        assert conn.execute(divided.format(second, 1)).fetchall()
        conn.execute("BEGIN")
        with pytest.raises(psycopg.Error) as failed:
            conn.execute(divided.format(first, 0))
        with pytest.raises(psycopg.Error) as aborted:
            conn.execute(divided.format(first, 1))
        assert sqlstate(aborted.value) == "25P02"
        conn.execute("ROLLBACK")
        assert conn.execute(divided.format(second, 1)).fetchall()
        assert "$1 / $2" in last_server_query(pg)


def test_pipelined_queries_get_their_own_answers_in_order(proxy, row_sample, pg) -> None:
    """Three Queries in one write, the second failing: the BindComplete and ParseComplete
    the proxy asked for never reach the client, whose answers are those of simple Queries."""
    ids = order_ids(pg, "initech")
    items = dict(backend_query(pg, ROWDB, "SELECT id, item FROM public.orders"))
    sql = "SELECT item FROM orders WHERE id = {} / {}"
    sock = raw_login("127.0.0.1", proxy.port, "app.initech", row_sample.password("app"))
    try:
        for _ in range(2):  # the first time the statement is prepared, then it is reused
            sock.sendall(b"".join(message(b"Q", sql.format(*args).encode() + b"\0")
                                  for args in ((ids[0], 1), (ids[0], 0), (ids[1], 1))))
            answers = read_answers(sock, 3)
            kinds = ["".join(kind for kind, _ in answer) for answer in answers]
            assert kinds == ["TDCZ", "EZ", "TDCZ"]
            assert answers[0][1][1][6:].decode() == items[ids[0]]
            assert answers[2][1][1][6:].decode() == items[ids[1]]
            assert error_fields(answers[1][0][1])["C"] == "22012"
    finally:
        sock.close()


def test_strings_positions_and_stars_stay_simple_queries(proxy, row_sample, pg) -> None:
    order_id = order_ids(pg, "initech")[0]
    with connect(proxy, row_sample, "initech") as conn:
        for sql in (f"SELECT item FROM orders WHERE id = {order_id} AND item <> 'x'",
                    f"SELECT id, item FROM orders WHERE id > {order_id} ORDER BY 2",
                    f"SELECT * FROM orders WHERE id = {order_id}"):
            assert conn.execute(sql).fetchall()
            assert "$1" not in last_server_query(pg), sql


def test_row_prepare_false_sends_every_rewrite_as_a_query(pg, row_sample, tmp_path) -> None:
    order_id = order_ids(pg, "initech")[0]
    with start_proxy(pg, row_sample, workdir=tmp_path, row_tenants=True, pool_size=1,
                     row_prepare=False) as proxy, \
            connect(proxy, row_sample, "initech", "not-prepared") as conn:
        assert conn.execute(SHAPE.format(order_id)).fetchall()
        assert f"id = {order_id}" in last_server_query(pg, "not-prepared")


def test_a_changed_result_type_is_prepared_anew_without_an_error(pg, row_sample,
                                                                 tmp_path) -> None:
    """A prepared statement whose result column changed type fails with 0A000 "cached plan
    must not change result type" on the server. Outside a transaction block the proxy
    sends the Query again with the statement prepared afresh; inside one the error stands
    (the transaction is aborted, as PostgreSQL has it), and the next use prepares anew,
    inside a transaction block too."""
    order_id = order_ids(pg, "initech")[0]
    sql = f"SELECT amount FROM orders WHERE id = {order_id}"
    with start_proxy(pg, row_sample, workdir=tmp_path, row_tenants=True, pool_size=1) as proxy, \
            connect(proxy, row_sample, "initech", "changed-type") as conn:
        before = conn.execute(sql).fetchall()
        try:
            backend_query(pg, ROWDB, "ALTER TABLE public.orders ALTER COLUMN amount TYPE bigint")
            cur = conn.execute(sql)
            assert (cur.fetchall(), cur.description[0].type_code) == (before, 20)  # int8
            assert "id = $1" in last_server_query(pg, "changed-type")
            proxy.wait_for_log("prepared statement stale, sent again.*"
                               "cached plan must not change result type")
            backend_query(pg, ROWDB, "ALTER TABLE public.orders ALTER COLUMN amount TYPE int")
            conn.execute("BEGIN")
            with pytest.raises(psycopg.Error) as changed:
                conn.execute(sql)
            assert sqlstate(changed.value) == "0A000"
            conn.execute("ROLLBACK")
            conn.execute("BEGIN")  # the failed statement was closed: prepared anew here
            cur = conn.execute(sql)
            assert (cur.fetchall(), cur.description[0].type_code) == (before, 23)  # int4
            conn.execute("COMMIT")
        finally:
            backend_query(pg, ROWDB, "ALTER TABLE public.orders ALTER COLUMN amount TYPE int")


def test_a_stale_plan_with_a_query_pipelined_behind_it_is_not_sent_again(
        pg, row_sample, tmp_path) -> None:
    """Sent again, the first Query's answer would come after the second's: its 0A000
    reaches the client. The second, alone by then, is sent again and answered."""
    order_id = order_ids(pg, "initech")[0]
    sql = f"SELECT amount FROM orders WHERE id = {order_id}".encode()
    with start_proxy(pg, row_sample, workdir=tmp_path, row_tenants=True, pool_size=1) as proxy:
        sock = raw_login("127.0.0.1", proxy.port, "app.initech", row_sample.password("app"))
        try:
            sock.sendall(message(b"Q", sql + b"\0"))
            while read_message(sock)[0] != "Z":
                pass
            backend_query(pg, ROWDB, "ALTER TABLE public.orders ALTER COLUMN amount TYPE bigint")
            sock.sendall(message(b"Q", sql + b"\0") * 2)
            answers = read_answers(sock, 2)
        finally:
            sock.close()
            backend_query(pg, ROWDB, "ALTER TABLE public.orders ALTER COLUMN amount TYPE int")
    assert [kind for kind, _ in answers[0]] == ["E", "Z"]
    assert error_fields(answers[0][0][1])["C"] == "0A000"
    assert [kind for kind, _ in answers[1]] == ["T", "D", "C", "Z"]
    assert answers[1][0][1][-12:-8] == (20).to_bytes(4, "big")  # the column is int8 now
