"""COPY both ways through the running proxy (DESIGN.md 5).

200,000 rows in and out, text and binary, compared byte for byte with what PostgreSQL gives
directly; COPY in a rolled-back transaction; bad data in the middle of a COPY FROM (22P02);
CopyFail from the client; the extended-protocol COPY libpq sends (Sync during COPY IN, which
PostgreSQL ignores). After each failure the connection, and the pool, keep working.
"""

from __future__ import annotations

import hashlib
import socket
import time
import uuid
from decimal import Decimal

import psycopg
import pytest
from psycopg import pq

from tests.helpers import backend_query, error_fields, message, raw_login, read_message

APP = "app-secret"
ROWS = 200_000
COLUMNS = "(id, name, amount, note)"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def copy_table(pg):
    """A fresh table in database acme, created directly as the superuser, for tenantgate."""
    name = f"copy_{uuid.uuid4().hex[:10]}"
    pg.run_sql(f"CREATE TABLE public.{name} (id int PRIMARY KEY, name text NOT NULL, "
               f"amount numeric(12, 2), note bytea);\n"
               f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON public.{name} TO tenantgate;",
               dbname="acme")
    yield name
    pg.run_sql(f"DROP TABLE IF EXISTS public.{name};", dbname="acme")


def text_rows(count: int = ROWS) -> bytes:
    """COPY text input that COPY TO gives back byte for byte (escapes, NULLs, bytea)."""
    lines = []
    for i in range(count):
        name = f"row-{i}" if i % 7 else f"tab\\there-{i}\\\\back"
        amount = "\\N" if i % 11 == 0 else f"{i // 3}.{i % 100:02d}"
        note = "\\N" if i % 5 == 0 else f"\\\\x{i % 256:02x}{(i * 7) % 256:02x}"
        lines.append(f"{i}\t{name}\t{amount}\t{note}\n")
    return "".join(lines).encode()


def direct_connect(pg) -> psycopg.Connection:
    return psycopg.connect(pg.dsn("tenantgate", "tenantgate-secret", "acme"), autocommit=True,
                           connect_timeout=10)


def copy_out(conn: psycopg.Connection, sql: str) -> bytes:
    with conn.cursor() as cur, cur.copy(sql) as copy:
        return b"".join(bytes(chunk) for chunk in copy)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def count(pg, table: str) -> int:
    return backend_query(pg, "acme", f"SELECT count(*) FROM public.{table}")[0][0]


def test_copy_text_200k_rows_in_and_out(proxy, pg, copy_table) -> None:
    data = text_rows()
    with proxy.connect("app.acme", APP) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY {copy_table} {COLUMNS} FROM STDIN") as copy:
                for start in range(0, len(data), 50_000):  # chunks that split rows
                    copy.write(data[start:start + 50_000])
            assert cur.rowcount == ROWS
        via_proxy = copy_out(conn, f"COPY (SELECT * FROM {copy_table} ORDER BY id) TO STDOUT")
        assert conn.execute(f"SELECT count(*) FROM {copy_table}").fetchone() == (ROWS,)
    with direct_connect(pg) as conn:
        direct = copy_out(conn, f"COPY (SELECT * FROM {copy_table} ORDER BY id) TO STDOUT")
    assert md5(via_proxy) == md5(direct) == md5(data)
    assert count(pg, copy_table) == ROWS


def test_copy_binary_200k_rows_in_and_out(proxy, pg, copy_table) -> None:
    types = ["int4", "text", "numeric", "bytea"]
    with proxy.connect("app.acme", APP) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY {copy_table} {COLUMNS} FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(types)
                for i in range(ROWS):
                    copy.write_row((i, f"bin-{i}", None if i % 13 == 0 else Decimal(i) / 4,
                                    None if i % 5 == 0 else bytes([i % 256, 0, 255])))
            assert cur.rowcount == ROWS
        sql = f"COPY (SELECT * FROM {copy_table} ORDER BY id) TO STDOUT (FORMAT BINARY)"
        via_proxy = copy_out(conn, sql)
        via_proxy_text = copy_out(conn, f"COPY (SELECT * FROM {copy_table} ORDER BY id) "
                                        "TO STDOUT")
    with direct_connect(pg) as conn:
        direct = copy_out(conn, sql)
        direct_text = copy_out(conn, f"COPY (SELECT * FROM {copy_table} ORDER BY id) TO STDOUT")
    assert len(via_proxy) > ROWS * 20
    assert md5(via_proxy) == md5(direct)
    assert md5(via_proxy_text) == md5(direct_text)
    first = direct_text.split(b"\n", 1)[0]
    assert first == b"0\tbin-0\t\\N\t\\N"


