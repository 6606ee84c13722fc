"""The runtime built from one config snapshot, and its lifecycle: serve, reload, drain.

`run(config_path)` is the whole life of a proxy process: it serves until SIGTERM or
SIGINT, reloads on SIGHUP (a config that fails validation keeps the old one running),
and on shutdown lets in-flight transactions finish before it exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from proxy.config import Config, load_config
from proxy.errors import ConfigError, TooManyConnections
from proxy.listener import Listener, build_ssl_context
from proxy.observability.logging import configure, get_logger
from proxy.observability.observer import Observer
from proxy.pause import Pauses
from proxy.pool.pool import Pool
from proxy.sql import Analyzer
from proxy.tenancy.rowcatalogs import RowCatalogs
from proxy.tenancy.sharedcatalogs import REFRESH_INTERVAL as SHARED_REFRESH_INTERVAL
from proxy.tenancy.sharedcatalogs import SharedCatalogs
from proxy.writebatch import WriteBatch

EXPIRY_INTERVAL = 5.0  # seconds between idle-connection sweeps


class App:
    def __init__(self, config: Config, worker=None) -> None:
        self.config = config
        self.worker = worker  # a WorkerLink when this process is one of `workers: N`, else None
        self.log = get_logger()
        self.pools: dict[tuple[str, str], Pool] = {}
        self.analyzer = Analyzer(ttl=config.cache_ttl)
        self.row_catalogs = RowCatalogs(config, self.log)
        self.shared_catalogs = SharedCatalogs(config)
        self.sessions: set = set()
        self.cancel_keys: dict[tuple[int, bytes], object] = {}
        self.tenant_clients: dict[str, int] = {}
        self.draining = False
        self.pauses = Pauses()  # admin PAUSE/RESUME: whose new transactions wait
        self.write_batch = WriteBatch()  # answers held to the end of a contended loop pass
        self.ssl_context = build_ssl_context(config.tls, config.path)
        self.listener = Listener(self)
        self.observer = Observer(self)
        self.metrics = self.observer.metrics
        self.stopped = asyncio.Event()

    # -- what sessions ask of the runtime ---------------------------------------------

    def pool_for(self, plan) -> Pool:
        key = (plan.cluster, plan.database)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(self.config.clusters[plan.cluster], plan.database)
        return pool

    def admit(self, session, tenant) -> None:
        """Count the client against its tenant's quota (53300 when it is full)."""
        if tenant is None:
            return
        count = self.tenant_clients.get(tenant.name, 0)
        if tenant.max_connections is not None and count >= tenant.max_connections:
            raise TooManyConnections(
                f"too many connections for tenant {tenant.name!r}", rule="tenant-quota")
        self.tenant_clients[tenant.name] = count + 1
        session.counted_tenant = tenant.name

    def forget_session(self, session) -> None:
        self.sessions.discard(session)
        if session.cancel_key is not None:
            self.cancel_keys.pop(session.cancel_key, None)
        tenant = getattr(session, "counted_tenant", None)
        if tenant is not None:
            self.tenant_clients[tenant] -= 1
        if self.draining and not self.sessions:
            self.stopped.set()

    def register_cancel(self, session) -> tuple[int, bytes]:
        from proxy.handshake import new_cancel_key
        # A worker's keys name it (proxy.workerlink.cancel_key): any worker can route them.
        make_key = self.worker.new_cancel_key if self.worker is not None else new_cancel_key
        key = make_key()
        while key in self.cancel_keys:
            key = make_key()
        self.cancel_keys[key] = session
        return key

    def cancel(self, pid: int, key: bytes) -> None:
        """A CancelRequest: forward it to the server connection the client holds now."""
        if self.worker is not None and self.worker.forward_cancel(pid, key):
            return  # another worker issued the key; it applies the rules below there
        session = self.cancel_keys.get((pid, key))
        conn = session.active_server if session is not None else None
        if conn is None:
            return  # unknown key, or the client holds no server: nothing to cancel
        session.pool.cancel(conn)

    def refused(self, session, error, sql: str | None = None) -> None:
        session.log.info("statement refused", sqlstate=error.sqlstate, rule=error.rule)
        self.observer.refused(session, error, sql)

    # -- lifecycle --------------------------------------------------------------------

    async def serve(self) -> None:
        await self.observer.start()
        await self.listener.start()
        host, port = self.config.listen
        self.log.info("listening", host=host, port=port)
        if self.worker is not None:
            await self.worker.ready()  # the supervisor prints the line once all workers listen
        else:
            print(f"tenantgate: listening on {host}:{port}", flush=True)
        loop = asyncio.get_running_loop()
        expiry = loop.create_task(self._expire_idle())
        refresh = loop.create_task(self._refresh_shared_catalogs())
        self._row_check = loop.create_task(self.row_catalogs.check_all())
        try:
            await self.stopped.wait()
        finally:
            expiry.cancel()
            refresh.cancel()
            self._row_check.cancel()  # a check still waiting for an unreachable backend
            self.listener.close()
            for pool in self.pools.values():
                pool.close()
            self.shared_catalogs.close()
            await self.observer.close()

    async def _expire_idle(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL)
            for pool in self.pools.values():
                pool.expire_idle()

    async def _refresh_shared_catalogs(self) -> None:
        while True:
            await asyncio.sleep(SHARED_REFRESH_INTERVAL)
            await self.shared_catalogs.refresh()  # the current one: a reload replaces it

    def read_config_file(self):
        """The configuration file as it is now, validated, and its TLS context: ConfigError
        when it is refused. A worker keeps the settings only a restart changes."""
        config = load_config(self.config.path)
        ssl_context = build_ssl_context(config.tls, config.path)
        if self.worker is not None:
            config = self.worker.pin(config)
        return config, ssl_context

    def reload(self) -> str | None:
        """SIGHUP: validate the file again and swap the snapshot in, or keep the old one.

        Returns why the file was refused (for the admin console's RELOAD), None when done."""
        try:
            config, ssl_context = self.read_config_file()
        except ConfigError as exc:
            self.log.error("reload failed, keeping the running configuration", error=str(exc))
            self.observer.config_reloaded(False, str(exc))
            return str(exc)
        if config.listen != self.config.listen:
            self.log.warning("listen address changes need a restart", listen=config.listen)
        for key, pool in list(self.pools.items()):
            if config.clusters.get(key[0]) != pool.cluster:
                pool.close()  # connections are closed as their clients release them
                del self.pools[key]
        old, self.config = self.config, config
        self.ssl_context = ssl_context
        self.analyzer = Analyzer(ttl=config.cache_ttl)
        # Tables may have been added or fixed: row databases are checked again.
        self.row_catalogs = RowCatalogs(config, self.log)
        self.shared_catalogs.reconfigure(config)
        self._row_check = asyncio.get_running_loop().create_task(self.row_catalogs.check_all())
        stale = [session for session in self.sessions if _changed_for(session, old, config)]
        for session in stale:
            session.retire()
        if (old.metrics, old.audit) != (config.metrics, config.audit):
            self.log.warning("metrics and audit settings change only at restart")
        self.log.info("configuration reloaded", tenants=len(config.tenants),
                      clients_to_reconnect=len(stale))
        self.observer.config_reloaded(True)
        return None

    def drain(self) -> None:
        """SIGTERM/SIGINT: refuse new clients, let open transactions finish, then stop."""
        if self.draining:
            return
        self.draining = True
        self.log.info("draining", clients=len(self.sessions))
        for session in list(self.sessions):
            if session.idle() or not session.relaying:
                session.fail_shutdown()
        if not self.sessions:
            self.stopped.set()
        asyncio.get_running_loop().call_later(self.config.shutdown_timeout, self.stopped.set)


