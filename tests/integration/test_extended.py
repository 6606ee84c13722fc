"""The extended query protocol through the running proxy (DESIGN.md 4-5, THREATS 48-50).

Pipelines with an error in the middle (refused by the proxy, or rejected by PostgreSQL) must
look to the client exactly as they do directly on PostgreSQL: same results before the error,
same SQLSTATE, the rest of the pipeline skipped up to Sync, same transaction state, and inside
a transaction block the server-side transaction really aborted. Portals with row limits, Flush
without Sync, named statements across server connections (and never across tenants), deferred
Parse and duplicate names are checked with psycopg (libpq pipeline mode too), asyncpg and raw
protocol messages. "Directly" means PostgreSQL as the backend role `tenantgate` on db `acme`.
"""

from __future__ import annotations

import asyncio
import struct
import uuid

import asyncpg
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import pq

from proxy.sample import canary, sample_items
from proxy.statements import make_statement
from tests.helpers import (backend_query, error_fields, message, raw_login, read_message,
                           sqlstate)

APP = "app-secret"
# A statement the proxy refuses itself (42501, reserved setting) ...
REFUSED = "SELECT set_config('app.x', '1', false)"
# ... and, for the direct reference run, one PostgreSQL itself rejects with the same SQLSTATE.
SERVER_42501 = "SELECT * FROM pg_authid"
DIV0 = "SELECT 1/0"  # fails at Bind (constant folding), not at Execute
# For raw-protocol references: an error PostgreSQL raises at Parse, where the proxy refuses.
PARSE_ERROR = "SELECT * FROM no_such_table"

pytestmark = pytest.mark.timeout(60)


def direct_dsn(pg, db: str = "acme") -> str:
    return pg.dsn("tenantgate", "tenantgate-secret", db)


def acme_rows() -> list[tuple]:
    return [tuple(row) for row in sample_items("acme")]


# -- raw protocol ------------------------------------------------------------------------------

def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def parse(name: str, sql: str, oids: tuple[int, ...] = ()) -> bytes:
    types = struct.pack(f"!H{len(oids)}I", len(oids), *oids)
    return message(b"P", _cstr(name) + _cstr(sql) + types)


def bind(portal: str = "", statement: str = "", params: tuple[bytes | None, ...] = ()) -> bytes:
    body = _cstr(portal) + _cstr(statement) + struct.pack("!HH", 0, len(params))
    for value in params:
        body += struct.pack("!i", -1) if value is None else struct.pack("!I", len(value)) + value
    return message(b"B", body + struct.pack("!H", 0))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message(b"E", _cstr(portal) + struct.pack("!I", max_rows))


def describe(kind: str, name: str = "") -> bytes:
    return message(b"D", kind.encode() + _cstr(name))


def close(kind: str, name: str = "") -> bytes:
    return message(b"C", kind.encode() + _cstr(name))


def query(sql: str) -> bytes:
    return message(b"Q", _cstr(sql))


SYNC = message(b"S", b"")
FLUSH = message(b"H", b"")


def data_row(*values: bytes | None) -> bytes:
    out = struct.pack("!H", len(values))
    for value in values:
        out += struct.pack("!i", -1) if value is None else struct.pack("!I", len(value)) + value
    return out


def read_until_ready(sock, count: int = 1) -> list[tuple[str, bytes]]:
    """Backend messages up to and including the `count`-th ReadyForQuery (socket timeout bounds
    every read); notices and parameter statuses are left out."""
    out: list[tuple[str, bytes]] = []
    while count:
        msg = read_message(sock)
        assert msg is not None, f"connection closed after {out}"
        if msg[0] in ("N", "S"):
            continue
        out.append(msg)
        if msg[0] == "Z":
            count -= 1
    return out


def read_n(sock, n: int) -> list[tuple[str, bytes]]:
    out = []
    while len(out) < n:
        msg = read_message(sock)
        assert msg is not None, f"connection closed after {out}"
        if msg[0] not in ("N", "S"):
            out.append(msg)
    return out


def kinds(messages: list[tuple[str, bytes]]) -> list[str]:
    return [kind for kind, _ in messages]


def sqlstate_of(messages: list[tuple[str, bytes]]) -> list[str]:
    return [error_fields(body).get("C", "") for kind, body in messages if kind == "E"]


def proxy_socket(proxy, tenant: str = "acme"):
    return raw_login(proxy.host, proxy.port, f"app.{tenant}", APP)


def direct_socket(pg, db: str = "acme"):
    return raw_login(pg.host, pg.port, "tenantgate", "tenantgate-secret", db)


def normalise(messages: list[tuple[str, bytes]]) -> list[tuple[str, object]]:
    """Messages with ErrorResponse reduced to its SQLSTATE (texts differ on purpose)."""
    return [(kind, error_fields(body).get("C") if kind == "E" else body)
            for kind, body in messages]


# -- libpq pipeline mode (psycopg.pq: libpq itself) ---------------------------------------------

