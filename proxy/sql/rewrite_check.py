"""Check rewritten SQL, as parsed again from the text about to be sent (THREATS 4.5).

The rewriter's output is deparsed, parsed again, run through the whole existing policy,
and then through `verify_statement`, which proves on that final tree — not on the tree
the rewriter built, and by its own reading of it (only the counting of refnames at a
level, `rewrite_filters.refnames`, is shared with the rewriter) — that tenant rows are
confined:

* every reference to a tenant table that reads it is either the canonical derived table
  `(SELECT * FROM s.t WHERE t.<col> = '<key>')`, or a schema-qualified reference without
  column aliases that is a FROM item of a query level and is filtered there: the
  filter `<refname>.<col> = '<key>'` is a top-level conjunct (AND) of
  - the ON of the nearest LEFT/RIGHT join whose nullable side holds the item, when
    there is one — then that join has an ON (not NATURAL or USING);
  - else the level's WHERE (a MERGE source has none: its tables are derived tables);
  and no FULL JOIN has the item on a nullable side below that place, no join alias
  between the item and that place hides its name, and its refname is the only one of
  its kind at the level (counting names a join alias hides, the DML target, and any
  item whose name is not known), so the filter names that item and nothing else;
* nothing else names a tenant table;
* every UPDATE/DELETE/MERGE target carries `<target>.<col> = '<key>'` as a top-level
  conjunct of its WHERE / ON (and of every WHEN NOT MATCHED BY SOURCE condition), and
  no assignment writes the tenant column;
* every INSERT (and MERGE INSERT) names the tenant column with the key as a literal,
  a parameter inside the exact guard the rewriter writes, or (INSERT … SELECT) the
  tenant column of the SELECT's only FROM item, a filtered tenant table or a canonical
  derived table; an assignment of the tenant column (a no-op) holds the same.

A filter in the WHERE for an item on the nullable side of a LEFT/RIGHT join would
confine it too (a null-extended row fails the filter), but it turns the join into an
inner join — not what the rewriter writes, so it fails the check like any other form.

Any doubt raises 0A000 rule "rewrite-check"; the statement is then never forwarded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from proxy.errors import NotSupported, ProxyError
from proxy.sql import rewrite, rewrite_dml, rewrite_filters
from proxy.sql.nodes import FIELD_TYPES, const_value, strings, unwrap
from proxy.sql.rewrite import NO_CTES, Ctes, RowContext

_SKIP = frozenset({"LockingClause", "A_Const", "ColumnRef", "ParamRef", "String",
                   "Integer", "Float", "Boolean", "BitString", "A_Star", "TypeName"})
_WRAPPER_FIELDS = frozenset({"targetList", "fromClause", "whereClause", "limitOption", "op"})


class CheckFailed(Exception):
    """The rewritten tree does not confine a tenant-table reference."""


@dataclass(frozen=True)
class _Filter:
    """The condition (a WHERE or an ON) that must hold the filter of the tenant tables at
    one FROM-tree position. A position without one (None) admits derived tables only."""

    condition: Any


def verify_statement(ctx: RowContext, kind: str, fields: dict[str, Any]) -> None:
    """Raise 0A000 "rewrite-check" unless the statement confines every tenant reference."""
    try:
        _statement(ctx, kind, fields)
    except (CheckFailed, ProxyError, LookupError, TypeError, ValueError) as exc:
        raise NotSupported("the statement could not be rewritten safely",
                           rule="rewrite-check", detail=None) from exc


def _statement(ctx: RowContext, kind: str, fields: dict[str, Any]) -> None:
    if kind == "SelectStmt":
        _select(ctx, fields, NO_CTES, top=True)
    elif kind in rewrite.DML_KINDS:
        _dml(ctx, kind, fields, NO_CTES, top=True)
    elif kind == "CopyStmt":
        _copy(ctx, fields)
    elif kind in ("DeclareCursorStmt", "PrepareStmt", "ExplainStmt"):
        query = unwrap(fields.get("query"))
        if query is not None:
            _statement(ctx, query[0], query[1])
        _fields(ctx, kind, fields, NO_CTES, skip=("query",))
    else:
        _node(ctx, kind, fields, NO_CTES)


def _select(ctx: RowContext, fields: dict[str, Any], ctes: Ctes, top: bool = False) -> None:
    ctes = _with(ctx, fields.get("withClause"), ctes, top)
    for key, value in fields.items():
        if key in ("withClause", "lockingClause", "fromClause") or not value:
            continue
        if key in ("larg", "rarg"):
            _select(ctx, value, ctes)
        elif key == "intoClause":
            raise CheckFailed("SELECT INTO")
        else:
            _walk(ctx, value, ctes)
    _level(ctx, fields.get("fromClause") or [], ctes, _Filter(fields.get("whereClause")))


def _with(ctx: RowContext, with_fields: dict[str, Any] | None, ctes: Ctes, top: bool) -> Ctes:
    if not with_fields:
        return ctes
    for visible, kind, query in rewrite.cte_queries(with_fields, ctes):
        if kind == "SelectStmt":
            _select(ctx, query, visible)
        elif kind in rewrite.DML_KINDS and top:
            _dml(ctx, kind, query, visible, top=False)
        else:
            raise CheckFailed(f"{kind} in WITH")
    return ctes | rewrite.cte_names(with_fields)


def _level(ctx: RowContext, items: list[Any], ctes: Ctes, where: _Filter | None,
           taken: tuple[str, ...] = ()) -> Counter[str]:
    """The FROM items of one query level: every tenant table in them is confined. `where`:
    the level's WHERE (None: it has none); `taken`: the DML target's refname. Returns how
    often each refname occurs at the level."""
    names = rewrite_filters.refnames(items, taken)
    reads: list[tuple[str, _Filter]] = []
    for node in items:
        _level_item(ctx, node, ctes, where, reads)
    for ref, place in reads:
        if names[ref] != 1 or names[rewrite_filters.UNNAMED]:
            raise CheckFailed(f"the filter of {ref} may name another FROM item")
        if not _has_conjunct(ctx, place.condition, ref):
            raise CheckFailed(f"{ref} is not filtered where it must be")
    return names


def _level_item(ctx: RowContext, node: Any, ctes: Ctes, place: _Filter | None,
                reads: list[tuple[str, _Filter]]) -> None:
    """One item of a FROM tree; `place`: where the filter of a tenant table here must be.
    Each filtered tenant table is added to `reads` (refname, place)."""
    kind, fields = unwrap(node) or ("", {})
    if kind == "RangeVar":
        _read(ctx, fields, ctes, place, reads)
    elif kind == "RangeTableSample":
        relation = unwrap(fields.get("relation"))
        if relation is None or relation[0] != "RangeVar":
            raise CheckFailed("TABLESAMPLE of this form")
        _read(ctx, relation[1], ctes, place, reads)
        _fields(ctx, kind, fields, ctes, skip=("relation",))
    elif kind == "JoinExpr":
        left, right = _join_places(fields, place)
        _level_item(ctx, fields.get("larg"), ctes, left, reads)
        _level_item(ctx, fields.get("rarg"), ctes, right, reads)
        _walk(ctx, fields.get("quals"), ctes)
    elif kind == "RangeSubselect":
        if not _confined(ctx, fields):
            _fields(ctx, kind, fields, ctes)  # its query is a level of its own
    elif kind in ("RangeFunction", "RangeTableFunc", "JsonTable"):
        _fields(ctx, kind, fields, ctes)
    else:
        raise CheckFailed(f"{kind} in FROM")


def _join_places(fields: dict[str, Any], place: _Filter | None
                 ) -> tuple[_Filter | None, _Filter | None]:
    """Where the filters of each side's tenant tables must be: a preserved side's in the
    join's own place, a nullable side's in the join's ON; none under a FULL JOIN's sides
    (both preserved), a NATURAL or USING join's nullable side (no ON), or, for the join's
    own place, under its alias (which hides the names below).

    Written again here rather than shared with rewrite_filters.join_places on purpose:
    the proof reads the re-parsed tree by its own rules (stricter: NATURAL and USING are
    tested by their flags, an unknown join type fails), so that a slip in the
    rewriter's placement is not also a slip in its check."""
    kept = None if fields.get("alias") else place
    quals = fields.get("quals")
    has_on = quals and not fields.get("isNatural") and not fields.get("usingClause")
    nullable = _Filter(quals) if has_on else None
    jointype = fields.get("jointype")
    if jointype == "JOIN_INNER":
        return kept, kept
    if jointype == "JOIN_LEFT":
        return kept, nullable
    if jointype == "JOIN_RIGHT":
        return nullable, kept
    if jointype == "JOIN_FULL":
        return None, None
    raise CheckFailed(f"join type {jointype}")


