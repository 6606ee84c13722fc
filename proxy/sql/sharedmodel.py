"""The schema strategy's view of the shared schemas: which relations there are opaque.

Schema tenants may read the shared schemas (`shared_schemas` in the config). The
proxy checks every name a statement uses, but a view runs its own query with its
owner's rights, so `common.some_view` may read another tenant's schema without naming
it (THREATS 31); a materialized view holds a copy of such rows, a foreign table reads
whatever its server connects to, and a table returns the rows of its partitions and
child tables, wherever they are, checking only its own privileges. Those relations are
*opaque*: a schema tenant may not read them, qualified or not (rule `shared-view`,
42501). The other tables and the sequences of the shared schemas stay readable.

A SharedCatalog is built per shared database from the server catalog by the tenancy
layer (`relations_query` gives the SQL, `SharedCatalog.from_rows` reads its rows) and
travels in `Scope.shared_catalog`, so it is part of every analysis cache key: it is
frozen, hashable (the hash is computed once) and compared by content; share one object
per database so that comparisons stop at identity.

A relation created after the catalog was loaded is unknown here and allowed through
until the next catalog the session uses (proxy.tenancy.sharedcatalogs: loaded at each
login wave and again every few seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pglast import ast, stream

# relkind → what a refusal calls it. Everything else the query returns is readable.
# "x" is not a relkind: the query reports it for a table with a partition or child table
# (at any depth) outside the shared schemas, whose rows a read of the parent returns
# with the parent's privileges only.
OPAQUE_KINDS = {"v": "view", "m": "materialized view", "f": "foreign table",
                "x": "table with partitions or child tables in other schemas"}
_LISTED_KINDS = "{r,p,S,v,m,f}"  # tables, sequences and the opaque relkinds


@dataclass(frozen=True)
class SharedCatalog:
    # (schema, name, relkind) of every listed relation of the shared schemas
    relations: tuple[tuple[str, str, str], ...] = ()
    _kinds: dict = field(default=None, init=False, repr=False, compare=False, hash=False)
    _hash: int = field(default=0, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        kinds = {(schema, name): kind for schema, name, kind in self.relations}
        object.__setattr__(self, "_kinds", kinds)
        object.__setattr__(self, "_hash", hash(self.relations))

    def __hash__(self) -> int:
        # Part of every analysis cache key (through Scope): hash the relations once.
        return self._hash

    @classmethod
    def from_rows(cls, rows: list[list[str | None]]) -> SharedCatalog:
        """The catalog from the rows of `relations_query` (nspname, relname, relkind)."""
        found = sorted((schema, name, kind) for schema, name, kind in rows
                       if schema is not None and name is not None and kind is not None)
        return cls(tuple(found))

    def opaque(self, schema: str, name: str) -> str | None:
        """What `schema.name` is when a tenant may not read it ("view", …), else None."""
        return OPAQUE_KINDS.get(self._kinds.get((schema, name), ""))

    def resolve(self, schemas: tuple[str, ...], name: str) -> str | None:
        """The first of `schemas` (search path order) that holds a relation `name`."""
        for schema in schemas:
            if (schema, name) in self._kinds:
                return schema
        return None


def relations_query(schemas: tuple[str, ...]) -> str:
    """SQL listing (nspname, relname, kind) of the tables, sequences, views, materialized
    views and foreign tables in `schemas` (catalog-form names); kind is the relkind, or
    "x" for a table with a descendant outside `schemas`.

    Every object and operator is schema-qualified (THREATS 62); the schema names are
    string literals deparsed by pglast, which relies on standard_conforming_strings=on
    (pinned on every server connection).
    """
    names = stream.RawStream()(ast.TypeCast(
        arg=ast.A_ArrayExpr(elements=tuple(ast.A_Const(val=ast.String(sval=schema))
                                           for schema in schemas)),
        typeName=ast.TypeName(names=(ast.String(sval="pg_catalog"), ast.String(sval="name")),
                              arrayBounds=(ast.Integer(ival=-1),))))
    eq = "OPERATOR(pg_catalog.=)"
    return f"""WITH RECURSIVE shared AS (
    SELECT c.oid, n.nspname, c.relname, c.relkind
    FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS n ON n.oid {eq} c.relnamespace
    WHERE n.nspname {eq} ANY ({names})
      AND c.relkind {eq} ANY ('{_LISTED_KINDS}'::pg_catalog."char"[])
), descendant (root, child) AS (
    SELECT i.inhparent, i.inhrelid FROM pg_catalog.pg_inherits AS i
    WHERE i.inhparent {eq} ANY (SELECT oid FROM shared)
    UNION
    SELECT d.root, i.inhrelid FROM descendant AS d
    JOIN pg_catalog.pg_inherits AS i ON i.inhparent {eq} d.child
)
SELECT s.nspname, s.relname,
    CASE WHEN EXISTS (
        SELECT FROM descendant AS d
        JOIN pg_catalog.pg_class AS c ON c.oid {eq} d.child
        JOIN pg_catalog.pg_namespace AS n ON n.oid {eq} c.relnamespace
        WHERE d.root {eq} s.oid AND NOT n.nspname {eq} ANY ({names}))
    THEN 'x' ELSE s.relkind::pg_catalog.text END
FROM shared AS s"""