def libpq_pipeline(dsn: str, segments: list[list[str]]) -> list[object]:
    """Send each segment as one pipeline batch ended by a Sync, read its results, then the next
    batch, all in one pipeline. The trace: per statement (status, SQLSTATE, command tag, rows),
    per Sync the transaction status libpq reports."""
    conn = pq.PGconn.connect(dsn.encode())
    assert conn.status == pq.ConnStatus.OK, conn.get_error_message()
    trace: list[object] = []
    try:
        conn.enter_pipeline_mode()
        for segment in segments:
            for sql in segment:
                conn.send_query_params(sql.encode(), None)
            conn.pipeline_sync()
            for sql in segment:
                res = conn.get_result()
                assert res is not None, sql
                rows = [tuple(res.get_value(r, c) for c in range(res.nfields))
                        for r in range(res.ntuples)]
                trace.append((sql if res.status != pq.ExecStatus.FATAL_ERROR else "<error>",
                              pq.ExecStatus(res.status).name,
                              (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode(),
                              res.command_status, rows))
                assert conn.get_result() is None  # the end of this statement's results
            res = conn.get_result()
            assert res is not None and res.status == pq.ExecStatus.PIPELINE_SYNC
            trace.append(("sync", pq.TransactionStatus(conn.transaction_status).name))
        conn.exit_pipeline_mode()
    finally:
        conn.finish()
    return trace


def _swap(segments: list[list[str]], old: str, new: str) -> list[list[str]]:
    return [[new if sql == old else sql for sql in segment] for segment in segments]


@pytest.mark.parametrize("error_kind", ["refused-by-proxy", "rejected-by-server"])
def test_libpq_pipeline_error_in_the_middle_matches_postgres(proxy, pg, error_kind) -> None:
    via_proxy_error, direct_error = ((REFUSED, SERVER_42501) if error_kind == "refused-by-proxy"
                                     else (DIV0, DIV0))
    segments = [["SELECT 1", via_proxy_error, "SELECT 3"], ["SELECT 4"],
                [via_proxy_error], ["SELECT 5", "SELECT 6"]]
    direct = libpq_pipeline(direct_dsn(pg), _swap(segments, via_proxy_error, direct_error))
    proxied = libpq_pipeline(proxy.dsn("app.acme", APP), segments)
    expected_state = "42501" if error_kind == "refused-by-proxy" else "22012"
    assert proxied == direct
    assert proxied[0] == ("SELECT 1", "TUPLES_OK", "", b"SELECT 1", [(b"1",)])
    assert proxied[1][:3] == ("<error>", "FATAL_ERROR", expected_state)
    assert proxied[2][1] == "PIPELINE_ABORTED"
    assert proxied[3] == ("sync", "IDLE")
    assert proxied[4][4] == [(b"4",)]


@pytest.mark.parametrize("error_kind", ["refused-by-proxy", "rejected-by-server"])
def test_libpq_pipeline_in_transaction_aborts_the_server_transaction(proxy, pg,
                                                                     error_kind) -> None:
    marker = f"pipeline-{uuid.uuid4().hex[:12]}"
    insert = f"INSERT INTO items (name) VALUES ('{marker}')"
    via_proxy_error, direct_error = ((REFUSED, SERVER_42501) if error_kind == "refused-by-proxy"
                                     else (DIV0, DIV0))
    segments = [["BEGIN", insert, via_proxy_error, "SELECT 3"], ["SELECT 4"], ["COMMIT"],
                ["SELECT 5"]]
    direct = libpq_pipeline(direct_dsn(pg), _swap(segments, via_proxy_error, direct_error))
    proxied = libpq_pipeline(proxy.dsn("app.acme", APP), segments)
    assert proxied == direct
    assert proxied[2][1:3] == ("FATAL_ERROR", "42501" if error_kind == "refused-by-proxy"
                               else "22012")
    assert proxied[3][1] == "PIPELINE_ABORTED"
    assert proxied[4] == ("sync", "INERROR")
    assert proxied[5][1:3] == ("FATAL_ERROR", "25P02")  # still inside the aborted transaction
    assert proxied[7][3] == b"ROLLBACK"  # COMMIT of an aborted transaction
    assert proxied[8] == ("sync", "IDLE")
    assert backend_query(pg, "acme", "SELECT count(*) FROM items WHERE name = %s",
                         (marker,)) == [(0,)]


# -- psycopg pipeline mode -----------------------------------------------------------------------

def _outcome(call):
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - the class of error is the observation
        return ("error", type(exc).__name__, sqlstate(exc))


def psycopg_pipeline(conn: psycopg.Connection, bad: str, in_transaction: bool) -> dict:
    """SELECT 1, the bad statement, SELECT 3 in one pipeline batch, then more batches.

    Where psycopg raises the first error (at the third execute or at sync) depends on when the
    server's reply arrives, even directly on PostgreSQL: the trace records which errors were
    raised, in order, and what each cursor holds afterwards."""
    raised: list[tuple] = []

    def step(call):
        result = _outcome(call)
        if result[0] == "error":
            raised.append(result[1:])
            return None
        return result[1]

    with conn.pipeline() as pipeline:
        if in_transaction:
            step(lambda: conn.execute("BEGIN"))
        cursors = [step(lambda: conn.execute("SELECT 1")), step(lambda: conn.execute(bad)),
                   step(lambda: conn.execute("SELECT 3"))]
        step(pipeline.sync)
        fetched = [_outcome(cur.fetchall) if cur is not None else ("aborted",)
                   for cur in cursors]
        later = step(lambda: conn.execute("SELECT 4"))
        step(pipeline.sync)
        fetched.append(_outcome(later.fetchall) if later is not None else ("aborted",))
        if in_transaction:
            step(lambda: conn.execute("ROLLBACK"))
            step(pipeline.sync)
        last = step(lambda: conn.execute("SELECT 5"))
        step(pipeline.sync)
        fetched.append(_outcome(last.fetchall) if last is not None else ("aborted",))
    # An error noticed at the third execute aborts that cursor ("PipelineAborted") instead of
    # leaving it without a result: both are the same server-side outcome.
    fetched = [("no result",) if f in (("aborted",), ("error", "ProgrammingError", None))
               else f for f in fetched]
    raised = [r for r in raised if r[0] != "PipelineAborted"]
    # (The transaction status right after a Sync whose batch failed depends on whether psycopg
    # has read that batch's ReadyForQuery yet; the libpq test above compares it exactly.)
    return {"raised": raised, "fetched": fetched, "final": conn.info.transaction_status.name}


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "transaction"])
@pytest.mark.parametrize("error_kind", ["refused-by-proxy", "rejected-by-server"])
def test_psycopg_pipeline_error_in_the_middle_matches_postgres(proxy, pg, error_kind,
                                                               in_transaction) -> None:
    via_proxy_error, direct_error = ((REFUSED, SERVER_42501) if error_kind == "refused-by-proxy"
                                     else (DIV0, DIV0))
    with psycopg.connect(direct_dsn(pg), autocommit=True, connect_timeout=10) as conn:
        direct = psycopg_pipeline(conn, direct_error, in_transaction)
    with proxy.connect("app.acme", APP) as conn:
        proxied = psycopg_pipeline(conn, via_proxy_error, in_transaction)
        assert conn.execute("SELECT 7").fetchone() == (7,)  # usable after the pipeline
    assert proxied == direct
    expected_class = ("InsufficientPrivilege" if error_kind == "refused-by-proxy"
                      else "DivisionByZero")
    assert proxied["raised"][0][0] == expected_class
    assert proxied["fetched"][0] == ("ok", [(1,)])
    assert proxied["fetched"][1:3] == [("no result",), ("no result",)]
    if in_transaction:  # the transaction is aborted: SELECT 4 fails until ROLLBACK
        assert proxied["raised"][1:] == [("InFailedSqlTransaction", "25P02")]
        assert proxied["fetched"][3] == ("no result",)
    else:
        assert proxied["fetched"][3] == ("ok", [(4,)])
    assert proxied["fetched"][-1] == ("ok", [(5,)])
    assert proxied["final"] == "IDLE"


