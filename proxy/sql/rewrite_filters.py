"""Row strategy, `rewrite` enforcement: confine the tenant tables of one query level's FROM
list, by a filter where one is certainly right, else by a derived table.

A query level is a SELECT's FROM list, the FROM of an UPDATE, the USING of a DELETE or the
source of a MERGE. A tenant table read there stays a plain, schema-qualified reference,
and the filter `<refname>.<tenant column> = '<key>'` is AND-ed (as a tree, never as text)

* into the level's WHERE when no outer join of the FROM tree can null-extend the table:
  every row the WHERE keeps was built from the tenant's rows of it, and each row built
  from them is kept — inner joins, and outer joins whose preserved side holds the table,
  give the same rows whether the table is filtered before them or their result after;
* into the ON of the nearest LEFT or RIGHT join whose nullable side holds the table:
  another tenant's row never matches, and a row of the preserved side that matches
  nothing else comes back null-extended — that join over the tenant's rows alone
  (THREATS 29). Between the table and that join there are only inner joins and
  preserved sides, so the filter commutes with them as above.

The server sees the table itself: system columns (`ctid`, `xmin`, `tableoid`), GROUP BY
the primary key with other columns of the table selected (functional dependency, as
Django's `annotate()` groups), whole-row references of the table's row type, and indexes
serving the filter directly all work as without the proxy.

Where a filter is not certainly right, the table is read through the derived table
`(SELECT * FROM s.t WHERE t.<col> = '<key>') AS <refname>` (rewrite.derived_table),
which keeps every join's meaning but not the table's identity (README: those reads keep
its limits):

* the nearest join with the table on a nullable side is a FULL JOIN (an ON filter would
  remove no row: both sides are preserved), or a NATURAL or USING join (it has no ON);
* a join alias `(a JOIN b ON …) AS j` between the table and the filter's place hides the
  table's name there;
* column aliases (`orders AS o (a, b)`) may have renamed the tenant column;
* its refname is not the only one of its kind at the level, or the level has an item
  whose refname is not known here (a filter must name exactly that table);
* the level has no WHERE (a MERGE source: its rows are the preserved side of the MERGE's
  own join, so unmatched rows of another tenant would reach WHEN NOT MATCHED).

rewrite_check proves this placement again on the re-parsed text, by its own reading.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from proxy.errors import NotSupported
from proxy.sql import rewrite
from proxy.sql.nodes import unwrap
from proxy.sql.rewrite import Ctes, RowContext
from proxy.sql.rowmodel import Resolved

# The refname of a FROM item this module cannot name (an unaliased subquery, XMLTABLE,
# JSON_TABLE, or function other than a plain call): it could be any name, so no filter
# is placed at that level. Not an identifier, so it never equals a table's refname.
UNNAMED = "\x00"
# A FROM-tree position's filters: the list the conjuncts for that WHERE or ON collect
# in, or None where only a derived table is safe.
Place = list | None


def level(ctx: RowContext, items: list[Any], ctes: Ctes, *, where: bool,
          taken: tuple[str, ...] = ()) -> tuple[list[Any], list[Any]]:
    """The FROM items of one query level, confined, and the filters for its WHERE.

    `where`: the level has a WHERE for the filters (False for a MERGE source).
    `taken`: refnames the level has besides its FROM items (the DML target).
    """
    names = refnames(items, taken)
    filters: list[Any] = []
    place = filters if where else None
    return [_item(ctx, node, ctes, place, names) for node in items], filters


def refnames(items: list[Any], taken: tuple[str, ...] = ()) -> Counter[str]:
    """How often each name that refers to a FROM item occurs at one level, counting those
    a join alias hides too (stricter than PostgreSQL, which rejects visible duplicates)."""
    names: Counter[str] = Counter(taken)
    for node in items:
        _count_names(node, names)
    return names


def _count_names(node: Any, names: Counter[str]) -> None:
    kind, fields = unwrap(node) or ("", {})
    alias = (fields.get("alias") or {}).get("aliasname")
    if kind == "RangeVar":
        names[rewrite.ref_name(fields)] += 1
    elif kind == "RangeTableSample":
        _count_names(fields.get("relation"), names)
    elif kind == "JoinExpr":
        for key in ("alias", "join_using_alias"):  # `USING (x) AS j` names the join too
            name = (fields.get(key) or {}).get("aliasname")
            if name:
                names[name] += 1
        _count_names(fields.get("larg"), names)
        _count_names(fields.get("rarg"), names)
    elif alias:
        names[alias] += 1
    else:
        names[_function_name(fields) if kind == "RangeFunction" else UNNAMED] += 1


def _function_name(fields: dict[str, Any]) -> str:
    """An unaliased function in FROM is called after its first function (PostgreSQL's
    FigureColname: the last part of a plain call's name); anything else is UNNAMED."""
    first = unwrap((fields.get("functions") or [None])[0])
    call = unwrap((first[1].get("items") or [None])[0]) if first and first[0] == "List" else None
    if call is None or call[0] != "FuncCall":
        return UNNAMED
    parts = call[1].get("funcname") or []
    name = unwrap(parts[-1]) if parts else None
    return name[1].get("sval", UNNAMED) if name and name[0] == "String" else UNNAMED


def _item(ctx: RowContext, node: Any, ctes: Ctes, place: Place, names: Counter[str]) -> Any:
    """One FROM item under `place`, rewritten; returns its replacement."""
    item = unwrap(node)
    if item is None:
        raise NotSupported("a FROM item of this form is not supported", rule="node-allowlist")
    kind, fields = item
    if kind == "RangeVar":
        return _table(ctx, fields, ctes, node, place, names)
    if kind == "RangeTableSample":
        return _sample(ctx, fields, ctes, node, place, names)
    if kind == "JoinExpr":
        _join(ctx, fields, ctes, place, names)
        return node
    if kind in ("RangeSubselect", "RangeFunction", "RangeTableFunc", "JsonTable"):
        rewrite.children(ctx, kind, fields, ctes)  # a query inside is a level of its own
        return node
    raise NotSupported(f"{kind} in FROM is not supported for the row strategy",
                       rule="node-allowlist")


def _join(ctx: RowContext, fields: dict[str, Any], ctes: Ctes, place: Place,
          names: Counter[str]) -> None:
    own: list[Any] = []  # filters of the tables on this join's nullable side
    left, right = join_places(fields, place, own)
    fields["larg"] = _item(ctx, fields.get("larg"), ctes, left, names)
    fields["rarg"] = _item(ctx, fields.get("rarg"), ctes, right, names)
    rewrite.expr(ctx, fields.get("quals"), ctes)
    if own:
        fields["quals"] = rewrite.conjoin(fields.get("quals"), *own)


def join_places(fields: dict[str, Any], place: Place, own: list[Any]
                ) -> tuple[Place, Place]:
    """Where the filters of the tables on each side of a join go: a preserved side keeps
    the join's own place (`place`), a nullable side gets the join's ON (`own`)."""
    kept = None if fields.get("alias") else place  # the alias hides the names under it
    nullable = own if fields.get("quals") else None  # NATURAL and USING joins have no ON
    jointype = fields.get("jointype")
    if jointype == "JOIN_INNER":
        return kept, kept
    if jointype == "JOIN_LEFT":
        return kept, nullable
    if jointype == "JOIN_RIGHT":
        return nullable, kept
    return None, None  # FULL: both sides are preserved; no other type comes from the parser


def _table(ctx: RowContext, rv: dict[str, Any], ctes: Ctes, node: Any, place: Place,
           names: Counter[str]) -> Any:
    found = rewrite.resolve(ctx, rv, ctes)
    if found is None:
        return node  # a CTE or a catalog
    if _filtered(ctx, found, rv, place, names):
        return node
    return _derived(ctx, found, rv)


def _sample(ctx: RowContext, fields: dict[str, Any], ctes: Ctes, node: Any, place: Place,
            names: Counter[str]) -> Any:
    """`t TABLESAMPLE m(…)`: filtered like `t` (the filter applies to the sampled rows, as
    it would inside the derived table); as a derived table, the sample moves inside."""
    rewrite.expr(ctx, fields.get("args"), ctes)
    rewrite.expr(ctx, fields.get("repeatable"), ctes)
    inner = unwrap(fields.get("relation"))
    if inner is None or inner[0] != "RangeVar":
        raise NotSupported("TABLESAMPLE of this form is not supported", rule="node-allowlist")
    found = rewrite.resolve(ctx, inner[1], ctes)
    if found is None or _filtered(ctx, found, inner[1], place, names):
        return node
    sample = {k: v for k, v in fields.items() if k != "relation"}
    return _derived(ctx, found, inner[1], sample=sample)


def _filtered(ctx: RowContext, found: Resolved, rv: dict[str, Any], place: Place,
              names: Counter[str]) -> bool:
    """Qualify the reference and, for a tenant table that can be, place its filter.
    False: a tenant table that needs the derived table."""
    ctx.changed = True
    ref = rewrite.ref_name(rv)
    if found.table is not None and (place is None or names[ref] != 1 or names[UNNAMED]
                                    or (rv.get("alias") or {}).get("colnames")):
        return False
    rv["schemaname"] = found.schema
    if found.table is not None:
        place.append(rewrite.tenant_predicate(ctx, ref))
    return True


def _derived(ctx: RowContext, found: Resolved, rv: dict[str, Any],
             sample: dict[str, Any] | None = None) -> dict[str, Any]:
    ctx.derived.add((found.schema, found.name))
    return rewrite.derived_table(ctx, found, rv, sample=sample)
