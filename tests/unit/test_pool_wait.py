"""Waiting for a server connection when the pool is full: hand-off order, give-ups,
the one expiry timer, and a reload closing the pool. No server is needed: the pool's
connections here are never opened (their transport is None)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.config import Cluster
from proxy.errors import ConnectionUnavailable, PoolTimeout
from proxy.pool.pool import Pool
from proxy.pool.server import ServerConnection


def full_pool(wait_timeout: float = 30.0) -> Pool:
    """A pool of one connection that is lent out (size 1, nothing idle)."""
    pool = Pool(Cluster("main", (("127.0.0.1", 1),), "u", pool_size=1,
                        wait_timeout=wait_timeout), "acme")
    pool.size = 1
    return pool


class Recorder:
    """The two callbacks of one wait, and what they received."""

    def __init__(self) -> None:
        self.conns: list[ServerConnection] = []
        self.errors: list[Exception] = []
        self.settled = asyncio.get_running_loop().create_future()

    def on_conn(self, conn) -> None:
        self.conns.append(conn)
        self.settled.set_result("conn")

    def on_error(self, error) -> None:
        self.errors.append(error)
        self.settled.set_result("error")


async def test_release_hands_the_connection_to_the_oldest_waiter_in_the_same_call():
    pool = full_pool()
    first, second = Recorder(), Recorder()
    pool.wait(first.on_conn, first.on_error)
    pool.wait(second.on_conn, second.on_error)
    conn = ServerConnection("127.0.0.1", 1)
    assert pool.full and pool.waiting == 2
    pool.release(conn)
    assert first.conns == [conn]  # no await in between: delivered by release itself
    assert second.conns == [] and pool.waiting == 1 and pool.idle == []


async def test_a_cancelled_wait_is_skipped_and_not_counted():
    pool = full_pool()
    gone, next_in_line = Recorder(), Recorder()
    waiter = pool.wait(gone.on_conn, gone.on_error)
    pool.wait(next_in_line.on_conn, next_in_line.on_error)
    waiter.cancel()  # the client disconnected while it waited
    assert pool.waiting == 1
    conn = ServerConnection("127.0.0.1", 1)
    pool.release(conn)
    assert gone.conns == [] and next_in_line.conns == [conn]


async def test_no_waiter_left_means_the_connection_goes_idle():
    pool = full_pool()
    gone = Recorder()
    pool.wait(gone.on_conn, gone.on_error).cancel()
    conn = ServerConnection("127.0.0.1", 1)
    pool.release(conn)
    assert pool.idle == [conn] and gone.conns == []


async def test_waits_that_outlast_wait_timeout_fail_with_53300_oldest_first():
    pool = full_pool(wait_timeout=0.05)
    older, newer = Recorder(), Recorder()
    pool.wait(older.on_conn, older.on_error)
    pool.wait(newer.on_conn, newer.on_error)
    assert await older.settled == "error"
    assert await newer.settled == "error"
    for error in older.errors + newer.errors:
        assert isinstance(error, PoolTimeout) and error.sqlstate == "53300"
    assert pool.waiting == 0 and not pool.waiters


async def test_a_connection_released_before_the_deadline_is_not_also_a_timeout():
    pool = full_pool(wait_timeout=0.05)
    served, late = Recorder(), Recorder()
    pool.wait(served.on_conn, served.on_error)
    pool.wait(late.on_conn, late.on_error)
    pool.release(ServerConnection("127.0.0.1", 1))
    assert await late.settled == "error"  # the timer fired after the hand-off
    assert served.errors == [] and len(served.conns) == 1


async def test_acquire_waits_through_the_same_queue():
    pool = full_pool()
    coroutine = pool.acquire(("acme",))
    coroutine.send(None)  # runs up to its wait: it yields the future it awaits
    assert pool.waiting == 1
    conn = ServerConnection("127.0.0.1", 1)
    pool.release(conn)
    with pytest.raises(StopIteration) as done:
        coroutine.send(None)
    assert done.value.value is conn


async def test_closing_the_pool_fails_every_wait():
    pool = full_pool()
    waiting = Recorder()
    pool.wait(waiting.on_conn, waiting.on_error)
    pool.close()
    assert await waiting.settled == "error"
    assert isinstance(waiting.errors[0], ConnectionUnavailable)
    assert pool.waiting == 0



def idle_conn(pool: Pool, context_key: tuple) -> ServerConnection:
    conn = ServerConnection("127.0.0.1", 1)
    conn.context_key = context_key
    pool.idle.append(conn)
    return conn


async def test_another_tenants_idle_connection_is_not_reset_while_the_pool_can_grow():
    pool = Pool(Cluster("main", (("127.0.0.1", 1),), "u", pool_size=2), "acme")
    pool.size = 1
    theirs = idle_conn(pool, ("row", "t1", ()))
    assert pool.take_idle(("row", "t2", ())) is None  # open a second one instead
    assert pool.idle == [theirs]
    pool.size = 2  # full: reusing it (reset by the lease) is the only way
    assert pool.take_idle(("row", "t2", ())) is theirs


async def test_a_tenants_idle_connection_is_found_under_many_of_another_tenants():
    # A full shared pool: t2's one idle connection sits below ten of t1's. Taking one of
    # t1's instead would cost a DISCARD ALL and a setup on every such lease.
    pool = Pool(Cluster("main", (("127.0.0.1", 1),), "u", pool_size=11), "acme")
    pool.size = 11
    own = idle_conn(pool, ("row", "t2", ()))
    others = [idle_conn(pool, ("row", "t1", ())) for _ in range(10)]
    assert pool.take_idle(("row", "t2", ())) is own
    assert pool.idle == others


async def test_acquire_reuses_another_tenants_connection_when_no_new_one_opens(monkeypatch):
    import proxy.pool.pool as pool_module

    async def refused(cluster, database):
        raise ConnectionUnavailable("too many connections")

    monkeypatch.setattr(pool_module, "open_server_connection", refused)
    pool = Pool(Cluster("main", (("127.0.0.1", 1),), "u", pool_size=2), "acme")
    pool.size = 1
    theirs = idle_conn(pool, ("row", "t1", ()))
    assert await pool.acquire(("row", "t2", ())) is theirs
    assert pool.size == 1 and pool.idle == []