def test_psycopg_pipeline_refusal_in_transaction_commits_nothing(proxy, pg) -> None:
    marker = f"pipeline-{uuid.uuid4().hex[:12]}"
    with proxy.connect("app.acme", APP, autocommit=False) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.pipeline():
                conn.execute("INSERT INTO items (name) VALUES (%s)", (marker,))
                conn.execute(REFUSED)
                conn.execute("SELECT 3")
        assert conn.info.transaction_status.name == "INERROR"
        conn.commit()  # PostgreSQL turns this into a ROLLBACK
        assert conn.execute("SELECT count(*) FROM items WHERE name = %s",
                            (marker,)).fetchone() == (0,)
    assert backend_query(pg, "acme", "SELECT count(*) FROM items WHERE name = %s",
                         (marker,)) == [(0,)]


# -- raw pipelining ------------------------------------------------------------------------------

def three_statement_pipeline(middle: str) -> bytes:
    out = b""
    for sql in ("SELECT 1", middle, "SELECT 3"):
        out += parse("", sql) + bind() + execute()
    return out + SYNC


def test_raw_pipeline_with_refused_middle_parse_replies_in_order(proxy, pg) -> None:
    with proxy_socket(proxy) as sock:
        sock.sendall(three_statement_pipeline(REFUSED))
        replies = read_until_ready(sock)
        assert kinds(replies) == ["1", "2", "D", "C", "E", "Z"]
        assert replies[2][1] == data_row(b"1")
        assert replies[3][1] == b"SELECT 1\0"
        fields = error_fields(replies[4][1])
        assert fields["C"] == "42501" and fields["S"] == "ERROR"
        assert fields["M"].startswith("tenantgate:")
        assert replies[5][1] == b"I"
        # the stream is in step: the next request gets its own answer
        sock.sendall(query("SELECT 42"))
        after = read_until_ready(sock)
        assert kinds(after) == ["T", "D", "C", "Z"] and after[1][1] == data_row(b"42")
    with direct_socket(pg) as sock:  # PostgreSQL's answer to a Parse error in the same place
        sock.sendall(three_statement_pipeline(PARSE_ERROR))
        assert kinds(read_until_ready(sock)) == ["1", "2", "D", "C", "E", "Z"]


def test_raw_pipeline_refused_first_parse_is_answered_in_order(proxy) -> None:
    with proxy_socket(proxy) as sock:
        sock.sendall(parse("", REFUSED) + bind() + execute() + parse("", "SELECT 2") + bind()
                     + execute() + SYNC + parse("", "SELECT 9") + bind() + execute() + SYNC)
        replies = read_until_ready(sock, 2)
        assert kinds(replies) == ["E", "Z", "1", "2", "D", "C", "Z"]
        assert sqlstate_of(replies) == ["42501"]
        assert replies[1][1] == b"I" and replies[4][1] == data_row(b"9")


def test_raw_pipeline_refusal_inside_transaction(proxy, pg) -> None:
    marker = f"raw-{uuid.uuid4().hex[:12]}"
    with proxy_socket(proxy) as sock:
        sock.sendall(query("BEGIN"))
        assert kinds(read_until_ready(sock)) == ["C", "Z"]
        sock.sendall(parse("", "INSERT INTO items (name) VALUES ($1)")
                     + bind(params=(marker.encode(),)) + execute()
                     + parse("", REFUSED) + bind() + execute()
                     + parse("", "SELECT 3") + bind() + execute() + SYNC)
        replies = read_until_ready(sock)
        assert kinds(replies) == ["1", "2", "C", "E", "Z"]
        assert replies[2][1] == b"INSERT 0 1\0"
        assert sqlstate_of(replies) == ["42501"] and replies[-1][1] == b"E"
        sock.sendall(query("COMMIT"))
        replies = read_until_ready(sock)
        assert replies == [("C", b"ROLLBACK\0"), ("Z", b"I")]
    assert backend_query(pg, "acme", "SELECT count(*) FROM items WHERE name = %s",
                         (marker,)) == [(0,)]


def test_raw_server_error_in_pipeline_skips_to_sync(proxy, pg) -> None:
    stream = three_statement_pipeline(DIV0) + parse("", "SELECT 8") + bind() + execute() + SYNC
    with proxy_socket(proxy) as sock:
        sock.sendall(stream)
        proxied = read_until_ready(sock, 2)
    with direct_socket(pg) as sock:
        sock.sendall(stream)
        direct = read_until_ready(sock, 2)
    assert normalise(proxied) == normalise(direct)
    assert kinds(proxied) == ["1", "2", "D", "C", "1", "E", "Z", "1", "2", "D", "C", "Z"]


def test_refused_parse_after_unsynced_close_is_answered(proxy, pg) -> None:
    """Close (answered by the proxy, no Sync yet), then a refused Parse: the client must get
    CloseComplete, the error and ReadyForQuery, like PostgreSQL answers a rejected statement."""
    stream = close("S", "never_prepared") + parse("", REFUSED) + bind() + execute() + SYNC
    with proxy_socket(proxy) as sock:
        sock.sendall(stream)
        replies = read_until_ready(sock)
        assert kinds(replies) == ["3", "E", "Z"]
        assert sqlstate_of(replies) == ["42501"]
        sock.sendall(query("SELECT 1"))
        assert kinds(read_until_ready(sock)) == ["T", "D", "C", "Z"]
    with direct_socket(pg) as sock:
        sock.sendall(close("S", "never_prepared") + parse("", PARSE_ERROR) + bind() + execute()
                     + SYNC)
        assert kinds(read_until_ready(sock)) == ["3", "E", "Z"]


