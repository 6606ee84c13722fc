"""`tenantgate rls-sql`: the SQL an administrator runs so that PostgreSQL itself isolates
the row strategy's tenants (DESIGN.md section 4, THREATS 1–7, 20, 31, 40, 43–45).

For each database that holds row-strategy tenants, one transaction that, for every tenant
table, enables and FORCEs row-level security and (re)creates the permissive policy
`tenantgate_isolation` FOR ALL TO the backend role (and the tenants' roles):

    USING      (tenant_id = NULLIF(pg_catalog.current_setting('tenantgate.tenant', true), ''))
    WITH CHECK (the same)

`current_setting(…, true)` is NULL when the proxy has not set the tenant and NULLIF turns
a RESET value ('') into NULL too, so a connection without a tenant sees and writes no
rows: the policy fails closed. When the tenant column is not text the setting is cast to
the column's type (`…::uuid`), never the column to text, so indexes on it keep working.
Then privileges: DML on tenant tables but no TRUNCATE (which ignores RLS), USAGE on their
sequences, SELECT only on shared tables, no temporary tables in the database.

Without catalogs (no `--connect`) the tables are unknown: the output is a template for a
placeholder table, plus the parts the config alone determines. `render` is the
implementation of `proxy.tenancy.rls.rls_sql`; the sample installs exactly its output.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.sql.rowmodel import RowCatalog
from proxy.tenancy.rls import (EQ, PIN_SEARCH_PATH, TABLES_FROM, TABLES_WHERE, fetch,
                               name_literal, qualified)
from proxy.tenancy.strategy import TENANT_SETTING, quote_ident, quote_literal

POLICY_NAME = "tenantgate_isolation"
PLACEHOLDER = ("public", "example_table")
Key = tuple[str, str]  # (cluster, database)


@dataclass(frozen=True)
class TableFacts:
    """What `rls_sql` needs to know about one tenant table beyond its RowTable."""

    column_type: str = "text"  # format_type() of the tenant column, e.g. text, uuid, integer
    sequences: tuple[tuple[str, str], ...] = ()  # (schema, name) of its serial/identity sequences
    loose_keys: tuple[str, ...] = ()  # UNIQUE / FOREIGN KEY constraints without the tenant column


async def load_table_facts(conn, catalog: RowCatalog) -> dict[tuple[str, str], TableFacts]:
    """{(schema, table): TableFacts} for every tenant table of `catalog`."""
    await conn.query(PIN_SEARCH_PATH)
    wanted = {(t.schema, t.name) for t in catalog.tables}
    column = name_literal(catalog.tenant_column)
    types = {(s, t): typ for s, t, typ in await fetch(conn, f"""
        SELECT n.nspname, c.relname, pg_catalog.format_type(a.atttypid, a.atttypmod)
        FROM {TABLES_FROM}
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid {EQ} c.oid AND a.attname {EQ} {column}
        WHERE {TABLES_WHERE} AND NOT a.attisdropped""")}
    sequences: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for s, t, seq_schema, seq in await fetch(conn, f"""
        SELECT n.nspname, c.relname, sn.nspname, s.relname
        FROM pg_catalog.pg_depend AS d
        JOIN pg_catalog.pg_class AS s ON s.oid {EQ} d.objid
        JOIN pg_catalog.pg_namespace AS sn ON sn.oid {EQ} s.relnamespace
        JOIN {TABLES_FROM} ON c.oid {EQ} d.refobjid
        WHERE d.classid {EQ} 'pg_catalog.pg_class'::pg_catalog.regclass
          AND d.refclassid {EQ} 'pg_catalog.pg_class'::pg_catalog.regclass
          AND d.deptype {EQ} ANY ('{{a,i}}'::pg_catalog."char"[])
          AND s.relkind {EQ} 'S' AND {TABLES_WHERE}
        ORDER BY 1, 2, 3, 4"""):
        sequences.setdefault((s, t), []).append((seq_schema, seq))
    loose: dict[tuple[str, str], list[str]] = {}
    for s, t, conname, definition in await fetch(conn, f"""
        SELECT n.nspname, c.relname, k.conname, pg_catalog.pg_get_constraintdef(k.oid)
        FROM pg_catalog.pg_constraint AS k
        JOIN {TABLES_FROM} ON c.oid {EQ} k.conrelid
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid {EQ} c.oid AND a.attname {EQ} {column}
        WHERE k.contype {EQ} ANY ('{{u,f}}'::pg_catalog."char"[]) AND {TABLES_WHERE}
          AND NOT (a.attnum {EQ} ANY (k.conkey))
        ORDER BY 1, 2, 3"""):
        loose.setdefault((s, t), []).append(f"{quote_ident(conname)} {definition}")
    return {key: TableFacts(column_type=types.get(key, "text"),
                            sequences=tuple(sequences.get(key, ())),
                            loose_keys=tuple(loose.get(key, ())))
            for key in sorted(wanted)}


def row_databases(config) -> dict[Key, tuple[list[str], list[str]]]:
    """{(cluster, database): (row tenant names, roles the sessions run as)} in config order;
    the roles are the cluster's backend login first, then the tenants' `role`s."""
    found: dict[Key, tuple[list[str], list[str]]] = {}
    for tenant in config.tenants.values():
        if tenant.strategy != "row":
            continue
        key = (tenant.cluster, tenant.database)
        names, roles = found.setdefault(key, ([], [config.clusters[tenant.cluster].user]))
        names.append(tenant.name)
        if tenant.role is not None and tenant.role not in roles:
            roles.append(tenant.role)
    return found


async def load_for_sql(config) -> tuple[dict, dict, list[str]]:
    """(catalogs, facts, errors) for `render`, read from every row database of `config`
    with its cluster's credentials (`rls-sql --connect`); errors name the database."""
    from proxy.errors import ProxyError
    from proxy.pool.server import ServerError, open_server_connection
    from proxy.tenancy.rls import RowCatalogError, load_row_catalog

    catalogs: dict[Key, RowCatalog] = {}
    facts: dict[Key, dict[Key, TableFacts]] = {}
    errors: list[str] = []
    for key in row_databases(config):
        where = f"cluster {key[0]}, database {key[1]}"
        try:
            conn = await open_server_connection(config.clusters[key[0]], key[1])
        except ProxyError as exc:
            errors.append(f"{where}: {exc.message.removeprefix('tenantgate: ')}")
            continue
        try:
            catalogs[key] = await load_row_catalog(conn, config.row.column,
                                                   config.row.shared_tables)
            facts[key] = await load_table_facts(conn, catalogs[key])
        except (RowCatalogError, ServerError) as exc:
            errors.append(f"{where}: {exc}")
        finally:
            conn.close()
    return catalogs, facts, errors


