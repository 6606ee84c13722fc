"""SET, RESET, SHOW and `SELECT set_config(…)`: which settings a tenant may change.

Allowed changes come back as SettingChange records, in order, so the session can
re-apply them on the next server connection it leases (transaction pooling). SQL that
re-applies settings is built as a pglast AST and deparsed (`render_settings`), never
by formatting strings, and checked by parsing it again.
"""

from __future__ import annotations

import re
from typing import Any

from pglast import ast, enums, stream

from proxy.errors import PolicyDenied
from proxy.sql import nodes, reach
from proxy.sql.nodes import const_value, unwrap
from proxy.sql.reach import Context
from proxy.sql.scope import SettingChange

# Settings that only change how values are shown or how this session behaves.
SAFE_SETTINGS = frozenset({
    "application_name", "datestyle", "timezone", "intervalstyle", "extra_float_digits",
    "bytea_output", "client_min_messages", "lc_monetary", "lc_numeric", "lc_time",
    "default_transaction_isolation", "default_transaction_read_only",
    "default_transaction_deferrable",
})
# Last until the end of the current transaction: allowed, nothing to track.
TRANSACTION_SETTINGS = frozenset({"transaction_isolation", "transaction_read_only",
                                  "transaction_deferrable"})
# The proxy pins these (THREATS 57): a tenant may only tighten them.
TIMEOUT_SETTINGS = frozenset({"statement_timeout", "lock_timeout"})
# Change how the server lexes SQL text, so the proxy's parse would differ (THREATS 12, 13).
LEXING_SETTINGS = frozenset({"standard_conforming_strings", "backslash_quote"})
ROLE_SETTINGS = frozenset({"role", "session_authorization"})
# Units of PostgreSQL's millisecond settings, largest first, in ms (guc.c's time unit
# table; a bare number means ms).
_UNITS_MS = (("d", 86400000), ("h", 3600000), ("min", 60000), ("s", 1000), ("ms", 1),
             ("us", 0.001))
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?\s*$")
_PLAIN_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_$]*$")


def set_statement(ctx: Context, fields: dict[str, Any]) -> list[tuple[str, str]]:
    """Check a VariableSetStmt; return settings to re-apply after it (RESET ALL)."""
    kind = fields.get("kind")
    if kind == "VAR_RESET_ALL":
        ctx.settings.append(SettingChange("*", None))
        return list(ctx.scope.pinned_settings)
    if kind == "VAR_SET_MULTI":
        _set_multi(ctx, fields)
        return []
    name = fields.get("name", "").lower()  # GUC names compare case-insensitively
    check_name(ctx, name)
    if kind == "VAR_SET_VALUE":
        flat, elements = _flatten(ctx, name, fields.get("args") or [])
    elif kind in ("VAR_SET_DEFAULT", "VAR_RESET"):
        flat, elements = None, None
    else:  # SET … FROM CURRENT
        raise PolicyDenied(f"SET {name} FROM CURRENT is not allowed", rule="setting-value")
    decide(ctx, name, flat, elements, bool(fields.get("is_local")))
    return []


def check_name(ctx: Context, name: str) -> None:
    """Refuse settings a tenant may never change, whatever the value."""
    if "." in name:
        raise PolicyDenied(f"setting {name} is reserved", rule="reserved-setting")
    if name in ROLE_SETTINGS:
        raise PolicyDenied(f"changing {name} is not allowed", rule="role")
    if name == "search_path" and ctx.scope.strategy != "database":
        raise PolicyDenied("changing search_path is not allowed", rule="search-path")
    if name in LEXING_SETTINGS:
        raise PolicyDenied(f"changing {name} is not allowed", rule="lexing-setting")
    allowed = SAFE_SETTINGS | TRANSACTION_SETTINGS | TIMEOUT_SETTINGS
    if name not in allowed and name not in ("search_path", "client_encoding"):
        raise PolicyDenied(f"setting {name} is not allowed", rule="setting-allowlist")


def decide(ctx: Context, name: str, flat: str | None, elements: list[str] | None,
           local: bool) -> None:
    """Check the value of an allowed setting and record the change to track."""
    if name == "client_encoding":
        _check_encoding(flat)
        return  # the proxy pins UTF8 already: a no-op
    if name in TIMEOUT_SETTINGS:
        _check_timeout(ctx, name, flat)
    if name == "search_path" and elements is not None:
        _check_search_path(elements)
    if name not in TRANSACTION_SETTINGS:
        ctx.settings.append(SettingChange(name, flat, local))


def _flatten(ctx: Context, name: str, args: list[Any]) -> tuple[str, list[str]]:
    """The value as PostgreSQL's flatten_set_variable_args shows it, and its elements."""
    ctx.literal = True
    elements = []
    for arg in args:
        item = unwrap(arg)
        if item is None or item[0] != "A_Const":
            raise PolicyDenied(f"only literal values are allowed for {name}",
                               rule="setting-value")
        value = const_value(item[1])
        elements.append("" if value is None else str(value))
    if name == "search_path":
        return ", ".join(map(quote_identifier, elements)), elements
    return ", ".join(elements), elements


def quote_identifier(name: str) -> str:
    if _PLAIN_IDENTIFIER.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _check_encoding(flat: str | None) -> None:
    cleaned = re.sub(r"[^a-z0-9]", "", (flat or "").lower())
    if cleaned not in ("utf8", "unicode"):
        raise PolicyDenied("client_encoding can only be UTF8", rule="lexing-setting")


