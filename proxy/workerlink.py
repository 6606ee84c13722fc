"""A worker's ties to its supervisor and its sibling workers (`workers: N`, see proxy.workers).

Everything travels as newline-delimited JSON over Unix sockets in the supervisor's private
directory (mode 0700, so only the proxy's own user can connect):

    DIR/settings.json    what the supervisor pins for every worker (listen, worker count, audit)
    DIR/supervisor.sock  each worker keeps one connection open: hello, ready, audit entries
    DIR/worker-I.sock    worker I answers one request per connection: a cancel to apply, or
                         a metrics snapshot

`WorkerLink` is the worker's end: it routes cancel keys (the owning worker's index is the
key's pid modulo the worker count), forwards CancelRequests that belong to another worker,
serves snapshots of its metrics, and hands its audit entries to the supervisor through an
`AuditForwarder`, because only the supervisor may write the HMAC chain. When the supervisor's
connection ends (it died), the worker drains as on SIGTERM.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import os
import secrets
import signal
from typing import Any

import structlog

from proxy.observability.audit import QueuedRecorder
from proxy.observability.combined import CombinedMetrics, snapshot
from proxy.observability.logging import get_logger

MAX_LINE = 64 * 1024 * 1024  # one message; a metrics snapshot of very many tenants is large
REQUEST_TIMEOUT = 2.0  # seconds for a sibling to answer one request
AUDIT_QUEUE = 10_000  # audit entries a worker holds while the supervisor catches up
AUDIT_BATCH = 512  # entries sent in one write
MAX_CANCEL_KEY = 256  # bytes (protocol 3.2); a forwarded key longer than this is ignored


# -- the wire ----------------------------------------------------------------------------------

def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message; None at the end of the stream; ValueError for a line that is not
    one, or longer than the reader's limit (MAX_LINE)."""
    line = await reader.readline()
    if not line:
        return None
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message


def supervisor_socket(directory: str) -> str:
    return os.path.join(directory, "supervisor.sock")


def worker_socket(directory: str, index: int) -> str:
    return os.path.join(directory, f"worker-{index}.sock")


def settings_path(directory: str) -> str:
    return os.path.join(directory, "settings.json")


