"""Walk a statement tree and check every node: relations, calls, casts, operators.

Every node is visited, wherever it hides (WHERE, ORDER BY, CTEs, LATERAL, function
arguments, DEFAULT in VALUES, RETURNING …). A node type is either handled by a
check here or listed in SAFE_NODES (nothing to check itself, children walked); any
other node type is refused with 0A000, so a construct nobody thought about fails
closed instead of slipping through.
"""

from __future__ import annotations

from typing import Any, Callable

from proxy.errors import NotSupported, PolicyDenied, StatementTooComplex
from proxy.sql import catalog, functions, reach
from proxy.sql.nodes import FIELD_TYPES, MAX_DEPTH, NotAName, strings, unwrap
from proxy.sql.reach import Context

# Expression and clause nodes that carry no reach of their own.
SAFE_NODES = frozenset("""
ResTarget ColumnRef A_Star BoolExpr NullTest BooleanTest CaseExpr CaseWhen CoalesceExpr
MinMaxExpr A_ArrayExpr A_Indirection A_Indices RowExpr ParamRef SQLValueFunction
WindowDef RangeSubselect RangeFunction JoinExpr Alias WithClause CommonTableExpr
CTESearchClause CTECycleClause GroupingSet GroupingFunc OnConflictClause InferClause
IndexElem ReturningClause ReturningOption MultiAssignRef SetToDefault NamedArgExpr
CurrentOfExpr List String Integer Float Boolean BitString ColumnDef RangeTableFunc
RangeTableFuncCol XmlExpr XmlSerialize MergeWhenClause JsonValueExpr JsonOutput
JsonReturning JsonFormat JsonKeyValue JsonObjectConstructor JsonArrayConstructor
JsonArrayQueryConstructor JsonAggConstructor JsonObjectAgg JsonArrayAgg JsonParseExpr
JsonScalarExpr JsonSerializeExpr JsonIsPredicate JsonFuncExpr JsonArgument JsonBehavior
JsonTable JsonTablePathSpec JsonTableColumn MergeSupportFunc
""".split())

# Nodes with nothing under them worth checking: skipped without a walk (speed).
LEAVES = frozenset("""A_Const ColumnRef ParamRef String Integer Float Boolean BitString
A_Star SQLValueFunction""".split())

_Handler = Callable[[Context, dict[str, Any], int], None]
EXTRA_NODES: dict[str, _Handler] = {}  # node handlers other modules add (DDL)


def walk(ctx: Context, node: Any, depth: int) -> None:
    """Check a wrapped node, a list of them, or an empty slot."""
    if isinstance(node, list):
        for item in node:
            walk(ctx, item, depth)
        return
    if not node:
        return
    item = unwrap(node)
    if item is None:
        raise NotSupported("an unexpected tree shape is not supported", rule="node-allowlist")
    if item[0] not in LEAVES:
        visit(ctx, item[0], item[1], depth + 1)


def visit(ctx: Context, kind: str, fields: dict[str, Any], depth: int) -> None:
    """Check one node of a known type and everything under it."""
    if depth > MAX_DEPTH:
        raise StatementTooComplex(f"statement nesting exceeds the limit of {MAX_DEPTH}",
                                  rule="too-complex")
    if kind in LEAVES:
        return
    handler = _HANDLERS.get(kind) or EXTRA_NODES.get(kind)
    if handler is not None:
        handler(ctx, fields, depth)
    elif kind in SAFE_NODES:
        children(ctx, kind, fields, depth)
    else:
        raise NotSupported(f"{kind} is not supported here", rule="node-allowlist")


def children(ctx: Context, kind: str, fields: dict[str, Any], depth: int,
             skip: tuple[str, ...] = ()) -> None:
    """Check every child of a node; typed struct fields are visited with their type."""
    typed = FIELD_TYPES.get(kind, {})
    for key, value in fields.items():
        if key in skip:
            continue
        if key in typed:
            if isinstance(value, dict) and value:
                visit(ctx, typed[key], value, depth + 1)
        elif isinstance(value, (list, dict)):
            walk(ctx, value, depth)


def _range_var(ctx: Context, fields: dict[str, Any], depth: int, write: bool = False,
               creates: bool = False) -> None:
    reach.check_relation(ctx, fields.get("schemaname"), fields.get("relname", ""),
                         write=write, catalogname=fields.get("catalogname"), creates=creates)


def write_target(ctx: Context, fields: dict[str, Any], depth: int,
                 creates: bool = False) -> None:
    """A relation a statement writes to (DML target, COPY FROM, DDL); `creates`: one it
    creates (reach.check_relation)."""
    _range_var(ctx, fields, depth, write=True, creates=creates)


