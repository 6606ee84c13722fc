"""Configuration: frozen dataclasses and the one validating YAML loader.

`load_config(path)` / `parse_config(text, path)` turn one YAML file into a `Config`
snapshot or raise `ConfigError` whose text is `FILE:LINE: message`. The YAML is
composed into nodes (so every value keeps its line) and checked by hand: unknown
keys, wrong types, bad enums, dangling references and duplicate keys are errors.
`${VAR}` expands from the environment in every string value (`$${` is a literal
`${`); the `TENANT_*` variables override the matching fields after the file.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import Node

from proxy.errors import ConfigError
from proxy.yamlreader import NAME_MAX_BYTES, YamlReader, parse_address, suggest  # noqa: F401

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
    prepare: bool = True  # rewritten statements of numbers-only shapes go prepared (sql.prepared)


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
class AuditSettings:
    """The audit trail (`audit:`): HMAC-chained JSON lines (proxy.observability.audit)."""

    path: str
    hmac_key: bytes = field(repr=False)  # UTF-8 bytes of the configured text
    every_statement: bool = False  # also a `statement` entry for every statement
    max_bytes: int = 100 * 1024 * 1024  # rotate the file beyond this size
    checkpoint_key: str | None = None  # Ed25519 private key (PEM) that signs checkpoints


@dataclass(frozen=True)
class Config:
    """One validated snapshot of the whole configuration."""

    path: str
    listen: Address = ("127.0.0.1", 6432)
    metrics: Address | None = None
    metrics_tenant_labels: bool = True  # false: every tenant counts under the label "_all"
    audit: AuditSettings | None = None
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
    workers: int = 1  # processes sharing the listen port (proxy.workers); a restart changes it


# --- vocabulary ---------------------------------------------------------------------

POOL_MODES = ("transaction", "session")
ISOLATION_LEVELS = ("strict", "standard")
CLIENT_TLS_MODES = ("allow", "require")
CLUSTER_TLS_MODES = ("disable", "prefer", "require", "verify-full")
ROW_ENFORCE_MODES = ("rls", "rewrite", "both")
STRATEGIES = ("database", "schema", "row")
RESOLVE_SOURCES = ("user_suffix", "login", "database", "options", "sni")
AUTH_METHODS = ("scram", "md5", "plain", "trust")
UNKNOWN_TENANT_ACTIONS = ("reject",)

_TOP_KEYS = ("listen", "metrics", "metrics_tenant_labels", "audit", "pool_mode",
             "isolation_level", "tls", "clusters", "users",
             "resolve", "user_separator", "row", "tenants", "unknown_tenant", "shared_schemas",
             "max_client_connections", "max_message_size", "shutdown_timeout", "workers")
_TLS_KEYS = ("cert", "key", "mode")
_AUDIT_KEYS = ("path", "hmac_key", "every_statement", "max_bytes", "checkpoint_key")
AUDIT_KEY_MIN_BYTES = 16
AUDIT_MIN_MAX_BYTES = 65536
MAX_WORKERS = 64  # each costs a process; the cancel key gives up log2(workers) bits to route
_CLUSTER_KEYS = ("hosts", "user", "password", "pool_size", "tls", "tls_ca", "connect_timeout",
                 "wait_timeout", "idle_timeout", "max_lifetime")
_USER_KEYS = ("password", "auth", "tenants", "tenant", "bypass", "cluster", "admin")
_ROW_KEYS = ("column", "shared_tables", "enforce", "prepare")
_TENANT_KEYS = ("strategy", "cluster", "database", "schema", "role", "key", "max_connections")
# per strategy: the keys it requires and the optional keys it uses (beyond the common ones)
_STRATEGY_KEYS = {"database": ((), ()), "schema": (("schema",), ("role",)),
                  "row": (("key",), ("role",))}

_SCRAM_RE = re.compile(
    r"SCRAM-SHA-256\$([0-9]{1,9}):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)")
_MD5_RE = re.compile(r"md5[0-9a-fA-F]{32}")  # as proxy.protocol.auth reads it


def password_kind(password: str) -> str:
    """How a configured password is stored: 'scram' (verifier), 'md5' (hash) or 'plain'."""
    if password.startswith("SCRAM-SHA-256$"):
        return "scram"
    if _MD5_RE.fullmatch(password):
        return "md5"
    return "plain"


def _scram_problem(verifier: str) -> str | None:
    match = _SCRAM_RE.fullmatch(verifier)
    if match is None or int(match[1]) < 1:
        return ("malformed SCRAM verifier "
                "(expected SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY)")
    try:
        salt, stored, server = (base64.b64decode(part, validate=True)
                                for part in match.groups()[1:])
    except ValueError:
        return "malformed SCRAM verifier (bad base64)"
    if not salt or len(stored) != 32 or len(server) != 32:
        return "malformed SCRAM verifier (keys must be 32 bytes)"
    return None


# --- entry points -------------------------------------------------------------------

def load_config(path: str, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and return the configuration in `path` (ConfigError on any problem)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration: {exc.strerror or exc}",
                          path=path) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError("the file is not valid UTF-8", path=path, line=line) from None
    return parse_config(text, path, env)


def parse_config(text: str, path: str, env: Mapping[str, str] | None = None) -> Config:
    """Validate YAML `text` (read from `path`, named in errors) into a Config snapshot."""
    env = os.environ if env is None else env
    reader = YamlReader(path, env)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise reader.yaml_error(exc) from None
    except yaml.reader.ReaderError as exc:
        line = text[:exc.position].count("\n") + 1
        raise ConfigError(f"invalid YAML: {exc.reason}", path=path, line=line) from None
    if root is None:
        raise ConfigError("the configuration is empty", path=path, line=1)
    return _apply_env(_build(reader, root), env)


def _fields(r: YamlReader, items: dict, table: dict[str, Callable], where: str) -> dict[str, Any]:
    """Parse each present key with its reader from `table` (keys were already checked)."""
    return {key: table[key](r, value, f"{where}.{key}" if where else key)
            for key, (_, value) in items.items() if key in table}


def _choice(choices: tuple[str, ...]) -> Callable[[YamlReader, Node, str], str]:
    return lambda r, node, where: r.choice(node, where, choices)


def _optional(read: Callable) -> Callable:
    return lambda r, node, where: None if r.value(node) is None else read(r, node, where)


# --- sections ----------------------------------------------------------------------------

_TOP_FIELDS: dict[str, Callable] = {
    "listen": YamlReader.address,
    "metrics": _optional(YamlReader.address),
    "metrics_tenant_labels": YamlReader.boolean,
    "pool_mode": _choice(POOL_MODES),
    "isolation_level": _choice(ISOLATION_LEVELS),
    "user_separator": lambda r, node, where: _separator(r, node, where),
    "unknown_tenant": _choice(UNKNOWN_TENANT_ACTIONS),
    "shared_schemas": YamlReader.names,
    "max_client_connections": YamlReader.integer,
    "max_message_size": YamlReader.integer,
    "shutdown_timeout": lambda r, node, where: r.seconds(node, where, zero_ok=True),
    "workers": lambda r, node, where: _workers(r, node, where),  # defined further down
}
_CLUSTER_FIELDS: dict[str, Callable] = {
    "hosts": lambda r, node, where: tuple(r.address(h, where) for h in r.sequence(node, where)),
    "user": YamlReader.name,
    "password": YamlReader.secret,
    "pool_size": YamlReader.integer,
    "tls": _choice(CLUSTER_TLS_MODES),
    "tls_ca": YamlReader.string,
    "connect_timeout": YamlReader.seconds,
    "wait_timeout": YamlReader.seconds,
    "idle_timeout": YamlReader.seconds,
    "max_lifetime": YamlReader.seconds,
}
_TENANT_FIELDS: dict[str, Callable] = {
    "strategy": _choice(STRATEGIES),
    "cluster": YamlReader.name,
    "database": YamlReader.name,
    "schema": YamlReader.name,
    "role": YamlReader.name,
    "key": lambda r, node, where: _tenant_key(r, node, where),
    "max_connections": YamlReader.integer,
}
_USER_FIELDS: dict[str, Callable] = {
    "password": YamlReader.string,
    "auth": _choice(AUTH_METHODS),
    "tenants": YamlReader.names,
    "tenant": YamlReader.name,
    "bypass": YamlReader.boolean,
    "cluster": YamlReader.name,
    "admin": YamlReader.boolean,
}
_AUDIT_FIELDS: dict[str, Callable] = {
    "path": YamlReader.string,
    "hmac_key": lambda r, node, where: _audit_key(r, node, where),
    "every_statement": YamlReader.boolean,
    "max_bytes": lambda r, node, where: _audit_max_bytes(r, node, where),
    "checkpoint_key": YamlReader.string,
}
_TLS_FIELDS: dict[str, Callable] = {
    "cert": YamlReader.string, "key": YamlReader.string, "mode": _choice(CLIENT_TLS_MODES)}
_ROW_FIELDS: dict[str, Callable] = {
    "column": YamlReader.name, "enforce": _choice(ROW_ENFORCE_MODES),
    "prepare": YamlReader.boolean,
    "shared_tables": lambda r, node, where: tuple(
        _qualified(r, item, where) for item in r.sequence(node, where)),
}


def _separator(r: YamlReader, node: Node, where: str) -> str:
    text = r.string(node, where)
    if any(c.isspace() for c in text):
        raise r.error(f"{where}: must not contain spaces", node)
    return text


def _workers(r: YamlReader, node: Node, where: str) -> int:
    value = r.integer(node, where)
    if value > MAX_WORKERS:
        raise r.error(f"{where}: must be at most {MAX_WORKERS}, got {value}", node)
    return value


def _audit_key(r: YamlReader, node: Node, where: str) -> bytes:
    key = r.string(node, where).encode("utf-8")
    if len(key) < AUDIT_KEY_MIN_BYTES:
        raise r.error(f"{where}: at least {AUDIT_KEY_MIN_BYTES} bytes are needed, got "
                      f"{len(key)} (make one with `openssl rand -hex 32`)", node)
    return key


def _audit_max_bytes(r: YamlReader, node: Node, where: str) -> int:
    value = r.integer(node, where)
    if value < AUDIT_MIN_MAX_BYTES:
        raise r.error(f"{where}: must be at least {AUDIT_MIN_MAX_BYTES}, got {value}", node)
    return value


def _tenant_key(r: YamlReader, node: Node, where: str) -> str:
    """The row strategy's tenant column value: a string, or an integer taken as its text."""
    value = r.typed(node)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return r.string(node, where)