def test_refused_simple_query_after_unsynced_close_is_answered(proxy, pg) -> None:
    with proxy_socket(proxy) as sock:
        sock.settimeout(5)
        sock.sendall(close("S", "never_prepared") + query(REFUSED))
        replies = read_until_ready(sock)
        assert kinds(replies) == ["3", "E", "Z"]
        assert sqlstate_of(replies) == ["42501"]
    with direct_socket(pg) as sock:
        sock.sendall(close("S", "never_prepared") + query(SERVER_42501))
        assert kinds(read_until_ready(sock)) == ["3", "E", "Z"]


# -- portals with row limits, Flush ---------------------------------------------------------------

async def test_asyncpg_cursor_with_prefetch_returns_all_rows_in_order(proxy) -> None:
    conn = await proxy.aconnect("app.acme", APP)
    try:
        async with conn.transaction():
            values = [record["g"] async for record in
                      conn.cursor("SELECT g FROM generate_series(1, 1000) AS g", prefetch=10)]
            assert values == list(range(1, 1001))
            cursor = await conn.cursor("SELECT g FROM generate_series(1, 1000) AS g")
            assert [r["g"] for r in await cursor.fetch(5)] == [1, 2, 3, 4, 5]
            assert await cursor.forward(10) == 10
            assert (await cursor.fetchrow())["g"] == 16
        assert await conn.fetchval("SELECT 2") == 2
    finally:
        await conn.close()


def test_raw_portal_row_limit_suspends_and_resumes(proxy, pg) -> None:
    def run(sock) -> list[tuple[str, bytes]]:
        sock.sendall(query("BEGIN"))
        read_until_ready(sock)
        sock.sendall(parse("", "SELECT g FROM generate_series(1, 5) AS g") + bind("p1")
                     + execute("p1", 2) + execute("p1", 2) + execute("p1", 2) + SYNC
                     + query("COMMIT"))
        return read_until_ready(sock, 2)

    with proxy_socket(proxy) as sock:
        proxied = run(sock)
    with direct_socket(pg) as sock:
        direct = run(sock)
    assert proxied == direct
    assert kinds(proxied) == ["1", "2", "D", "D", "s", "D", "D", "s", "D", "C", "Z", "C", "Z"]


def test_flush_without_sync_delivers_replies(proxy) -> None:
    with proxy_socket(proxy) as sock:
        # A named Parse outside a transaction is answered by the proxy itself.
        sock.sendall(parse("s_flush", "SELECT $1::int + 1") + FLUSH)
        assert read_n(sock, 1) == [("1", b"")]
        sock.sendall(describe("S", "s_flush") + FLUSH)
        replies = read_n(sock, 2)
        assert kinds(replies) == ["t", "T"]
        sock.sendall(bind("", "s_flush", (b"41",)) + execute() + FLUSH)
        replies = read_n(sock, 3)
        assert replies == [("2", b""), ("D", data_row(b"42")), ("C", b"SELECT 1\0")]
        sock.sendall(SYNC)
        assert read_until_ready(sock) == [("Z", b"I")]
        sock.sendall(parse("", "SELECT 5") + bind() + execute() + FLUSH)
        assert kinds(read_n(sock, 4)) == ["1", "2", "D", "C"]
        sock.sendall(SYNC)
        assert read_until_ready(sock) == [("Z", b"I")]


async def test_asyncpg_prepare_in_transaction_uses_flush(proxy) -> None:
    conn = await proxy.aconnect("app.acme", APP)
    try:
        async with conn.transaction():
            statement = await conn.prepare("SELECT name FROM items WHERE id = $1")
            assert [await statement.fetchval(i) for i in (1, 2, 3)] == \
                ["acme-alpha", "acme-beta", "acme-vault"]
        assert await statement.fetchval(1) == "acme-alpha"  # and after the transaction
    finally:
        await conn.close()


# -- named statements over few server connections ----------------------------------------------

QUERIES = ["SELECT $1::int * 2",
           "SELECT name FROM items WHERE id = $1::int",
           "SELECT $1::text || '-' || current_database()"]


def _argument(index: int, n: int):
    return (n, n % 3 + 1, str(n))[index]


def _expected(index: int, n: int):
    return (n * 2, ["acme-alpha", "acme-beta", "acme-vault"][n % 3], f"{n}-acme")[index]


async def asyncpg_worker(proxy, client: int, rounds: int, **kwargs) -> int:
    conn = await proxy.aconnect("app.acme", APP, timeout=60, **kwargs)
    try:
        for n in range(rounds):
            for index, sql in enumerate(QUERIES):
                got = await conn.fetchval(sql, _argument(index, n + client))
                assert got == _expected(index, n + client), (client, n, sql, got)
        return rounds * len(QUERIES)
    finally:
        await conn.close()


@pytest.mark.timeout(240)
async def test_acceptance_50_asyncpg_clients_over_pool_size_3(proxy_factory) -> None:
    """The issue's acceptance: 50 asyncpg connections over pool_size 3, 3 queries x 100."""
    proxy = proxy_factory(pool_size=3)
    done = await asyncio.wait_for(
        asyncio.gather(*(asyncpg_worker(proxy, c, 100) for c in range(50))), 220)
    assert done == [300] * 50


@pytest.mark.timeout(180)
async def test_30_asyncpg_clients_over_pool_size_2(proxy_factory) -> None:
    proxy = proxy_factory(pool_size=2)
    done = await asyncio.wait_for(
        asyncio.gather(*(asyncpg_worker(proxy, c, 50) for c in range(30))), 160)
    assert done == [150] * 30


async def psycopg_worker(proxy, client: int, rounds: int, prepare_threshold: int | None) -> int:
    kwargs = {} if prepare_threshold is None else {"prepare_threshold": prepare_threshold}
    conn = await psycopg.AsyncConnection.connect(proxy.dsn("app.acme", APP), autocommit=True,
                                                 connect_timeout=30, **kwargs)
    try:
        for n in range(rounds):
            for index, sql in enumerate(QUERIES):
                cur = await conn.execute(sql.replace("$1", "%s"), (_argument(index, n + client),))
                got = (await cur.fetchone())[0]
                assert got == _expected(index, n + client), (client, n, sql, got)
        return rounds * len(QUERIES)
    finally:
        await conn.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("prepare_threshold", [0, None], ids=["prepare-always", "default"])
