"""What a tenant's session needs from the backend: where it runs and how to put it there.

`plan_session` turns (login, tenant) into a `SessionPlan` (DESIGN.md section 4): the
cluster and database to lease from, the SQL that puts a freshly reset server connection
into the tenant's state, a key telling which connections are already in that state, and
the `Scope` statement analysis works in. Names are quoted as PostgreSQL's quote_ident and
quote_literal do, so the setup SQL means exactly the configured (catalog-form) names.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS

from proxy.config import Config, Tenant, User
from proxy.sql.scope import Scope

TENANT_SETTING = "tenantgate.tenant"  # the setting RLS policies read (row strategy)

_SAFE_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_QUOTED_KEYWORDS = frozenset(RESERVED_KEYWORDS | COL_NAME_KEYWORDS | TYPE_FUNC_NAME_KEYWORDS)


@dataclass(frozen=True)
class SessionPlan:
    tenant: str | None  # None for a bypass login
    strategy: str  # database | schema | row | bypass
    cluster: str
    database: str
    setup_sql: tuple[str, ...]  # run on a freshly reset server connection to reach this state
    context_key: tuple  # equal keys ⇒ a server connection already in that state needs no setup
    scope: Scope  # for proxy.sql analysis


_PLANS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def interned(plan: SessionPlan) -> SessionPlan:
    """One object per distinct plan: the sessions of a tenant share it, so the analysis
    cache (keyed by scope) and the pool's affinity check (context key) find theirs by
    identity instead of comparing every field on every query."""
    return _PLANS.setdefault(plan, plan)


def quote_ident(name: str) -> str:
    """PostgreSQL's quote_ident: bare when it reads back as the same name, else "quoted"."""
    if _SAFE_IDENTIFIER.fullmatch(name) and name not in _QUOTED_KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """PostgreSQL's quote_literal: correct whatever standard_conforming_strings says."""
    if "\x00" in value:
        raise ValueError("a literal cannot contain NUL")
    quoted = "'" + value.replace("'", "''") + "'"
    if "\\" in value:
        return "E" + quoted.replace("\\", "\\\\")
    return quoted


def _scope(cfg: Config, strategy: str, **fields: object) -> Scope:
    return Scope(strategy=strategy, isolation_level=cfg.isolation_level,
                 pool_mode=cfg.pool_mode, **fields)


def _role_setup(tenant: Tenant) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    if tenant.role is None:
        return (), ()
    return (f"SET ROLE {quote_ident(tenant.role)}",), (("role", tenant.role),)


def _database_plan(cfg: Config, tenant: Tenant) -> tuple[tuple[str, ...], Scope]:
    return (), _scope(cfg, "database")


def _schema_plan(cfg: Config, tenant: Tenant,
                 shared_catalog: object | None = None) -> tuple[tuple[str, ...], Scope]:
    assert tenant.schema is not None
    search_path = ", ".join(quote_ident(name) for name in (tenant.schema, *cfg.shared_schemas))
    role_sql, role_pin = _role_setup(tenant)
    scope = _scope(cfg, "schema", schemas=(tenant.schema,), shared_schemas=cfg.shared_schemas,
                   shared_catalog=shared_catalog,
                   pinned_settings=(("search_path", search_path), *role_pin))
    return (f"SET search_path TO {search_path}", *role_sql), scope


def _row_plan(cfg: Config, tenant: Tenant,
              row_catalog: object | None = None) -> tuple[tuple[str, ...], Scope]:
    """Row tenants: the tenant setting for RLS, and a pinned search path so that names
    resolve on the server the way the rewriter resolves them."""
    assert tenant.key is not None
    set_tenant = (f"SELECT pg_catalog.set_config({quote_literal(TENANT_SETTING)}, "
                  f"{quote_literal(tenant.key)}, false)")
    schemas = getattr(row_catalog, "search_path", None) or ("public",)
    search_path = ", ".join(quote_ident(name) for name in schemas)
    role_sql, role_pin = _role_setup(tenant)
    scope = _scope(cfg, "row", row_column=cfg.row.column, tenant_key=tenant.key,
                   row_enforce=cfg.row.enforce, row_prepare=cfg.row.prepare,
                   row_catalog=row_catalog,
                   pinned_settings=((TENANT_SETTING, tenant.key), ("search_path", search_path),
                                    *role_pin))
    return (set_tenant, f"SET search_path TO {search_path}", *role_sql), scope




def _bypass_plan(cfg: Config, user: User, startup_database: str) -> SessionPlan:
    cluster = user.cluster or next(iter(cfg.clusters))
    return SessionPlan(tenant=None, strategy="bypass", cluster=cluster,
                       database=startup_database or user.name, setup_sql=(),
                       context_key=("bypass", None, ()), scope=_scope(cfg, "bypass"))


def plan_session(cfg: Config, user: User, tenant: Tenant | None,
                 startup_database: str, row_catalog: object | None = None,
                 shared_catalog: object | None = None) -> SessionPlan:
    """The plan for a login acting for `tenant` (None only for a bypass login).

    Row tenants need the catalog of their database's tenant tables (`row_catalog`).
    """
    if tenant is None or user.bypass:
        if tenant is not None or not user.bypass:
            raise ValueError(f"login {user.name!r}: a tenant is needed unless the login is bypass")
        return interned(_bypass_plan(cfg, user, startup_database))
    if tenant.strategy == "row":
        setup_sql, scope = _row_plan(cfg, tenant, row_catalog)
    elif tenant.strategy == "schema":
        setup_sql, scope = _schema_plan(cfg, tenant, shared_catalog)
    else:
        setup_sql, scope = _database_plan(cfg, tenant)
    return interned(SessionPlan(tenant=tenant.name, strategy=tenant.strategy,
                                cluster=tenant.cluster, database=tenant.database,
                                setup_sql=setup_sql, scope=scope,
                                context_key=(tenant.strategy, tenant.name, setup_sql)))
