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
import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from proxy.errors import ConfigError

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
NAME_MAX_BYTES = 63  # NAMEDATALEN - 1: longer names are truncated by PostgreSQL

_TOP_KEYS = ("listen", "metrics", "pool_mode", "isolation_level", "tls", "clusters", "users",
             "resolve", "user_separator", "row", "tenants", "unknown_tenant", "shared_schemas",
             "max_client_connections", "max_message_size", "shutdown_timeout")
_TLS_KEYS = ("cert", "key", "mode")
_CLUSTER_KEYS = ("hosts", "user", "password", "pool_size", "tls", "tls_ca", "connect_timeout",
                 "wait_timeout", "idle_timeout", "max_lifetime")
_USER_KEYS = ("password", "auth", "tenants", "tenant", "bypass", "cluster", "admin")
_ROW_KEYS = ("column", "shared_tables", "enforce")
_TENANT_KEYS = ("strategy", "cluster", "database", "schema", "role", "key", "max_connections")
# per strategy: the keys it requires and the optional keys it uses (beyond the common ones)
_STRATEGY_KEYS = {"database": ((), ()), "schema": (("schema",), ("role",)),
                  "row": (("key",), ("role",))}

_SCRAM_RE = re.compile(
    r"SCRAM-SHA-256\$([0-9]{1,9}):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)")
_MD5_RE = re.compile(r"md5[0-9a-fA-F]{32}")  # as proxy.protocol.auth reads it
_VAR_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PORT_RE = re.compile(r"[0-9]{1,5}")


def password_kind(password: str) -> str:
    """How a configured password is stored: 'scram' (verifier), 'md5' (hash) or 'plain'."""
    if password.startswith("SCRAM-SHA-256$"):
        return "scram"
    if _MD5_RE.fullmatch(password):
        return "md5"
    return "plain"