def _select(ctx: Context, fields: dict[str, Any], depth: int) -> None:
    if fields.get("intoClause"):
        raise PolicyDenied("SELECT … INTO is not allowed", rule="statement-type")
    children(ctx, "SelectStmt", fields, depth)


def _modify(kind: str, target: str) -> _Handler:
    """INSERT/UPDATE/DELETE/MERGE: the target is a write, the rest is walked."""
    def handler(ctx: Context, fields: dict[str, Any], depth: int) -> None:
        if depth > 1 and ctx.scope.strategy == "row":
            # Extension point: the row rewriter will handle data-modifying CTEs.
            raise NotSupported("data-modifying statements inside WITH or COPY are not "
                               "supported for the row strategy", rule="row-strategy")
        write_target(ctx, fields.get(target) or {}, depth + 1)
        children(ctx, kind, fields, depth, skip=(target,))
    return handler


def _func_call(ctx: Context, fields: dict[str, Any], depth: int) -> None:
    checked = functions.check_call(ctx, fields)
    children(ctx, "FuncCall", fields, depth, skip=("funcname", "args") if checked
             else ("funcname",))


def _type_cast(ctx: Context, fields: dict[str, Any], depth: int) -> None:
    type_fields = fields.get("typeName") or {}
    visit(ctx, "TypeName", type_fields, depth + 1)
    regtype = functions.reg_type_of(type_fields)
    if regtype and type_fields.get("arrayBounds"):
        raise PolicyDenied(f"casts to {regtype}[] are not allowed", rule="reg-cast")
    if regtype and functions.check_lookup(ctx, regtype, fields.get("arg")):
        return
    walk(ctx, fields.get("arg"), depth)


def _type_name(ctx: Context, fields: dict[str, Any], depth: int) -> None:
    names = _names(fields.get("names"))
    if len(names) > 2:
        raise NotSupported("cross-database references are not implemented",
                           rule="cross-database")
    if len(names) == 2:
        reach.check_named_object(ctx, "type", names[0], names[1])
    children(ctx, "TypeName", fields, depth, skip=("names",))


def _operator(names: list[str], ctx: Context) -> None:
    """OPERATOR(schema.op): pg_catalog, or the tenant's own schema in `standard`."""
    if len(names) < 2 or names[0] == "pg_catalog" and len(names) == 2:
        return
    if len(names) == 2 and reach.user_function_schema_allowed(ctx.scope, names[0]):
        return
    raise PolicyDenied(f"operator {'.'.join(names)} is not allowed", rule="function-allowlist")


def _with_operator(kind: str, field: str) -> _Handler:
    def handler(ctx: Context, fields: dict[str, Any], depth: int) -> None:
        _operator(_names(fields.get(field)), ctx)
        children(ctx, kind, fields, depth, skip=(field,))
    return handler


def _names(items: Any) -> list[str]:
    try:
        return strings(items)
    except NotAName:
        raise NotSupported("a name of this form is not supported",
                           rule="node-allowlist") from None


def _locking(ctx: Context, fields: dict[str, Any], depth: int) -> None:
    """FOR UPDATE OF x: x names a FROM item (checked there), not a relation."""


def _sample(ctx: Context, fields: dict[str, Any], depth: int) -> None:
    method = _names(fields.get("method"))
    if method[-1] not in catalog.SAMPLE_METHODS or method[:-1] not in ([], ["pg_catalog"]):
        raise PolicyDenied(f"TABLESAMPLE method {'.'.join(method)} is not allowed",
                           rule="function-allowlist")
    children(ctx, "RangeTableSample", fields, depth, skip=("method",))


def _collate(ctx: Context, fields: dict[str, Any], depth: int) -> None:
    names = _names(fields.get("collname"))
    if len(names) == 2:
        reach.check_named_object(ctx, "collation", names[0], names[1])
    children(ctx, "CollateClause", fields, depth, skip=("collname",))


_HANDLERS: dict[str, _Handler] = {
    "RangeVar": _range_var,
    "SelectStmt": _select,
    "InsertStmt": _modify("InsertStmt", "relation"),
    "UpdateStmt": _modify("UpdateStmt", "relation"),
    "DeleteStmt": _modify("DeleteStmt", "relation"),
    "MergeStmt": _modify("MergeStmt", "relation"),
    "FuncCall": _func_call,
    "TypeCast": _type_cast,
    "TypeName": _type_name,
    "A_Expr": _with_operator("A_Expr", "name"),
    "SubLink": _with_operator("SubLink", "operName"),
    "SortBy": _with_operator("SortBy", "useOp"),
    "LockingClause": _locking,
    "RangeTableSample": _sample,
    "CollateClause": _collate,
}