def test_copy_in_rolled_back_transaction_leaves_nothing(proxy, pg, copy_table) -> None:
    with proxy.connect("app.acme", APP, autocommit=False) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY {copy_table} {COLUMNS} FROM STDIN") as copy:
                copy.write(text_rows(10_000))
            assert conn.execute(f"SELECT count(*) FROM {copy_table}").fetchone() == (10_000,)
        conn.rollback()
        assert conn.execute(f"SELECT count(*) FROM {copy_table}").fetchone() == (0,)
        conn.rollback()
    assert count(pg, copy_table) == 0


def test_bad_data_in_the_middle_of_copy_from(proxy, pg, copy_table) -> None:
    good = text_rows(50_000)
    lines = good.split(b"\n")
    lines[25_000] = b"not-a-number\tbad\t1.00\t\\N"
    with proxy.connect("app.acme", APP) as conn:
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as info:
            with conn.cursor() as cur, cur.copy(f"COPY {copy_table} {COLUMNS} FROM STDIN") as copy:
                copy.write(b"\n".join(lines))
                copy.write(text_rows(60_000)[len(good):])  # the client keeps sending
        assert info.value.sqlstate == "22P02"
        assert "not-a-number" in str(info.value)
        assert conn.info.transaction_status.name == "IDLE"
        assert conn.execute(f"SELECT count(*) FROM {copy_table}").fetchone() == (0,)
        # the same connection copies fine afterwards
        with conn.cursor() as cur, cur.copy(f"COPY {copy_table} {COLUMNS} FROM STDIN") as copy:
            copy.write(text_rows(100))
        assert conn.execute(f"SELECT count(*) FROM {copy_table}").fetchone() == (100,)
    with proxy.connect("app.acme", APP) as other:  # and the pool is not poisoned
        assert other.execute(f"SELECT count(*) FROM {copy_table}").fetchone() == (100,)
    assert count(pg, copy_table) == 100


def test_bad_data_in_copy_inside_transaction_aborts_it(proxy, pg, copy_table) -> None:
    with proxy.connect("app.acme", APP) as conn:
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {copy_table} (id, name) VALUES (-1, 'before')")
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with conn.cursor() as cur, cur.copy(f"COPY {copy_table} {COLUMNS} FROM STDIN") as copy:
                copy.write(b"1\tok\t1.00\t\\N\nx\tbad\t1.00\t\\N\n")
        assert conn.info.transaction_status.name == "INERROR"
        assert conn.execute("COMMIT").statusmessage == "ROLLBACK"
    assert count(pg, copy_table) == 0


def test_client_copy_fail(proxy, pg, copy_table) -> None:
    with proxy.connect("app.acme", APP) as conn:
        with pytest.raises(ZeroDivisionError):
            with conn.cursor() as cur, cur.copy(f"COPY {copy_table} {COLUMNS} FROM STDIN") as copy:
                copy.write(text_rows(1000))
                1 / 0  # the client gives up: psycopg sends CopyFail
        assert conn.info.transaction_status.name == "IDLE"
        assert conn.execute(f"SELECT count(*) FROM {copy_table}").fetchone() == (0,)
    assert count(pg, copy_table) == 0


def test_raw_copy_fail_matches_postgres(proxy, pg, copy_table) -> None:
    def run(sock) -> list[tuple[str, str | None]]:
        sock.sendall(message(b"Q", f"COPY {copy_table} (id, name) FROM STDIN\0".encode()))
        out = []
        first = read_message(sock)
        out.append((first[0], None))
        sock.sendall(message(b"d", b"1\tone\n") + message(b"f", b"client says no\0"))
        while True:
            kind, body = read_message(sock)
            if kind == "E":
                fields = error_fields(body)
                out.append((kind, fields["C"] + ": " + fields["M"]))
            elif kind != "N":
                out.append((kind, body.decode() if kind == "Z" else None))
            if kind == "Z":
                break
        sock.sendall(message(b"Q", b"SELECT 1\0"))
        while read_message(sock)[0] != "Z":
            pass
        return out

    with raw_login(pg.host, pg.port, "tenantgate", "tenantgate-secret", "acme") as sock:
        direct = run(sock)
    with raw_login(proxy.host, proxy.port, "app.acme", APP) as sock:
        proxied = run(sock)
    assert proxied == direct
    assert proxied == [("G", None), ("E", "57014: COPY from stdin failed: client says no"),
                       ("Z", "I")]
    assert count(pg, copy_table) == 0


