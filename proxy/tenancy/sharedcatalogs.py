"""The shared schemas' relations per database, for schema tenants (THREATS 31).

Schema tenants read the shared schemas; a view there may read another tenant's schema
with its owner's rights, so the analysis refuses views, materialized views, foreign
tables and tables with children elsewhere by name (proxy.sql.sharedmodel). Every schema
tenant login gets a catalog loaded after it arrived, so what a DBA created before the
login is known: one query per wave of logins on a connection kept per (cluster,
database) for it alone (logins that arrive during a load share the next one).
Sessions already connected pick up the newest catalog at their next statement: the
running proxy loads every known catalog again each REFRESH_INTERVAL seconds, so a view a
DBA adds to a shared schema is refused to every session within that interval (README,
"Schema strategy"). The server setting `restrict_nonsystem_relation_kind` would close
even that window but also refuses the tenant's own views, so it is not used.
"""

from __future__ import annotations

import asyncio
import time

from proxy.errors import ProxyError
from proxy.pool.server import open_server_connection
from proxy.sql.sharedmodel import SharedCatalog, relations_query
from proxy.tenancy.rls import PIN_SEARCH_PATH, fetch

REFRESH_INTERVAL = 5.0  # seconds between loads of the catalogs sessions use


class SharedCatalogs:
    def __init__(self, config) -> None:
        self.config = config
        self._loaded: dict[tuple[str, str], tuple[float, SharedCatalog]] = {}
        self._loading: dict[tuple[str, str], asyncio.Task] = {}
        self._conns: dict[tuple[str, str], object] = {}

    async def get(self, cluster: str, database: str) -> SharedCatalog:
        """The shared schemas' relations of `database`, loaded after this call began;
        a connection error (ProxyError) when the database cannot be reached."""
        if not self.config.shared_schemas:
            return SharedCatalog()
        key, asked = (cluster, database), time.monotonic()
        while True:
            loaded = self._loaded.get(key)
            if loaded is not None and loaded[0] >= asked:
                return loaded[1]
            task = self._loading.get(key)
            if task is None or task.done():
                task = self._loading[key] = asyncio.get_running_loop().create_task(
                    self._load(key))
                task.add_done_callback(lambda done: self._forget_load(key, done))
            await asyncio.shield(task)

    def _forget_load(self, key: tuple[str, str], done: asyncio.Task) -> None:
        if self._loading.get(key) is done:  # not a newer load started meanwhile
            del self._loading[key]

    def reconfigure(self, config) -> None:
        """A reload: later loads use `config` on new connections. The databases known so
        far stay known, so `refresh` keeps their sessions' catalogs current (sessions
        whose shared schemas changed are retired by the reload)."""
        self.config = config
        self.close()

    def latest(self, cluster: str, database: str) -> SharedCatalog | None:
        """The newest catalog loaded for `database` (None before the first)."""
        loaded = self._loaded.get((cluster, database))
        return loaded[1] if loaded is not None else None

    async def refresh(self) -> None:
        """Load every catalog already known again (REFRESH_INTERVAL, from the app). A
        database that cannot be reached keeps its last catalog: its sessions cannot run
        statements there either."""
        for cluster, database in list(self._loaded):
            try:
                await self.get(cluster, database)
            except (ProxyError, OSError):
                continue

    async def _load(self, key: tuple[str, str]) -> None:
        started = time.monotonic()
        conn = await self._connection(key)
        try:
            rows = await fetch(conn, relations_query(self.config.shared_schemas))
        except BaseException:
            self._conns.pop(key, None)
            conn.close()
            raise
        catalog = SharedCatalog.from_rows(rows)
        previous = self._loaded.get(key)
        if previous is not None and previous[1] == catalog:
            # The same object: sessions and their prepared statements compare catalogs by
            # identity (a new one means analysing again), and so do analysis cache keys.
            catalog = previous[1]
        self._loaded[key] = (started, catalog)

    async def _connection(self, key: tuple[str, str]):
        conn = self._conns.get(key)
        if conn is None or conn.closed:
            conn = await open_server_connection(self.config.clusters[key[0]], key[1])
            await conn.query(PIN_SEARCH_PATH)
            self._conns[key] = conn
        return conn

    def connections(self) -> list[tuple[tuple[str, str], object]]:
        """((cluster, database), connection) of each open catalog connection (SHOW SERVERS)."""
        return [(key, conn) for key, conn in self._conns.items() if not conn.closed]

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
