"""What the runtime tells the outside: metrics, the audit trail and the HTTP endpoints.

Sessions and the app report events here in their own words (a client connected, a
statement was refused, the config was reloaded); this module turns each into the
metric updates and audit entries it implies. Per-message counting stays in the
session, on its `TenantMetrics` handle, because it is on the hot path.
"""

from __future__ import annotations

import asyncio

from proxy.observability.audit import AuditLog, shape_of
from proxy.observability.http import HttpServer
from proxy.observability.metrics import Metrics
from proxy.pool.server import open_stream

PROBE_TIMEOUT = 1.0  # seconds for the readiness probe to reach a backend


class Observer:
    def __init__(self, app) -> None:
        config = app.config
        self.app = app
        self.metrics = Metrics(config.metrics_tenant_labels)
        self.metrics.watch_pools(lambda: list(app.pools.values()))
        self.metrics.watch_analyzer(lambda: app.analyzer)
        worker = getattr(app, "worker", None)
        if worker is not None:  # only the supervisor writes the chain: entries go there
            self.audit = worker.audit_log()
        else:
            self.audit = AuditLog.from_settings(config.audit) if config.audit else None
        self.metrics.watch_audit(lambda: self.audit)
        self.http: HttpServer | None = None

    async def start(self) -> None:
        if self.audit is not None:
            await self.audit.start()
        if self.app.config.metrics is not None and getattr(self.app, "worker", None) is None:
            self.http = HttpServer(self.app.config.metrics, self.metrics, ready=self.ready)
            await self.http.start()

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.audit is not None:
            await self.audit.close()

    async def ready(self) -> bool:
        """/readyz: not draining, and every cluster has a host that accepts connections."""
        if self.app.draining:
            return False
        return await backends_reachable(self.app.config)

    # -- events -------------------------------------------------------------------------

    def _audit(self, event: str, session, **fields) -> None:
        if self.audit is not None:
            self.audit.record(event, tenant=session.tenant, login=session.login,
                              client=session.peer, **fields)

    def connected(self, session) -> None:
        session.tm.client_connected()
        self._audit("connect", session, database=session.plan.database,
                    application_name=session.params.get("application_name"))

    def disconnected(self, session) -> None:
        session.tm.client_disconnected()
        self._audit("disconnect", session)

    def login_refused(self, session, error) -> None:
        self.metrics.login_refused(error.rule or error.sqlstate, tenant=session.tenant,
                                   login=session.login or None)
        self._audit("login_refused", session, rule=error.rule, sqlstate=error.sqlstate)

    def refused(self, session, error, sql: str | None) -> None:
        shape = shape_of(sql) if sql is not None else None
        session.tm.refusal(error.rule, shape=shape, sqlstate=error.sqlstate)
        self._audit("refusal", session, rule=error.rule, sqlstate=error.sqlstate, shape=shape)

    def statement(self, session, sql: str, ddl: str | None = None) -> None:
        """A statement forwarded: audited for bypass logins, as `ddl` when it changes the
        schema (`ddl`: the statement kind), or all of them with every_statement."""
        if self.audit is None:
            return
        if session.plan.strategy == "bypass":
            self._audit("bypass_statement", session, shape=shape_of(sql), kind=ddl)
        elif ddl is not None:
            self._audit("ddl", session, shape=shape_of(sql), kind=ddl)
        elif self.audit.wants_statements:
            self._audit("statement", session, shape=shape_of(sql))

    def admin_connected(self, session, database: str) -> None:
        self._audit("connect", session, database=database,
                    application_name=session.params.get("application_name"))

    def admin_disconnected(self, session) -> None:
        self._audit("disconnect", session)

    def admin_command(self, session, command: str, sqlstate: str | None) -> None:
        """A command on the admin console (sqlstate: why it failed, None when it was done)."""
        self._audit("admin_command", session, command=command, sqlstate=sqlstate)

    def config_reloaded(self, ok: bool, error: str | None = None) -> None:
        if self.audit is not None:
            self.audit.record("config_reload", ok=ok, path=self.app.config.path, error=error,
                              tenants=len(self.app.config.tenants))


async def backends_reachable(config) -> bool:
    """Whether every cluster has a host that accepts connections."""
    clusters = config.clusters.values()
    return all(await asyncio.gather(*(_reachable(cluster.hosts) for cluster in clusters)))


async def _reachable(hosts) -> bool:
    for host, port in hosts:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                _, writer = await open_stream(host, port)
            writer.close()
            return True
        except (OSError, TimeoutError):
            continue
    return False
