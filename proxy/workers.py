"""`workers: N`: N proxy processes share the listen port, and one supervisor keeps them running.

Processes. With `workers:` above 1, `tenantgate run` is the supervisor. It validates the
config, checks with a plain bind that nothing listens on the address yet, makes a private
directory (mode 0700) for Unix sockets, opens the audit trail and the `metrics:` endpoint if
configured, and starts each worker as `python -m proxy run --config FILE --worker I
--worker-dir DIR`. A worker is the single-process proxy (proxy.app.App) with three changes
(proxy.workerlink): it binds the listen address with SO_REUSEPORT, so the kernel spreads new
connections over the workers by a hash of the client's address and port; its audit entries
go to the supervisor; it serves no HTTP. With `workers: 1` (the default) there is no
supervisor: `tenantgate run` is the proxy, exactly as before.

Lifecycle. The supervisor prints `tenantgate: listening on HOST:PORT` once every worker
listens. SIGHUP is forwarded to every worker, and each reloads the file as one process
would (a worker whose reload fails keeps its config and logs why; each worker adds its own
config_reload entry to the audit trail). SIGTERM and SIGINT are forwarded as SIGTERM: every
worker drains (open transactions finish, up to shutdown_timeout) and the supervisor exits
when all have exited, 0 when all of them exited cleanly, else 1. A worker that exits
before every worker was ready once stops the whole proxy (exit 1): the config or the
environment is wrong for all of them. A worker that dies later is restarted after
RESTART_DELAY, doubled for each restart that dies before it is ready, up to
MAX_RESTART_DELAY; its clients lose their connections, as with a crashed single process.
If the supervisor dies, every worker sees its control connection end and drains. `listen`,
`workers`, `metrics` and `audit` change only with a restart: a worker started later binds
the supervisor's listen address and follows its audit choice, whatever the file says then.

Cancel requests. A client's cancel key is issued by the worker that holds the client, and
its pid modulo N is that worker's index (proxy.workerlink.cancel_key: 31 - log2(N) random
bits in the pid and 32 in the key, 62 with two workers). The kernel hands the CancelRequest's
new connection to any worker; one that does not own the key sends (pid, key) to the owner
over the owner's Unix socket, and the owner applies the usual rule: the cancel reaches the
server connection only while that client holds it.

Per worker. Pools, quotas and caches belong to each worker: `pool_size` is per worker (the
backend may see pool_size × N connections per pool), and `max_client_connections` and a
tenant's `max_connections` are enforced by each worker on its own clients, so the proxy as
a whole admits up to N times as many.

Metrics. The supervisor serves `metrics:` (/metrics, /healthz, /readyz, the dashboard). At
each scrape it asks every worker for a snapshot of its metrics over the worker's Unix socket
and renders the sum (proxy.observability.combined). /readyz is 200 while the proxy is not
draining, every worker is ready and every cluster is reachable.

Audit. Only the supervisor writes the HMAC chain. Workers send their entries over the
control connection from a bounded queue; an entry that does not fit is counted and becomes
a gap entry in the trail, never a silent loss. Each entry carries `worker`. `tenantgate
audit verify` is unchanged. Entries a worker had queued when it crashed are lost; the
supervisor logs the crash.

Admin console. A console client lands on one worker, like any client: what it shows and
changes (clients, servers, pools, PAUSE, KILL, SHOW STATS) is that worker's (the
combined counts are on /metrics); `WorkerLink.reload_all()` makes a RELOAD reach every
worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.config import Config, load_config
from proxy.errors import ConfigError
from proxy.listener import check_address_free
from proxy.observability.audit import AuditLog
from proxy.observability.combined import CombinedMetrics
from proxy.observability.http import HttpServer
from proxy.observability.logging import get_logger
from proxy.observability.observer import backends_reachable
from proxy.workerlink import (MAX_LINE, fetch_snapshots, read_message, settings_path,
                              supervisor_socket)

RESTART_DELAY = 1.0  # seconds before a dead worker is started again
MAX_RESTART_DELAY = 30.0
KILL_GRACE = 10.0  # seconds past shutdown_timeout before workers still running are killed
CONTROL_GRACE = 5.0  # seconds to read the last audit entries of exited workers
STOP_SIGNALS = (-signal.SIGTERM, -signal.SIGINT)  # exits that a requested stop may cause


def supervise(config: Config) -> int:
    """Run `config.workers` workers until SIGTERM/SIGINT; the exit code."""
    host, port = config.listen
    try:
        check_address_free(host, port)
    except OSError as exc:
        print(f"tenantgate: cannot listen on {host}:{port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    directory = tempfile.mkdtemp(prefix="tenantgate-workers-")  # mode 0700: only we may connect
    try:
        return asyncio.run(Supervisor(config, directory).run())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Worker:
    """One worker slot; its process changes when it is restarted."""

    index: int
    process: asyncio.subprocess.Process | None = None
    running: bool = False  # started and its exit not handled yet
    connected: bool = False  # said hello: its signal handlers are installed
    ready: bool = False  # listening
    reload_pending: bool = False  # a SIGHUP came before it could take one
    failures: int = 0  # deaths since it was last ready
    exit_code: int | None = None
    restart: asyncio.TimerHandle | None = None


class Supervisor:
    def __init__(self, config: Config, directory: str) -> None:
        self.config = config
        self.directory = directory
        self.log = get_logger(component="supervisor")
        self.workers = [Worker(index) for index in range(config.workers)]
        self.audit = AuditLog.from_settings(config.audit) if config.audit else None
        self.metrics = CombinedMetrics(config.metrics_tenant_labels, config.workers,
                                       fetch=self._snapshots)
        self.metrics.watch_audit(lambda: self.audit)
        self.http: HttpServer | None = None
        self.started = False  # every worker was ready once
        self.failed = False  # a worker failed at start-up: the proxy stops
        self.draining = False
        self.changed = asyncio.Event()  # set whenever a worker's state changes
        self._tasks: set[asyncio.Task] = set()
        self._handlers: set[asyncio.Task] = set()  # control connections being read

    async def run(self) -> int:
        self._write_settings()
        control = await asyncio.start_unix_server(
            self._control_connection, path=supervisor_socket(self.directory), limit=MAX_LINE)
        try:
            if not await self._open_outputs():
                return 1
            self._handle_signals()
            for worker in self.workers:
                await self._start(worker)
            await self._until(lambda: self.failed or self.draining or self._all_ready())
            if self._all_ready() and not self.draining:
                self._announce()
            elif self.failed:
                self.drain()
            await self._until(lambda: not any(worker.running for worker in self.workers))
        finally:
            await self._close(control)
        return self._exit_code()

    # -- start-up ------------------------------------------------------------------------------

    def _write_settings(self) -> None:
        audit = self.config.audit
        settings = {"workers": self.config.workers, "listen": list(self.config.listen),
                    "supervisor_pid": os.getpid(),
                    "audit": None if audit is None else {"every_statement":
                                                         audit.every_statement}}
        with open(settings_path(self.directory), "w", encoding="utf-8") as handle:
            json.dump(settings, handle)

    async def _open_outputs(self) -> bool:
        if self.audit is not None:
            await self.audit.start()
        if self.config.metrics is None:
            return True
        self.http = HttpServer(self.config.metrics, self.metrics, ready=self.ready,
                               refresh=self.metrics.refresh)
        try:
            await self.http.start()
        except OSError as exc:
            self.log.error("cannot serve metrics", address=self.config.metrics, error=str(exc))
            self.http = None
            return False
        return True

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, self.drain)
        loop.add_signal_handler(signal.SIGINT, self.drain)

    async def _start(self, worker: Worker) -> None:
        worker.restart = None
        argv = [sys.executable, "-m", "proxy", "run", "--config", self.config.path,
                "--worker", str(worker.index), "--worker-dir", self.directory]
        worker.connected = worker.ready = False
        try:  # stdout and stderr are ours: the workers' logs go where the supervisor's go
            worker.process = await asyncio.create_subprocess_exec(*argv,
                                                                  stdin=subprocess.DEVNULL)
        except OSError as exc:
            self.log.error("cannot start a worker", worker=worker.index, error=str(exc))
            self.failed = not self.started
            self._died(worker, None)
            return
        worker.running = True
        self.changed.set()
        self.log.info("worker started", worker=worker.index, pid=worker.process.pid)
        if self.draining:
            worker.process.send_signal(signal.SIGTERM)
        self._spawn(self._watch(worker, worker.process))

    def _all_ready(self) -> bool:
        return all(worker.ready for worker in self.workers)

    def _announce(self) -> None:
        self.started = True
        host, port = self.config.listen
        self.log.info("listening", host=host, port=port, workers=len(self.workers))
        print(f"tenantgate: listening on {host}:{port}", flush=True)

    # -- workers' messages ---------------------------------------------------------------------

    async def _control_connection(self, reader: asyncio.StreamReader,
                                  writer: asyncio.StreamWriter) -> None:
        """One worker's connection: hello, then ready and audit entries until it exits."""
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            worker = await self._worker_saying_hello(await read_message(reader))
            while worker is not None:
                try:
                    message = await read_message(reader)
                except ValueError as exc:  # a bug, not an attack: only we can connect
                    self.log.error("bad message from a worker", worker=worker.index, error=str(exc))
                    continue
                if message is None:
                    break
                self._dispatch(worker, message)
        except (OSError, ValueError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _worker_saying_hello(self, hello: dict[str, Any] | None) -> Worker | None:
        if hello is None or hello.get("kind") != "hello":
            return None
        index, pid = hello.get("worker"), hello.get("pid")
        if not isinstance(index, int) or not 0 <= index < len(self.workers):
            return None
        worker = self.workers[index]
        try:  # on a starved machine the hello may come before create_subprocess_exec returns
            async with asyncio.timeout(CONTROL_GRACE):
                await self._until(lambda: worker.process is not None and worker.process.pid == pid)
        except TimeoutError:
            return None  # not the process we started for that slot
        worker.connected = True
        if worker.reload_pending:
            worker.reload_pending = False
            worker.process.send_signal(signal.SIGHUP)
        return worker

    def _dispatch(self, worker: Worker, message: dict[str, Any]) -> None:
        kind = message.get("kind")
        if kind == "ready":
            worker.ready, worker.failures = True, 0
            self.log.info("worker ready", worker=worker.index)
            self.changed.set()
        elif kind == "audit" and self.audit is not None:
            self._record(worker, message)
        elif kind == "gap" and self.audit is not None:
            self.audit.lost(int(message.get("count", 0)))

    def _record(self, worker: Worker, message: dict[str, Any]) -> None:
        fields = dict(message.get("fields") or {})
        fields["worker"] = worker.index
        try:
            self.audit.record(str(message.get("event")), **fields)
        except (ValueError, TypeError) as exc:
            self.log.error("bad audit entry from a worker", worker=worker.index, error=str(exc))

    # -- exits and restarts --------------------------------------------------------------------

    async def _watch(self, worker: Worker, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if worker.process is process:
            self._died(worker, code)

    def _died(self, worker: Worker, code: int | None) -> None:
        worker.running = worker.connected = worker.ready = False
        worker.exit_code = code
        self.changed.set()
        if self.draining:
            self.log.info("worker exited", worker=worker.index, code=code)
        elif not self.started:
            self.log.error("worker exited during start-up; stopping", worker=worker.index,
                           code=code)
            self.failed = True
        else:
            worker.failures += 1
            delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** (worker.failures - 1))
            self.log.error("worker died; restarting it", worker=worker.index, code=code,
                           delay=delay)
            self.metrics.restarts += 1
            worker.restart = asyncio.get_running_loop().call_later(
                delay, lambda: self._spawn(self._start(worker)))

    # -- signals -------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: every worker reloads the file; say so when a restart-only key changed."""
        for worker in self.workers:
            if worker.running and worker.connected:
                worker.process.send_signal(signal.SIGHUP)
            elif worker.running:
                worker.reload_pending = True  # SIGHUP would kill it before its handlers exist
        try:
            config = load_config(self.config.path)
        except ConfigError:
            return  # every worker logs why it keeps its configuration
        if config.workers != self.config.workers:
            self.log.warning("a change of workers needs a restart", workers=config.workers)

    def drain(self) -> None:
        """SIGTERM/SIGINT: every worker drains; the supervisor ends when they have exited."""
        if self.draining:
            return
        self.draining = True
        self.log.info("draining", workers=sum(worker.running for worker in self.workers))
        for worker in self.workers:
            if worker.restart is not None:
                worker.restart.cancel()
                worker.restart = None
            if worker.running:
                worker.process.send_signal(signal.SIGTERM)
        asyncio.get_running_loop().call_later(self.config.shutdown_timeout + KILL_GRACE,
                                              self._kill_stragglers)
        self.changed.set()

    def _kill_stragglers(self) -> None:
        for worker in self.workers:
            if worker.running:
                self.log.error("worker still running after the drain; killing it",
                               worker=worker.index)
                worker.process.kill()

    # -- what the HTTP endpoint asks -----------------------------------------------------------

    async def ready(self) -> bool:
        """/readyz: not draining, every worker ready, every cluster reachable."""
        if self.draining or not self._all_ready():
            return False
        return await backends_reachable(self.config)

    async def _snapshots(self) -> list[dict[str, Any] | None]:
        return await fetch_snapshots(self.directory, range(len(self.workers)))

    # -- the end -------------------------------------------------------------------------------

    async def _close(self, control: asyncio.Server) -> None:
        """Read what exited workers still sent, then close the endpoint and the trail."""
        control.close()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=CONTROL_GRACE)
        for task in list(self._tasks):
            task.cancel()
        if self.http is not None:
            await self.http.close()
        if self.audit is not None:
            await self.audit.close()

    def _exit_code(self) -> int:
        if self.failed:
            return 1
        clean = (0, *STOP_SIGNALS)  # a worker stopped by our SIGTERM before its handlers were up
        unclean = [worker.index for worker in self.workers if worker.exit_code not in clean]
        if unclean:
            self.log.error("workers did not exit cleanly", workers=unclean)
        return 1 if unclean else 0

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    def _spawn(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
