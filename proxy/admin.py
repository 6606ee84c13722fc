"""The admin console's language: its commands, and the result sets SHOW answers with.

Everything here is a pure function of the runtime's state (the App, its sessions, pools
and config), so what an operator sees is testable without sockets; `proxy.console`
serves it to psql. Columns follow PgBouncer's where the concept is the same. SHOW
CONFIG lists settings from an allowlist, so a secret added to the config later is not
shown by accident.
"""

from __future__ import annotations

import datetime
import re
import time
from dataclasses import dataclass
from typing import Any

from proxy.errors import ProxyError, SqlSyntaxError

CONSOLE_DATABASE = "tenantgate"  # the virtual database admin logins ask for
SHOW_SUBJECTS = ("TENANTS", "POOLS", "CLIENTS", "SERVERS", "STATS", "CONFIG", "HELP")
HELP = (
    ("SHOW TENANTS", "configured tenants, their clients and whether they are paused"),
    ("SHOW POOLS", "one row per (cluster, database) pool: clients and server connections"),
    ("SHOW CLIENTS", "one row per connected client"),
    ("SHOW SERVERS", "one row per open server connection, with its backend pid (state "
                     "active, idle, or catalog: the proxy's own reads of shared schemas)"),
    ("SHOW STATS", "per-tenant totals since start, of every worker"),
    ("SHOW CONFIG", "the effective settings (never passwords or keys)"),
    ("SHOW HELP", "this list"),
    ("RELOAD", "read the config file again (as SIGHUP)"),
    ("PAUSE [tenant]", "new transactions of the tenant (or of everyone) wait until RESUME"),
    ("RESUME [tenant]", "lift a PAUSE (without a tenant: every pause)"),
    ("KILL tenant", "close the tenant's client connections and their server connections"),
)
COMMAND_LIST = ", ".join(command for command, _ in HELP)

# A double-quoted name ("" is a quote inside it), a bare word, or a statement separator.
_TOKEN = re.compile(r'\s*(?:("(?:[^"]|"")*")|([^\s";]+)|(;))')


@dataclass(frozen=True)
class Command:
    verb: str  # SHOW | RELOAD | PAUSE | RESUME | KILL
    subject: str | None = None  # SHOW: what to show; PAUSE/RESUME/KILL: the tenant (None: all)
    text: str = ""  # the command as typed, for the log and the audit trail


@dataclass(frozen=True)
class ResultSet:
    columns: tuple[str, ...]
    rows: list[tuple]  # values: str, int, float, bool or None (NULL)

    def text_rows(self) -> list[list[str | None]]:
        """Every value as the text a DataRow carries."""
        return [[_text(value) for value in row] for row in self.rows]


class AdminError(ProxyError):
    """A console command that cannot be carried out; the console stays usable."""


# -- parsing -------------------------------------------------------------------------

def parse_commands(text: str) -> list[Command]:
    """The commands of one Query message (`;` separates them); [] for an empty one."""
    commands, words, start, position = [], [], 0, 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:  # an unterminated quote
            raise _syntax(f"unterminated quoted name in {text[position:].strip()[:40]!r}")
        position = match.end()
        if match[3]:
            if words:
                commands.append(_command(words, text[start:match.start(3)].strip()))
            words, start = [], position
        else:
            words.append(match[1] or match[2])
    if words:
        commands.append(_command(words, text[start:].strip()))
    return commands


def _command(words: list[str], text: str) -> Command:
    verb = words[0].upper()
    rest = words[1:]
    if verb == "SHOW" and len(rest) == 1 and rest[0].upper() in SHOW_SUBJECTS:
        return Command("SHOW", rest[0].upper(), text)
    if verb == "RELOAD" and not rest:
        return Command("RELOAD", None, text)
    if verb in ("PAUSE", "RESUME") and len(rest) <= 1:
        return Command(verb, _name(rest[0]) if rest else None, text)
    if verb == "KILL" and len(rest) == 1:
        return Command("KILL", _name(rest[0]), text)
    raise _syntax(f"unknown admin command {text[:60]!r}")


def _name(word: str) -> str:
    """A tenant name: a bare word as typed, or a "quoted" one."""
    if word.startswith('"'):
        return word[1:-1].replace('""', '"')
    return word


def _syntax(message: str) -> SqlSyntaxError:
    return SqlSyntaxError(message, hint=f"the admin console knows: {COMMAND_LIST}")


# -- SHOW ----------------------------------------------------------------------------

def show(subject: str, app) -> ResultSet:
    return _SHOW[subject](app)


def show_help(app=None) -> ResultSet:
    return ResultSet(("command", "description"), list(HELP))


def show_tenants(app) -> ResultSet:
    waiting = _count_by_tenant(app, ("waiting", "paused"))
    rows = []
    for name, tenant in sorted(app.config.tenants.items()):
        rows.append((name, tenant.strategy, tenant.cluster, tenant.database, tenant.schema,
                     tenant.role, tenant.key, app.tenant_clients.get(name, 0),
                     tenant.max_connections, app.pauses.holds(name), waiting.get(name, 0)))
    return ResultSet(("tenant", "strategy", "cluster", "database", "schema", "role", "key",
                      "clients", "max_connections", "paused", "waiting"), rows)