async def test_30_psycopg_clients_over_pool_size_2(proxy_factory, prepare_threshold) -> None:
    proxy = proxy_factory(pool_size=2)
    done = await asyncio.wait_for(asyncio.gather(
        *(psycopg_worker(proxy, c, 50, prepare_threshold) for c in range(30))), 160)
    assert done == [150] * 30


# -- statements never cross tenants ---------------------------------------------------------------

def tenant_secrets(tenant: str) -> list[str | None]:
    return [secret for _, _, secret in sample_items(tenant)]


@pytest.mark.timeout(120)
async def test_schema_tenants_sharing_a_database_never_share_statements(proxy_factory) -> None:
    """globex and hooli share database `shared`; with pool_size 1 every execution of the same
    statement text alternates between them on one server connection."""
    proxy = proxy_factory(pool_size=1)
    sql = "SELECT secret FROM items ORDER BY id"

    async def client(tenant: str, rounds: int) -> list[list[str | None]]:
        conn = await proxy.aconnect(f"app.{tenant}", APP, timeout=30)
        try:
            statement = await conn.prepare(sql)
            results = []
            for n in range(rounds):
                if n % 3 == 0:
                    results.append([r[0] for r in await statement.fetch()])
                elif n % 3 == 1:
                    results.append([r[0] for r in await conn.fetch(sql)])  # statement cache
                else:
                    async with conn.transaction():
                        results.append([r[0] for r in await statement.fetch()])
            return results
        finally:
            await conn.close()

    results = await asyncio.wait_for(asyncio.gather(
        *(client(t, 60) for t in ("globex", "hooli", "globex", "hooli"))), 100)
    for tenant, got in zip(("globex", "hooli", "globex", "hooli"), results):
        assert got == [tenant_secrets(tenant)] * 60, tenant
        assert all(canary(tenant) in row for row in got)


def test_server_statement_name_of_another_tenant_is_unusable(proxy_factory) -> None:
    """A client that names the proxy's server-side statement of another tenant directly gets
    nothing of that tenant."""
    proxy = proxy_factory(pool_size=1)
    sql = "SELECT secret FROM items WHERE id = 3"
    server_name = make_statement(sql, ()).server_name
    with proxy.connect("app.globex", APP, prepare_threshold=0) as globex:
        for _ in range(3):
            assert globex.execute(sql).fetchone() == (canary("globex"),)
        with proxy_socket(proxy, "hooli") as sock:
            sock.sendall(bind("", server_name) + execute() + SYNC)
            replies = read_until_ready(sock)
            assert kinds(replies) == ["E", "Z"] and sqlstate_of(replies) == ["26000"]
            sock.sendall(describe("S", server_name) + SYNC)
            replies = read_until_ready(sock)
            assert kinds(replies) == ["E", "Z"] and sqlstate_of(replies) == ["26000"]
        assert globex.execute(sql).fetchone() == (canary("globex"),)


def test_database_tenants_prepare_the_same_text_separately(proxy) -> None:
    sql = "SELECT name FROM items WHERE id = %s"
    with proxy.connect("app.acme", APP, prepare_threshold=0) as acme, \
            proxy.connect("app.umbrella", APP, prepare_threshold=0) as umbrella:
        for n in range(20):
            row_id = n % 3 + 1
            assert acme.execute(sql, (row_id,)).fetchone()[0].startswith("acme-")
            assert umbrella.execute(sql, (row_id,)).fetchone()[0].startswith("umbrella-")


# -- deferred Parse, failed Parse, duplicate names -----------------------------------------------

def test_deferred_parse_with_semantic_error_fails_at_execution(proxy) -> None:
    with proxy_socket(proxy) as sock:
        sock.sendall(parse("bad", "SELECT nosuchcol FROM items") + SYNC)
        first = read_until_ready(sock)
        # Directly PostgreSQL reports 42703 here; the proxy prepares later, so either is fine,
        # as long as the execution reports it.
        assert kinds(first) in (["1", "Z"], ["E", "Z"])
        sock.sendall(bind("", "bad") + execute() + SYNC)
        replies = read_until_ready(sock)
        if kinds(first) == ["1", "Z"]:
            assert kinds(replies) == ["E", "Z"] and sqlstate_of(replies) == ["42703"]
        sock.sendall(query("SELECT 1"))
        assert kinds(read_until_ready(sock)) == ["T", "D", "C", "Z"]


async def test_asyncpg_same_failing_query_twice_reports_the_same_error(proxy, pg) -> None:
    """A query with a typo, run twice: PostgreSQL reports 42703 both times."""
    for conn in (await asyncpg.connect(direct_dsn(pg), timeout=10),
                 await proxy.aconnect("app.acme", APP)):
        try:
            for _ in range(2):
                with pytest.raises(asyncpg.PostgresError) as info:
                    await conn.fetch("SELECT nosuchcol FROM items")
                assert info.value.sqlstate == "42703", str(info.value)
                assert "tg_" not in str(info.value)
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()


def test_psycopg_prepared_statement_fixed_by_a_migration_works(proxy, pg) -> None:
    """A prepared query fails (unknown column), the column is added, the query is run again:
    directly PostgreSQL runs it; so must the proxy (no stale server-side name)."""
    table = f"mig_{uuid.uuid4().hex[:8]}"
    pg.run_sql(f"CREATE TABLE public.{table} (id int); INSERT INTO public.{table} VALUES (1);"
               f"ALTER TABLE public.{table} OWNER TO tenantgate;", dbname="acme")
    try:
        sql = f"SELECT id, extra FROM {table} WHERE id = %s"
        with proxy.connect("app.acme", APP, prepare_threshold=0) as conn:
            for _ in range(2):
                with pytest.raises(psycopg.errors.UndefinedColumn):
                    conn.execute(sql, (1,))
            pg.run_sql(f"ALTER TABLE public.{table} ADD COLUMN extra text DEFAULT 'x';",
                       dbname="acme")
            assert conn.execute(sql, (1,)).fetchone() == (1, "x")
    finally:
        pg.run_sql(f"DROP TABLE IF EXISTS public.{table};", dbname="acme")