def _check_timeout(ctx: Context, name: str, flat: str | None) -> None:
    limit = dict(ctx.scope.pinned_settings).get(name)
    wanted = duration_ms(flat) if flat is not None else None
    if wanted is None or wanted <= 0:  # 0 (also '0.4', '100us') disables the timeout
        raise PolicyDenied(f"{name} can only be set to a positive duration",
                           rule="setting-value")
    pinned = duration_ms(limit) if limit is not None else None
    if pinned and wanted > pinned:
        raise PolicyDenied(f"{name} cannot exceed {limit}", rule="setting-value")


def duration_ms(text: str | None) -> int | None:
    """The whole milliseconds PostgreSQL stores for a time setting ('5s', '100', '1min',
    '0.4'), or None when the text is not a plain non-negative duration.

    As guc.c's parse_int: a value with a unit is converted to ms and rounded to a whole
    number of the next smaller unit, then every value is rounded to whole milliseconds
    (rint: half to even, like Python's round), so '0.4' and '100us' are 0, which
    disables a timeout.
    """
    match = _DURATION.match(text or "")
    if not match:
        return None
    number, unit = match.group(1), match.group(2)
    if number.startswith("0") and number.isdigit() and len(number) > 1:
        # strtol(…, 0) reads a leading 0 as octal: '010' is 8 ms, '08' an error
        return _octal(number, unit)
    value = float(number)
    try:
        if unit is not None:
            sizes = [size for _, size in _UNITS_MS]
            position = [name for name, _ in _UNITS_MS].index(unit)
            value *= sizes[position]
            if position + 1 < len(sizes):
                value = round(value / sizes[position + 1]) * sizes[position + 1]
        return round(value)
    except (OverflowError, ValueError):  # inf or nan: far out of range anyway
        return None


def _octal(number: str, unit: str | None) -> int | None:
    if set(number) - set("01234567"):
        return None
    return duration_ms(f"{int(number, 8)}{unit or ''}")


def _check_search_path(elements: list[str]) -> None:
    for position, schema in enumerate(elements):
        # pg_catalog only first: later, the tenant's own functions and operators would
        # shadow the allowlisted built-ins of the same name.
        if reach.is_system_schema(schema) and (schema != "pg_catalog" or position):
            raise PolicyDenied(f"search_path cannot contain {schema} there",
                               rule="search-path")


def _set_multi(ctx: Context, fields: dict[str, Any]) -> None:
    """SET TRANSACTION … / SET SESSION CHARACTERISTICS AS TRANSACTION …"""
    which = fields.get("name")
    if which == "TRANSACTION":
        return
    if which != "SESSION CHARACTERISTICS":
        raise PolicyDenied(f"SET {which} is not allowed", rule="setting-allowlist")
    for option in fields.get("args") or []:
        item = unwrap(option)
        if item is None or item[0] != "DefElem":
            raise PolicyDenied("unexpected transaction option", rule="setting-value")
        ctx.literal = True
        value = const_value((unwrap(item[1].get("arg")) or ("", {}))[1])
        if isinstance(value, int) and not isinstance(value, bool):
            value = "on" if value else "off"
        name = "default_" + item[1].get("defname", "")
        check_name(ctx, name)
        ctx.settings.append(SettingChange(name, str(value)))


def set_config(ctx: Context, args: list[Any]) -> None:
    """`SELECT set_config('name', 'value', is_local)` with three literals."""
    ctx.literal = True
    values = [const_value(item[1]) if item and item[0] == "A_Const" else ...
              for item in map(unwrap, args)]
    if len(values) != 3 or not isinstance(values[0], str) \
            or not isinstance(values[1], str) or not isinstance(values[2], bool):
        raise PolicyDenied("function set_config is not allowed", rule="function-allowlist")
    name, value, local = values[0].lower(), values[1], values[2]
    check_name(ctx, name)
    elements = reach.split_identifiers(value, ",") if name == "search_path" else [value]
    if elements is None:
        raise PolicyDenied("malformed search_path", rule="search-path")
    decide(ctx, name, value, elements, local)


def render_settings(settings: list[tuple[str, str]]) -> str:
    """SQL that sets each (name, value), built as an AST; values in PostgreSQL's form."""
    statements = tuple(ast.RawStmt(stmt=_set_node(name, value)) for name, value in settings)
    if not statements:
        return ""
    sql = stream.RawStream()(statements)
    _verify(sql, settings)
    return sql


def _parts(name: str, value: str) -> list[str]:
    parts = reach.split_identifiers(value, ",") if name == "search_path" else [value]
    if parts is None:
        raise ValueError(f"malformed value for {name}: {value!r}")
    return parts


def _set_node(name: str, value: str) -> ast.VariableSetStmt:
    args = tuple(ast.A_Const(val=ast.String(sval=part)) for part in _parts(name, value))
    return ast.VariableSetStmt(kind=enums.VariableSetKind.VAR_SET_VALUE, name=name,
                               args=args, is_local=False)


def _verify(sql: str, settings: list[tuple[str, str]]) -> None:
    """Parse the deparsed SQL again: it must set exactly what was asked (DESIGN 6.6)."""
    got = [(s.kind, s.fields.get("kind"), s.fields.get("name", "").lower(),
            [const_value(unwrap(a)[1]) for a in s.fields.get("args", [])])
           for s in nodes.parse(sql)]
    wanted = [("VariableSetStmt", "VAR_SET_VALUE", name.lower(), _parts(name, value))
              for name, value in settings]
    if got != wanted:
        raise ValueError("deparsed settings do not match")  # a pglast bug: fail closed
