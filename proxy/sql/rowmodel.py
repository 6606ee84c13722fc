"""The row strategy's view of a tenant database: which tables carry tenant rows.

A RowCatalog is built once per database from the server catalog (by the tenancy
layer) and travels in `Scope.row_catalog`, so it is part of every analysis cache key:
it is frozen, hashable (the hash is computed once) and compared by content — share one
object per database so that comparisons stop at identity. Names are in catalog form (folded,
unquoted), as pglast reports them.

Resolution follows PostgreSQL: a qualified name means that schema; an unqualified
name is looked up in `search_path` order (the proxy pins that search path on the
server connection, so both sides resolve alike). pg_catalog is searched first, and
every catalog relation is called pg_*, so such names never resolve to a tenant table
here (the catalog allowlist decides about them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class RowTable:
    """A tenant table: it has the tenant column."""

    schema: str
    name: str
    columns: tuple[str, ...] = ()  # in attnum order (positional INSERT and COPY need it)


@dataclass(frozen=True)
class Resolved:
    """What a relation name resolves to: a tenant table or a shared (read-only) one."""

    schema: str
    name: str
    table: Optional[RowTable]  # None: a shared table


@dataclass(frozen=True)
class RowCatalog:
    tenant_column: str  # e.g. "tenant_id"
    tables: tuple[RowTable, ...] = ()  # partitions and inheritance children included
    shared_tables: tuple[tuple[str, str], ...] = ()  # (schema, name): read by all, written by none
    search_path: tuple[str, ...] = ("public",)  # how unqualified names resolve for row tenants
    _index: dict = field(default=None, init=False, repr=False, compare=False, hash=False)
    _hash: int = field(default=0, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        index: dict[tuple[str, str], Resolved] = {}
        for schema, name in self.shared_tables:
            index[(schema, name)] = Resolved(schema, name, None)
        for table in self.tables:  # a table listed as both is a tenant table
            index[(table.schema, table.name)] = Resolved(table.schema, table.name, table)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_hash", hash((self.tenant_column, self.tables,
                                                self.shared_tables, self.search_path)))

    def __hash__(self) -> int:
        # Part of every analysis cache key (through Scope): hashing hundreds of tables
        # on every lookup would cost more than the lookup saves.
        return self._hash

    def resolve(self, schema: str | None, name: str) -> Resolved | None:
        """The tenant or shared table `schema.name` names, None when it is neither."""
        if schema is not None:
            return self._index.get((schema, name))
        if name.startswith("pg_"):
            return None  # pg_catalog comes first in every search path
        for candidate in self.search_path:
            found = self._index.get((candidate, name))
            if found is not None:
                return found
        return None

    def table(self, schema: str | None, name: str) -> RowTable | None:
        """The tenant table `schema.name` resolves to, else None."""
        found = self.resolve(schema, name)
        return found.table if found is not None else None

    def is_shared(self, schema: str | None, name: str) -> bool:
        """True when `schema.name` resolves to a shared (read-only) table."""
        found = self.resolve(schema, name)
        return found is not None and found.table is None
