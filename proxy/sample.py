"""The sample tenants shared by `tenantgate demo` and the test suite.

`install_sample(pg)` builds, on a fresh LocalPostgres: the backend login role `tenantgate`,
database-strategy tenants `acme` and `umbrella` (a database each), schema-strategy tenants
`globex` and `hooli` (a schema and a NOLOGIN role each in database `shared`, plus a read-only
shared schema `common`). `SampleInfo.config_yaml()` writes the matching tenantgate config.

`install_row_sample(pg, info)` adds the row-strategy tenants `initech` and `vandelay`: database
`rowdb` with tenant tables `public.orders` and `public.customers` (column `tenant_id`, tables
owned by postgres) under the RLS policies and grants of `tenantgate rls-sql`, and the shared
table `public.countries`; `config_yaml(..., row_tenants=True)` adds them to the config.

`tenantgate` is NOINHERIT: membership in the tenant roles lets it `SET ROLE` to one of them, but
without that it cannot read any tenant schema, so one missed path does not expose every tenant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.localpg import LocalPostgres
    from proxy.sql.rowmodel import RowCatalog
    from proxy.tenancy.rls_sql import TableFacts

ITEMS_DDL = "(id serial PRIMARY KEY, name text NOT NULL, secret text)"
COUNTRIES = (("DE", "Germany"), ("FR", "France"), ("JP", "Japan"), ("US", "United States"))


def canary(tenant: str) -> str:
    """The secret planted in one row of each tenant's items table."""
    return f"CANARY-{tenant}"


def sample_items(tenant: str) -> list[tuple[int, str, str | None]]:
    """The (id, name, secret) rows each tenant's items table starts with."""
    return [(1, f"{tenant}-alpha", None),
            (2, f"{tenant}-beta", f"{tenant}-internal"),
            (3, f"{tenant}-vault", canary(tenant))]


def sample_orders(tenant: str) -> list[tuple[str, int, str | None]]:
    """The (item, amount, secret) rows of a row tenant in rowdb's public.orders."""
    return [(f"{tenant}-stapler", 3, None),
            (f"{tenant}-report", 1, f"{tenant}-internal"),
            (f"{tenant}-vault", 99, canary(tenant))]


def sample_customers(tenant: str) -> list[tuple[str, str]]:
    """The (name, email) rows of a row tenant in rowdb's public.customers; every tenant has
    a customer with the same email (unique per tenant, not across tenants)."""
    return [(f"{tenant.capitalize()} Owner", f"owner@{tenant}.example"),
            ("Shared Contact", "contact@example.com")]


def _lit(value: str | int | None) -> str:
    if isinstance(value, int):
        return str(value)
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _items_sql(qualified: str, tenant: str) -> str:
    rows = ", ".join(f"({_lit(n)}, {_lit(s)})" for _, n, s in sample_items(tenant))
    return (f"CREATE TABLE {qualified} {ITEMS_DDL};\n"
            f"INSERT INTO {qualified} (name, secret) VALUES {rows};\n")