def _read(ctx: RowContext, rv: dict[str, Any], ctes: Ctes, place: _Filter | None,
          reads: list[tuple[str, _Filter]]) -> None:
    """A FROM-list relation: a CTE, a catalog, a qualified shared table, or a qualified
    tenant table whose filter must be at `place`."""
    found = rewrite.resolve(ctx, rv, ctes)
    if found is None:
        return
    if rv.get("schemaname") is None:
        raise CheckFailed(f"unqualified relation {found.name}")
    if found.table is None:
        return
    if place is None or (rv.get("alias") or {}).get("colnames"):
        raise CheckFailed(f"unconfined relation {found.name}")
    reads.append((rewrite.ref_name(rv), place))


def _confined(ctx: RowContext, fields: dict[str, Any]) -> bool:
    """Is this derived table the canonical confinement of one tenant table?"""
    sub = unwrap(fields.get("subquery"))
    if sub is None or sub[0] != "SelectStmt" or set(sub[1]) - _WRAPPER_FIELDS:
        return False
    query = sub[1]
    if query.get("op") != "SETOP_NONE" or len(query.get("targetList") or ()) != 1 \
            or not _is_plain_star(query["targetList"][0]) \
            or query.get("limitOption", "LIMIT_OPTION_DEFAULT") != "LIMIT_OPTION_DEFAULT":
        return False
    items = query.get("fromClause") or []
    item = unwrap(items[0]) if len(items) == 1 else None
    if item is not None and item[0] == "RangeTableSample":
        _fields(ctx, "RangeTableSample", item[1], NO_CTES, skip=("relation",))
        item = unwrap(item[1].get("relation"))
    if item is None or item[0] != "RangeVar" or item[1].get("alias") \
            or not item[1].get("schemaname"):
        return False
    found = rewrite.resolve(ctx, item[1], NO_CTES)
    if found is None or found.table is None:
        return False
    return _is_predicate(ctx, query.get("whereClause"), item[1]["relname"])