def _qualified(r: YamlReader, node: Node, where: str) -> str:
    text = r.string(node, where)
    parts = text.split(".")
    if len(parts) != 2 or not all(parts):
        raise r.error(f"{where}: expected a schema-qualified table \"schema.table\", got {text!r}",
                      node)
    for part in parts:
        r.check_name(part, where, node)
    return text


def _build(r: YamlReader, root: Node) -> Config:
    top = r.mapping(root, "", _TOP_KEYS)
    fields = _fields(r, top, _TOP_FIELDS, "")
    if "metrics" in top and fields["metrics"] == fields.get("listen", Config.listen):
        raise r.error("metrics: must differ from listen", top["metrics"][1])
    if "tls" in top and r.value(top["tls"][1]) is not None:
        fields["tls"] = _client_tls(r, *top["tls"])
    if "audit" in top and r.value(top["audit"][1]) is not None:
        fields["audit"] = _audit(r, *top["audit"])
    if "row" in top:
        fields["row"] = RowSettings(**_fields(r, r.mapping(top["row"][1], "row", _ROW_KEYS),
                                              _ROW_FIELDS, "row"))
    if "resolve" in top:
        fields["resolve"] = _resolve(r, top["resolve"][1], fields.get("tls"))
    clusters = {name: _cluster(r, name, key, node)
                for name, (key, node) in _section(r, top, "clusters", root).items()}
    tenants = _tenants(r, top, root, clusters, fields.get("shared_schemas", ()))
    users = {name: _user(r, name, key, node, clusters, tenants)
             for name, (key, node) in _section(r, top, "users", root).items()}
    return Config(path=r.path, clusters=clusters, tenants=tenants, users=users, **fields)