def test_failed_named_parse_in_transaction_matches_postgres(proxy, pg) -> None:
    """Inside a transaction the Parse goes to the server at once: its error aborts the
    transaction, the name is not created, and after ROLLBACK it can be used again."""
    def run(sock) -> list[list[tuple[str, object]]]:
        steps = []
        sock.sendall(query("BEGIN"))
        steps.append(normalise(read_until_ready(sock)))
        sock.sendall(parse("s_bad", "SELECT nosuchcol FROM items") + SYNC)
        steps.append(normalise(read_until_ready(sock)))
        sock.sendall(query("ROLLBACK"))
        steps.append(normalise(read_until_ready(sock)))
        sock.sendall(parse("s_bad", "SELECT name FROM items WHERE id = 1") + bind("", "s_bad")
                     + execute() + SYNC)
        steps.append(normalise(read_until_ready(sock)))
        return steps

    for attempt in range(2):  # the second time the failed text may be cached by the proxy
        with direct_socket(pg) as sock:
            direct = run(sock)
        with proxy_socket(proxy) as sock:
            proxied = run(sock)
        assert proxied == direct, attempt
        assert proxied[1] == [("E", "42703"), ("Z", b"E")]


def test_named_parse_skipped_after_pipeline_error_is_not_left_prepared(proxy, pg) -> None:
    """psycopg pipeline: an error, then a query prepared in the same batch (skipped by the
    server); the prepared query must work afterwards as it does directly."""
    sql = "SELECT name FROM items WHERE id = %s"
    for conn in (psycopg.connect(direct_dsn(pg), autocommit=True, prepare_threshold=0),
                 proxy.connect("app.acme", APP, prepare_threshold=0)):
        with conn:
            with pytest.raises(psycopg.errors.DivisionByZero):
                with conn.pipeline():
                    conn.execute(DIV0)
                    conn.execute(sql, (1,))
            for _ in range(2):
                assert conn.execute(sql, (1,)).fetchone() == ("acme-alpha",)


@pytest.mark.parametrize("in_transaction", [False, True], ids=["idle", "transaction"])
def test_duplicate_named_parse_is_42p05_like_postgres(proxy, pg, in_transaction) -> None:
    def run(sock) -> list[list[tuple[str, object]]]:
        steps = []
        if in_transaction:
            sock.sendall(query("BEGIN"))
            read_until_ready(sock)
        sock.sendall(parse("dup", "SELECT 1") + SYNC)
        steps.append(normalise(read_until_ready(sock)))
        sock.sendall(parse("dup", "SELECT 2") + SYNC)
        steps.append(normalise(read_until_ready(sock)))
        if in_transaction:
            sock.sendall(query("ROLLBACK"))
            read_until_ready(sock)
        sock.sendall(bind("", "dup") + execute() + SYNC)  # still the first statement
        steps.append(normalise(read_until_ready(sock)))
        sock.sendall(close("S", "dup") + parse("dup", "SELECT 3") + bind("", "dup") + execute()
                     + SYNC)
        steps.append(normalise(read_until_ready(sock)))
        return steps

    with direct_socket(pg) as sock:
        direct = run(sock)
    with proxy_socket(proxy) as sock:
        proxied = run(sock)
    assert proxied == direct
    assert proxied[1] == [("E", "42P05"), ("Z", b"E" if in_transaction else b"I")]
    assert proxied[3][-3:] == [("D", data_row(b"3")), ("C", b"SELECT 1\0"), ("Z", b"I")]


def test_named_statement_survives_transactions_on_other_server_connections(proxy_factory) -> None:
    proxy = proxy_factory(pool_size=2)
    with proxy_socket(proxy) as sock, proxy.connect("app.acme", APP) as other:
        sock.sendall(parse("keep", "SELECT $1::int * 10") + SYNC)
        assert kinds(read_until_ready(sock)) == ["1", "Z"]
        for n in range(10):
            other.execute("BEGIN")  # hold one server connection in between
            sock.sendall(bind("", "keep", (str(n).encode(),)) + execute() + SYNC)
            replies = read_until_ready(sock)
            assert replies == [("2", b""), ("D", data_row(str(n * 10).encode())),
                               ("C", b"SELECT 1\0"), ("Z", b"I")]
            other.execute("COMMIT")


def test_named_parse_of_a_previously_failed_text_still_fails_in_transaction(proxy, pg) -> None:
    """The text failed once (deferred Parse, executed): a later named Parse of the same text
    inside a transaction must fail and abort the transaction, as on PostgreSQL."""
    bad = "SELECT nosuchcol FROM items WHERE id = 1"

    def run(sock) -> list[list[tuple[str, object]]]:
        steps = []
        sock.sendall(parse("first", bad) + bind("", "first") + execute() + SYNC)
        steps.append([m for m in normalise(read_until_ready(sock)) if m[0] != "1"])
        sock.sendall(query("BEGIN"))
        read_until_ready(sock)
        sock.sendall(parse("second", bad) + SYNC)
        steps.append(normalise(read_until_ready(sock)))
        sock.sendall(query("COMMIT"))
        steps.append(normalise(read_until_ready(sock)))
        return steps

    with direct_socket(pg) as sock:
        direct = run(sock)
    with proxy_socket(proxy) as sock:
        proxied = run(sock)
    assert direct == [[("E", "42703"), ("Z", b"I")], [("E", "42703"), ("Z", b"E")],
                      [("C", b"ROLLBACK\0"), ("Z", b"I")]]
    assert proxied == direct


def test_close_skipped_after_an_error_keeps_the_statement(proxy, pg) -> None:
    """The proxy answers Close itself; when an earlier error makes PostgreSQL skip the Close,
    the statement still exists there, so it must through the proxy too."""
    def run(sock) -> list[list[tuple[str, object]]]:
        steps = []
        sock.sendall(parse("kept", "SELECT 1") + SYNC)
        steps.append(normalise(read_until_ready(sock)))
        sock.sendall(bind("", "kept", (b"extra",)) + close("S", "kept") + SYNC)  # 08P01
        steps.append(normalise(read_until_ready(sock)))
        sock.sendall(bind("", "kept") + execute() + SYNC)
        steps.append(normalise(read_until_ready(sock)))
        return steps

    with direct_socket(pg) as sock:
        direct = run(sock)
    with proxy_socket(proxy) as sock:
        proxied = run(sock)
    assert direct[1] == [("E", "08P01"), ("Z", b"I")]
    assert proxied == direct


