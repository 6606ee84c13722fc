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
from proxy.sql import catalog, reach, rewrite
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
    open_ = catalog.REG_TYPES[regtype][1]
    if regtype == "regrole":
        raise PolicyDenied("role lookups are not allowed (roles are cluster-wide)",
                           rule="reg-cast")
    item = unwrap(arg)
    if item and item[0] == "A_Const":
        value = const_value(item[1])
        if isinstance(value, str):
            _check_lookup_literal(ctx, regtype, value)
        return True
    if open_ and item and item[0] in ("ColumnRef", "ParamRef"):
        return False
    raise PolicyDenied(f"a {regtype} lookup of a computed name is not allowed",
                       rule="reg-cast")


def _check_lookup_literal(ctx: Context, regtype: str, text: str) -> None:
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
        if rewrite.active(ctx):
            # Row tenants reach the tenant and shared tables only: any other name
            # answers like `SELECT * FROM name` (42P01, exists or not; THREATS 18).
            rewrite.resolve(ctx, {"schemaname": schema, "relname": names[-1]},
                            rewrite.NO_CTES)
    elif len(names) == 2:
        reach.check_named_object(ctx, catalog.REG_TYPES[regtype][0], names[0], names[1])


def _text_search(ctx: Context, name: str, args: list[Any]) -> bool:
    """to_tsvector('cfg', …) and friends: a string literal (or parameter) in the
    configuration's place is a regconfig name the server looks up, so it must be in
    reach like a ::regconfig cast. `ts_headline` with three arguments is either
    (config, document, query) or (document, query, options): there only a literal that
    reads as a qualified name is checked."""
    certain = len(args) == catalog.TEXT_SEARCH_CONFIG_ARITY[name]
    if certain or (name == "ts_headline" and len(args) == 3):
        ctx.literal = True  # the outcome depends on what the argument is
        _config_argument(ctx, args[0], certain)
    return False  # the arguments are still walked


def _config_argument(ctx: Context, node: Any, certain: bool) -> None:
    item = unwrap(_untyped(node))
    if item and item[0] == "A_Const" and isinstance(const_value(item[1]), str):
        text = const_value(item[1])
        if certain:
            _check_lookup_literal(ctx, "regconfig", text)
            return
        names = reach.split_object_name(text)
        if names and len(names) == 2:
            reach.check_named_object(ctx, "text search configuration", names[0], names[1])
    elif item and item[0] == "ParamRef" and certain:
        raise PolicyDenied("a text search configuration named by a parameter is not "
                           "allowed", rule="reg-cast")
    # A column holds a regconfig (an oid; text does not cast to regconfig implicitly),
    # and any other expression yields text or an explicit ::regconfig cast (checked).


def _untyped(node: Any) -> Any:
    """The node under COLLATE and ::unknown, which leave a literal's type unknown, so
    the server still reads it as the argument's type (here: a regconfig name)."""
    item = unwrap(node)
    while item and (item[0] == "CollateClause" or _is_cast_to_unknown(item)):
        node = item[1].get("arg")
        item = unwrap(node)
    return node


def _is_cast_to_unknown(item: tuple[str, dict[str, Any]]) -> bool:
    return item[0] == "TypeCast" and \
        _type_final_name(item[1].get("typeName", {})) == "unknown"


def _sequence(ctx: Context, name: str, args: list[Any]) -> bool:
    if ctx.scope.strategy == "row":
        # THREATS 27: a sequence is shared by every row tenant (nextval/currval show how
        # many rows the others inserted, setval disturbs them); only column defaults
        # may use it, on the server.
        raise PolicyDenied(f"{name}() is not allowed for row tenants: sequences are shared "
                           f"by every tenant; let the column default use them",
                           rule="sequence-function")
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
    **{name: _text_search for name in catalog.TEXT_SEARCH_CONFIG_ARITY},
    **{name: _advisory for name in catalog.ADVISORY_XACT | catalog.ADVISORY_SESSION
       | catalog.ADVISORY_UNLOCK},
    "lastval": _lastval,
    "pg_notify": _notify,
    "set_config": _set_config,
}