def _section(r: YamlReader, top: dict, section: str, root: Node) -> dict[str, tuple[Node, Node]]:
    """A mapping of named entries; clusters and users need at least one."""
    required = section in ("clusters", "users")
    if section not in top:
        if required:
            raise r.error(f"missing required section '{section}'", root)
        return {}
    entries = r.mapping(top[section][1], section, None)
    if required and not entries:
        raise r.error(f"{section}: at least one entry is needed", top[section][0])
    for name, (key, _) in entries.items():
        r.check_name(name, f"{section}.{name}", key)
    return entries


def _client_tls(r: YamlReader, key: Node, node: Node) -> ClientTls:
    items = r.mapping(node, "tls", _TLS_KEYS)
    r.require(items, ("cert", "key"), "tls", key)
    return ClientTls(**_fields(r, items, _TLS_FIELDS, "tls"))


def _audit(r: YamlReader, key: Node, node: Node) -> AuditSettings:
    items = r.mapping(node, "audit", _AUDIT_KEYS)
    r.require(items, ("path", "hmac_key"), "audit", key)
    return AuditSettings(**_fields(r, items, _AUDIT_FIELDS, "audit"))


def _resolve(r: YamlReader, node: Node, tls: ClientTls | None) -> tuple[str, ...]:
    sources: list[str] = []
    for item in r.sequence(node, "resolve"):
        source = r.choice(item, "resolve", RESOLVE_SOURCES)
        if source in sources:
            raise r.error(f"resolve: '{source}' is listed twice", item)
        if source == "sni" and tls is None:
            raise r.error("resolve: 'sni' needs client TLS (a 'tls' section)", item)
        sources.append(source)
    if not sources:
        raise r.error("resolve: at least one source is needed", node)
    return tuple(sources)