def show_pools(app) -> ResultSet:
    clients = tenant_clients(app)
    now = time.perf_counter()
    rows = []
    for (cluster, database), pool in sorted(app.pools.items()):
        mine = [session for session in clients if session.pool is pool]
        waiting = [s for s in mine if client_state(s, app.pauses) in ("waiting", "paused")]
        active = sum(1 for s in mine if s.server is not None)
        dirty = sum(1 for conn in pool.idle if conn.dirty)
        maxwait = max((now - s.request_started for s in waiting), default=0.0)
        rows.append((cluster, database, app.config.pool_mode, pool.cluster.pool_size,
                     len(mine) - len(waiting), len(waiting), active, len(pool.idle) - dirty,
                     dirty, max(pool.size - active - len(pool.idle), 0), int(maxwait),
                     int(maxwait % 1 * 1_000_000)))
    return ResultSet(("cluster", "database", "pool_mode", "pool_size", "cl_active",
                      "cl_waiting", "sv_active", "sv_idle", "sv_used", "sv_login", "maxwait",
                      "maxwait_us"), rows)


def show_clients(app) -> ResultSet:
    now = time.perf_counter()
    rows = []
    for session in sorted(all_clients(app), key=lambda s: s.connect_time):
        state = client_state(session, app.pauses)
        plan, server = session.plan, session.server
        addr, port = _split_peer(session.peer)
        wait = now - session.request_started if state in ("waiting", "paused") else 0.0
        rows.append((session.login, session.tenant,
                     plan.strategy if plan is not None else "admin",
                     plan.cluster if plan is not None else None,
                     plan.database if plan is not None else CONSOLE_DATABASE,
                     state, chr(session.tx_status), addr, port,
                     _timestamp(session.connect_time), round(wait, 3),
                     server.backend_pid if server is not None else None,
                     session.params.get("application_name"), session.tls))
    return ResultSet(("login", "tenant", "strategy", "cluster", "database", "state", "tx",
                      "addr", "port", "connect_time", "wait", "backend_pid",
                      "application_name", "tls"), rows)


def show_servers(app) -> ResultSet:
    rows = []
    for session in tenant_clients(app):
        if session.server is not None:
            rows.append(_server_row(session.pool, session.server, "active", session))
    for pool in app.pools.values():
        rows.extend(_server_row(pool, conn, "idle", None) for conn in pool.idle)
    for (cluster, database), conn in app.shared_catalogs.connections():
        rows.append(_catalog_row(cluster, database, conn))
    rows.sort(key=lambda row: (row[0], row[1], row[2], row[3]))
    return ResultSet(("cluster", "database", "state", "backend_pid", "tenant", "login",
                      "client", "prepared_for", "addr", "port", "local_port", "connect_time",
                      "last_used", "needs_reset"), rows)


def _catalog_row(cluster: str, database: str, conn) -> tuple:
    """The proxy's own connection that reads a database's shared schemas (no pool)."""
    return _connection_row(cluster, database, "catalog", conn, None, None, False)


def _server_row(pool, conn, state: str, session) -> tuple:
    prepared_for = conn.context_key[1] if conn.context_key is not None else None
    return _connection_row(pool.cluster.name, pool.database, state, conn, session,
                           prepared_for, conn.dirty)


def _connection_row(cluster: str, database: str, state: str, conn, session,
                    prepared_for: str | None, dirty: bool) -> tuple:
    """One SHOW SERVERS row; `session`: the client holding `conn`, if any."""
    local = conn.transport.get_extra_info("sockname") if conn.transport is not None else None
    return (cluster, database, state, conn.backend_pid,
            session.tenant if session is not None else None,
            session.login if session is not None else None,
            session.peer if session is not None else None,
            prepared_for, conn.host, conn.port, local[1] if local else None,
            _timestamp(_wall(conn.created_at)), _timestamp(_wall(conn.last_used)), dirty)


def show_stats(app, metrics=None) -> ResultSet:
    """Per-tenant totals since start: this process's, or those of `metrics` (under
    `workers: N`, every worker's added up, as `/metrics` shows them)."""
    rows = []
    for tenant, counts in sorted((metrics or app.metrics).tenant_counts().items()):
        queries = sum(counts.query.counts)
        query_us = int(counts.query.sum * 1_000_000)
        rows.append((tenant, counts.connected, counts.accepted, counts.transactions, queries,
                     counts.bytes_in, counts.bytes_out, query_us,
                     query_us // queries if queries else 0, counts.errors,
                     sum(counts.refusals.values())))
    return ResultSet(("tenant", "clients", "total_clients", "total_xact_count",
                      "total_query_count", "total_received", "total_sent", "total_query_time",
                      "avg_query_time", "total_errors", "total_refusals"), rows)


def show_config(app) -> ResultSet:
    return ResultSet(("key", "value"), config_rows(app.config))


