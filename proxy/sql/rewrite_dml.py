"""Row strategy rewrite of writes: INSERT, UPDATE, DELETE, MERGE, and COPY … TO.

* UPDATE/DELETE: `AND <target>.<col> = '<key>'` on the target; every subquery is
  rewritten like any query, and the FROM/USING items are a query level of their own
  (rewrite_filters: their filters join the target's in the WHERE) (THREATS 35, 36).
* INSERT: the tenant column is added with the key when absent; when the client names
  it, the value must be (THREATS 34): a literal equal to the key; `DEFAULT` (it becomes
  the key, as an omitted column would); a bound parameter, which is wrapped in a guard
  the server evaluates (`guarded`: the parameter if it equals the key, else an error);
  or, in `INSERT … SELECT`, the tenant column of the one confined tenant table the
  SELECT reads. Positional inserts get their column list from the catalog. ON CONFLICT
  DO UPDATE only updates the tenant's own conflicting row (THREATS 37).
* MERGE: the tenant predicate joins the ON condition and every WHEN NOT MATCHED BY
  SOURCE condition (those rows are the target's unmatched rows); INSERT actions are
  forced like INSERT (THREATS 38). The source has no WHERE to filter its tables in, so
  a tenant table there is read through the derived table.
* COPY t TO STDOUT becomes COPY (SELECT … FROM ONLY s.t WHERE t.<col> = '<key>') TO
  STDOUT (THREATS 39).
* Assigning the tenant column (SET, ON CONFLICT, MERGE UPDATE) anything but the key
  (as a literal, `DEFAULT` or a guarded parameter: a no-op on the tenant's own rows,
  what an ORM saving every column sends) is refused (42501); a shared table is never a
  target (42501); a data-modifying CTE is rewritten like a top-level statement
  (THREATS 33).

The re-check (rewrite_check) calls the same functions on the re-parsed text with
`ctx.verify` set: there `DEFAULT` and a bare parameter are refused, and only the exact
guard this module writes is accepted.
"""

from __future__ import annotations

from copy import deepcopy
from functools import lru_cache
from typing import Any

from proxy.errors import NotSupported, PolicyDenied
from proxy.sql import nodes, rewrite, rewrite_filters
from proxy.sql.nodes import NotAName, const_value, strings, strip_locations, unwrap
from proxy.sql.rewrite import Ctes, RowContext
from proxy.sql.rowmodel import RowTable

_INSERT_ALIAS = "tenantgate_insert"


def statement(ctx: RowContext, kind: str, fields: dict[str, Any], ctes: Ctes,
              top: bool) -> None:
    """One INSERT/UPDATE/DELETE/MERGE, top level or in a WITH."""
    ctes = rewrite.with_clause(ctx, fields.get("withClause"), ctes, top)
    _STATEMENTS[kind](ctx, fields, ctes)


def _update(ctx: RowContext, fields: dict[str, Any], ctes: Ctes) -> None:
    rv = fields["relation"]
    rewrite.write_target(ctx, rv)
    check_assignments(ctx, fields.get("targetList"))
    filters = _from_items(ctx, fields, "fromClause", ctes, rv)
    _restrict_target(ctx, fields, ctes, rv, filters)


def _delete(ctx: RowContext, fields: dict[str, Any], ctes: Ctes) -> None:
    rv = fields["relation"]
    rewrite.write_target(ctx, rv)
    filters = _from_items(ctx, fields, "usingClause", ctes, rv)
    _restrict_target(ctx, fields, ctes, rv, filters)


def _from_items(ctx: RowContext, fields: dict[str, Any], key: str, ctes: Ctes,
                rv: dict[str, Any]) -> list[Any]:
    """UPDATE … FROM / DELETE … USING: a query level with the target's name in it; returns
    the filters its tables need in the WHERE."""
    if not fields.get(key):
        return []
    fields[key], filters = rewrite_filters.level(ctx, fields[key], ctes, where=True,
                                                 taken=(rewrite.ref_name(rv),))
    return filters


def _restrict_target(ctx: RowContext, fields: dict[str, Any], ctes: Ctes,
                     rv: dict[str, Any], filters: list[Any]) -> None:
    for key in ("targetList", "whereClause"):
        rewrite.expr(ctx, fields.get(key), ctes)
    returning(ctx, fields, ctes)
    where = fields.get("whereClause")
    if unwrap(where) and unwrap(where)[0] == "CurrentOfExpr":
        raise NotSupported("WHERE CURRENT OF is not supported for the row strategy",
                           rule="row-strategy")
    fields["whereClause"] = rewrite.conjoin(where, rewrite.tenant_predicate(
        ctx, rewrite.ref_name(rv)), *filters)