def test_skipped_parse_that_evicted_a_statement_leaves_it_usable(proxy_factory) -> None:
    """With the per-connection statement cache full, a new Parse also closes the least
    recently used statement; an error before them skips both, so that statement is still
    prepared on the server and must neither be prepared again (42P05) nor be lost."""
    from proxy.statements import SERVER_CACHE_SIZE
    proxy = proxy_factory(pool_size=1)  # every request on the same server connection
    with proxy_socket(proxy) as sock:
        names = [f"s{n}" for n in range(SERVER_CACHE_SIZE)]
        sock.sendall(b"".join(parse(name, f"SELECT {n}") + describe("S", name)
                              for n, name in enumerate(names)) + SYNC)
        assert kinds(read_until_ready(sock)).count("E") == 0
        # s0 is used (most recent); s1 is the one the next new statement evicts.
        sock.sendall(bind("", "s0", (b"extra",)) + parse("extra", "SELECT 'extra'") + SYNC)
        assert normalise(read_until_ready(sock)) == [("E", "08P01"), ("Z", b"I")]
        sock.sendall(bind("", "s1") + execute() + SYNC)
        assert normalise(read_until_ready(sock)) == [
            ("2", b""), ("D", data_row(b"1")), ("C", b"SELECT 1\0"), ("Z", b"I")]
        sock.sendall(parse("extra", "SELECT 'extra'") + bind("", "extra") + execute() + SYNC)
        assert kinds(read_until_ready(sock)) == ["1", "2", "D", "C", "Z"]


# -- DEALLOCATE ALL (psycopg sends it after a rollback once it has prepared statements) -------

@pytest.mark.parametrize("pipeline", [False, True])
def test_psycopg_defaults_survive_rollback_with_prepared_statements(proxy_factory,
                                                                   pipeline) -> None:
    """prepare_threshold 5 (the default): the sixth execution runs a prepared statement;
    conn.rollback() then makes psycopg send DEALLOCATE ALL. With pool_size 1 every
    statement lands on the one server connection, which must not be left believing the
    statements are still prepared (they were dropped: 26000 on the next use)."""
    small = proxy_factory(pool_size=1)
    expected = [(name,) for _, name, _ in sample_items("acme") if name.endswith("a")]
    with small.connect("app.acme", APP, autocommit=False) as conn, \
            small.connect("app.acme", APP, autocommit=True) as other:
        for _ in range(3):
            # `other` prepares on the one server connection; conn's DEALLOCATE ALL drops
            # that statement too, so the proxy must prepare it again next time.
            assert other.execute("SELECT name FROM items WHERE id = %s", (1,),
                                 prepare=True).fetchone() == (sample_items("acme")[0][1],)
            for _ in range(7):
                rows = conn.execute("SELECT name FROM items WHERE name LIKE %s ORDER BY id",
                                    ("%a",)).fetchall()
                assert rows == expected
            if pipeline:
                with conn.pipeline():
                    conn.rollback()
            else:
                conn.rollback()
        assert other.execute("SELECT name FROM items WHERE id = %s", (1,),
                             prepare=True).fetchone() == (sample_items("acme")[0][1],)


def test_deallocate_all_inside_an_aborted_transaction_keeps_the_statements(proxy) -> None:
    """PostgreSQL refuses DEALLOCATE ALL in an aborted transaction (25P02): nothing was
    deallocated, so the client's prepared statement still works after ROLLBACK."""
    with proxy.connect("app.acme", APP, autocommit=True) as conn:
        conn.execute("SELECT name FROM items WHERE id = %s", (2,), prepare=True)
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("DEALLOCATE ALL")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT name FROM items WHERE id = %s", (2,),
                            prepare=True).fetchone() == (sample_items("acme")[1][1],)


# -- DEALLOCATE name and DISCARD ALL, answered by the session -----------------------------------

def deallocate_and_discard_outcomes(conn: psycopg.Connection) -> list[object]:
    """A sequence of protocol-level prepares, SQL DEALLOCATE and DISCARD ALL; what each step
    gave (a command status or a SQLSTATE)."""
    pgconn = conn.pgconn
    seen: list[object] = []

    def run(result) -> None:
        state = result.error_field(pq.DiagnosticField.SQLSTATE)
        seen.append(state.decode() if state else (result.command_status or b"").decode())

    run(pgconn.prepare(b"s1", b"SELECT 1"))
    run(pgconn.exec_(b"DEALLOCATE s1"))
    run(pgconn.exec_prepared(b"s1", []))
    run(pgconn.exec_(b"DEALLOCATE PREPARE s1"))
    run(pgconn.exec_(b"SET TimeZone TO 'Asia/Tokyo'"))
    run(pgconn.prepare(b"s2", b"SELECT 2"))
    run(pgconn.exec_(b"DISCARD ALL"))
    run(pgconn.exec_prepared(b"s2", []))
    seen.append(pgconn.exec_(b"SHOW TimeZone").get_value(0, 0).decode())
    run(pgconn.exec_(b"BEGIN"))
    run(pgconn.exec_(b"DISCARD ALL"))
    seen.append(conn.info.transaction_status.name)
    run(pgconn.exec_(b"ROLLBACK"))
    return seen


def test_deallocate_name_and_discard_all_behave_as_on_postgres(proxy, pg) -> None:
    with psycopg.connect(direct_dsn(pg), autocommit=True) as direct:
        expected = deallocate_and_discard_outcomes(direct)
    with proxy.connect("app.acme", APP, autocommit=True) as conn:
        got = deallocate_and_discard_outcomes(conn)
    assert expected[:4] == ["", "DEALLOCATE", "26000", "26000"]  # the oracle itself
    assert expected[6:8] == ["DISCARD ALL", "26000"] and expected[-3:-1] == ["25001", "INERROR"]
    assert got[:8] == expected[:8]
    assert got[8] != "Asia/Tokyo" and got[9:] == expected[9:]  # the client's own TimeZone



# -- a Bind with its Describe, Execute and Sync sent as one request (extended.py) ---------------

PER_ROW = "SELECT g, 12 / (g - $1::int) FROM generate_series(1, 3) AS g"  # $1 = 1: 22012
BATCH_TAILS = {"libpq": describe("P") + execute() + SYNC, "asyncpg": execute() + SYNC,
               "asyncpg-fetchrow": execute(max_rows=1) + SYNC}


