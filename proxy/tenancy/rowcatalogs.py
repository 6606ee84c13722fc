"""The row databases the running proxy serves: one verified RowCatalog per database.

Row tenants are served only from a database whose catalog has loaded and, unless
`row.enforce` is `rewrite`, whose RLS set-up `verify_rls` found sound (DESIGN.md section 4).
The check runs once per (cluster, database) on a connection of its own, at start for
every row database and again after each reload; the result is shared by every session of
that database, so that the analysis cache compares catalogs by identity.

A database that cannot be reached is not remembered: the next row tenant tries again. A
database found unsafe is remembered for `RETRY_UNSAFE` seconds (then checked again), so a
fixed database is served without a restart and a broken one is not re-checked per login.
The client is told only that its database is not set up safely; the log names the tables.
"""

from __future__ import annotations

import asyncio
import time

from proxy.errors import FatalError, ProxyError
from proxy.pool.server import ServerError, open_server_connection
from proxy.sql.rowmodel import RowCatalog
from proxy.tenancy.rls import inspect_row_database

RETRY_UNSAFE = 30.0  # seconds before a database found unsafe is checked again


class RowDatabaseUnsafe(FatalError):
    def __init__(self, database: str) -> None:
        super().__init__(
            f"the database {database!r} of this tenant is not set up safely for row "
            "isolation; the proxy refuses to serve it (the proxy log says why)",
            sqlstate="08004", rule="row-database",
            hint="run `tenantgate check --connect` and `tenantgate rls-sql`")


class RowCatalogs:
    def __init__(self, config, log) -> None:
        self.config = config
        self.log = log
        self._catalogs: dict[tuple[str, str], RowCatalog] = {}
        self._unsafe_until: dict[tuple[str, str], float] = {}
        self._loading: dict[tuple[str, str], asyncio.Task] = {}

    async def get(self, cluster: str, database: str) -> RowCatalog:
        """The verified catalog of a row database; RowDatabaseUnsafe or a connection
        error (ProxyError) when it cannot be served."""
        key = (cluster, database)
        catalog = self._catalogs.get(key)
        if catalog is not None:
            return catalog
        if self._unsafe_until.get(key, 0.0) > time.monotonic():
            raise RowDatabaseUnsafe(database)
        task = self._loading.get(key)
        if task is None:  # one check per database, however many tenants log in at once
            task = self._loading[key] = asyncio.get_running_loop().create_task(self._load(key))
            task.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(task)

    def row_databases(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys((t.cluster, t.database) for t in self.config.tenants.values()
                                  if t.strategy == "row"))

    async def check_all(self) -> None:
        """At start and after a reload: check every row database now, log what is wrong."""
        for cluster, database in self.row_databases():
            try:
                await self.get(cluster, database)
            except ProxyError as exc:
                self.log.warning("row database not served yet", cluster=cluster,
                                 database=database, error=exc.message)

    async def _load(self, key: tuple[str, str]) -> RowCatalog:
        cluster, database = key
        conn = await open_server_connection(self.config.clusters[cluster], database)
        try:
            catalog, problems = await inspect_row_database(conn, self.config, cluster, database)
        except ServerError as exc:
            problems, catalog = [f"a catalog query failed: {exc}"], None
        finally:
            conn.close()
        if problems or catalog is None:
            self._unsafe_until[key] = time.monotonic() + RETRY_UNSAFE
            for problem in problems:
                self.log.error("row database unsafe: row tenants refused", cluster=cluster,
                               database=database, problem=problem)
            raise RowDatabaseUnsafe(database)
        self._catalogs[key] = catalog
        self._unsafe_until.pop(key, None)
        self.log.info("row database verified", cluster=cluster, database=database,
                      tenant_tables=len(catalog.tables), enforce=self.config.row.enforce)
        return catalog
