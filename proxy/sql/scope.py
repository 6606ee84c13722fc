"""What statement analysis needs to know about a session: its reach and its rules.

A Scope is built once per tenant (by `proxy.tenancy.strategy`) and is part of every
analysis cache key, so it must stay small, frozen and hashable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Scope:
    strategy: str  # database | schema | row | bypass
    isolation_level: str = "strict"  # strict | standard
    pool_mode: str = "transaction"  # transaction | session
    schemas: tuple[str, ...] = ()  # schema strategy: the tenant's own schemas (catalog form)
    shared_schemas: tuple[str, ...] = ()  # readable by every tenant, never writable by one
    # Schema strategy: the relations of the shared schemas, from the catalog (a
    # proxy.sql.sharedmodel.SharedCatalog; views there are refused). None: not a schema
    # tenant (its sessions swap in newer catalogs as the proxy loads them).
    shared_catalog: object | None = None
    # Settings the proxy pins on the server connection, as (name, value) in catalog form,
    # e.g. (("search_path", "globex, common"), ("role", "globex")). The analysis re-applies
    # them after statements that would reset them (RESET ALL).
    pinned_settings: tuple[tuple[str, str], ...] = ()
    row_column: str | None = None  # row strategy: the tenant column
    tenant_key: str | None = None  # row strategy: this tenant's value of that column
    row_enforce: str = "both"  # row strategy: rls | rewrite | both
    row_prepare: bool = True  # row strategy: rewrites of numbers-only shapes go prepared
    # Row strategy: the tenant and shared tables of the tenant's database, from the
    # catalog (a proxy.sql.rowmodel.RowCatalog; hashable, compared by content).
    row_catalog: object | None = None
    # The hash of the fields, computed once. The analysis cache keys its entries with this
    # int, not with the Scope (hashing the Scope is a Python call, twice per statement),
    # and checks on a hit that the entry's scope is this one.
    hash_value: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = tuple(getattr(self, f.name) for f in fields(self) if f.compare)
        object.__setattr__(self, "hash_value", hash(values))

    def __hash__(self) -> int:
        return self.hash_value


@dataclass(frozen=True)
class SettingChange:
    """A session-level SET or RESET of a tracked setting that the analysis allowed."""

    name: str  # lower case, as PostgreSQL folds it
    value: str | None  # None: RESET (back to the connection's default)
    local: bool = False  # SET LOCAL: lasts until the end of the transaction only


@dataclass(frozen=True)
class TransactionControl:
    """BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE or ROLLBACK TO, in statement order with
    the SettingChanges: they decide whether the SETs around them last (PostgreSQL undoes
    a SET with the transaction or savepoint that rolls back)."""

    # begin | commit | rollback | savepoint | release | rollback_to, or deallocate_all
    # (DEALLOCATE ALL: not transactional, but its completion changes what the session
    # knows is prepared, so it travels with these events)
    kind: str
    savepoint: str | None = None
    chain: bool = False  # COMMIT/ROLLBACK AND CHAIN: a new transaction block starts at once


# DEALLOCATE ALL in transaction pooling: forwarded as it is; when it completes the session
# forgets the client's statements and the server connection's (proxy.txsettings).
DEALLOCATE_ALL = TransactionControl("deallocate_all")
