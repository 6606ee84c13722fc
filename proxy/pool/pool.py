"""A pool of server connections for one (cluster, database, backend role).

LIFO reuse with tenant affinity, at most `pool_size` connections, a bounded wait for a
free one, idle and lifetime expiry. Connections are handed to waiters in arrival order.
A released connection goes straight to the oldest waiter, without a trip through `idle`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable

from proxy.config import Cluster
from proxy.errors import PoolTimeout
from proxy.pool.server import ServerConnection, open_server_connection

AFFINITY_SCAN = 8  # idle connections looked at for one already in the tenant's state


class Pool:
    def __init__(self, cluster: Cluster, database: str) -> None:
        self.cluster = cluster
        self.database = database
        self.idle: list[ServerConnection] = []  # most recently used last
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.size = 0  # open or opening connections
        self.server_params: dict[str, str] | None = None  # ParameterStatus of a fresh connection
        self.retired = False  # replaced by a reload: close connections as they come back
        self._opening: set[asyncio.Task] = set()
        self._cancels: set[asyncio.Task] = set()

    @property
    def active(self) -> int:
        return self.size - len(self.idle)

    def take_idle(self, context_key: tuple) -> ServerConnection | None:
        """An idle connection without waiting, preferring one already in `context_key`'s state."""
        idle = self.idle
        while idle and idle[-1].closed:  # the server went away while it sat in the pool
            self.discard(idle.pop())
        for index in range(len(idle) - 1, max(len(idle) - 1 - AFFINITY_SCAN, -1), -1):
            conn = idle[index]
            if conn.context_key == context_key and not conn.dirty and not conn.closed:
                return idle.pop(index)
        return idle.pop() if idle else None

    async def acquire(self, context_key: tuple) -> ServerConnection:
        """A connection for this pool, opening one or waiting at most `wait_timeout`."""
        conn = self.take_idle(context_key)
        if conn is not None:
            return conn
        if self.size < self.cluster.pool_size:
            return await self._open()
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        got = False
        try:
            async with asyncio.timeout(self.cluster.wait_timeout):
                conn = await waiter
            got = True
            return conn
        except TimeoutError:
            raise PoolTimeout(
                f"no server connection became free within {self.cluster.wait_timeout:g} s",
                rule="pool-wait-timeout") from None
        finally:
            if not got:
                self._abandon(waiter)

    def _abandon(self, waiter: asyncio.Future) -> None:
        """The waiter gave up; if a connection was handed over meanwhile, take it back."""
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self.release(waiter.result())
        elif not waiter.done():
            waiter.cancel()

    async def _open(self) -> ServerConnection:
        self.size += 1
        try:
            conn = await open_server_connection(self.cluster, self.database)
        except BaseException:
            self.size -= 1
            self._wake_opener()
            raise
        if self.server_params is None:
            self.server_params = dict(conn.params)
        return conn

    def release(self, conn: ServerConnection) -> None:
        """Take a connection back; it must be outside any transaction."""
        conn.detach()
        if conn.cancels:  # comes back when the server has taken the cancel
            conn.held_back = True
            return
        if conn.closed or not conn.reusable or self.retired or self._too_old(conn):
            self.discard(conn)
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    def cancel(self, conn: ServerConnection) -> None:
        """Forward a client's CancelRequest to the backend of `conn`, which it holds now.

        PostgreSQL takes a cancel some time after it is sent; until then `conn` goes to
        no one else, so the cancel cannot stop the next holder's query (THREATS 59).
        """
        conn.cancels += 1
        task = asyncio.get_running_loop().create_task(self._send_cancel(conn))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _send_cancel(self, conn: ServerConnection) -> None:
        settled = False
        try:
            settled = await conn.send_cancel()
        finally:
            conn.cancels -= 1
            if not settled:
                conn.reusable = False  # it could still stop whoever holds it next
            if conn.held_back and not conn.cancels:
                conn.held_back = False
                self.release(conn)

    def discard(self, conn: ServerConnection) -> None:
        """Close a connection that must not be reused; let a waiter open a new one."""
        conn.close()
        self.size -= 1
        self._wake_opener()

    def _wake_opener(self) -> None:
        """A slot became free: open a connection for the oldest waiter, if any."""
        while self.waiters and self.size < self.cluster.pool_size:
            waiter = self.waiters.popleft()
            if waiter.done():
                continue
            task = asyncio.get_running_loop().create_task(self._open_for(waiter))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
            return

    async def _open_for(self, waiter: asyncio.Future) -> None:
        try:
            conn = await self._open()
        except Exception as exc:  # the waiter gets the reason
            if not waiter.done():
                waiter.set_exception(exc)
            return
        if waiter.done():
            self.release(conn)
        else:
            waiter.set_result(conn)

    def _too_old(self, conn: ServerConnection) -> bool:
        return time.monotonic() - conn.created_at > self.cluster.max_lifetime

    def expire_idle(self) -> int:
        """Close connections idle longer than `idle_timeout`; returns how many."""
        deadline = time.monotonic() - self.cluster.idle_timeout
        stale = [conn for conn in self.idle if conn.last_used < deadline or conn.closed]
        for conn in stale:
            self.idle.remove(conn)
            self.discard(conn)
        return len(stale)

    def close_idle(self, which: Callable[[ServerConnection], bool]) -> int:
        """Close the idle connections `which` selects (admin KILL); returns how many."""
        doomed = [conn for conn in self.idle if which(conn)]
        for conn in doomed:
            self.idle.remove(conn)
            self.discard(conn)
        return len(doomed)

    def close(self) -> None:
        """Close idle connections now and the others as they come back."""
        self.retired = True
        while self.idle:
            self.discard(self.idle.pop())
        for waiter in self.waiters:
            if not waiter.done():
                waiter.cancel()