def _changed_for(session, old: Config, new: Config) -> bool:
    """Whether a client's login, tenant or cluster is configured differently now."""
    if session.plan is None:
        return False
    return (old.users.get(session.login) != new.users.get(session.login)
            or old.tenants.get(session.tenant) != new.tenants.get(session.tenant)
            or old.clusters.get(session.plan.cluster) != new.clusters.get(session.plan.cluster)
            or (old.pool_mode, old.isolation_level, old.shared_schemas, old.row)
            != (new.pool_mode, new.isolation_level, new.shared_schemas, new.row))


async def _main(config: Config, worker=None) -> int:
    app = App(config, worker)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, app.reload)
    loop.add_signal_handler(signal.SIGTERM, app.drain)
    loop.add_signal_handler(signal.SIGINT, app.drain)
    if worker is not None:
        await worker.start(app)
    try:
        await app.serve()
    finally:
        if worker is not None:
            await worker.close()
    app.log.info("stopped")
    return 0


def run(config_path: str, worker: int | None = None, worker_dir: str | None = None) -> int:
    """Serve until SIGTERM/SIGINT; the process exit code.

    With `workers:` above 1 this process is the supervisor of that many worker processes
    (proxy.workers); `worker` and `worker_dir` are what the supervisor starts each one with."""
    configure()
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    link = None
    if worker is not None:
        from proxy.workerlink import WorkerLink
        link = WorkerLink(worker, worker_dir)
        config = link.pin(config)
    elif config.workers > 1:
        from proxy.workers import supervise
        return supervise(config)
    try:
        import uvloop
        return uvloop.run(_main(config, link))
    except ImportError:
        return asyncio.run(_main(config, link))