def returning(ctx: RowContext, fields: dict[str, Any], ctes: Ctes) -> None:
    if fields.get("returningClause"):
        rewrite.visit(ctx, "ReturningClause", fields["returningClause"], ctes)


def check_assignments(ctx: RowContext, targets: list[Any] | None) -> None:
    """`SET <tenant column> = …` only to the tenant's own key (a no-op: every row an
    UPDATE, ON CONFLICT or MERGE reaches is the tenant's), never in `SET (a, tenant_id)
    = …` or to a subscript/field of it."""
    for node in targets or ():
        item = unwrap(node)
        if item is None or item[0] != "ResTarget":
            raise NotSupported("an assignment of this form is not supported",
                               rule="node-allowlist")
        if item[1].get("name") != ctx.column:
            continue
        value = unwrap(item[1].get("val"))
        if item[1].get("indirection") or value is None or value[0] == "MultiAssignRef":
            raise _tenant_column()
        item[1]["val"] = tenant_value(ctx, item[1]["val"])


def _tenant_column() -> PolicyDenied:
    return PolicyDenied("the tenant column can only hold the tenant's own key",
                        rule="tenant-column")


# --- INSERT ------------------------------------------------------------------------------

def _insert(ctx: RowContext, fields: dict[str, Any], ctes: Ctes) -> None:
    rv = fields["relation"]
    table = rewrite.write_target(ctx, rv).table
    assert table is not None
    names = column_names(ctx, fields.get("cols"))
    query = unwrap(fields.get("selectStmt"))
    if query is None:  # DEFAULT VALUES
        fields["cols"] = [_res_target(ctx.column)]
        fields["selectStmt"] = _values([[rewrite.string_const(ctx.key)]])
    else:
        if query[0] != "SelectStmt":
            raise NotSupported("INSERT of this form is not supported", rule="node-allowlist")
        rewrite.select(ctx, query[1], ctes)  # its reads are confined first
        if not names:
            names = _positional(table, _arity(query[1]))
            fields["cols"] = [_res_target(n) for n in names]
        fields["selectStmt"] = _force_query(ctx, fields, names, fields["selectStmt"])
    _on_conflict(ctx, fields.get("onConflictClause"), ctes, rv)
    returning(ctx, fields, ctes)


def column_names(ctx: RowContext, cols: list[Any] | None) -> list[str]:
    names = []
    for node in cols or ():
        item = unwrap(node)
        if item is None or item[0] != "ResTarget":
            raise NotSupported("a column list of this form is not supported",
                               rule="node-allowlist")
        if item[1].get("name") == ctx.column and item[1].get("indirection"):
            raise _tenant_column()  # tenant_id[1], tenant_id.field
        names.append(item[1].get("name", ""))
    return names


def _res_target(name: str) -> dict[str, Any]:
    return {"ResTarget": {"name": name}}


def _values(rows: list[list[Any]]) -> dict[str, Any]:
    return {"SelectStmt": {"valuesLists": [{"List": {"items": row}} for row in rows],
                           "limitOption": "LIMIT_OPTION_DEFAULT", "op": "SETOP_NONE"}}


def _positional(table: RowTable, arity: int | None) -> list[str]:
    """`INSERT INTO t VALUES (…)`: the first `arity` columns, in catalog order."""
    if arity is None or not table.columns or arity > len(table.columns):
        raise NotSupported(f"INSERT INTO {table.name} without a column list is not supported "
                           f"here; name the columns", rule="row-insert")
    return list(table.columns[:arity])


def _arity(fields: dict[str, Any]) -> int | None:
    """How many columns a query returns, when the tree alone says (no `*`)."""
    if fields.get("op", "SETOP_NONE") != "SETOP_NONE":
        return _arity(fields.get("larg") or {})
    if fields.get("valuesLists"):
        return len(_rows(fields)[0])
    targets = fields.get("targetList") or []
    return None if any(_is_star(t) for t in targets) else len(targets)