@dataclass(frozen=True)
class SampleInfo:
    """Names and secrets of the sample; the defaults are what `install_sample` creates."""

    backend_user: str = "tenantgate"
    backend_password: str = "tenantgate-secret"
    database_tenants: tuple[str, ...] = ("acme", "umbrella")
    schema_tenants: tuple[str, ...] = ("globex", "hooli")
    shared_database: str = "shared"
    shared_schema: str = "common"
    row_database: str = "rowdb"  # install_row_sample
    row_tenant_names: tuple[str, ...] = ("initech", "vandelay")  # key = name
    logins: dict[str, str] = field(default_factory=lambda: {
        "app": "app-secret",               # any tenant (tenants: ["*"]), SCRAM
        "acme_reporting": "reporting-secret",  # bound to acme, md5
        "limited": "limited-secret",       # tenants: [acme]
        "migrator": "migrator-secret",     # bypass: true
    })

    @property
    def tenants(self) -> tuple[str, ...]:
        return self.database_tenants + self.schema_tenants

    def password(self, login: str) -> str:
        return self.logins[login]

    def config_yaml(self, pg: LocalPostgres, listen_port: int, pool_mode: str = "transaction",
                    pool_size: int = 4, extra: str = "", extra_tenants: str = "",
                    row_tenants: bool = False, row_enforce: str = "both",
                    row_prepare: bool = True, isolation_level: str = "strict") -> str:
        """A complete tenantgate config (DESIGN.md section 2) for this sample on `pg`.

        `extra` is inserted as top-level YAML before `tenants:`; `extra_tenants` holds more
        `name: {…}` lines for the `tenants:` mapping (indented here). `row_tenants` adds the
        `row:` section and the row tenants of `install_row_sample` (which must have run),
        with `row.enforce: row_enforce` (and `row.prepare: false` unless `row_prepare`).
        """
        q = json.dumps  # a JSON string is a valid YAML double-quoted scalar
        tenant_lines = [f"  {t}: {{strategy: database, cluster: main, database: {t}}}"
                        for t in self.database_tenants]
        tenant_lines += [f"  {t}: {{strategy: schema, cluster: main, database: "
                         f"{self.shared_database}, schema: {t}, role: {t}}}"
                         for t in self.schema_tenants]
        row_section: list[str] = []
        if row_tenants:
            tenant_lines += [f"  {t}: {{strategy: row, cluster: main, database: "
                             f"{self.row_database}, key: {q(t)}}}" for t in self.row_tenant_names]
            row_section = ["row:", "  column: tenant_id", "  shared_tables: [public.countries]",
                           f"  enforce: {row_enforce}",
                           *([] if row_prepare else ["  prepare: false"]), ""]
        tenant_lines += [f"  {line}" for line in extra_tenants.splitlines() if line.strip()]
        return "\n".join([
            "# tenantgate config for the sample tenants (generated by proxy.sample)",
            f"listen: {q(f'127.0.0.1:{listen_port}')}",
            f"pool_mode: {pool_mode}",
            f"isolation_level: {isolation_level}",
            "",
            "clusters:",
            "  main:",
            f"    hosts: [{q(f'{pg.host}:{pg.port}')}]",
            f"    user: {self.backend_user}",
            f"    password: {q(self.backend_password)}",
            f"    pool_size: {pool_size}",
            "    tls: disable",
            "",
            f"shared_schemas: [{self.shared_schema}]",
            "",
            "users:",
            "  app:",
            f"    password: {q(self.logins['app'])}",
            '    tenants: ["*"]',
            "  acme_reporting:",
            f"    password: {q(self.logins['acme_reporting'])}",
            "    auth: md5",
            "    tenant: acme",
            "  limited:",
            f"    password: {q(self.logins['limited'])}",
            "    tenants: [acme]",
            "  migrator:",
            f"    password: {q(self.logins['migrator'])}",
            "    bypass: true",
            "    cluster: main",
            "",
            "resolve: [user_suffix, login, database, options]",
            'user_separator: "."',
            "unknown_tenant: reject",
            "",
            *row_section,
            *([extra.rstrip("\n"), ""] if extra.strip() else []),
            "tenants:",
            *tenant_lines,
            "",
        ])


def create_schema_tenant(pg: LocalPostgres, tenant: str, *, database: str = "shared",
                         backend_user: str = "tenantgate", shared_schema: str = "common") -> None:
    """A schema tenant: NOLOGIN role `tenant` (granted to the backend user), schema `tenant`
    owned by postgres with USAGE for that role only, and its items table with the canary."""
    pg.run_sql(f"CREATE ROLE {tenant} NOLOGIN; GRANT {tenant} TO {backend_user};")
    pg.run_sql(
        f"CREATE SCHEMA {tenant} AUTHORIZATION postgres;\n"
        f"REVOKE ALL ON SCHEMA {tenant} FROM PUBLIC;\n"
        f"GRANT USAGE ON SCHEMA {tenant} TO {tenant};\n"
        + _items_sql(f"{tenant}.items", tenant)
        + f"GRANT SELECT, INSERT, UPDATE, DELETE ON {tenant}.items TO {tenant};\n"
        f"GRANT USAGE, SELECT ON SEQUENCE {tenant}.items_id_seq TO {tenant};\n"
        f"GRANT USAGE ON SCHEMA {shared_schema} TO {tenant};\n"
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {shared_schema} TO {tenant};\n",
        dbname=database)


def drop_schema_tenant(pg: LocalPostgres, tenant: str, *, database: str = "shared") -> None:
    """Undo `create_schema_tenant` (for tests that add a tenant)."""
    pg.run_sql(f"DROP SCHEMA IF EXISTS {tenant} CASCADE;\n"
               f"DROP OWNED BY {tenant};", dbname=database)
    pg.run_sql(f"DROP ROLE IF EXISTS {tenant};")


def _create_database_tenant(pg: LocalPostgres, tenant: str, backend_user: str) -> None:
    pg.run_sql(f"CREATE DATABASE {tenant};\n"
               f"REVOKE CONNECT, TEMPORARY ON DATABASE {tenant} FROM PUBLIC;\n"
               f"GRANT CONNECT ON DATABASE {tenant} TO {backend_user};")
    pg.run_sql(_items_sql("public.items", tenant)
               + f"ALTER TABLE public.items OWNER TO {backend_user};", dbname=tenant)


