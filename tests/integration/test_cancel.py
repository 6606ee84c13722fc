"""Cancel requests through the running proxy (DESIGN.md 5, THREATS 58-59).

A client's cancel reaches the server connection running its query, and only while it holds
it: the query ends with 57014 within about a second while another client's query completes
normally; a CancelRequest with a wrong key, or from a client that holds no server connection,
cancels nothing; the cancelled connection is usable afterwards. Waiting for a query to be
running is done by polling pg_stat_activity directly on PostgreSQL, with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import scramp

from tests.helpers import (cancel_packet, error_fields, marked_sleep, message,
                           psycopg_cancel, raw_connect, raw_login, read_message,
                           recv_until_closed, running, send_cancel, startup_packet,
                           wait_running)

APP = "app-secret"
CANCEL_DEADLINE = 3.0  # seconds; PostgreSQL answers in milliseconds, the margin is for CI

pytestmark = pytest.mark.timeout(60)


async def await_running(pg, marker: str, timeout: float = 10.0, expect: bool = True) -> None:
    await asyncio.to_thread(wait_running, pg, marker, timeout, expect)


@contextlib.contextmanager
def row_locked(pg, row_id: int):
    """Hold a lock on acme's items row directly on PostgreSQL: a query through the proxy that
    updates the row waits (visibly, as an active query) until the block ends."""
    with psycopg.connect(pg.dsn(dbname="acme"), connect_timeout=10) as conn:
        conn.execute("SELECT id FROM items WHERE id = %s FOR UPDATE", (row_id,))
        yield
        conn.commit()


def blocked_update(row_id: int) -> tuple[str, str]:
    """An update that waits for `row_locked`, with a marker for pg_stat_activity."""
    marker = f"cancel-{uuid.uuid4().hex[:12]}"
    return marker, (f"UPDATE items SET name = name WHERE id = {row_id} AND '{marker}' <> '' "
                    "RETURNING name")


def login_with_key(proxy, user: str = "app.acme") -> tuple[object, int, bytes]:
    """A raw SCRAM login through the proxy; the socket and its BackendKeyData (pid, key)."""
    sock = raw_connect(proxy.host, proxy.port)
    sock.sendall(startup_packet({"user": user, "database": "app"}))
    scram = None
    pid, key = 0, b""
    while True:
        msg = read_message(sock)
        assert msg is not None, "the proxy closed the connection during login"
        kind, body = msg
        assert kind != "E", error_fields(body)
        if kind == "K":
            pid, key = struct.unpack("!I", body[:4])[0], body[4:]
        elif kind == "Z":
            return sock, pid, key
        elif kind == "R":
            code = struct.unpack("!I", body[:4])[0]
            if code == 10:
                scram = scramp.ScramClient(["SCRAM-SHA-256"], user, APP)
                first = scram.get_client_first().encode()
                sock.sendall(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first))
                                     + first))
            elif code == 11:
                scram.set_server_first(body[4:].decode())
                sock.sendall(message(b"p", scram.get_client_final().encode()))
            elif code == 12:
                scram.set_server_final(body[4:].decode())
            elif code == 5:
                inner = hashlib.md5((APP + user).encode()).hexdigest().encode()
                sock.sendall(message(b"p", b"md5" + hashlib.md5(inner + body[4:8]).hexdigest()
                                     .encode() + b"\0"))
            elif code != 0:
                raise AssertionError(f"unsupported authentication request {code}")


def read_reply(sock) -> list[tuple[str, bytes]]:
    out = []
    while True:
        msg = read_message(sock)
        assert msg is not None, f"connection closed after {out}"
        if msg[0] in ("N", "S"):
            continue
        out.append(msg)
        if msg[0] == "Z":
            return out


def query_message(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


# -- psycopg -------------------------------------------------------------------------------------

def test_psycopg_cancel_from_another_thread(proxy, pg) -> None:
    marker, sql = marked_sleep(30)
    bystander_marker, bystander_sql = marked_sleep(2)
    with proxy.connect("app.acme", APP) as victim, proxy.connect("app.acme", APP) as bystander, \
            ThreadPoolExecutor(2) as pool:
        other = pool.submit(lambda: bystander.execute(bystander_sql).fetchone())

        def cancel_when_running() -> float:
            wait_running(pg, marker)
            wait_running(pg, bystander_marker)
            started = time.monotonic()
            psycopg_cancel(victim)
            return started

        canceller = pool.submit(cancel_when_running)
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            victim.execute(sql)
        elapsed = time.monotonic() - canceller.result(timeout=15)
        assert info.value.sqlstate == "57014"
        assert elapsed < CANCEL_DEADLINE, f"cancel took {elapsed:.2f}s"
        assert other.result(timeout=15) == (bystander_marker, "")  # completed normally
        assert victim.execute("SELECT 1").fetchone() == (1,)  # usable after the cancel
        assert victim.info.transaction_status.name == "IDLE"
    assert running(pg, marker) == 0


def test_psycopg_cancel_inside_a_transaction_aborts_it(proxy, pg) -> None:
    marker, sql = marked_sleep(30)
    with proxy.connect("app.acme", APP) as victim, ThreadPoolExecutor(1) as pool:
        victim.execute("BEGIN")
        assert victim.execute("SELECT 1").fetchone() == (1,)
        canceller = pool.submit(lambda: (wait_running(pg, marker), psycopg_cancel(victim)))
        with pytest.raises(psycopg.errors.QueryCanceled):
            victim.execute(sql)
        canceller.result(timeout=15)
        assert victim.info.transaction_status.name == "INERROR"
        victim.execute("ROLLBACK")
        assert victim.execute("SELECT 2").fetchone() == (2,)


# -- asyncpg -----------------------------------------------------------------------------------

async def test_asyncpg_task_cancel_sends_cancel_request(proxy, pg) -> None:
    marker, sql = marked_sleep(30)
    bystander_marker, bystander_sql = marked_sleep(2)
    conn = await proxy.aconnect("app.acme", APP)
    bystander = await proxy.aconnect("app.acme", APP)
    try:
        other = asyncio.create_task(bystander.fetchrow(bystander_sql))
        task = asyncio.create_task(conn.execute(sql))
        await await_running(pg, marker)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # asyncpg sent a CancelRequest: the query stops on the server, the connection is usable
        assert await asyncio.wait_for(conn.fetchval("SELECT 1"), CANCEL_DEADLINE * 2) == 1
        elapsed = time.monotonic() - started
        assert elapsed < CANCEL_DEADLINE, f"cancel took {elapsed:.2f}s"
        assert running(pg, marker) == 0
        assert tuple(await asyncio.wait_for(other, 15)) == (bystander_marker, None)
    finally:
        await conn.close()
        await bystander.close()


async def test_asyncpg_timeout_cancels_the_query_on_the_server(proxy, pg) -> None:
    marker, sql = marked_sleep(30)
    conn = await proxy.aconnect("app.acme", APP)
    try:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await conn.execute(sql, timeout=0.5)
        assert await asyncio.wait_for(conn.fetchval("SELECT 2"), CANCEL_DEADLINE * 2) == 2
        assert time.monotonic() - started < 0.5 + CANCEL_DEADLINE
        await await_running(pg, marker, expect=False, timeout=CANCEL_DEADLINE)
    finally:
        await conn.close()


# -- raw CancelRequests ----------------------------------------------------------------------------

def test_cancel_with_wrong_key_cancels_nothing(proxy, pg) -> None:
    sock, pid, key = login_with_key(proxy)
    with sock:
        assert len(key) == 4 and pid != 0
        marker, sql = blocked_update(1)
        with row_locked(pg, 1):
            sock.sendall(query_message(sql))
            wait_running(pg, marker)
            with psycopg.connect(pg.dsn(dbname="postgres"), autocommit=True,
                                 connect_timeout=10) as su:
                backend_pid = su.execute(
                    "SELECT pid FROM pg_stat_activity WHERE query LIKE %s "
                    "AND pid <> pg_backend_pid()", (f"%{marker}%",)).fetchone()[0]
            flipped = bytes([key[0] ^ 1]) + key[1:]
            for bad_pid, bad_key in ((pid, flipped), (pid ^ 2, key), (backend_pid, key),
                                     (pid, b"\0\0\0\0"), (0, key)):
                assert send_cancel(proxy, bad_pid, bad_key) == b""
            assert running(pg, marker) == 1  # still waiting: nothing was cancelled
        reply = read_reply(sock)  # the lock is gone: the update completes normally
        assert [kind for kind, _ in reply] == ["T", "D", "C", "Z"], \
            [error_fields(b) for k, b in reply if k == "E"]
        assert reply[2][1] == b"UPDATE 1\0"
        # the right key does cancel (the control for the above)
        marker, sql = marked_sleep(30)
        sock.sendall(query_message(sql))
        wait_running(pg, marker)
        started = time.monotonic()
        send_cancel(proxy, pid, key)
        reply = read_reply(sock)
        assert time.monotonic() - started < CANCEL_DEADLINE
        assert [kind for kind, _ in reply] == ["T", "E", "Z"]  # as PostgreSQL: header, error
        assert error_fields(reply[1][1])["C"] == "57014"
        sock.sendall(query_message("SELECT 1"))
        assert [kind for kind, _ in read_reply(sock)] == ["T", "D", "C", "Z"]


def test_cancel_from_a_client_without_a_server_reaches_nobody(proxy_factory, pg) -> None:
    """With one server connection: client A used it and gave it back; B now runs a query on
    it. A's cancel must not cancel B's query."""
    proxy = proxy_factory(pool_size=1)
    with proxy.connect("app.acme", APP) as a, proxy.connect("app.acme", APP) as b, \
            ThreadPoolExecutor(1) as pool:
        assert a.execute("SELECT 1").fetchone() == (1,)
        marker, sql = blocked_update(2)
        with row_locked(pg, 2):
            result = pool.submit(lambda: b.execute(sql).fetchone())
            wait_running(pg, marker)
            psycopg_cancel(a)  # returns when the proxy has handled the request
            assert running(pg, marker) == 1
        assert result.result(timeout=15) == ("acme-beta",)
        assert a.execute("SELECT 2").fetchone() == (2,)


def test_cancel_keys_are_not_the_backend_keys(proxy, pg) -> None:
    """The client sees a proxy-generated key: the backend pid is not what it is told."""
    sock, pid, key = login_with_key(proxy)
    with sock:
        sock.sendall(query_message("SELECT pg_backend_pid()"))
        reply = read_reply(sock)
        backend_pid = int(reply[1][1][6:].decode())
        assert pid != backend_pid
    keys = set()
    for _ in range(5):
        other, other_pid, other_key = login_with_key(proxy)
        other.close()
        keys.add((other_pid, other_key))
    assert len(keys) == 5


@pytest.mark.parametrize("victim,bystander", [("app.acme", "app.acme"),
                                              ("app.globex", "app.hooli")],
                         ids=["same-tenant", "other-tenant"])
def test_cancel_never_reaches_the_next_holder_of_the_server(proxy_factory, victim,
                                                             bystander) -> None:
    """One server connection. The victim holds it (open transaction) and sends COMMIT and a
    CancelRequest together; the bystander waits for the connection with a query. The cancel
    is looked up while the victim holds the connection, but must not land on the bystander's
    query once the connection changed hands (THREATS 59), in another tenant least of all."""
    proxy = proxy_factory(pool_size=1)
    sock, pid, key = login_with_key(proxy, victim)
    outcomes = []
    with sock:
        for _ in range(15):
            with raw_login(proxy.host, proxy.port, bystander, APP) as other:
                sock.sendall(query_message("BEGIN"))
                assert [k for k, _ in read_reply(sock)] == ["C", "Z"]
                other.sendall(query_message("SELECT 'bystander', pg_sleep(0.2)"))  # waits
                with raw_connect(proxy.host, proxy.port) as cancel:
                    sock.sendall(query_message("COMMIT"))
                    cancel.sendall(cancel_packet(pid, key))
                    recv_until_closed(cancel)
                read_reply(sock)
                reply = read_reply(other)
                outcomes.append(["".join(k for k, _ in reply)]
                                + [error_fields(b).get("C") for k, b in reply if k == "E"])
    assert outcomes == [["TDCZ"]] * 15