def test_copy_out_error_midway(proxy, pg) -> None:
    sql = "COPY (SELECT 10 / (5000 - g) FROM generate_series(1, 10000) AS g) TO STDOUT"
    with proxy.connect("app.acme", APP) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            copy_out(conn, sql)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_copy_to_stdout_with_parameters_uses_extended_protocol(proxy, pg) -> None:
    """psycopg sends COPY with parameters through Parse/Bind/Execute/Sync."""
    sql = "COPY (SELECT g, %s::text FROM generate_series(1, 1000) AS g) TO STDOUT"
    with proxy.connect("app.acme", APP) as conn:
        with conn.cursor() as cur, cur.copy(sql, ("x",)) as copy:
            rows = [bytes(chunk) for chunk in copy]
        assert b"".join(rows) == b"".join(f"{g}\tx\n".encode() for g in range(1, 1001))
        assert conn.execute("SELECT 1").fetchone() == (1,)


def libpq_copy_in(dsn: str, table: str, rows: int, while_connected=None) -> list[str]:
    """COPY FROM STDIN the way libpq's PQexecParams does it: Parse/Bind/Describe/Execute/Sync,
    CopyData, CopyDone and another Sync (PostgreSQL ignores the Sync that came during COPY).
    `while_connected()` runs afterwards, before this client disconnects."""
    conn = pq.PGconn.connect(dsn.encode())
    assert conn.status == pq.ConnStatus.OK, conn.get_error_message()
    try:
        conn.send_query_params(f"COPY {table} (id, name) FROM STDIN".encode(), None)
        res = conn.get_result()
        statuses = [pq.ExecStatus(res.status).name]
        assert conn.put_copy_data(b"".join(f"{i}\tp{i}\n".encode() for i in range(rows))) == 1
        assert conn.put_copy_end() == 1
        while (res := conn.get_result()) is not None:
            statuses.append(pq.ExecStatus(res.status).name + ":" + res.command_status.decode())
        res = conn.exec_(b"SELECT 42")
        statuses.append(res.get_value(0, 0).decode())
        if while_connected is not None:
            while_connected()
        return statuses
    finally:
        conn.finish()


def test_libpq_extended_copy_in_keeps_the_pool_working(proxy_factory, pg, copy_table) -> None:
    """After the COPY the client is idle: its server connection must be back in the pool (of
    one), so another client's query runs at once."""
    proxy = proxy_factory(pool_size=1)
    direct = libpq_copy_in(pg.dsn("tenantgate", "tenantgate-secret", "acme"), copy_table, 10)
    pg.run_sql(f"TRUNCATE public.{copy_table};", dbname="acme")
    assert direct == ["COPY_IN", "COMMAND_OK:COPY 10", "42"]
    seen = []

    def another_client() -> None:
        with raw_login(proxy.host, proxy.port, "app.acme", APP, timeout=5) as sock:
            sock.sendall(message(b"Q", f"SELECT count(*) FROM {copy_table}\0".encode()))
            while (msg := read_message(sock))[0] != "Z":  # a 5 s socket timeout bounds it
                seen.append(msg)

    assert libpq_copy_in(proxy.dsn("app.acme", APP), copy_table, 10, another_client) == direct
    assert [kind for kind, _ in seen] == ["T", "D", "C"]
    assert seen[1][1].endswith(b"10")


async def test_asyncpg_copy_records_and_copy_out(proxy, pg, copy_table) -> None:
    conn = await proxy.aconnect("app.acme", APP)
    try:
        records = [(i, f"async-{i}", None, bytes([i % 256])) for i in range(20_000)]
        result = await conn.copy_records_to_table(copy_table, records=records,
                                                  columns=["id", "name", "amount", "note"])
        assert result == "COPY 20000"
        out = []

        async def collect(chunk) -> None:
            out.append(bytes(chunk))

        await conn.copy_from_query(f"SELECT id, name FROM {copy_table} ORDER BY id",
                                   output=collect)
        assert b"".join(out) == b"".join(f"{i}\tasync-{i}\n".encode() for i in range(20_000))
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    assert count(pg, copy_table) == 20_000