def own_rows_source(ctx: RowContext, node: Any, where: Any) -> str | None:
    """The refname of the only FROM item of an INSERT's SELECT when each of its rows is
    one of the tenant's own (the rewriter's and the re-check's INSERT … SELECT proof):
    a tenant table (or its TABLESAMPLE), qualified, without column aliases, filtered by a
    top-level conjunct of `where`; or a canonical derived table, not LATERAL, with an
    alias and no column aliases. None otherwise; never raises."""
    try:
        kind, fields = unwrap(node) or ("", {})
        if kind == "RangeTableSample":
            kind, fields = unwrap(fields.get("relation")) or ("", {})
        alias = fields.get("alias") or {}
        if alias.get("colnames"):
            return None
        if kind == "RangeSubselect":
            confined = not fields.get("lateral") and _confined(ctx, fields)
            return alias.get("aliasname") if confined else None
        if kind != "RangeVar" or not fields.get("schemaname"):
            return None
        found = rewrite.resolve(ctx, fields, NO_CTES)
        ref = rewrite.ref_name(fields)
        if found is None or found.table is None or not _has_conjunct(ctx, where, ref):
            return None
        return ref
    except (CheckFailed, ProxyError, LookupError, TypeError, ValueError):
        return None


def _is_plain_star(node: Any) -> bool:
    item = unwrap(node)
    if item is None or item[0] != "ResTarget" or set(item[1]) - {"val", "location"}:
        return False
    value = unwrap(item[1].get("val"))
    return value is not None and value[0] == "ColumnRef" \
        and [unwrap(f)[0] for f in value[1].get("fields") or ()] == ["A_Star"]


def _is_predicate(ctx: RowContext, node: Any, relation: str) -> bool:
    """`<relation>.<tenant column> = '<key>'`, exactly."""
    item = unwrap(node)
    if item is None or item[0] != "A_Expr" or item[1].get("kind") != "AEXPR_OP":
        return False
    left, right = unwrap(item[1].get("lexpr")), unwrap(item[1].get("rexpr"))
    return (strings(item[1].get("name")) == ["="]
            and left is not None and left[0] == "ColumnRef"
            and strings(left[1].get("fields")) == [relation, ctx.column]
            and right is not None and right[0] == "A_Const" and "sval" in right[1]
            and const_value(right[1]) == ctx.key)


def _has_conjunct(ctx: RowContext, node: Any, relation: str) -> bool:
    """Is the tenant predicate a top-level conjunct of this condition?"""
    if _is_predicate(ctx, node, relation):
        return True
    item = unwrap(node)
    return (item is not None and item[0] == "BoolExpr"
            and item[1].get("boolop") == "AND_EXPR"
            and any(_has_conjunct(ctx, arg, relation) for arg in item[1].get("args") or ()))


def _target(ctx: RowContext, rv: dict[str, Any]) -> Any:
    found = rewrite.resolve(ctx, rv, NO_CTES)
    if found is None or found.table is None or not rv.get("schemaname"):
        raise CheckFailed("target")
    return found.table