def batch_requests(tail: bytes) -> bytes:
    """Three requests of the named statement `s` in one write: rows, an error at Execute
    (division by zero in the first row), rows again."""
    return b"".join(bind("", "s", (value,)) + tail for value in (b"9", b"1", b"0"))


def errors_of(normalised: list[tuple[str, object]]) -> list[object]:
    return [body for kind, body in normalised if kind == "E"]


@pytest.mark.parametrize("tail", BATCH_TAILS)
def test_bind_execute_sync_in_one_write_matches_postgres(proxy, pg, tail) -> None:
    """First use on the server connection (the proxy's own Parse goes first), an error in
    the middle request, and the request after it: answered as PostgreSQL answers them."""
    answers = []
    for sock in (proxy_socket(proxy), direct_socket(pg)):
        with sock:
            sock.sendall(parse("s", PER_ROW) + SYNC)
            assert kinds(read_until_ready(sock)) == ["1", "Z"]
            sock.sendall(batch_requests(BATCH_TAILS[tail]))
            answers.append(normalise(read_until_ready(sock, 3)))
            sock.sendall(query("SELECT 42"))
            assert read_until_ready(sock)[1] == ("D", data_row(b"42"))
    proxied, direct = answers
    assert errors_of(direct) == ["22012"] and kinds(direct).count("D") >= 2
    assert proxied == direct


@pytest.mark.parametrize("tail", BATCH_TAILS)
def test_bind_execute_sync_error_in_transaction_rolls_it_back(proxy, pg, tail) -> None:
    marker = f"batch-{uuid.uuid4().hex[:12]}"
    answers = []
    for sock in (proxy_socket(proxy), direct_socket(pg)):
        with sock:
            sock.sendall(parse("s", PER_ROW) + SYNC + query("BEGIN"))
            read_until_ready(sock, 2)
            sock.sendall(query(f"INSERT INTO items (name) VALUES ('{marker}')"))
            read_until_ready(sock)
            sock.sendall(batch_requests(BATCH_TAILS[tail]) + query("COMMIT"))
            answers.append(normalise(read_until_ready(sock, 4)))
    proxied, direct = answers
    assert errors_of(direct) == ["22012", "25P02"]
    assert direct[-2:] == [("C", b"ROLLBACK\0"), ("Z", b"I")]
    assert proxied == direct
    assert backend_query(pg, "acme", "SELECT count(*) FROM items WHERE name = %s",
                         (marker,)) == [(0,)]


def test_bind_execute_sync_gives_the_server_connection_back(proxy_factory) -> None:
    """With one server connection, a second client is answered after each request of the
    first: a named statement's that succeeded, one that failed, and an unnamed Parse with
    its Bind…Sync (libpq's PQexecParams)."""
    proxy = proxy_factory(pool_size=1)
    requests = [bind("", "s", (b"9",)), bind("", "s", (b"1",)), parse("", "SELECT 5") + bind()]
    with proxy_socket(proxy) as first, proxy_socket(proxy) as second:
        first.sendall(parse("s", PER_ROW) + SYNC)
        read_until_ready(first)
        for request in requests:
            first.sendall(request + BATCH_TAILS["libpq"])
            assert read_until_ready(first)[-1] == ("Z", b"I")
            second.sendall(query("SELECT 7"))  # a 10 s socket timeout bounds the wait
            assert read_until_ready(second)[1] == ("D", data_row(b"7"))


def test_copy_from_stdin_of_a_named_statement_in_one_write(proxy_factory, pg) -> None:
    """COPY started by the Execute of such a request ignores its Sync: the client's CopyDone
    and next Sync end it, and the connection is then free for another client."""
    table = f"copy_{uuid.uuid4().hex[:10]}"
    pg.run_sql(f"CREATE TABLE public.{table} (id int); GRANT INSERT, SELECT ON public.{table} "
               "TO tenantgate;", dbname="acme")
    proxy = proxy_factory(pool_size=1)
    try:
        with proxy_socket(proxy) as first, proxy_socket(proxy) as second:
            first.sendall(parse("c", f"COPY {table} FROM STDIN") + SYNC)
            read_until_ready(first)
            first.sendall(bind("", "c") + BATCH_TAILS["libpq"])
            assert kinds(read_n(first, 3)) == ["2", "n", "G"]
            first.sendall(message(b"d", b"1\n2\n") + message(b"c", b"") + SYNC)
            assert read_until_ready(first) == [("C", b"COPY 2\0"), ("Z", b"I")]
            second.sendall(query(f"SELECT count(*) FROM {table}"))
            assert read_until_ready(second)[1] == ("D", data_row(b"2"))
            first.sendall(query("SELECT 1"))
            assert kinds(read_until_ready(first)) == ["T", "D", "C", "Z"]
    finally:
        pg.run_sql(f"DROP TABLE public.{table};", dbname="acme")


# Requests of the named statement `s` and simple Queries, in any order: the Bind…Sync ones in
# each of the forms sent as one piece, and in a form that is not (a named portal).
REQUESTS = st.sampled_from(
    [bind("", "s", (value,)) + tail for value in (b"9", b"1") for tail in BATCH_TAILS.values()]
    + [bind("p", "s", (b"0",)) + describe("P", "p") + execute("p") + SYNC,
       query("SELECT 1/0"), query("SELECT 7")])


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(REQUESTS, min_size=1, max_size=6), cuts=st.lists(st.integers(1, 400)))
def test_requests_in_any_pieces_are_answered_as_postgres_answers(proxy, pg, requests,
                                                                  cuts) -> None:
    """Property: whichever requests follow each other and wherever the client's writes cut
    them (a Bind's Describe, Execute and Sync may come in a later read than the Bind),
    the client gets what PostgreSQL gives."""
    stream = b"".join(requests)
    bounds = sorted({cut for cut in cuts if cut < len(stream)}) + [len(stream)]
    answers = []
    for sock in (proxy_socket(proxy), direct_socket(pg)):
        with sock:
            sock.sendall(parse("s", PER_ROW) + SYNC)
            read_until_ready(sock)
            start = 0
            for end in bounds:
                sock.sendall(stream[start:end])
                start = end
            answers.append(normalise(read_until_ready(sock, len(requests))))
    proxied, direct = answers
    assert kinds(direct).count("Z") == len(requests)
    assert proxied == direct