def parse_address(text: str) -> Address:
    """`host:port` (IPv6 as `[::1]:port`) → (host, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError('an IPv6 host needs brackets, as in "[::1]:6432"')
    if not sep or not host or any(c.isspace() for c in host):
        raise ValueError('expected "host:port"')
    if not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return host, int(port)


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
    reader = _Reader(path, env)
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


# --- typed access to YAML nodes ----------------------------------------------------------

def _describe(value: Any) -> str:
    if value is None:
        return "null (no value)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return {list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _at(where: str) -> str:
    return f"{where}: " if where else ""


class _Reader:
    """Typed access to composed YAML nodes; every failure is a ConfigError at the node's line."""

    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        self._constructor = SafeConstructor()
        self._resolver = yaml.resolver.Resolver()

    def error(self, message: str, node: Node | None) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(message, path=self.path, line=line)

    def yaml_error(self, exc: yaml.MarkedYAMLError) -> ConfigError:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        return ConfigError(f"invalid YAML: {exc.problem or exc.context}", path=self.path, line=line)

    def mapping(self, node: Node, where: str, allowed: tuple[str, ...] | None
                ) -> dict[str, tuple[Node, Node]]:
        """key → (key node, value node); unknown and duplicate keys are errors."""
        if not isinstance(node, MappingNode):
            got = _describe(self.value(node))
            raise self.error(f"{_at(where)}expected a mapping, got {got}", node)
        items: dict[str, tuple[Node, Node]] = {}
        for key, value in node.value:
            name = self.key(key, where)
            if allowed is not None and name not in allowed:
                raise self.error(f"{_at(where)}unknown key '{name}'{_suggest(name, allowed)}", key)
            if name in items:
                first = items[name][0].start_mark.line + 1
                raise self.error(f"{_at(where)}duplicate key '{name}' "
                                 f"(first given on line {first})", key)
            items[name] = (key, value)
        return items

    def key(self, node: Node, where: str) -> str:
        if node.tag == "tag:yaml.org,2002:merge":
            raise self.error(f"{_at(where)}YAML merge keys (<<) are not supported", node)
        if not isinstance(node, ScalarNode) or not node.value:
            raise self.error(f"{_at(where)}keys must be non-empty strings", node)
        return node.value

    def require(self, items: dict, keys: tuple[str, ...], where: str, owner: Node,
                why: str = "") -> None:
        for key in keys:
            if key not in items:
                raise self.error(f"{where}: missing required key '{key}'{why}", owner)

    def value(self, node: Node) -> Any:
        """A scalar's value with ${VAR} expanded in strings; lists and mappings as empty ones."""
        if isinstance(node, SequenceNode):
            return []
        if isinstance(node, MappingNode):
            return {}
        try:
            value = self._constructor.construct_object(node)
        except yaml.MarkedYAMLError as exc:
            raise self.yaml_error(exc) from None
        return self.expand(value, node) if isinstance(value, str) else value

    def typed(self, node: Node) -> Any:
        """Like value(), but a plain `${VAR}` scalar is typed after expansion, as YAML would."""
        value = self.value(node)
        if isinstance(value, str) and node.style is None and "${" in node.value:
            tag = self._resolver.resolve(ScalarNode, value, (True, False))
            value = self._constructor.construct_object(
                ScalarNode(tag, value, node.start_mark, node.end_mark))
        return value

    def expand(self, text: str, node: Node) -> str:
        def substitute(match: re.Match) -> str:
            if match[0] == "$${":
                return "${"
            name = match[1]
            if name is None:
                raise self.error("unterminated ${ (write $${ for a literal ${)", node)
            if not _VAR_NAME_RE.fullmatch(name):
                raise self.error(f"bad environment variable name {name!r} in ${{...}}", node)
            if name not in self.env:
                raise self.error(f"environment variable {name} is not set", node)
            return self.env[name]
        return _VAR_RE.sub(substitute, text) if "$" in text else text

    def string(self, node: Node, where: str) -> str:
        value = self.value(node)
        if not isinstance(value, str):
            raise self.error(f"{where}: expected a string, got {_describe(value)}", node)
        if not value:
            raise self.error(f"{where}: must not be empty", node)
        if "\x00" in value:
            raise self.error(f"{where}: must not contain NUL", node)
        return value

    def name(self, node: Node, where: str) -> str:
        """A database, schema, role, tenant or user name: stored as given (catalog form)."""
        return self.check_name(self.string(node, where), where, node)

    def check_name(self, name: str, where: str, node: Node) -> str:
        if not name or "\x00" in name:
            raise self.error(f"{where}: a name must be non-empty and contain no NUL", node)
        if len(name.encode("utf-8")) > NAME_MAX_BYTES:
            raise self.error(f"{where}: name {name[:20]!r}... is longer than "
                             f"{NAME_MAX_BYTES} bytes", node)
        return name

    def secret(self, node: Node, where: str) -> str | None:
        return None if self.value(node) is None else self.string(node, where)

    def integer(self, node: Node, where: str) -> int:
        value = self.typed(node)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{where}: expected an integer, got {_describe(value)}", node)
        if value < 1:
            raise self.error(f"{where}: must be at least 1, got {value}", node)
        return value

    def seconds(self, node: Node, where: str, *, zero_ok: bool = False) -> float:
        value = self.typed(node)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise self.error(f"{where}: expected a number of seconds, got {_describe(value)}", node)
        if value < 0 or (value == 0 and not zero_ok):
            raise self.error(f"{where}: must be {'at least' if zero_ok else 'more than'} 0", node)
        return float(value)

    def boolean(self, node: Node, where: str) -> bool:
        value = self.typed(node)
        if not isinstance(value, bool):
            raise self.error(f"{where}: expected true or false, got {_describe(value)}", node)
        return value

    def choice(self, node: Node, where: str, choices: tuple[str, ...]) -> str:
        value = self.value(node)
        if not isinstance(value, str) or value not in choices:
            hint = _suggest(value, choices) if isinstance(value, str) else ""
            raise self.error(f"{where}: expected one of {' | '.join(choices)}, "
                             f"got {_describe(value)}{hint}", node)
        return value

    def address(self, node: Node, where: str) -> Address:
        text = self.string(node, where)
        try:
            return parse_address(text)
        except ValueError as exc:
            raise self.error(f"{where}: {exc}, got {text!r}", node) from None

    def sequence(self, node: Node, where: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise self.error(f"{where}: expected a list, got {_describe(self.value(node))}", node)
        return node.value

    def names(self, node: Node, where: str) -> tuple[str, ...]:
        return tuple(self.name(item, where) for item in self.sequence(node, where))


def _fields(r: _Reader, items: dict, table: dict[str, Callable], where: str) -> dict[str, Any]:
    """Parse each present key with its reader from `table` (keys were already checked)."""
    return {key: table[key](r, value, f"{where}.{key}" if where else key)
            for key, (_, value) in items.items() if key in table}


def _choice(choices: tuple[str, ...]) -> Callable[[_Reader, Node, str], str]:
    return lambda r, node, where: r.choice(node, where, choices)


def _optional(read: Callable) -> Callable:
    return lambda r, node, where: None if r.value(node) is None else read(r, node, where)


# --- sections ----------------------------------------------------------------------------

_TOP_FIELDS: dict[str, Callable] = {
    "listen": _Reader.address,
    "metrics": _optional(_Reader.address),
    "pool_mode": _choice(POOL_MODES),
    "isolation_level": _choice(ISOLATION_LEVELS),
    "user_separator": lambda r, node, where: _separator(r, node, where),
    "unknown_tenant": _choice(UNKNOWN_TENANT_ACTIONS),
    "shared_schemas": _Reader.names,
    "max_client_connections": _Reader.integer,
    "max_message_size": _Reader.integer,
    "shutdown_timeout": lambda r, node, where: r.seconds(node, where, zero_ok=True),
}
_CLUSTER_FIELDS: dict[str, Callable] = {
    "hosts": lambda r, node, where: tuple(r.address(h, where) for h in r.sequence(node, where)),
    "user": _Reader.name,
    "password": _Reader.secret,
    "pool_size": _Reader.integer,
    "tls": _choice(CLUSTER_TLS_MODES),
    "tls_ca": _Reader.string,
    "connect_timeout": _Reader.seconds,
    "wait_timeout": _Reader.seconds,
    "idle_timeout": _Reader.seconds,
    "max_lifetime": _Reader.seconds,
}
_TENANT_FIELDS: dict[str, Callable] = {
    "strategy": _choice(STRATEGIES),
    "cluster": _Reader.name,
    "database": _Reader.name,
    "schema": _Reader.name,
    "role": _Reader.name,
    "key": lambda r, node, where: _tenant_key(r, node, where),
    "max_connections": _Reader.integer,
}
_USER_FIELDS: dict[str, Callable] = {
    "password": _Reader.string,
    "auth": _choice(AUTH_METHODS),
    "tenants": _Reader.names,
    "tenant": _Reader.name,
    "bypass": _Reader.boolean,
    "cluster": _Reader.name,
    "admin": _Reader.boolean,
}
_TLS_FIELDS: dict[str, Callable] = {
    "cert": _Reader.string, "key": _Reader.string, "mode": _choice(CLIENT_TLS_MODES)}
_ROW_FIELDS: dict[str, Callable] = {
    "column": _Reader.name, "enforce": _choice(ROW_ENFORCE_MODES),
    "shared_tables": lambda r, node, where: tuple(
        _qualified(r, item, where) for item in r.sequence(node, where)),
}


def _separator(r: _Reader, node: Node, where: str) -> str:
    text = r.string(node, where)
    if any(c.isspace() for c in text):
        raise r.error(f"{where}: must not contain spaces", node)
    return text


def _tenant_key(r: _Reader, node: Node, where: str) -> str:
    """The row strategy's tenant column value: a string, or an integer taken as its text."""
    value = r.typed(node)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return r.string(node, where)


def _qualified(r: _Reader, node: Node, where: str) -> str:
    text = r.string(node, where)
    parts = text.split(".")
    if len(parts) != 2 or not all(parts):
        raise r.error(f"{where}: expected a schema-qualified table \"schema.table\", got {text!r}",
                      node)
    for part in parts:
        r.check_name(part, where, node)
    return text


def _build(r: _Reader, root: Node) -> Config:
    top = r.mapping(root, "", _TOP_KEYS)
    fields = _fields(r, top, _TOP_FIELDS, "")
    if "metrics" in top and fields["metrics"] == fields.get("listen", Config.listen):
        raise r.error("metrics: must differ from listen", top["metrics"][1])
    if "tls" in top and r.value(top["tls"][1]) is not None:
        fields["tls"] = _client_tls(r, *top["tls"])
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


def _section(r: _Reader, top: dict, section: str, root: Node) -> dict[str, tuple[Node, Node]]:
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


def _client_tls(r: _Reader, key: Node, node: Node) -> ClientTls:
    items = r.mapping(node, "tls", _TLS_KEYS)
    r.require(items, ("cert", "key"), "tls", key)
    return ClientTls(**_fields(r, items, _TLS_FIELDS, "tls"))


def _resolve(r: _Reader, node: Node, tls: ClientTls | None) -> tuple[str, ...]:
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


def _cluster(r: _Reader, name: str, key: Node, node: Node) -> Cluster:
    where = f"clusters.{name}"
    items = r.mapping(node, where, _CLUSTER_KEYS)
    r.require(items, ("hosts", "user"), where, key)
    fields = _fields(r, items, _CLUSTER_FIELDS, where)
    if not fields["hosts"]:
        raise r.error(f"{where}.hosts: at least one \"host:port\" is needed", items["hosts"][1])
    if "tls_ca" in fields and fields.get("tls", "prefer") != "verify-full":
        raise r.error(f"{where}.tls_ca: only used with tls: verify-full", items["tls_ca"][0])
    return Cluster(name=name, **fields)


def _cluster_ref(r: _Reader, items: dict, fields: dict, clusters: dict, where: str,
                 owner: Node) -> str:
    """The named cluster (which must exist), or the only cluster when none is named."""
    if "cluster" in fields:
        name = fields["cluster"]
        if name not in clusters:
            raise r.error(f"{where}.cluster: there is no cluster '{name}'"
                          f"{_suggest(name, clusters)}", items["cluster"][1])
        return name
    if len(clusters) == 1:
        return next(iter(clusters))
    raise r.error(f"{where}: 'cluster' is required when there is more than one cluster", owner)


def _tenants(r: _Reader, top: dict, root: Node, clusters: dict[str, Cluster],
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


def _tenant(r: _Reader, name: str, key: Node, node: Node, clusters: dict) -> Tenant:
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


def _claim(r: _Reader, owners: dict[tuple, tuple[str, str]], tenant: Tenant, key: Node) -> None:
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


def _user(r: _Reader, name: str, key: Node, node: Node, clusters: dict[str, Cluster],
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


def _check_user_kind(r: _Reader, items: dict, fields: dict, where: str, key: Node) -> None:
    if "tenant" in items and "tenants" in items:
        later = max(items["tenant"][0], items["tenants"][0], key=lambda n: n.start_mark.index)
        raise r.error(f"{where}: give either 'tenant' or 'tenants', not both", later)
    bound = fields.get("tenant") is not None or bool(fields.get("tenants"))
    if fields.get("bypass") and bound:
        raise r.error(f"{where}: a bypass login acts for no tenant; remove "
                      f"'{'tenant' if 'tenant' in items else 'tenants'}'", items["bypass"][0])
    if not fields.get("bypass") and not bound:
        raise r.error(f"{where}: give 'tenant', a non-empty 'tenants' or 'bypass: true'", key)
    if "cluster" in items and not fields.get("bypass"):
        raise r.error(f"{where}.cluster: only used by bypass logins", items["cluster"][0])


def _check_user_tenants(r: _Reader, items: dict, fields: dict, tenants: dict, where: str) -> None:
    if "tenant" in fields and fields["tenant"] not in tenants:
        name = fields["tenant"]
        raise r.error(f"{where}.tenant: there is no tenant '{name}'{_suggest(name, tenants)}",
                      items["tenant"][1])
    for name, node in zip(fields.get("tenants", ()), r.sequence(items["tenants"][1], where)
                          if "tenants" in items else ()):
        if name != "*" and name not in tenants:
            raise r.error(f"{where}.tenants: there is no tenant '{name}'"
                          f"{_suggest(name, tenants)}", node)


def _check_user_auth(r: _Reader, items: dict, fields: dict, where: str, key: Node) -> None:
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