def _rows(fields: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for node in fields.get("valuesLists") or ():
        item = unwrap(node)
        if item is None or item[0] != "List":
            raise NotSupported("VALUES of this form is not supported", rule="node-allowlist")
        rows.append(item[1].setdefault("items", []))
    return rows


def _is_star(node: Any) -> bool:
    item = unwrap(node)
    value = unwrap(item[1].get("val")) if item and item[0] == "ResTarget" else None
    if value is None or value[0] != "ColumnRef":
        return False
    last = (value[1].get("fields") or [{}])[-1]
    return "A_Star" in last


def _force_query(ctx: RowContext, fields: dict[str, Any], names: list[str],
                 node: dict[str, Any]) -> dict[str, Any]:
    """The INSERT's source with the tenant column forced; returns the (new) source."""
    query = node["SelectStmt"]
    if ctx.column in names:
        check_source(ctx, query, names.index(ctx.column), len(names))
        return node
    fields["cols"].append(_res_target(ctx.column))
    key = rewrite.string_const(ctx.key)
    if query.get("op", "SETOP_NONE") != "SETOP_NONE":
        # A set operation: `SELECT sub.*, 'key' FROM (<query>) AS sub`.
        sub = {"RangeSubselect": {"subquery": node, "alias": {"aliasname": _INSERT_ALIAS}}}
        return rewrite.simple_select([rewrite.star(_INSERT_ALIAS), {"ResTarget": {"val": key}}],
                                     [sub])
    if query.get("valuesLists"):
        for row in _rows(query):
            row.append(key)
    else:
        query.setdefault("targetList", []).append({"ResTarget": {"val": key}})
    return node


def check_source(ctx: RowContext, query: dict[str, Any], index: int, count: int) -> None:
    """The value the client gives the tenant column must be the key (see tenant_value),
    or copied from the tenant column of the confined tenant table the SELECT reads."""
    if query.get("op", "SETOP_NONE") != "SETOP_NONE":
        check_source(ctx, query.get("larg") or {}, index, count)
        check_source(ctx, query.get("rarg") or {}, index, count)
        return
    if query.get("valuesLists"):
        for row in _rows(query):
            if index >= len(row):
                raise _tenant_column()
            row[index] = tenant_value(ctx, row[index])
        return
    targets = query.get("targetList") or []
    if any(_is_star(t) for t in targets):
        # Only the last position is certain: PostgreSQL requires equal counts.
        if index != count - 1:
            raise _tenant_column()
        index = len(targets) - 1
    item = unwrap(targets[index]) if index < len(targets) else None
    if item is None or item[0] != "ResTarget":
        raise _tenant_column()
    if _copied_from_own_rows(ctx, query, item[1].get("val")):
        return
    item[1]["val"] = tenant_value(ctx, item[1].get("val"), default=False)


def tenant_value(ctx: RowContext, node: Any, *, default: bool = True) -> Any:
    """What to send for a value the client gives the tenant column; refuses (42501)
    anything that is not the key for certain:

    * a literal equal to the key: sent as it is;
    * `DEFAULT` (where the grammar allows it): the key, as if the column were omitted —
      while rewriting only; in the re-check it is refused like anything unproven;
    * a bound parameter (`$1`, `$1::text`): its value is not known here, so the server
      checks it — `guarded` — and the re-check accepts exactly that guard.
    """
    item = unwrap(node)
    if item is not None and item[0] == "SetToDefault" and default and not ctx.verify:
        return rewrite.string_const(ctx.key)
    if _is_parameter(node):
        if ctx.verify:
            raise _tenant_column()
        return guarded(ctx, node)
    if ctx.verify and is_guard(ctx, node):
        return node
    check_key_literal(ctx, node)
    return node


def check_key_literal(ctx: RowContext, node: Any) -> None:
    """A literal equal to the tenant key; anything else (other value, param, expression,
    DEFAULT) is refused."""
    ctx.compared = True
    item = unwrap(node)
    if item is None or item[0] != "A_Const" or item[1].get("isnull") \
            or "boolval" in item[1]:
        raise _tenant_column()
    if str(const_value(item[1])) != ctx.key:
        raise _tenant_column()
    ctx.key_literals.add(item[1].get("location", -1))


# The server-side check of a bound parameter. `concat` is STABLE, so the planner never
# folds the cast at plan time (with a custom plan the parameter is a constant: the first
# WHEN is decided before the second arm is looked at); when evaluated, the cast always
# fails, for every role, with no side effect. The arms keep the parameter's own type.
GUARD_MESSAGE = "tenantgate: the tenant column can only hold the tenant's own key"
_GUARD_SQL = ("SELECT CASE WHEN $1 = 'key' THEN $1 WHEN pg_catalog.concat('"
              + GUARD_MESSAGE.replace("'", "''") + "')::pg_catalog.int4 = 0 THEN NULL END")


@lru_cache(maxsize=1)
def _guard_tree() -> dict[str, Any]:
    target = nodes.parse(_GUARD_SQL)[0].fields["targetList"][0]
    return strip_locations(target["ResTarget"]["val"])


def guarded(ctx: RowContext, value: Any) -> dict[str, Any]:
    """`CASE WHEN <value> = '<key>' THEN <value> WHEN <error> THEN NULL END`; the
    parameter's number is noted for the session's check at Bind."""
    if not ctx.verify:
        ctx.key_params.add(parameter_number(value))
    tree = deepcopy(_guard_tree())
    first = tree["CaseExpr"]["args"][0]["CaseWhen"]
    first["expr"]["A_Expr"]["lexpr"] = strip_locations(value)
    first["expr"]["A_Expr"]["rexpr"] = rewrite.string_const(ctx.key)
    first["result"] = strip_locations(value)
    return tree


def is_guard(ctx: RowContext, node: Any) -> bool:
    """Exactly the guard `guarded` writes, around a parameter (re-check)."""
    item = unwrap(node)
    if item is None or item[0] != "CaseExpr":
        return False
    try:
        value = item[1]["args"][0]["CaseWhen"]["result"]
    except (KeyError, IndexError, TypeError):
        return False
    return _is_parameter(value) and strip_locations(node) == guarded(ctx, value)


def parameter_number(node: Any) -> int:
    """n of `$n` or `$n::type` (a node `_is_parameter` accepted)."""
    item = unwrap(node)
    if item[0] == "TypeCast":
        item = unwrap(item[1].get("arg"))
    return item[1]["number"]


def _is_parameter(node: Any) -> bool:
    """`$n`, or `$n::type` (drivers cast their parameters)."""
    item = unwrap(node)
    if item is not None and item[0] == "TypeCast":
        item = unwrap(item[1].get("arg"))
    return item is not None and item[0] == "ParamRef"


def _copied_from_own_rows(ctx: RowContext, query: dict[str, Any], node: Any) -> bool:
    """`INSERT … SELECT tenant_id … FROM <tenant table> [AS a]`: the value is the tenant
    column of the SELECT's only FROM item, which is (already, or in the re-check still)
    a tenant table filtered by a top-level conjunct of the WHERE, or the confined derived
    table of one — so the key, never NULL. Grouping sets could turn it into NULL, renamed
    columns (`AS a(x, tenant_id)`) into another column."""
    item = unwrap(node)
    items = query.get("fromClause") or []
    if item is None or item[0] != "ColumnRef" or len(items) != 1 or _grouping_sets(query):
        return False
    try:
        names = strings(item[1].get("fields"))
    except NotAName:
        return False
    from proxy.sql import rewrite_check  # it builds on this module

    ref = rewrite_check.own_rows_source(ctx, items[0], query.get("whereClause"))
    return ref is not None and names in ([ctx.column], [ref, ctx.column])


def _grouping_sets(query: dict[str, Any]) -> bool:
    return any((unwrap(g) or ("",))[0] == "GroupingSet" for g in query.get("groupClause") or ())


def _on_conflict(ctx: RowContext, clause: dict[str, Any] | None, ctes: Ctes,
                 rv: dict[str, Any]) -> None:
    if not clause:
        return
    if clause.get("action") == "ONCONFLICT_UPDATE":
        check_assignments(ctx, clause.get("targetList"))
        rewrite.expr(ctx, clause.get("targetList"), ctes)
        rewrite.expr(ctx, clause.get("whereClause"), ctes)
        clause["whereClause"] = rewrite.conjoin(clause.get("whereClause"),
                                                rewrite.tenant_predicate(ctx, rewrite.ref_name(rv)))
    infer = clause.get("infer") or {}
    rewrite.expr(ctx, infer.get("indexElems"), ctes)
    rewrite.expr(ctx, infer.get("whereClause"), ctes)


# --- MERGE -------------------------------------------------------------------------------

def _merge(ctx: RowContext, fields: dict[str, Any], ctes: Ctes) -> None:
    rv = fields["relation"]
    table = rewrite.write_target(ctx, rv).table
    assert table is not None
    # The source is the preserved side of the MERGE's own join: only a derived table
    # keeps another tenant's rows from WHEN NOT MATCHED (no WHERE to filter them).
    (fields["sourceRelation"],), _ = rewrite_filters.level(
        ctx, [fields.get("sourceRelation")], ctes, where=False, taken=(rewrite.ref_name(rv),))
    rewrite.expr(ctx, fields.get("joinCondition"), ctes)
    predicate = rewrite.tenant_predicate(ctx, rewrite.ref_name(rv))
    fields["joinCondition"] = rewrite.conjoin(fields.get("joinCondition"), predicate)
    for node in fields.get("mergeWhenClauses") or ():
        item = unwrap(node)
        if item is None or item[0] != "MergeWhenClause":
            raise NotSupported("MERGE of this form is not supported", rule="node-allowlist")
        _merge_action(ctx, item[1], ctes, table, rewrite.ref_name(rv))
    returning(ctx, fields, ctes)


def _merge_action(ctx: RowContext, clause: dict[str, Any], ctes: Ctes, table: RowTable,
                  target: str) -> None:
    for key in ("condition", "targetList", "values"):
        rewrite.expr(ctx, clause.get(key), ctes)
    if clause.get("matchKind") == "MERGE_WHEN_NOT_MATCHED_BY_SOURCE":
        # Unmatched target rows include every other tenant's: only act on ours.
        clause["condition"] = rewrite.conjoin(clause.get("condition"),
                                              rewrite.tenant_predicate(ctx, target))
    command = clause.get("commandType")
    if command == "CMD_UPDATE":
        check_assignments(ctx, clause.get("targetList"))
    elif command == "CMD_INSERT":
        _merge_insert(ctx, clause, table)


def _merge_insert(ctx: RowContext, clause: dict[str, Any], table: RowTable) -> None:
    names = column_names(ctx, clause.get("targetList"))
    values = clause.get("values")
    key = rewrite.string_const(ctx.key)
    if values is None:  # INSERT DEFAULT VALUES
        clause["targetList"], clause["values"] = [_res_target(ctx.column)], [key]
        return
    if not names:
        names = _positional(table, len(values))
        clause["targetList"] = [_res_target(n) for n in names]
    if ctx.column in names:
        index = names.index(ctx.column)
        values[index] = tenant_value(ctx, values[index])
        return
    clause["targetList"].append(_res_target(ctx.column))
    values.append(key)


# --- COPY --------------------------------------------------------------------------------

def copy(ctx: RowContext, fields: dict[str, Any]) -> None:
    """COPY … TO: a tenant table becomes `SELECT … FROM ONLY s.t`, confined like any read."""
    if fields.get("is_from"):
        raise NotSupported("COPY FROM STDIN is not supported for the row strategy",
                           rule="row-strategy")
    query = unwrap(fields.get("query"))
    if query is not None:
        if query[0] != "SelectStmt":
            raise NotSupported("COPY of a data-modifying statement is not supported for "
                               "the row strategy", rule="row-strategy")
        rewrite.select(ctx, query[1], rewrite.NO_CTES)
        return
    rv = fields.get("relation")
    found = rewrite.resolve(ctx, rv, rewrite.NO_CTES) if rv else None
    if found is None:
        return
    ctx.changed = True
    if found.table is None:
        rv["schemaname"] = found.schema
        return
    columns = [n.get("String", {}).get("sval", "") for n in fields.pop("attlist", None) or ()]
    columns = columns or list(found.table.columns)
    targets = [{"ResTarget": {"val": rewrite.column_ref(c)}} for c in columns] \
        or [rewrite.star()]
    # COPY t TO reads t alone, never its inheritance children: ONLY s.t, then confined
    # like any query.
    source = {"RangeVar": {"schemaname": found.schema, "relname": found.name, "inh": False,
                           "relpersistence": "p"}}
    fields["query"] = rewrite.simple_select(targets, [source])
    rewrite.select(ctx, fields["query"]["SelectStmt"], rewrite.NO_CTES)
    del fields["relation"]


_STATEMENTS = {"InsertStmt": _insert, "UpdateStmt": _update, "DeleteStmt": _delete,
               "MergeStmt": _merge}
