"""Tenant resolution at startup: which login, which tenant, which startup parameters survive.

Pure functions over a `Config` (DESIGN.md section 3, THREATS.md 9, 10, 13, 56, 61). The
tenant comes from the sources in `cfg.resolve`, in order; every source that names one must
name the same tenant; the authenticated login must be allowed to act for it; there is
never a default tenant. Messages name only what the client itself sent.
"""

from __future__ import annotations

import sys

from proxy.config import Config, Tenant, User
from proxy.errors import FatalError, ProtocolViolation, TenantRefused

# startup parameters restored on server connections, by lower-case name → canonical name
_RESTORABLE = {name.lower(): name for name in (
    "client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "extra_float_digits",
    "application_name")}
_CONSUMED = ("user", "database", "options")  # read by startup/resolution, never restored
_UTF8_SPELLINGS = ("utf8", "unicode")  # PostgreSQL's names after dropping non-alphanumerics
_APPLICATION_NAME_MAX = 63
_SHOWN_MAX = 63
_C_SPACE = " \t\n\v\f\r"  # C isspace() in the C locale, as pg_split_opts uses


def _shown(text: str) -> str:
    """Client text for an error message: printable ASCII only, bounded length."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text[:_SHOWN_MAX])
    return clean + ("..." if len(text) > _SHOWN_MAX else "")


def split_user(startup_user: str, cfg: Config) -> tuple[str, str | None]:
    """The login name and the tenant suffix of a startup `user` ("app.acme" → app, acme)."""
    if startup_user in cfg.users or "user_suffix" not in cfg.resolve:
        return startup_user, None
    separator = cfg.user_separator
    at = startup_user.find(separator)
    while at != -1:
        login, suffix = startup_user[:at], startup_user[at + len(separator):]
        if login and suffix and login in cfg.users:
            return login, suffix
        at = startup_user.find(separator, at + 1)
    return startup_user, None


def _split_options(options: str) -> list[str]:
    """PostgreSQL's pg_split_opts: whitespace separates, a backslash escapes the next char."""
    words: list[str] = []
    current: list[str] | None = None
    escaped = False
    for char in options:
        if char in _C_SPACE and not escaped:
            if current is not None:
                words.append("".join(current))
            current = None
            continue
        current = [] if current is None else current
        if char == "\\" and not escaped:
            escaped = True
        else:
            escaped = False
            current.append(char)
    if current is not None:
        words.append("".join(current))
    return words


def _option_settings(words: list[str]) -> list[str]:
    """The `name=value` texts of `-c name=value`, `-cname=value` and `--name=value` words."""
    settings, words = [], list(words)
    while words:
        word = words.pop(0)
        if word == "-c":
            if not words:
                raise _refused_option("-c without a setting")
            settings.append(words.pop(0))
        elif word.startswith("--") or word.startswith("-c"):
            settings.append(word[2:])
        else:
            raise _refused_option(f"unsupported startup option {_shown(word)!r}")
    return settings


def _refused_option(message: str) -> FatalError:
    return FatalError(f"{message}; only -c tenant=NAME is allowed in options",
                      sqlstate="42501", rule="startup-options")


def parse_options(options: str) -> dict[str, str]:
    """The libpq `options` startup value → {'tenant': NAME} (or {}); anything else is refused."""
    result: dict[str, str] = {}
    for setting in _option_settings(_split_options(options)):
        name, equals, value = setting.partition("=")
        name = name.replace("-", "_").lower()  # PostgreSQL: --a-b=1 sets a_b; GUC names fold
        if not equals or not name:
            raise _refused_option(f"malformed startup option {_shown(setting)!r}")
        if name != "tenant":
            raise _refused_option(f"startup option {_shown(name)!r} is not allowed")
        if result.get("tenant", value) != value:
            raise _refused_option("the tenant option is given twice with different values")
        result["tenant"] = value
    return result