async def request(directory: str, index: int, message: dict[str, Any],
                  answer: bool = True) -> dict[str, Any] | None:
    """Send one request to worker `index`; its answer (None when it sends none or fails)."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(
                worker_socket(directory, index), limit=MAX_LINE)
            try:
                writer.write(encode(message))
                await writer.drain()
                return await read_message(reader) if answer else None
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError):
        return None  # the worker is restarting or gone: the caller counts who answered


async def fetch_snapshots(directory: str, indexes: range | list[int]
                          ) -> list[dict[str, Any] | None]:
    """The metrics snapshots of these workers (None for a worker that did not answer)."""
    return list(await asyncio.gather(*(request(directory, index, {"kind": "metrics"})
                                       for index in indexes)))


# -- cancel keys -------------------------------------------------------------------------------

def cancel_key(index: int, count: int) -> tuple[int, bytes]:
    """A random (pid, key) whose pid modulo `count` is `index`, the worker that owns it.

    The pid is uniform over the positive 31-bit values in that residue class, so it keeps
    31 - log2(count) bits of randomness (30 with two workers, as with one: the single-process
    key forces its pid odd), and the key its 32: 62 bits with 2 workers, 57 with 64."""
    while True:
        pid = secrets.randbelow((1 << 31) // count) * count + index
        if pid:  # 0 is what "no pid" looks like to some clients
            return pid, secrets.token_bytes(4)


def owner_of(pid: int, count: int) -> int:
    return pid % count


# -- the worker's end --------------------------------------------------------------------------

class WorkerLink:
    """Worker `index` of `count`; `start(app)` before the app serves, `close()` after."""

    def __init__(self, index: int, directory: str) -> None:
        with open(settings_path(directory), encoding="utf-8") as handle:
            settings = json.load(handle)
        self.index = index
        self.directory = directory
        self.count: int = settings["workers"]
        self.listen: tuple[str, int] = tuple(settings["listen"])
        self.audit_settings: dict[str, Any] | None = settings["audit"]
        self.supervisor_pid: int = settings["supervisor_pid"]
        if not 0 <= index < self.count:
            raise ValueError(f"worker {index} of {self.count}")
        structlog.contextvars.bind_contextvars(worker=index)  # on every line this process logs
        self.log = get_logger(component="worker")
        self.app = None
        self.closing = False
        self._server: asyncio.Server | None = None
        self._control: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task] = set()

    def pin(self, config):
        """The worker's config: the file's, with the settings only a restart may change taken
        from the supervisor (a worker restarted after the file changed binds the same port)."""
        return dataclasses.replace(config, listen=self.listen, workers=self.count)

    async def start(self, app) -> None:
        self.app = app
        self._server = await asyncio.start_unix_server(
            self._serve_request, path=worker_socket(self.directory, self.index), limit=MAX_LINE)
        reader, self._control = await asyncio.open_unix_connection(
            supervisor_socket(self.directory), limit=MAX_LINE)
        self.send({"kind": "hello", "worker": self.index, "pid": os.getpid()})
        self._spawn(self._watch_supervisor(reader))

    async def ready(self) -> None:
        """Tell the supervisor this worker listens (it prints the ready line once for all)."""
        self.send({"kind": "ready"})
        await self._control.drain()

    def send(self, message: dict[str, Any]) -> None:
        self.send_many([message])

    def send_many(self, messages: list[dict[str, Any]]) -> None:
        if self._control is None or self._control.is_closing():
            raise ConnectionResetError("no connection to the supervisor")
        self._control.write(b"".join(encode(message) for message in messages))

    async def drain(self) -> None:
        await self._control.drain()

    async def close(self) -> None:
        self.closing = True
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                os.unlink(worker_socket(self.directory, self.index))
        if self._control is not None:
            with contextlib.suppress(OSError):
                await self._control.drain()
            self._control.close()
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_supervisor(self, reader: asyncio.StreamReader) -> None:
        """The supervisor sends nothing; the end of its connection means it is gone."""
        with contextlib.suppress(OSError):
            while await reader.read(4096):
                pass
        if not self.closing:
            self.log.warning("the supervisor is gone; draining")
            self.app.drain()

    # -- cancel routing ------------------------------------------------------------------------

    def new_cancel_key(self) -> tuple[int, bytes]:
        return cancel_key(self.index, self.count)

    def forward_cancel(self, pid: int, key: bytes) -> bool:
        """True when another worker owns the key: the request is sent there, not applied here."""
        owner = owner_of(pid, self.count)
        if owner == self.index:
            return False
        self.log.info("cancel request forwarded", owner=owner)
        message = {"kind": "cancel", "pid": pid, "key": key.hex(), "from": self.index}
        self._spawn(request(self.directory, owner, message, answer=False))
        return True

    async def _serve_request(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        try:
            message = await asyncio.wait_for(read_message(reader), REQUEST_TIMEOUT)
            if message is None:
                return
            if message.get("kind") == "cancel":
                self._apply_cancel(message)
            elif message.get("kind") == "metrics":
                writer.write(encode(snapshot(self.app.metrics)))
                await writer.drain()
        except (OSError, TimeoutError, ValueError):
            pass  # the asker went away; it counts the answer as missing
        finally:
            writer.close()

    def _apply_cancel(self, message: dict[str, Any]) -> None:
        pid, key = message.get("pid"), message.get("key")
        if not isinstance(pid, int) or not isinstance(key, str) or len(key) > 2 * MAX_CANCEL_KEY:
            return
        try:
            raw_key = bytes.fromhex(key)
        except ValueError:
            return
        if owner_of(pid, self.count) == self.index:  # never forwarded twice
            self.log.info("cancel request from another worker", sender=message.get("from"))
            self.app.cancel(pid, raw_key)

    # -- what a worker may ask about the whole proxy (the admin console) -----------------------

    async def whole_proxy_metrics(self) -> CombinedMetrics:
        """Every worker's metrics added up, this one's read directly (for SHOW STATS)."""
        combined = CombinedMetrics(self.app.config.metrics_tenant_labels, self.count)
        others = [index for index in range(self.count) if index != self.index]
        snapshots = await fetch_snapshots(self.directory, others)
        combined.load([snapshot(self.app.metrics), *snapshots])
        return combined

    def reload_all(self) -> bool:
        """RELOAD for every worker: the supervisor forwards SIGHUP to all of them (False when
        the supervisor is gone: its pid may belong to another process by now)."""
        if os.getppid() != self.supervisor_pid:
            return False
        os.kill(self.supervisor_pid, signal.SIGHUP)
        return True

    def audit_log(self) -> AuditForwarder | None:
        """The worker's audit log: entries for the supervisor's trail, or None without one."""
        if self.audit_settings is None:
            return None
        return AuditForwarder(self, self.audit_settings["every_statement"])


class AuditForwarder(QueuedRecorder):
    """AuditLog's interface in a worker: `record()` queues an entry without blocking and a
    task sends the queue to the supervisor, which writes it into the one chain.

    As in AuditLog, a full queue drops an entry but never silently: it is counted in
    `dropped`, logged at most once a second, and a `gap` message with the number lost is
    sent in its place, which the supervisor chains into the trail as a gap entry."""

    def __init__(self, link: WorkerLink, every_statement: bool,
                 queue_size: int = AUDIT_QUEUE) -> None:
        self.link = link
        self.every_statement = every_statement
        self.queue_capacity = queue_size
        self.written = self.dropped = self.blocked = self.write_errors = 0
        self.log = get_logger(component="audit")
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._last_warning = -math.inf

    def _entry(self, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "audit", "event": event, "fields": fields}

    async def record_wait(self, event: str, **fields: Any) -> bool:
        return self.record(event, **fields)  # nothing waits: the queue is as large as AuditLog's

    def _drop(self, count: int = 1) -> None:
        self.dropped += count
        last = self._queue[-1] if self._queue else None
        if last is not None and last["kind"] == "gap":
            last["count"] += count
        else:  # one marker past capacity, where the entries went missing
            self._queue.append({"kind": "gap", "count": count})
        self._warn_dropped("the worker's audit queue is full")

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-forwarder")

    async def close(self) -> None:
        """Send what is queued; the supervisor writes the final checkpoint when all are done."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while self._queue or not self._closing:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(AUDIT_BATCH, len(self._queue)))]
            try:
                self.link.send_many(batch)
                await self.link.drain()
            except OSError as exc:  # the supervisor is gone: what was queued cannot be written
                self.write_errors += len(batch) + len(self._queue)
                self.log.error("audit entries lost: no connection to the supervisor",
                               error=repr(exc), entries=len(batch) + len(self._queue))
                self._queue.clear()
                return
            self.written += sum(1 for item in batch if item["kind"] == "audit")
