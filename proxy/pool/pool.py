"""A pool of server connections for one (cluster, database, backend role).

LIFO reuse with tenant affinity, at most `pool_size` connections, a bounded wait for a
free one, idle and lifetime expiry. Connections are handed to waiters in arrival order.
A released connection goes straight to the oldest waiter, without a trip through `idle`
and without a scheduling hop: `release` calls the waiter's callback at once (a session
waiting for a server goes on with its held message in the same call). One timer per pool
ends the waits that outlast `wait_timeout`, so a wait costs no timer of its own.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from proxy.config import Cluster
from proxy.errors import ConnectionUnavailable, PoolTimeout
from proxy.pool.server import ServerConnection, open_server_connection


class Waiter:
    """One wait for a connection: `deliver(conn)` or `fail(error)` is called once, unless
    `cancel()` came first. Deadlines grow in arrival order (one `wait_timeout` per pool)."""

    __slots__ = ("on_conn", "on_error", "deadline", "cancelled")

    def __init__(self, on_conn: Callable[[ServerConnection], None],
                 on_error: Callable[[Exception], None], deadline: float) -> None:
        self.on_conn = on_conn
        self.on_error = on_error
        self.deadline = deadline
        self.cancelled = False

    @property
    def waiting(self) -> bool:
        return not self.cancelled

    def cancel(self) -> None:
        self.cancelled = True  # left in the queue; skipped when its turn comes

    def deliver(self, conn: ServerConnection) -> bool:
        """Hand `conn` over; False if this wait was given up (the caller keeps `conn`)."""
        if self.cancelled:
            return False
        self.cancelled = True
        self.on_conn(conn)
        return True

    def fail(self, error: Exception) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.on_error(error)


class FutureWaiter(Waiter):
    """A wait of a coroutine (`Pool.acquire`): delivered through a future."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future, deadline: float) -> None:
        super().__init__(future.set_result, future.set_exception, deadline)
        self.future = future

    @property
    def waiting(self) -> bool:
        return not self.cancelled and not self.future.done()

    def deliver(self, conn: ServerConnection) -> bool:
        if self.future.done():  # the awaiting task was cancelled
            self.cancelled = True
            return False
        return super().deliver(conn)


class Pool:
    def __init__(self, cluster: Cluster, database: str) -> None:
        self.cluster = cluster
        self.database = database
        self.idle: list[ServerConnection] = []  # most recently used last
        self.waiters: collections.deque[Waiter] = collections.deque()
        self.size = 0  # open or opening connections
        self.server_params: dict[str, str] | None = None  # ParameterStatus of a fresh connection
        self.retired = False  # replaced by a reload: close connections as they come back
        self._opening: set[asyncio.Task] = set()
        self._cancels: set[asyncio.Task] = set()
        self._expiry: asyncio.TimerHandle | None = None  # ends the oldest wait on time
        self._loop: asyncio.AbstractEventLoop | None = None  # its clock dates the waits

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self.waiters if waiter.waiting)

    @property
    def full(self) -> bool:
        """No idle connection and no room to open one: a new request must wait."""
        return not self.idle and self.size >= self.cluster.pool_size

    @property
    def active(self) -> int:
        return self.size - len(self.idle)

    def take_idle(self, context_key: tuple) -> ServerConnection | None:
        """An idle connection without waiting, preferring one already in `context_key`'s
        state. While the pool may still grow, one in another tenant's state is not taken
        (None: open a new one), so tenants sharing a pool do not reset each other's
        connections back and forth; `acquire` falls back to it if opening fails."""
        idle = self.idle
        self._discard_closed_newest()
        if not idle:
            return None
        # Every idle connection is looked at (newest first, at most pool_size of them): a
        # look costs well under a microsecond, a reset a round trip or two to the server.
        for index in range(len(idle) - 1, -1, -1):
            conn = idle[index]
            if conn.context_key == context_key and not conn.dirty and not conn.closed:
                return idle.pop(index)
        return idle.pop() if self.size >= self.cluster.pool_size else None

    def take_any_idle(self) -> ServerConnection | None:
        """The most recently used idle connection, whatever its state."""
        self._discard_closed_newest()
        return self.idle.pop() if self.idle else None

    def _discard_closed_newest(self) -> None:
        """Discard the newest idle connections whose server went away while they sat in
        the pool, down to one still open (older closed ones are skipped when met)."""
        idle = self.idle
        while idle and idle[-1].closed:
            self.discard(idle.pop())

    async def acquire(self, context_key: tuple) -> ServerConnection:
        """A connection for this pool, opening one or waiting at most `wait_timeout`."""
        conn = self.take_idle(context_key)
        if conn is not None:
            return conn
        if self.size < self.cluster.pool_size:
            try:
                return await self._open()
            except Exception:  # the server takes no more connections: reuse an idle one
                conn = self.take_any_idle()
                if conn is None:
                    raise
                return conn
        future = asyncio.get_running_loop().create_future()
        waiter = FutureWaiter(future, self._deadline())
        self._enqueue(waiter)
        try:
            return await future
        except BaseException:
            waiter.cancel()
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())  # handed over just as the caller gave up
            raise

    def wait(self, on_conn: Callable[[ServerConnection], None],
             on_error: Callable[[Exception], None]) -> Waiter:
        """Queue a callback wait (the pool is `full`): `on_conn` gets the next free
        connection, called from `release` itself; `on_error` gets PoolTimeout after
        `wait_timeout` or why a connection could not be opened. `cancel()` it to give up."""
        waiter = Waiter(on_conn, on_error, self._deadline())
        self._enqueue(waiter)
        return waiter

    def _deadline(self) -> float:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time() + self.cluster.wait_timeout

    def _enqueue(self, waiter: Waiter) -> None:
        self.waiters.append(waiter)
        if self._expiry is None:
            self._arm_expiry(waiter.deadline)

    def _arm_expiry(self, deadline: float) -> None:
        self._expiry = asyncio.get_running_loop().call_at(deadline, self._expire_waits)

    def _expire_waits(self) -> None:
        """Fail the waits whose deadline passed (the oldest first); re-arm for the next."""
        self._expiry = None
        now = asyncio.get_running_loop().time()
        waiters = self.waiters
        while waiters and (not waiters[0].waiting or waiters[0].deadline <= now):
            waiter = waiters.popleft()
            if waiter.waiting:
                waiter.fail(PoolTimeout(
                    f"no server connection became free within {self.cluster.wait_timeout:g} s",
                    rule="pool-wait-timeout"))
        if waiters:
            self._arm_expiry(waiters[0].deadline)

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
        if conn.closed or not conn.reusable or self.retired \
                or conn.last_used - conn.created_at > self.cluster.max_lifetime:  # too old
            self.discard(conn)
            return
        waiters = self.waiters
        while waiters:
            if waiters.popleft().deliver(conn):
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
            if not waiter.waiting:
                continue
            task = asyncio.get_running_loop().create_task(self._open_for(waiter))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
            return

    async def _open_for(self, waiter: Waiter) -> None:
        try:
            conn = await self._open()
        except Exception as exc:  # the waiter gets the reason
            waiter.fail(exc)
            return
        if not waiter.deliver(conn):
            self.release(conn)

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
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        waiters, self.waiters = self.waiters, collections.deque()
        for waiter in waiters:
            waiter.fail(ConnectionUnavailable("the server pool was replaced by a configuration "
                                              "reload; reconnect"))