def _cluster(r: YamlReader, name: str, key: Node, node: Node) -> Cluster:
    where = f"clusters.{name}"
    items = r.mapping(node, where, _CLUSTER_KEYS)
    r.require(items, ("hosts", "user"), where, key)
    fields = _fields(r, items, _CLUSTER_FIELDS, where)
    if not fields["hosts"]:
        raise r.error(f"{where}.hosts: at least one \"host:port\" is needed", items["hosts"][1])
    if "tls_ca" in fields and fields.get("tls", "prefer") != "verify-full":
        raise r.error(f"{where}.tls_ca: only used with tls: verify-full", items["tls_ca"][0])
    return Cluster(name=name, **fields)


def _cluster_ref(r: YamlReader, items: dict, fields: dict, clusters: dict, where: str,
                 owner: Node) -> str:
    """The named cluster (which must exist), or the only cluster when none is named."""
    if "cluster" in fields:
        name = fields["cluster"]
        if name not in clusters:
            raise r.error(f"{where}.cluster: there is no cluster '{name}'"
                          f"{suggest(name, clusters)}", items["cluster"][1])
        return name
    if len(clusters) == 1:
        return next(iter(clusters))
    raise r.error(f"{where}: 'cluster' is required when there is more than one cluster", owner)


def _tenants(r: YamlReader, top: dict, root: Node, clusters: dict[str, Cluster],
             shared_schemas: tuple[str, ...]) -> dict[str, Tenant]:
    tenants: dict[str, Tenant] = {}
    owners: dict[tuple, tuple[str, str]] = {}  # a database or a slot in one → first owner
    for name, (key, node) in _section(r, top, "tenants", root).items():
        if name == "*":
            raise r.error("tenants: '*' is not a tenant name (it means any tenant)", key)
        tenant = _tenant(r, name, key, node, clusters)
        if tenant.schema is not None and tenant.schema in shared_schemas:
            raise r.error(f"tenants.{name}.schema: '{tenant.schema}' is also a shared schema", key)
        _claim(r, owners, tenant, key)
        tenants[name] = tenant
    return tenants


def _tenant(r: YamlReader, name: str, key: Node, node: Node, clusters: dict) -> Tenant:
    where = f"tenants.{name}"
    items = r.mapping(node, where, _TENANT_KEYS)
    r.require(items, ("strategy",), where, key)
    strategy = r.choice(items["strategy"][1], f"{where}.strategy", STRATEGIES)
    needed, optional = _STRATEGY_KEYS[strategy]
    r.require(items, ("database", *needed), where, key, f" (the {strategy} strategy needs it)")
    for extra in ("schema", "role", "key"):
        if extra in items and extra not in needed + optional:
            raise r.error(f"{where}.{extra}: not used by the {strategy} strategy", items[extra][0])
    fields = _fields(r, items, _TENANT_FIELDS, where)
    fields["cluster"] = _cluster_ref(r, items, fields, clusters, where, key)
    return Tenant(name=name, **fields)


def _claim(r: YamlReader, owners: dict[tuple, tuple[str, str]], tenant: Tenant, key: Node) -> None:
    """A database-strategy tenant owns its database; schema and row tenants own a slot in one."""
    where, place = f"tenants.{tenant.name}", (tenant.cluster, tenant.database)
    first, first_strategy = owners.setdefault(place, (tenant.name, tenant.strategy))
    if first != tenant.name and "database" in (tenant.strategy, first_strategy):
        raise r.error(f"{where}: database '{tenant.database}' on cluster '{tenant.cluster}' is "
                      f"also used by tenant '{first}'; a database-strategy tenant needs its own",
                      key)
    if tenant.strategy == "database":
        return
    what = "schema" if tenant.strategy == "schema" else "key"
    value = getattr(tenant, what)
    other, _ = owners.setdefault((what, *place, value), (tenant.name, tenant.strategy))
    if other != tenant.name:
        raise r.error(f"{where}.{what}: tenant '{other}' already has {what} '{value}' in "
                      f"database '{tenant.database}'", key)


