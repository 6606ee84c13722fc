"""Configuration: frozen dataclasses and the one validating YAML loader.

(The loader, `load_config(path) -> Config`, is added below the dataclasses.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

Address = tuple[str, int]


@dataclass(frozen=True)
class ClientTls:
    """Client-facing TLS (`tls:`)."""

    cert: str
    key: str
    mode: str = "allow"  # allow | require


@dataclass(frozen=True)
class Cluster:
    """A backend PostgreSQL server (`clusters.NAME`)."""

    name: str
    hosts: tuple[Address, ...]
    user: str
    password: str | None = None
    pool_size: int = 20
    tls: str = "prefer"  # disable | prefer | require | verify-full
    tls_ca: str | None = None  # CA file for verify-full
    connect_timeout: float = 5.0  # seconds to open and authenticate one server connection
    wait_timeout: float = 30.0  # seconds a client waits for a free server connection
    idle_timeout: float = 600.0  # close server connections idle this long
    max_lifetime: float = 3600.0  # close server connections older than this at release


@dataclass(frozen=True)
class User:
    """A login the proxy accepts from clients (`users.NAME`)."""

    name: str
    password: str | None = None  # SCRAM verifier, md5 hash, plain text; None only with auth: trust
    auth: str = "scram"  # scram | md5 | plain | trust
    tenants: tuple[str, ...] = ()  # tenants this login may act for; ("*",) = any
    tenant: str | None = None  # login bound to exactly this tenant
    bypass: bool = False  # no isolation, every statement audited
    cluster: str | None = None  # bypass logins: the cluster they reach
    admin: bool = False  # may use the admin console


@dataclass(frozen=True)
class RowSettings:
    """Settings of the row strategy (`row:`)."""

    column: str = "tenant_id"
    shared_tables: tuple[str, ...] = ()
    enforce: str = "both"  # rls | rewrite | both


@dataclass(frozen=True)
class Tenant:
    """One tenant (`tenants.NAME`)."""

    name: str
    strategy: str  # database | schema | row
    cluster: str
    database: str
    schema: str | None = None  # schema strategy: the tenant's schema
    role: str | None = None  # schema/row strategy: role to SET ROLE to
    key: str | None = None  # row strategy: value of the tenant column
    max_connections: int | None = None  # client connections quota (53300)


@dataclass(frozen=True)
class Config:
    """One validated snapshot of the whole configuration."""

    path: str
    listen: Address = ("127.0.0.1", 6432)
    metrics: Address | None = None
    pool_mode: str = "transaction"  # transaction | session
    isolation_level: str = "strict"  # strict | standard
    tls: ClientTls | None = None
    clusters: dict[str, Cluster] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    resolve: tuple[str, ...] = ("user_suffix", "login", "database", "options")
    user_separator: str = "."
    row: RowSettings = field(default_factory=RowSettings)
    tenants: dict[str, Tenant] = field(default_factory=dict)
    unknown_tenant: str = "reject"
    shared_schemas: tuple[str, ...] = ()  # schema strategy: readable schemas after the tenant's own
    max_client_connections: int = 10000
    max_message_size: int = 16 * 1024 * 1024  # bytes; larger client messages are 08P01
    monitoring_enabled: bool = True  # TENANT_MONITORING_ENABLED
    encryption_enabled: bool = False  # TENANT_ENCRYPTION_ENABLED (field encryption: not built yet)
    cache_ttl: float = 300.0  # TENANT_CACHE_TTL: seconds an analysis cache entry lives
    shutdown_timeout: float = 30.0  # seconds SIGTERM waits for in-flight transactions