def _create_shared_database(pg: LocalPostgres, info: SampleInfo) -> None:
    db, common = info.shared_database, info.shared_schema
    pg.run_sql(f"CREATE DATABASE {db};\n"
               f"REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC;\n"
               f"GRANT CONNECT ON DATABASE {db} TO {info.backend_user};")
    countries = ", ".join(f"({_lit(c)}, {_lit(n)})" for c, n in COUNTRIES)
    pg.run_sql("REVOKE ALL ON SCHEMA public FROM PUBLIC;\n"
               f"CREATE SCHEMA {common} AUTHORIZATION postgres;\n"
               f"REVOKE ALL ON SCHEMA {common} FROM PUBLIC;\n"
               f"CREATE TABLE {common}.countries (code text PRIMARY KEY, name text);\n"
               f"INSERT INTO {common}.countries VALUES {countries};", dbname=db)


def install_sample(pg: LocalPostgres, info: SampleInfo | None = None) -> SampleInfo:
    """Create the sample roles, databases, schemas and rows on a fresh cluster."""
    info = info or SampleInfo()
    pg.run_sql(f"CREATE ROLE {info.backend_user} LOGIN PASSWORD {_lit(info.backend_password)} "
               "NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT;")
    for tenant in info.database_tenants:
        _create_database_tenant(pg, tenant, info.backend_user)
    _create_shared_database(pg, info)
    for tenant in info.schema_tenants:
        create_schema_tenant(pg, tenant, database=info.shared_database,
                             backend_user=info.backend_user, shared_schema=info.shared_schema)
    return info


# -- row strategy ----------------------------------------------------------------------------------

ORDERS_DDL = ("(id serial PRIMARY KEY, tenant_id text NOT NULL, item text, amount int, "
              "secret text)")
CUSTOMERS_DDL = ("(id serial PRIMARY KEY, tenant_id text NOT NULL, name text, email text, "
                 "UNIQUE (tenant_id, email))")


def row_sample_catalog() -> tuple[RowCatalog, dict[tuple[str, str], TableFacts]]:
    """(RowCatalog, {(schema, table): TableFacts}) of rowdb, as `load_row_catalog` and
    `load_table_facts` read them back (a test checks that they do)."""
    from proxy.sql.rowmodel import RowCatalog, RowTable
    from proxy.tenancy.rls_sql import TableFacts

    catalog = RowCatalog(
        tenant_column="tenant_id",
        tables=(RowTable("public", "customers", ("id", "tenant_id", "name", "email")),
                RowTable("public", "orders", ("id", "tenant_id", "item", "amount", "secret"))),
        shared_tables=(("public", "countries"),))
    facts = {("public", "customers"): TableFacts("text", (("public", "customers_id_seq"),)),
             ("public", "orders"): TableFacts("text", (("public", "orders_id_seq"),))}
    return catalog, facts


def row_sample_rls_sql(pg: LocalPostgres, info: SampleInfo) -> str:
    """What `tenantgate rls-sql --connect` prints for the sample config with row tenants."""
    from proxy.config import parse_config
    from proxy.tenancy.rls import rls_sql

    config = parse_config(info.config_yaml(pg, 6432, row_tenants=True), "<sample>", env={})
    catalog, facts = row_sample_catalog()
    key = ("main", info.row_database)
    return rls_sql(config, {key: catalog}, {key: facts})


def install_row_sample(pg: LocalPostgres, info: SampleInfo | None = None) -> SampleInfo:
    """Create rowdb (see the module doc) on a cluster where `install_sample` ran; does
    nothing when rowdb already exists, so every test module may call it."""
    info = info or SampleInfo()
    db = info.row_database
    if pg.run_sql(f"SELECT 1 FROM pg_database WHERE datname = {_lit(db)}").strip():
        return info
    pg.run_sql(f"CREATE DATABASE {db};\n"
               f"REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC;")
    orders = ", ".join(f"({_lit(t)}, {_lit(i)}, {_lit(a)}, {_lit(s)})"
                       for t in info.row_tenant_names for i, a, s in sample_orders(t))
    customers = ", ".join(f"({_lit(t)}, {_lit(n)}, {_lit(e)})"
                          for t in info.row_tenant_names for n, e in sample_customers(t))
    countries = ", ".join(f"({_lit(c)}, {_lit(n)})" for c, n in COUNTRIES)
    pg.run_sql("REVOKE ALL ON SCHEMA public FROM PUBLIC;\n"
               f"CREATE TABLE public.orders {ORDERS_DDL};\n"
               f"CREATE TABLE public.customers {CUSTOMERS_DDL};\n"
               "CREATE TABLE public.countries (code text PRIMARY KEY, name text);\n"
               f"INSERT INTO public.orders (tenant_id, item, amount, secret) VALUES {orders};\n"
               f"INSERT INTO public.customers (tenant_id, name, email) VALUES {customers};\n"
               f"INSERT INTO public.countries VALUES {countries};\n", dbname=db)
    pg.run_sql(row_sample_rls_sql(pg, info), dbname=db)
    return info