def tenant_predicate(column: str, column_type: str = "text",
                     setting: str = TENANT_SETTING) -> str:
    """`column = <the tenant setting, as the column's type>`; NULL (no rows) when unset."""
    value = f"NULLIF(pg_catalog.current_setting({quote_literal(setting)}, true), '')"
    if column_type != "text":
        value = f"{value}::{column_type}"
    return f"{quote_ident(column)} = {value}"


def render(config, catalogs: dict[Key, RowCatalog] | None = None,
           facts: dict[Key, dict[Key, TableFacts]] | None = None,
           setting: str = TENANT_SETTING) -> str:
    databases = row_databases(config)
    out = [f"-- tenantgate rls-sql for {config.path}",
           "-- Row-level security for the row strategy: the proxy sets the setting "
           f"{setting} on each",
           "-- server connection to the tenant's key, and these policies let a connection see",
           "-- and write only the rows whose tenant column equals it (no rows when it is unset).",
           "-- Run each part as a superuser (or the owner of the database and the tables),",
           "-- connected to the database it names. Running it again replaces the policies.",
           ""]
    if not databases:
        out.append("-- The configuration has no row-strategy tenants: nothing to install.")
        return "\n".join(_one_line(line) for line in out) + "\n"
    for key, (tenants, roles) in databases.items():
        catalog = (catalogs or {}).get(key)
        out += database_sql(key[1], roles, config.row.column, config.row.shared_tables, catalog,
                            (facts or {}).get(key), setting=setting,
                            heading=f"cluster {key[0]}, database {key[1]} "
                                    f"(row tenants: {', '.join(tenants)})")
    return "\n".join(_one_line(line) for line in out) + "\n"


def _one_line(line: str) -> str:
    """A comment must not end early: a line break in a name (from the config or the
    catalog) would turn the rest of it into SQL that runs as a superuser."""
    if line.startswith("--"):
        return line.replace("\r", " ").replace("\n", " ")
    return line