def test_slow_reader_does_not_leave_the_server_connection_paused(proxy_factory,
                                                                copy_table) -> None:
    """A client that does not read its results makes the proxy stop reading the server
    (backpressure) once everything between them is full. When the chunk that pushes the
    proxy's buffer over its limit is the last of a result, with ReadyForQuery, the lease
    ends right there: the server connection must go back to the pool reading again, or the
    next client on it waits forever. One server connection. The reader's results are small
    (PostgreSQL writes each one at once, ReadyForQuery included), so whichever one crosses
    the limit ends its lease; 1000 of them (6 MB) are more than the kernel buffers between
    the proxy and the reader hold (net.ipv4.tcp_wmem allows 4 MB). After each, the other
    client's count needs the connection: it proves the connection came back working."""
    proxy = proxy_factory(pool_size=1)
    rounds, width = 1000, 6000
    with raw_login(proxy.host, proxy.port, "app.acme", APP, timeout=5) as reader, \
            raw_login(proxy.host, proxy.port, "app.acme", APP, timeout=5) as other:
        reader.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each query goes now
        for attempt in range(rounds):
            reader.sendall(message(b"Q", f"INSERT INTO {copy_table} (id, name) VALUES "
                                         f"({attempt}, 'r') RETURNING repeat('x', {width})\0"
                                   .encode()))  # and it reads nothing yet
            deadline = time.monotonic() + 5
            # Until the reader's insert is there: one reader query in flight at a time.
            while count_rows(other, copy_table) != attempt + 1:
                assert time.monotonic() < deadline, f"the insert of round {attempt} never ran"
        for attempt in range(rounds):  # the reader gets every result, whole and in order
            replies = [read_message(reader) for _ in range(4)]
            assert [kind for kind, _ in replies] == ["T", "D", "C", "Z"], attempt
            assert replies[1][1].endswith(b"x" * width)


def count_rows(sock, table: str) -> int:
    """SELECT count(*) over a raw connection; its 5 s socket timeout bounds the wait."""
    sock.sendall(message(b"Q", f"SELECT count(*) FROM {table}\0".encode()))
    replies = []
    while not replies or replies[-1][0] != "Z":
        replies.append(read_message(sock))
    assert [kind for kind, _ in replies] == ["T", "D", "C", "Z"], replies
    return int(replies[1][1][6:])


# -- a large result read slowly: memory stays flat, others are served -------------------------

def proxy_rss(pid: int) -> int:
    """VmRSS of the proxy process in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def test_large_result_read_slowly_keeps_proxy_memory_flat(proxy_factory) -> None:
    """256 MB of rows read at about 16 MB/s through a small receive buffer: the proxy
    stops reading the server while the client is behind (transport flow control), so its
    RSS grows by far less than the result (< 50 MB), and another client of the same tenant
    is served all along (the reader holds one of the two server connections)."""
    proxy = proxy_factory(pool_size=2)
    rows, width = 262_144, 1000  # 256 MiB of text in DataRows
    chunk, per_second = 64 * 1024, 16 * 1024 * 1024
    with raw_login(proxy.host, proxy.port, "app.acme", APP, timeout=30) as reader, \
            proxy.connect("app.acme", APP) as other:
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        baseline = proxy_rss(proxy.pid)
        reader.sendall(message(b"Q", f"SELECT repeat('x', {width}) FROM generate_series(1, "
                                     f"{rows})\0".encode()))
        received, peak, served, started = 0, baseline, 0, time.monotonic()
        tail = b""
        while not tail.endswith(b"Z\x00\x00\x00\x05I"):
            data = reader.recv(chunk)
            assert data, "the proxy closed the slow reader's connection"
            received += len(data)
            tail = (tail + data)[-6:]
            peak = max(peak, proxy_rss(proxy.pid))
            if received // (8 * 1024 * 1024) > served:  # every 8 MB: the other client
                served += 1
                assert other.execute("SELECT count(*) FROM items").fetchone() == (3,)
            ahead = received / per_second - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)  # pace the reading: this client is the slow one
    assert received > rows * width
    assert served >= 30  # the other client ran all along the 256 MB
    assert peak - baseline < 50 * 1024 * 1024, f"RSS grew by {(peak - baseline) >> 20} MB"