def _candidates(cfg: Config, user: User, suffix: str | None, tenant_option: str | None,
                database: str | None, sni: str | None) -> list[tuple[str, str]]:
    """(source, tenant name) for every source in cfg.resolve that names a tenant."""
    label = sni.split(".", 1)[0].lower() if sni else None
    found = {
        "user_suffix": suffix,
        "login": user.tenant,
        "database": database if database in cfg.tenants else None,
        "options": tenant_option,
        "sni": label if label in cfg.tenants else None,
    }
    return [(source, found[source]) for source in cfg.resolve if found.get(source) is not None]


def _allowed(user: User, tenant: str) -> bool:
    return user.tenant == tenant or tenant in user.tenants or "*" in user.tenants


def _check_database(cfg: Config, tenant: Tenant, database: str | None) -> None:
    """A startup database naming another tenant's database is refused (THREATS 61)."""
    if database is None or database in (tenant.database, tenant.name):
        return
    if any(database in (other.database, other.name) for other in cfg.tenants.values()):
        raise FatalError(f'database "{_shown(database)}" does not exist', sqlstate="3D000",
                         rule="tenant-database")


def _refuse_bypass_tenant(user: User, suffix: str | None, tenant_option: str | None) -> None:
    named = suffix if suffix is not None else tenant_option
    if named is not None:
        raise TenantRefused(f'login "{user.name}" is a bypass login and cannot act for tenant '
                            f'"{_shown(named)}"', rule="tenant-bypass")


def resolve_tenant(cfg: Config, user: User, suffix: str | None, params: dict[str, str],
                   sni: str | None) -> Tenant | None:
    """The tenant this authenticated login acts for (None: a bypass login); else refused."""
    tenant_option = parse_options(params.get("options", "")).get("tenant")
    if tenant_option is not None and "options" not in cfg.resolve:
        raise TenantRefused("the tenant option is not enabled (resolve has no 'options')",
                            rule="tenant-source")
    if user.bypass:
        _refuse_bypass_tenant(user, suffix, tenant_option)
        return None
    database = params.get("database")
    candidates = _candidates(cfg, user, suffix, tenant_option, database, sni)
    if not candidates:
        raise TenantRefused(f"no tenant given (looked in: {', '.join(cfg.resolve)})",
                            rule="tenant-missing")
    for _, name in candidates:
        if name not in cfg.tenants:
            raise TenantRefused(f'tenant "{_shown(name)}" is not known', rule="tenant-unknown")
    (source, name), *others = candidates
    for other_source, other in others:
        if other != name:
            raise TenantRefused(f"conflicting tenants: {source} and {other_source} name "
                                "different tenants", rule="tenant-conflict")
    tenant = cfg.tenants[name]
    if not _allowed(user, name):
        raise TenantRefused(f'login "{user.name}" may not act for tenant "{_shown(name)}"',
                            rule="tenant-not-allowed")
    _check_database(cfg, tenant, database)
    return tenant


def _client_encoding(value: str) -> str:
    cleaned = "".join(c for c in value if c.isascii() and c.isalnum()).lower()
    if cleaned not in _UTF8_SPELLINGS:
        raise FatalError(f'client_encoding "{_shown(value)}" is not allowed; use UTF8',
                         sqlstate="42501", rule="client-encoding")
    return "UTF8"


def _application_name(value: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in value)[:_APPLICATION_NAME_MAX]


def filter_startup_params(params: dict[str, str]) -> dict[str, str]:
    """The client's startup parameters that may be restored on server connections."""
    kept: dict[str, str] = {}
    for key, value in params.items():
        if key in _CONSUMED:
            continue
        if key.lower() == "replication":
            raise ProtocolViolation("replication connections are not supported",
                                    rule="startup-replication")
        name = _RESTORABLE.get(key.lower())
        if name is None:
            raise FatalError(f'startup parameter "{_shown(key)}" is not allowed',
                             sqlstate="42501", rule="startup-parameter")
        if name == "client_encoding":
            value = _client_encoding(value)
        elif name == "application_name":
            value = _application_name(value)
        # Interned: clients with the same settings share the strings, so the check at each
        # lease (`lease.is_ready_for`) compares them by identity, not by their bytes.
        kept[name] = sys.intern(value)
    return kept