def database_sql(database: str, roles: list[str], column: str, shared_tables: tuple[str, ...],
                 catalog: RowCatalog | None, facts: dict[Key, TableFacts] | None, *,
                 setting: str = TENANT_SETTING, heading: str = "") -> list[str]:
    """The lines for one database (see the module doc)."""
    grantees = ", ".join(quote_ident(role) for role in roles)
    db = quote_ident(database)
    tables = ([(t.schema, t.name) for t in catalog.tables] if catalog is not None
              else [PLACEHOLDER])
    shared = [(s, t) for s, t in (catalog.shared_tables if catalog is not None
                                  else (tuple(n.split(".", 1)) for n in shared_tables))
              if (s, t) not in tables]  # a shared table with the tenant column is a tenant table
    out = [f"-- ==== {heading or f'database {database}'} ====",
           f"-- psql: \\connect {db}",
           f"-- The backend role {quote_ident(roles[0])} must be NOSUPERUSER NOBYPASSRLS and own",
           "-- none of these tables (tenantgate check --connect verifies it).",
           "BEGIN;",
           f"REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC, {grantees};",
           f"GRANT CONNECT ON DATABASE {db} TO {grantees};"]
    for schema in dict.fromkeys(s for s, _ in [*tables, *shared]):
        out.append(f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {grantees};")
    if catalog is None:
        out += ["",
                "-- Template: the tables are not known without a connection. Repeat this block for",
                f"-- every table with the {column} column (partitions too), replacing "
                f"{qualified(*PLACEHOLDER)};",
                "-- if the column is not text, cast the setting to its type (…, '')::uuid).",
                "-- `tenantgate rls-sql --connect` writes the real statements."]
    elif not tables:
        out += ["", f"-- No table in database {db} has the {column} column."]
    for schema, name in tables:
        table_facts = (facts or {}).get((schema, name), TableFacts())
        out += [""] + table_sql(schema, name, grantees, column, table_facts, setting,
                                known=catalog is not None and facts is not None)
    if shared:
        out += ["", "-- Shared tables: every tenant reads them, none writes them."]
    for schema, name in shared:
        table = qualified(schema, name)
        out += [f"GRANT SELECT ON TABLE {table} TO {grantees};",
                f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON TABLE {table} "
                f"FROM PUBLIC, {grantees};"]
    out += ["",
            "-- Not done here, check by hand (THREATS 31, 44, 45):",
            "-- * Unique keys and foreign keys are checked across all tenants, RLS or not: a",
            "--   duplicate-key error or a reference to an invisible row tells a tenant that",
            f"--   another tenant's row exists. Put {column} into every UNIQUE key and",
            f"--   FOREIGN KEY, e.g. UNIQUE ({column}, email), FOREIGN KEY ({column}, order_id)",
            f"--   REFERENCES orders ({column}, id).",
            "-- * Views over tenant tables run with their owner's rights: make them",
            "--   security_invoker = true, and grant no materialized view over tenant tables.",
            "-- * Functions must not be marked LEAKPROOF unless they come with PostgreSQL.",
            "-- * Other permissive policies on these tables are OR-ed with tenantgate_isolation:",
            "--   drop them (tenantgate check --connect lists them).",
            "COMMIT;",
            ""]
    return out


def table_sql(schema: str, name: str, grantees: str, column: str, facts: TableFacts,
              setting: str = TENANT_SETTING, *, known: bool = True) -> list[str]:
    """The statements that put one tenant table under the tenant policy."""
    table = qualified(schema, name)
    predicate = tenant_predicate(column, facts.column_type, setting)
    out = [f"-- {table}",
           f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;",
           f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY;",
           f"DROP POLICY IF EXISTS {POLICY_NAME} ON {table};",
           f"CREATE POLICY {POLICY_NAME} ON {table} AS PERMISSIVE FOR ALL TO {grantees}",
           f"    USING ({predicate})",
           f"    WITH CHECK ({predicate});",
           f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {table} TO {grantees};",
           f"REVOKE TRUNCATE, REFERENCES, TRIGGER ON TABLE {table} FROM PUBLIC, {grantees};"]
    for seq_schema, seq in facts.sequences:
        out.append(f"GRANT USAGE ON SEQUENCE {qualified(seq_schema, seq)} TO {grantees};")
    if not known:
        out.append(f"-- and for each serial/identity sequence of {table}: "
                   f"GRANT USAGE ON SEQUENCE … TO {grantees};")
    for key in facts.loose_keys:
        out.append(f"-- warning: {key} leaves out {quote_ident(column)} (THREATS 45)")
    return out
