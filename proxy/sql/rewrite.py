"""Row strategy, `rewrite` enforcement: confine every tenant-table reference to the tenant.

Runs after the existing checks accepted a statement (policy.row_hook), on the same JSON
tree, and changes it in place:

* every reference to a tenant table that reads it (FROM lists, JOINs of every kind,
  subqueries wherever they hide, LATERAL, set operations, CTEs, `TABLE t`, `ONLY t`)
  is confined at its own query level by `rewrite_filters`: it stays a schema-qualified
  reference to the table and `<refname>.<col> = '<key>'` is AND-ed into that level's
  WHERE — or, on the nullable side of a LEFT/RIGHT join, into that join's ON, so the
  join keeps its meaning (THREATS 29). Where such a filter is not certainly right (FULL
  and NATURAL/USING joins, join aliases, column aliases, a MERGE source, …) the table
  becomes the derived table `(SELECT * FROM s.t WHERE t.<col> = '<key>') AS <refname>`.
  Either way the planner applies the filter at the table's scan, so the tenant's indexes
  serve — and may run the user's other quals before it: that qual-ordering leak
  (THREATS 30) is what RLS (`enforce: both`) closes and `rewrite` alone does not, as
  DESIGN.md says. (An `OFFSET 0` fence would close it only by scanning all of a tenant's
  rows on every query.);
* shared tables are read as they are, qualified with the schema they resolved to;
* a name that is neither a tenant nor a shared table (views included, THREATS 31), and
  is not a CTE or an allowlisted catalog, is refused like a missing relation (42P01);
* DML targets are handled in `rewrite_dml`.

Names are resolved as PostgreSQL does (CTE scoping, then the pinned search path), and
every rewritten reference is schema-qualified, so the server reads what was checked.
Anything the traversal does not know is refused (0A000); the output is deparsed, parsed
again and checked by `rewrite_check` before it is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.errors import NotSupported, PolicyDenied, RelationHidden
from proxy.sql.nodes import FIELD_TYPES, unwrap
from proxy.sql.reach import Context, is_system_schema
from proxy.sql.rowmodel import Resolved, RowCatalog
from proxy.sql.scope import Scope

DML_KINDS = ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")
QUERY_KINDS = ("SelectStmt", *DML_KINDS)
_LEAVES = frozenset("""A_Const ColumnRef ParamRef String Integer Float Boolean BitString
A_Star SQLValueFunction SetToDefault CurrentOfExpr TypeName""".split())
_NO_REACH = frozenset({"LockingClause"})  # FOR UPDATE OF x: x names a FROM item, not a table
Ctes = frozenset[str]
NO_CTES: Ctes = frozenset()


def rewriting(scope: Scope) -> bool:
    """Does this scope rewrite row references (row strategy, rewrite or both, catalog known)?"""
    return (scope.strategy == "row" and scope.row_enforce in ("rewrite", "both")
            and isinstance(scope.row_catalog, RowCatalog))


@dataclass
class RowContext(Context):
    """The analysis context of a rewriting row scope."""

    verify: bool = False  # checking already rewritten SQL: change nothing, prove the wrapping
    changed: bool = False  # the statement being analysed was rewritten
    # Locations of client literals the rewrite accepted because they equal the tenant key:
    # a cached template must see the same literal there again.
    key_literals: set[int] = field(default_factory=set)
    compared: bool = False  # a client literal was compared with the key (allowed or not)
    # Numbers of the bound parameters that must hold the tenant key (the tenant column's
    # guarded values): the session checks them at Bind (Decision.key_params).
    key_params: set[int] = field(default_factory=set)
    # (schema, table) of the tenant tables the statement reads through a derived table
    derived: set[tuple[str, str]] = field(default_factory=set)

    @property
    def catalog(self) -> RowCatalog:
        return self.scope.row_catalog  # type: ignore[return-value]

    @property
    def column(self) -> str:
        return self.catalog.tenant_column

    @property
    def key(self) -> str:
        return self.scope.tenant_key or ""


def new_context(scope: Scope) -> Context:
    """The context to analyse a statement of `scope` with."""
    return RowContext(scope) if rewriting(scope) else Context(scope)


def active(ctx: Context) -> bool:
    return isinstance(ctx, RowContext)


def read_literal(ctx: Context) -> bool:
    """Did the decision depend on a literal (then it is never shared by shape)?"""
    return ctx.literal or (isinstance(ctx, RowContext) and ctx.compared)


# --- names -------------------------------------------------------------------------------

def resolve(ctx: RowContext, rv: dict[str, Any], ctes: Ctes) -> Resolved | None:
    """The catalog table a FROM-list RangeVar names; None for a CTE or a system catalog
    (the catalog allowlist has checked those). Anything else is out of reach (42P01)."""
    schema, name = rv.get("schemaname"), rv.get("relname", "")
    if rv.get("catalogname"):
        raise NotSupported("cross-database references are not implemented",
                           rule="cross-database")
    if schema is None and name in ctes:
        return None
    if is_system_schema(schema) if schema is not None else name.startswith("pg_"):
        return None
    found = ctx.catalog.resolve(schema, name)
    if found is None:
        shown = f"{schema}.{name}" if schema is not None else name
        raise RelationHidden(f'relation "{shown}" does not exist', rule="relation-reach")
    return found


def write_target(ctx: RowContext, rv: dict[str, Any]) -> Resolved:
    """The table a statement writes to: a tenant table, qualified in place."""
    found = resolve(ctx, rv, NO_CTES)  # a DML target is never a CTE
    if found is None:
        raise PolicyDenied(f"writing to {rv.get('relname', '')} is not allowed", rule="catalog")
    if found.table is None:
        raise PolicyDenied(f"{found.schema}.{found.name} is a shared table and read-only",
                           rule="shared-read-only")
    rv["schemaname"] = found.schema
    ctx.changed = True
    return found


def ref_name(rv: dict[str, Any]) -> str:
    """How the statement refers to a relation: its alias, else its name."""
    return (rv.get("alias") or {}).get("aliasname") or rv.get("relname", "")


# --- node builders ---------------------------------------------------------------------

def string_const(value: str) -> dict[str, Any]:
    return {"A_Const": {"sval": {"sval": value}}}


def column_ref(*names: str) -> dict[str, Any]:
    return {"ColumnRef": {"fields": [{"String": {"sval": n}} for n in names]}}


def star(*qualifier: str) -> dict[str, Any]:
    fields = [{"String": {"sval": n}} for n in qualifier] + [{"A_Star": {}}]
    return {"ResTarget": {"val": {"ColumnRef": {"fields": fields}}}}


def tenant_predicate(ctx: RowContext, relation: str) -> dict[str, Any]:
    """`<relation>.<tenant column> = '<key>'`"""
    return {"A_Expr": {"kind": "AEXPR_OP", "name": [{"String": {"sval": "="}}],
                       "lexpr": column_ref(relation, ctx.column),
                       "rexpr": string_const(ctx.key)}}


def conjoin(condition: Any, *predicates: dict[str, Any]) -> Any:
    """`condition AND predicate AND …` as one flat AND, so that every predicate is a
    top-level conjunct however the condition was built (`a OR b` stays one argument)."""
    item = unwrap(condition)
    if not condition:
        args = list(predicates)
    elif item is not None and item[0] == "BoolExpr" and item[1].get("boolop") == "AND_EXPR":
        args = [*(item[1].get("args") or ()), *predicates]
    else:
        args = [condition, *predicates]
    if len(args) == 1:
        return args[0]
    return {"BoolExpr": {"boolop": "AND_EXPR", "args": args}}


def simple_select(targets: list[Any], from_items: list[Any], **extra: Any) -> dict[str, Any]:
    return {"SelectStmt": {"targetList": targets, "fromClause": from_items,
                           "limitOption": extra.pop("limitOption", "LIMIT_OPTION_DEFAULT"),
                           "op": "SETOP_NONE", **extra}}


def derived_table(ctx: RowContext, found: Resolved, rv: dict[str, Any], *,
                  sample: dict[str, Any] | None = None) -> dict[str, Any]:
    """`(SELECT * FROM [ONLY] s.t [TABLESAMPLE …] WHERE t.col = 'key') AS alias`"""
    inner: dict[str, Any] = {"schemaname": found.schema, "relname": found.name,
                             "inh": rv.get("inh", False),
                             "relpersistence": "p"}
    item = {"RangeVar": inner}
    if sample is not None:
        item = {"RangeTableSample": {**sample, "relation": item}}
    subquery = simple_select([star()], [item], whereClause=tenant_predicate(ctx, found.name))
    alias = rv.get("alias") or {"aliasname": rv.get("relname", found.name)}
    return {"RangeSubselect": {"subquery": subquery, "alias": alias}}


# --- traversal ---------------------------------------------------------------------------

def apply(ctx: Context, kind: str, fields: dict[str, Any]) -> None:
    """Rewrite one checked statement (or the query under PREPARE/DECLARE) in place."""
    if not isinstance(ctx, RowContext) or ctx.verify:
        return
    from proxy.sql import rewrite_dml  # the DML rules build on this module

    ctx.derived.clear()
    if kind == "SelectStmt":
        select(ctx, fields, NO_CTES, top=True)
    elif kind in DML_KINDS:
        rewrite_dml.statement(ctx, kind, fields, NO_CTES, top=True)
    elif kind == "CopyStmt":
        rewrite_dml.copy(ctx, fields)
    else:
        raise NotSupported(f"{kind} cannot be rewritten for the row strategy",
                           rule="row-strategy")
    if ctx.derived:
        unqualify(ctx, fields)


def select(ctx: RowContext, fields: dict[str, Any], ctes: Ctes, top: bool = False) -> None:
    """A SELECT (or VALUES, or a set operation) at any nesting level."""
    from proxy.sql import rewrite_filters  # the FROM-list rules build on this module

    if fields.get("intoClause"):
        raise PolicyDenied("SELECT … INTO is not allowed", rule="statement-type")
    ctes = with_clause(ctx, fields.get("withClause"), ctes, top)
    filters: list[Any] = []
    for key, value in fields.items():
        if key in ("withClause", "lockingClause", "intoClause") or not value:
            continue
        if key in ("larg", "rarg"):
            select(ctx, value, ctes)
        elif key == "fromClause":
            fields[key], filters = rewrite_filters.level(ctx, value, ctes, where=True)
        else:
            expr(ctx, value, ctes)
    if filters:  # after the loop: the WHERE may be a key the statement did not have
        fields["whereClause"] = conjoin(fields.get("whereClause"), *filters)


def with_clause(ctx: RowContext, with_fields: dict[str, Any] | None, ctes: Ctes,
                top: bool) -> Ctes:
    """Rewrite the CTEs of a WITH; return the names visible in the statement body."""
    if not with_fields:
        return ctes
    for visible, kind, query in cte_queries(with_fields, ctes):
        if kind == "SelectStmt":
            select(ctx, query, visible)
        elif kind in DML_KINDS and top:
            from proxy.sql import rewrite_dml

            rewrite_dml.statement(ctx, kind, query, visible, top=False)
        else:
            raise NotSupported(f"{kind} inside WITH is not supported for the row strategy",
                               rule="row-strategy")
    return ctes | cte_names(with_fields)


def cte_names(with_fields: dict[str, Any]) -> Ctes:
    return frozenset(cte.get("ctename", "") for cte in _ctes(with_fields))


def cte_queries(with_fields: dict[str, Any],
                ctes: Ctes) -> list[tuple[Ctes, str, dict[str, Any]]]:
    """(names visible in the CTE, query kind, query fields) for each CTE of a WITH.

    WITH RECURSIVE: every CTE sees all of them. Otherwise a CTE sees only the ones
    before it; a later or its own name refers to a table, as in PostgreSQL.
    """
    items = _ctes(with_fields)
    names = [cte.get("ctename", "") for cte in items]
    out = []
    for i, cte in enumerate(items):
        visible = ctes | frozenset(names if with_fields.get("recursive") else names[:i])
        query = unwrap(cte.get("ctequery"))
        if query is None:
            raise NotSupported("a CTE of this form is not supported", rule="node-allowlist")
        out.append((visible, query[0], query[1]))
    return out


def _ctes(with_fields: dict[str, Any]) -> list[dict[str, Any]]:
    items = []
    for node in with_fields.get("ctes") or ():
        item = unwrap(node)
        if item is None or item[0] != "CommonTableExpr":
            raise NotSupported("a WITH item of this form is not supported",
                               rule="node-allowlist")
        items.append(item[1])
    return items


def expr(ctx: RowContext, node: Any, ctes: Ctes) -> None:
    """Any expression or clause: find the queries inside it (sublinks, …)."""
    if isinstance(node, list):
        for item in node:
            expr(ctx, item, ctes)
        return
    if not isinstance(node, dict) or not node:
        return  # a scalar field, an empty slot
    item = unwrap(node)
    if item is None:
        raise NotSupported("an unexpected tree shape is not supported", rule="node-allowlist")
    visit(ctx, item[0], item[1], ctes)


def visit(ctx: RowContext, kind: str, fields: dict[str, Any], ctes: Ctes) -> None:
    if kind in _LEAVES or kind in _NO_REACH:
        return
    if kind == "SelectStmt":
        select(ctx, fields, ctes)
    elif kind in ("RangeVar", "IntoClause", "WithClause") or kind in DML_KINDS:
        raise NotSupported(f"{kind} in this position is not supported for the row strategy",
                           rule="row-strategy")
    else:
        children(ctx, kind, fields, ctes)


def unqualify(ctx: RowContext, node: Any) -> None:
    """`schema.table.column` (or `schema.table.*`) anywhere in the statement, where
    schema.table is a tenant table read through a derived table: that derived table is
    called `table`, and a schema-qualified name cannot refer to a derived table, so the
    reference drops the schema. Tables confined by a filter keep their name, and such
    references resolve as they did. (A column reference reads nothing by itself: this
    changes what resolves, never what is read.)"""
    if isinstance(node, list):
        for item in node:
            unqualify(ctx, item)
    elif isinstance(node, dict):
        if len(node) == 1 and isinstance(node.get("ColumnRef"), dict):
            _unqualify_column(ctx, node["ColumnRef"])
            return
        for value in node.values():
            unqualify(ctx, value)


def _unqualify_column(ctx: RowContext, fields: dict[str, Any]) -> None:
    names = fields.get("fields") or []
    if len(names) != 3:
        return
    parts = [unwrap(n) for n in names[:2]]
    if any(p is None or p[0] != "String" for p in parts):
        return
    if (parts[0][1].get("sval", ""), parts[1][1].get("sval", "")) in ctx.derived:
        fields["fields"] = names[1:]


def children(ctx: RowContext, kind: str, fields: dict[str, Any], ctes: Ctes) -> None:
    typed = FIELD_TYPES.get(kind, {})
    for key, value in fields.items():
        if key in typed:
            if isinstance(value, dict) and value:
                visit(ctx, typed[key], value, ctes)
        elif isinstance(value, (list, dict)):
            expr(ctx, value, ctes)


def split_dml_ctes(ctx: Context, fields: dict[str, Any]
                   ) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """For a rewriting scope: the statement with the data-modifying CTEs of its WITH
    left out, and those CTEs' statements (checked as top-level ones). Otherwise the
    statement unchanged."""
    with_fields = fields.get("withClause") if isinstance(ctx, RowContext) else None
    if not with_fields:
        return fields, []
    kept, nested = [], []
    for node in with_fields.get("ctes") or ():
        cte = unwrap(node)
        query = unwrap(cte[1].get("ctequery")) if cte and cte[0] == "CommonTableExpr" else None
        if query is not None and query[0] in DML_KINDS:
            nested.append(query)
            empty = {"SelectStmt": {"limitOption": "LIMIT_OPTION_DEFAULT", "op": "SETOP_NONE"}}
            kept.append({"CommonTableExpr": {**cte[1], "ctequery": empty}})
        else:
            kept.append(node)
    if not nested:
        return fields, []
    return {**fields, "withClause": {**with_fields, "ctes": kept}}, nested
