"""Function calls and reg* casts: the allowlist and the functions that need a closer look.

A call is allowed when its final name (pg_catalog or unqualified) is on the allowlist,
or when `standard` lets the tenant call its own schema's functions. A few built-ins
are allowed only with a closer look at their arguments: sequence functions and
reg* lookups read an object name from a string literal (the decision then depends on
the literal, so it is cached by exact text), advisory locks and pg_notify depend on
the strategy and pool mode.
"""

from __future__ import annotations

from typing import Any, Callable

from proxy.errors import NotSupported, PolicyDenied
from proxy.sql import catalog, reach
from proxy.sql.nodes import NotAName, const_value, strings, unwrap
from proxy.sql.reach import Context


def check_call(ctx: Context, fields: dict[str, Any]) -> bool:
    """Refuse a forbidden call; True when its arguments were fully checked here."""
    try:
        names = strings(fields.get("funcname"))
    except NotAName:
        raise NotSupported("a function name of this form is not supported",
                           rule="node-allowlist") from None
    name, schema = names[-1], (names[-2] if len(names) > 1 else None)
    if len(names) > 2 or (schema not in (None, "pg_catalog")
                          and not reach.user_function_schema_allowed(ctx.scope, schema)):
        raise _denied(names)
    if schema not in (None, "pg_catalog"):
        return False
    special = _SPECIAL.get(name)
    if special is not None:
        return special(ctx, name, fields.get("args") or [])
    if name not in catalog.FUNCTION_ALLOWLIST:
        raise _denied(names)
    return False


def _denied(names: list[str]) -> PolicyDenied:
    return PolicyDenied(f"function {'.'.join(names)} is not allowed", rule="function-allowlist")


def literal_string(node: Any) -> str | None:
    """'text' or 'text'::regclass/text: the string a name-taking function reads."""
    item = unwrap(node)
    if item and item[0] == "TypeCast":
        target = _type_final_name(item[1].get("typeName", {}))
        if target not in ("regclass", "text", "varchar"):
            return None
        item = unwrap(item[1].get("arg"))
    if item and item[0] == "A_Const" and "sval" in item[1]:
        return const_value(item[1])
    return None


def _type_final_name(type_fields: dict[str, Any]) -> str | None:
    try:
        names = strings(type_fields.get("names"))
    except NotAName:
        return None
    if len(names) == 1 or (len(names) == 2 and names[0] == "pg_catalog"):
        return names[-1]
    return None


def reg_type_of(type_fields: dict[str, Any]) -> str | None:
    """The reg* type a TypeName names (pg_catalog or unqualified), else None."""
    name = _type_final_name(type_fields)
    return name if name in catalog.REG_TYPES else None


def check_lookup(ctx: Context, regtype: str, arg: Any) -> bool:
    """A reg* cast or to_reg*() argument; True when it was a literal (fully checked)."""
    ctx.literal = True  # the outcome depends on what the argument is
    noun, sqlstate, open_ = catalog.REG_TYPES[regtype]
    if regtype == "regrole":
        raise PolicyDenied("role lookups are not allowed (roles are cluster-wide)",
                           rule="reg-cast")
    item = unwrap(arg)
    if item and item[0] == "A_Const":
        value = const_value(item[1])
        if isinstance(value, str):
            _check_lookup_literal(ctx, regtype, noun, sqlstate, value)
        return True
    if open_ and item and item[0] in ("ColumnRef", "ParamRef"):
        return False
    raise PolicyDenied(f"a {regtype} lookup of a computed name is not allowed",
                       rule="reg-cast")


def _check_lookup_literal(ctx: Context, regtype: str, noun: str, sqlstate: str,
                          text: str) -> None:
    names = reach.split_object_name(text) if regtype != "regclass" \
        else reach.split_identifiers(text)
    if not names or len(names) > 2 + (regtype == "regclass"):
        raise PolicyDenied(f"the {regtype} name {text!r} is not allowed", rule="reg-cast")
    if regtype == "regnamespace":
        if len(names) != 1:
            raise PolicyDenied(f"the {regtype} name {text!r} is not allowed", rule="reg-cast")
        reach.check_schema_name(ctx, names[0])
    elif regtype == "regclass":
        catalogname = names[-3] if len(names) == 3 else None
        schema = names[-2] if len(names) > 1 else None
        reach.check_relation(ctx, schema, names[-1], catalogname=catalogname)
    elif len(names) == 2:
        reach.check_named_object(ctx, noun, sqlstate, names[0], names[1])


def _sequence(ctx: Context, name: str, args: list[Any]) -> bool:
    ctx.literal = True
    text = literal_string(args[0]) if args else None
    names = reach.split_identifiers(text) if text is not None else None
    if not names or len(names) > 2:
        raise PolicyDenied(f"{name}() is allowed only with a sequence name literal",
                           rule="sequence-function")
    schema = names[0] if len(names) == 2 else None
    reach.check_relation(ctx, schema, names[-1], write=catalog.SEQUENCE_FUNCTIONS[name])
    return False  # setval's other arguments are still walked


def _lastval(ctx: Context, name: str, args: list[Any]) -> bool:
    # lastval() reports the last sequence the server session used: with transaction
    # pooling that may be another client's.
    if ctx.scope.pool_mode != "session":
        raise NotSupported("lastval() is not supported in transaction pooling mode; "
                           "use currval('sequence') or RETURNING", rule="session-feature")
    return False


def _lookup(ctx: Context, name: str, args: list[Any]) -> bool:
    if not args:
        return False
    return check_lookup(ctx, catalog.LOOKUP_FUNCTIONS[name], args[0]) and len(args) == 1


def _advisory(ctx: Context, name: str, args: list[Any]) -> bool:
    if name in catalog.ADVISORY_UNLOCK:
        return False
    if ctx.shared_database:
        raise PolicyDenied(f"{name}() is not allowed: advisory lock keys are shared by "
                           f"every tenant of the database", rule="advisory-lock")
    if name in catalog.ADVISORY_SESSION:
        if ctx.scope.pool_mode != "session":
            raise NotSupported(f"session-level advisory locks ({name}) are not supported "
                               f"in transaction pooling mode; use pg_advisory_xact_lock",
                               rule="session-feature")
        ctx.session_state = True
    return False


def _notify(ctx: Context, name: str, args: list[Any]) -> bool:
    if ctx.shared_database:
        raise PolicyDenied("pg_notify() is not allowed: notification channels are shared "
                           "by every tenant of the database", rule="shared-channel")
    return False


def _set_config(ctx: Context, name: str, args: list[Any]) -> bool:
    # Only the bare `SELECT set_config('<allowlisted>', '<literal>', <bool>)` form is
    # allowed, and it is recognised before the walk (policy.set_config_call).
    raise PolicyDenied("function set_config is not allowed", rule="function-allowlist")


_Special = Callable[[Context, str, list[Any]], bool]
_SPECIAL: dict[str, _Special] = {
    **{name: _sequence for name in catalog.SEQUENCE_FUNCTIONS},
    **{name: _lookup for name in catalog.LOOKUP_FUNCTIONS},
    **{name: _advisory for name in catalog.ADVISORY_XACT | catalog.ADVISORY_SESSION
       | catalog.ADVISORY_UNLOCK},
    "lastval": _lastval,
    "pg_notify": _notify,
    "set_config": _set_config,
}