def config_rows(config) -> list[tuple[str, Any]]:
    """The effective settings as (key, value), from an allowlist: never a password, an
    HMAC key or a private key's location."""
    rows: list[tuple[str, Any]] = [
        ("config_file", config.path), ("listen", _address(config.listen)),
        ("workers", config.workers),
        ("metrics", _address(config.metrics) if config.metrics else None),
        ("metrics_tenant_labels", config.metrics_tenant_labels),
        ("pool_mode", config.pool_mode), ("isolation_level", config.isolation_level),
        ("resolve", ", ".join(config.resolve)), ("user_separator", config.user_separator),
        ("unknown_tenant", config.unknown_tenant),
        ("shared_schemas", ", ".join(config.shared_schemas)),
        ("max_client_connections", config.max_client_connections),
        ("max_message_size", config.max_message_size),
        ("shutdown_timeout", config.shutdown_timeout), ("cache_ttl", config.cache_ttl),
        ("monitoring_enabled", config.monitoring_enabled),
        ("encryption_enabled", config.encryption_enabled),
        ("row.column", config.row.column), ("row.enforce", config.row.enforce),
        ("row.shared_tables", ", ".join(config.row.shared_tables)),
        ("tls.mode", config.tls.mode if config.tls else None),
        ("tls.cert", config.tls.cert if config.tls else None),
        ("audit.path", config.audit.path if config.audit else None),
        ("audit.every_statement", config.audit.every_statement if config.audit else None),
        ("audit.max_bytes", config.audit.max_bytes if config.audit else None),
    ]
    for name, cluster in sorted(config.clusters.items()):
        rows += _cluster_rows(name, cluster)
    for name, user in sorted(config.users.items()):
        rows += _user_rows(name, user)
    return rows


def _cluster_rows(name: str, cluster) -> list[tuple[str, Any]]:
    prefix = f"clusters.{name}."
    return [(prefix + "hosts", ", ".join(_address(host) for host in cluster.hosts)),
            (prefix + "user", cluster.user), (prefix + "pool_size", cluster.pool_size),
            (prefix + "tls", cluster.tls), (prefix + "tls_ca", cluster.tls_ca),
            (prefix + "connect_timeout", cluster.connect_timeout),
            (prefix + "wait_timeout", cluster.wait_timeout),
            (prefix + "idle_timeout", cluster.idle_timeout),
            (prefix + "max_lifetime", cluster.max_lifetime)]


def _user_rows(name: str, user) -> list[tuple[str, Any]]:
    prefix = f"users.{name}."
    rows: list[tuple[str, Any]] = [(prefix + "auth", user.auth)]
    if user.tenant is not None:
        rows.append((prefix + "tenant", user.tenant))
    if user.tenants:
        rows.append((prefix + "tenants", ", ".join(user.tenants)))
    if user.bypass:
        rows += [(prefix + "bypass", True), (prefix + "cluster", user.cluster)]
    if user.admin:
        rows.append((prefix + "admin", True))
    return rows


_SHOW = {"TENANTS": show_tenants, "POOLS": show_pools, "CLIENTS": show_clients,
         "SERVERS": show_servers, "STATS": show_stats, "CONFIG": show_config, "HELP": show_help}


# -- the clients, as the console sees them --------------------------------------------

def all_clients(app) -> list:
    """Clients past their startup: tenant and bypass sessions, and admin consoles."""
    return [session for session in app.sessions if not session.closed
            and (session.relaying or session.console is not None)]


def tenant_clients(app) -> list:
    """Clients that use server connections (every client but admin consoles)."""
    return [session for session in app.sessions if session.relaying and not session.closed]


def client_state(session, pauses) -> str:
    """admin, paused (held by PAUSE), waiting (for a server connection), active (holds one)
    or idle."""
    if session.console is not None:
        return "admin"
    if session in pauses.waiting:
        return "paused"
    if session.leasing is not None:
        return "waiting"
    return "active" if session.server is not None else "idle"


def in_flight(session, pauses) -> bool:
    """A request or transaction under way, which a PAUSE lets finish."""
    return (session.relaying and not session.closed and session not in pauses.waiting
            and not session.idle())


def _count_by_tenant(app, states: tuple[str, ...]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for session in tenant_clients(app):
        if session.tenant is not None and client_state(session, app.pauses) in states:
            counts[session.tenant] = counts.get(session.tenant, 0) + 1
    return counts


# -- formatting ----------------------------------------------------------------------

def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if value.is_integer() else f"{value:.3f}"
    return str(value)


def _timestamp(epoch: float) -> str:
    """Wall-clock seconds as PostgreSQL prints a timestamptz in UTC."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S+00")


def _wall(monotonic: float) -> float:
    """A time.monotonic() reading as wall-clock seconds."""
    return time.time() - (time.monotonic() - monotonic)


def _address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_peer(peer: str) -> tuple[str, int | None]:
    host, _, port = peer.rpartition(":")
    return (host, int(port)) if port.isdigit() else (peer, None)
