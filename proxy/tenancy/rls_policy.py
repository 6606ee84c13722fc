"""Does an RLS policy expression isolate tenants? Read on the parsed tree, not the text.

`policy_shape(expr, column, setting)` takes an expression as `pg_get_expr` prints it
(with `search_path = pg_catalog, pg_temp`, so anything not built in is schema-qualified)
and tells whether it reads the tenant setting and whether it *isolates*: the expression,
or one conjunct of a top-level AND, is `<column> = <setting>` where `<setting>` is
`current_setting('<setting>'[, missing_ok])`, optionally inside `NULLIF(…, '')` and casts.
Anything else — an OR fallback (`… OR current_setting(…) = ''`), `IS NULL`, `COALESCE`,
a user-defined `=` or `current_setting` — can let rows through and does not isolate
(THREATS 44). The proxy never looks at these with text patterns.
"""

from __future__ import annotations

from dataclasses import dataclass

from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, BoolExprType


@dataclass(frozen=True)
class PolicyShape:
    reads_setting: bool  # current_setting('<setting>') appears somewhere
    isolates: bool  # the expression only lets rows whose column equals the setting through
    reason: str = ""  # why it does not isolate (empty when it does)


def policy_shape(expr: str | None, column: str, setting: str) -> PolicyShape:
    if expr is None:
        return PolicyShape(False, False, "there is no expression")
    try:
        statements = parse_sql(f"SELECT {expr}")
        if len(statements) != 1 or len(statements[0].stmt.targetList) != 1:
            raise ValueError("not one expression")
        node = statements[0].stmt.targetList[0].val
    except Exception:  # noqa: BLE001 - anything unreadable is not trusted
        return PolicyShape(setting in expr, False, "the expression cannot be parsed")
    reads = any(_is_setting_call(n, setting) for n in _walk(node))
    if not reads:
        return PolicyShape(False, False, f"it does not read {setting}")
    if _isolates(node, column, setting):
        return PolicyShape(True, True)
    if any(isinstance(n, ast.BoolExpr) and n.boolop == BoolExprType.OR_EXPR for n in _walk(node)):
        reason = "an OR alternative can be true without the tenant's key"
    else:
        reason = (f"it is not {column} = current_setting('{setting}', true) (optionally AND-ed "
                  "with more conditions)")
    return PolicyShape(True, False, reason)


def _walk(node):
    """Every pglast node under `node` (itself included)."""
    yield node
    for value in _children(node):
        yield from _walk(value)


def _children(node):
    if not isinstance(node, ast.Node):
        return
    for slot in node.__slots__:
        value = getattr(node, slot, None)
        if isinstance(value, ast.Node):
            yield value
        elif isinstance(value, tuple):
            yield from (item for item in value if isinstance(item, ast.Node))


def _isolates(node, column: str, setting: str) -> bool:
    if isinstance(node, ast.BoolExpr) and node.boolop == BoolExprType.AND_EXPR:
        return any(_isolates(arg, column, setting) for arg in node.args)
    return _tenant_equality(node, column, setting)


def _tenant_equality(node, column: str, setting: str) -> bool:
    if not (isinstance(node, ast.A_Expr) and node.kind == A_Expr_Kind.AEXPR_OP
            and _names(node.name) in (("=",), ("pg_catalog", "="))):
        return False
    left, right = node.lexpr, node.rexpr
    return ((_is_column(left, column) and _is_setting(right, setting))
            or (_is_setting(left, setting) and _is_column(right, column)))


def _names(items) -> tuple[str, ...]:
    return tuple(getattr(item, "sval", None) for item in items or ())


def _uncast(node):
    while isinstance(node, ast.TypeCast):
        node = node.arg
    return node


def _is_column(node, column: str) -> bool:
    node = _uncast(node)
    return (isinstance(node, ast.ColumnRef) and bool(node.fields)
            and getattr(node.fields[-1], "sval", None) == column)


def _is_string(node, value: str) -> bool:
    node = _uncast(node)
    return (isinstance(node, ast.A_Const) and not node.isnull
            and isinstance(node.val, ast.String) and node.val.sval == value)


def _is_setting(node, setting: str) -> bool:
    node = _uncast(node)
    if isinstance(node, ast.A_Expr) and node.kind == A_Expr_Kind.AEXPR_NULLIF:
        return _is_setting(node.lexpr, setting) and _is_string(node.rexpr, "")
    return _is_setting_call(node, setting)


def _is_setting_call(node, setting: str) -> bool:
    if not (isinstance(node, ast.FuncCall)
            and _names(node.funcname) in (("current_setting",), ("pg_catalog", "current_setting"))):
        return False
    args = node.args or ()
    return (1 <= len(args) <= 2 and _is_string(args[0], setting)
            and not (node.agg_star or node.agg_distinct or node.func_variadic or node.over))