def _dml(ctx: RowContext, kind: str, fields: dict[str, Any], ctes: Ctes, top: bool) -> None:
    ctes = _with(ctx, fields.get("withClause"), ctes, top)
    rv = fields["relation"]
    table = _target(ctx, rv)
    ref = rewrite.ref_name(rv)
    if kind in ("UpdateStmt", "DeleteStmt"):
        # UPDATE … FROM / DELETE … USING: one level with the target, filtered in the WHERE
        items = [*(fields.get("fromClause") or ()), *(fields.get("usingClause") or ())]
        where = fields.get("whereClause")
        if _level(ctx, items, ctes, _Filter(where), taken=(ref,))[ref] != 1:
            raise CheckFailed("the target's filter may name another FROM item")
        rewrite_dml.check_assignments(ctx, fields.get("targetList"))
        if not _has_conjunct(ctx, where, ref):
            raise CheckFailed("target predicate")
    elif kind == "InsertStmt":
        _insert(ctx, fields, ctes, ref)
    else:
        _merge(ctx, fields, ctes, ref, table)
    _fields(ctx, kind, fields, ctes, skip=("withClause", "relation", "fromClause",
                                           "usingClause", "sourceRelation", "selectStmt",
                                           "cols"))


def _insert(ctx: RowContext, fields: dict[str, Any], ctes: Ctes, ref: str) -> None:
    names = rewrite_dml.column_names(ctx, fields.get("cols"))
    query = unwrap(fields.get("selectStmt"))
    if ctx.column not in names or query is None or query[0] != "SelectStmt":
        raise CheckFailed("insert without the tenant column")
    rewrite_dml.check_source(ctx, query[1], names.index(ctx.column), len(names))
    _select(ctx, query[1], ctes)
    clause = fields.get("onConflictClause") or {}
    if clause.get("action") == "ONCONFLICT_UPDATE":
        rewrite_dml.check_assignments(ctx, clause.get("targetList"))
        if not _has_conjunct(ctx, clause.get("whereClause"), ref):
            raise CheckFailed("on conflict predicate")


def _merge(ctx: RowContext, fields: dict[str, Any], ctes: Ctes, ref: str, table: Any) -> None:
    # The source is a level without a WHERE: a tenant table there is a derived table,
    # unless it is on the nullable side of a join inside the source.
    if _level(ctx, [fields.get("sourceRelation")], ctes, None, taken=(ref,))[ref] != 1:
        raise CheckFailed("the target's filter may name another FROM item")
    if not _has_conjunct(ctx, fields.get("joinCondition"), ref):
        raise CheckFailed("merge join predicate")
    for node in fields.get("mergeWhenClauses") or ():
        clause = unwrap(node)[1]
        if clause.get("matchKind") == "MERGE_WHEN_NOT_MATCHED_BY_SOURCE" \
                and not _has_conjunct(ctx, clause.get("condition"), ref):
            raise CheckFailed("merge by-source predicate")
        if clause.get("commandType") == "CMD_UPDATE":
            rewrite_dml.check_assignments(ctx, clause.get("targetList"))
        elif clause.get("commandType") == "CMD_INSERT":
            names = rewrite_dml.column_names(ctx, clause.get("targetList"))
            values = clause.get("values") or []
            if ctx.column not in names or len(values) != len(names):
                raise CheckFailed("merge insert without the tenant column")
            rewrite_dml.tenant_value(ctx, values[names.index(ctx.column)])


def _copy(ctx: RowContext, fields: dict[str, Any]) -> None:
    if fields.get("is_from"):
        raise CheckFailed("COPY FROM")
    if fields.get("relation"):
        _read(ctx, fields["relation"], NO_CTES, None, [])  # a shared table only
    query = unwrap(fields.get("query"))
    if query is not None:
        if query[0] != "SelectStmt":
            raise CheckFailed("COPY of a data-modifying statement")
        _select(ctx, query[1], NO_CTES)


def _walk(ctx: RowContext, node: Any, ctes: Ctes) -> None:
    """A wrapped node or a list of them: queries inside are checked, a relation fails."""
    if isinstance(node, list):
        for item in node:
            _walk(ctx, item, ctes)
        return
    if not isinstance(node, dict) or not node:
        return
    item = unwrap(node)
    if item is None:
        raise CheckFailed("tree shape")
    _node(ctx, item[0], item[1], ctes)


def _node(ctx: RowContext, kind: str, fields: dict[str, Any], ctes: Ctes) -> None:
    if kind in _SKIP:
        return
    if kind == "SelectStmt":
        _select(ctx, fields, ctes)
    elif kind in ("RangeVar", "IntoClause", "WithClause") or kind in rewrite.DML_KINDS:
        raise CheckFailed(f"{kind} outside a checked position")
    else:
        _fields(ctx, kind, fields, ctes)


def _fields(ctx: RowContext, kind: str, fields: dict[str, Any], ctes: Ctes,
            skip: tuple[str, ...] = ()) -> None:
    """The children of a node of type `kind`, but not those named in `skip`."""
    typed = FIELD_TYPES.get(kind, {})
    for key, value in fields.items():
        if key in skip:
            continue
        if key in typed:
            if isinstance(value, dict) and value:
                _node(ctx, typed[key], value, ctes)
        else:
            _walk(ctx, value, ctes)