def _user(r: YamlReader, name: str, key: Node, node: Node, clusters: dict[str, Cluster],
          tenants: dict[str, Tenant]) -> User:
    where = f"users.{name}"
    items = r.mapping(node, where, _USER_KEYS)
    fields = _fields(r, items, _USER_FIELDS, where)
    _check_user_kind(r, items, fields, where, key)
    _check_user_tenants(r, items, fields, tenants, where)
    _check_user_auth(r, items, fields, where, key)
    if fields.get("bypass"):
        fields["cluster"] = _cluster_ref(r, items, fields, clusters, where, key)
    return User(name=name, **fields)


def _check_user_kind(r: YamlReader, items: dict, fields: dict, where: str, key: Node) -> None:
    if "tenant" in items and "tenants" in items:
        later = max(items["tenant"][0], items["tenants"][0], key=lambda n: n.start_mark.index)
        raise r.error(f"{where}: give either 'tenant' or 'tenants', not both", later)
    bound = fields.get("tenant") is not None or bool(fields.get("tenants"))
    if fields.get("bypass") and bound:
        raise r.error(f"{where}: a bypass login acts for no tenant; remove "
                      f"'{'tenant' if 'tenant' in items else 'tenants'}'", items["bypass"][0])
    # An admin login needs no tenant: it may use only the admin console then.
    if not fields.get("bypass") and not bound and not fields.get("admin"):
        raise r.error(f"{where}: give 'tenant', a non-empty 'tenants' or 'bypass: true'", key)
    if "cluster" in items and not fields.get("bypass"):
        raise r.error(f"{where}.cluster: only used by bypass logins", items["cluster"][0])


def _check_user_tenants(r: YamlReader, items: dict, fields: dict, tenants: dict, where: str) -> None:
    if "tenant" in fields and fields["tenant"] not in tenants:
        name = fields["tenant"]
        raise r.error(f"{where}.tenant: there is no tenant '{name}'{suggest(name, tenants)}",
                      items["tenant"][1])
    for name, node in zip(fields.get("tenants", ()), r.sequence(items["tenants"][1], where)
                          if "tenants" in items else ()):
        if name != "*" and name not in tenants:
            raise r.error(f"{where}.tenants: there is no tenant '{name}'"
                          f"{suggest(name, tenants)}", node)


def _check_user_auth(r: YamlReader, items: dict, fields: dict, where: str, key: Node) -> None:
    auth, password = fields.get("auth", "scram"), fields.get("password")
    if auth == "trust":
        if password is not None:
            raise r.error(f"{where}.password: auth: trust takes no password", items["password"][0])
        return
    if password is None:
        raise r.error(f"{where}: a password is required (auth: {auth})", key)
    kind, node = password_kind(password), items["password"][1]
    problem = _scram_problem(password) if kind == "scram" else None
    if problem:
        raise r.error(f"{where}.password: {problem}", node)
    if auth == "md5" and kind == "scram":
        raise r.error(f"{where}.password: auth: md5 cannot work from a SCRAM verifier; "
                      "give the password or its md5 hash", node)
    if auth == "scram" and kind == "md5":
        raise r.error(f"{where}.password: auth: scram cannot work from an md5 hash; "
                      "give the password or a SCRAM verifier", node)


# --- environment overrides -----------------------------------------------------------------

def _env_isolation(text: str) -> str:
    value = text.strip().lower()
    if value not in ISOLATION_LEVELS:
        raise ValueError(f"expected {' or '.join(ISOLATION_LEVELS)}")
    return value


def _env_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true, false, 1 or 0")


def _env_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError("expected a number of seconds, at least 0")
    return value


_ENV_OVERRIDES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "TENANT_ISOLATION_LEVEL": ("isolation_level", _env_isolation),
    "TENANT_MONITORING_ENABLED": ("monitoring_enabled", _env_bool),
    "TENANT_ENCRYPTION_ENABLED": ("encryption_enabled", _env_bool),
    "TENANT_CACHE_TTL": ("cache_ttl", _env_seconds),
}


def _apply_env(cfg: Config, env: Mapping[str, str]) -> Config:
    """The TENANT_* environment variables override the file (DESIGN.md section 1)."""
    changes: dict[str, Any] = {}
    for variable, (name, parse) in _ENV_OVERRIDES.items():
        if variable in env:
            try:
                changes[name] = parse(env[variable])
            except ValueError as exc:
                raise ConfigError(f"environment variable {variable}={env[variable]!r}: {exc}",
                                  path=cfg.path) from None
    return dataclasses.replace(cfg, **changes) if changes else cfg
