"""The database side of the row strategy: which tables hold tenant rows, and whether
PostgreSQL's row-level security really isolates them (DESIGN.md section 4, THREATS 43–45).

- `load_row_catalog(conn, column, shared_tables)`: the tenant tables (every table in a
  non-system schema with the tenant column, partitions included) with their columns in
  attnum order, and the configured shared tables, as a `RowCatalog`.
- `verify_rls(conn, catalog)`: the reasons one tenant could reach another's rows despite
  RLS, each a sentence naming the table (or role, view, function); [] means safe.
- `rls_sql(config, catalogs, facts)`: the SQL an administrator runs to install the
  policies and grants (`proxy.tenancy.rls_sql`, which also has `load_table_facts`: the
  tenant column's type, sequences and loose keys the SQL needs beyond the catalog).

The queries run on a connection the caller dedicates to them (never a client's): they
first pin `search_path = pg_catalog, pg_temp` (and leave it so) and name every object
and operator with its schema (THREATS 62). `conn` is anything with
`await conn.query(sql) -> list[list[bytes | None]]`, e.g. `proxy.pool.server.ServerConnection`.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.sql.rowmodel import RowCatalog, RowTable
from proxy.tenancy.rls_policy import PolicyShape, policy_shape
from proxy.tenancy.strategy import TENANT_SETTING, quote_ident, quote_literal

EQ = "OPERATOR(pg_catalog.=)"
NE = "OPERATOR(pg_catalog.<>)"
GT = "OPERATOR(pg_catalog.>)"
PIN_SEARCH_PATH = "SET search_path = pg_catalog, pg_temp"
FIRST_USER_OID = 16384  # FirstNormalObjectId: objects below it come with PostgreSQL
COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}

# Tables (plain and partitioned) in non-system schemas: PostgreSQL reserves pg_* schema
# names (pg_catalog, pg_toast, pg_temp_N, …).
TABLES_FROM = f"""pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS n ON n.oid {EQ} c.relnamespace"""
TABLES_WHERE = f"""c.relkind {EQ} ANY ('{{r,p}}'::pg_catalog."char"[])
      AND pg_catalog.left(n.nspname, 3) {NE} 'pg_'
      AND n.nspname {NE} 'information_schema'"""


class RowCatalogError(Exception):
    """The database does not match the row settings (e.g. a shared table is missing)."""


def qualified(schema: str, name: str) -> str:
    """schema.name, each part quoted as PostgreSQL's quote_ident does."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def name_literal(value: str) -> str:
    return f"{quote_literal(value)}::pg_catalog.name"


async def fetch(conn, sql: str) -> list[list[str | None]]:
    return [[None if value is None else value.decode("utf-8") for value in row]
            for row in await conn.query(sql)]


async def _database(conn) -> str:
    return (await fetch(conn, "SELECT pg_catalog.current_database()"))[0][0]


# --- the catalog -------------------------------------------------------------------------------

async def load_row_catalog(conn, column: str, shared_tables: tuple[str, ...],
                           search_path: tuple[str, ...] = ("public",)) -> RowCatalog:
    """The tenant tables and shared tables of the connected database (see the module doc).

    `shared_tables` are "schema.table" names from the config; each must exist (as any kind
    of relation), else RowCatalogError names it. A shared table that has the tenant column
    is a tenant table all the same (fail closed; RowCatalog resolves it so too).
    """
    await conn.query(PIN_SEARCH_PATH)
    shared: list[tuple[str, str]] = []
    for entry in shared_tables:
        schema, _, table = entry.partition(".")
        found = await fetch(conn, f"""
            SELECT c.oid FROM {TABLES_FROM}
            WHERE n.nspname {EQ} {name_literal(schema)} AND c.relname {EQ} {name_literal(table)}
              AND c.relkind {EQ} ANY ('{{r,p,v,m,f}}'::pg_catalog."char"[])""")
        if not found:
            raise RowCatalogError(f"shared table {qualified(schema, table)} (row.shared_tables) "
                                  f"does not exist in database {await _database(conn)}")
        shared.append((schema, table))
    rows = await fetch(conn, f"""
        SELECT n.nspname, c.relname, a.attname
        FROM {TABLES_FROM}
        JOIN pg_catalog.pg_attribute AS a ON a.attrelid {EQ} c.oid
        WHERE {TABLES_WHERE}
          AND a.attnum {GT} 0 AND NOT a.attisdropped
          AND EXISTS (SELECT FROM pg_catalog.pg_attribute AS t
                      WHERE t.attrelid {EQ} c.oid AND t.attname {EQ} {name_literal(column)}
                        AND t.attnum {GT} 0 AND NOT t.attisdropped)
        ORDER BY n.nspname, c.relname, a.attnum""")
    columns: dict[tuple[str, str], list[str]] = {}
    for schema, table, attname in rows:
        columns.setdefault((schema, table), []).append(attname)
    tables = tuple(RowTable(schema=schema, name=table, columns=tuple(names))
                   for (schema, table), names in columns.items())
    return RowCatalog(tenant_column=column, tables=tables, shared_tables=tuple(shared),
                      search_path=tuple(search_path))


# --- verification ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Policy:
    name: str
    command: str  # r a w d *
    permissive: bool
    using: str | None
    check: str | None
    applies: bool  # to the role being checked


async def verify_rls(conn, catalog: RowCatalog, setting: str = TENANT_SETTING, *,
                     roles: tuple[str, ...] = ()) -> list[str]:
    """Why the tenant tables of `catalog` are not isolated by RLS for the connected role
    (and `roles`, the roles row tenants SET ROLE to); [] when they are.

    Checks (THREATS 31, 40, 43, 44): each role is neither superuser nor BYPASSRLS and
    cannot act as a tenant table's owner; every tenant table has RLS enabled and forced,
    exactly one permissive policy for ALL commands that applies to the role, with USING
    and WITH CHECK both `<column> = current_setting(setting, …)` (AND-ed narrowing is
    fine, an OR fallback is not), or a restrictive one of that shape; the role cannot
    TRUNCATE tenant tables nor write shared tables, nor read a view that reads tenant
    tables with its owner's rights, nor create temporary tables; no function outside
    PostgreSQL's own is LEAKPROOF.
    """
    await conn.query(PIN_SEARCH_PATH)
    current_user = (await fetch(conn, "SELECT current_user"))[0][0]
    problems: list[str] = []
    for role in dict.fromkeys((current_user, *roles)):
        problems += await _role_problems(conn, catalog, setting, role)
    problems += await _leakproof_problems(conn)
    return list(dict.fromkeys(problems))


async def _role_problems(conn, catalog: RowCatalog, setting: str, role: str) -> list[str]:
    found = await fetch(conn, f"SELECT r.rolsuper, r.rolbypassrls FROM pg_catalog.pg_roles AS r "
                              f"WHERE r.rolname {EQ} {name_literal(role)}")
    if not found:
        return [f"role {quote_ident(role)} does not exist"]
    problems = []
    if found[0][0] == "t":
        problems.append(f"the backend role {quote_ident(role)} is a superuser; PostgreSQL skips "
                        "row-level security for superusers (make it NOSUPERUSER)")
    if found[0][1] == "t":
        problems.append(f"the backend role {quote_ident(role)} has BYPASSRLS; PostgreSQL skips "
                        "row-level security for it (ALTER ROLE … NOBYPASSRLS)")
    problems += await _table_problems(conn, catalog, setting, role)
    problems += await _shared_problems(conn, catalog, role)
    problems += await _view_problems(conn, catalog, role)
    database = await _database(conn)
    temp = await fetch(conn, f"SELECT pg_catalog.has_database_privilege({name_literal(role)}, "
                             f"pg_catalog.current_database(), 'TEMPORARY')")
    if temp[0][0] == "t":
        problems.append(f"database {quote_ident(database)}: role {quote_ident(role)} may create "
                        "temporary tables, which shadow tenant tables on pooled connections "
                        f"(REVOKE TEMPORARY ON DATABASE {quote_ident(database)} FROM PUBLIC)")
    return problems


async def _table_problems(conn, catalog: RowCatalog, setting: str, role: str) -> list[str]:
    rows = await fetch(conn, f"""
        SELECT n.nspname, c.relname, c.relrowsecurity, c.relforcerowsecurity,
               pg_catalog.pg_get_userbyid(c.relowner),
               pg_catalog.pg_has_role({name_literal(role)}, c.relowner, 'MEMBER'),
               pg_catalog.has_table_privilege({name_literal(role)}, c.oid, 'TRUNCATE')
        FROM {TABLES_FROM} WHERE {TABLES_WHERE}""")
    state = {(r[0], r[1]): r[2:] for r in rows}
    policies = await _policies(conn, role)
    problems: list[str] = []
    for table in catalog.tables:
        name = qualified(table.schema, table.name)
        if (table.schema, table.name) not in state:
            problems.append(f"table {name} does not exist (it is in the row catalog)")
            continue
        enabled, forced, owner, can_own, truncate = state[(table.schema, table.name)]
        if enabled != "t":
            problems.append(f"table {name}: row-level security is not enabled "
                            f"(ALTER TABLE {name} ENABLE ROW LEVEL SECURITY)")
        if forced != "t":
            problems.append(f"table {name}: row-level security is not forced, so the table's "
                            f"owner skips it (ALTER TABLE {name} FORCE ROW LEVEL SECURITY)")
        if can_own == "t":
            problems.append(f"table {name}: owned by {quote_ident(owner)}, and role "
                            f"{quote_ident(role)} can act as that owner; the backend role must not "
                            "own tenant tables (it could turn row-level security off)")
        if truncate == "t":
            problems.append(f"table {name}: role {quote_ident(role)} may TRUNCATE it, and TRUNCATE "
                            f"ignores row-level security (REVOKE TRUNCATE ON {name} FROM "
                            f"{quote_ident(role)}, PUBLIC)")
        problems += _policy_problems(name, policies.get((table.schema, table.name), []),
                                     catalog.tenant_column, setting, role)
    return problems


async def _policies(conn, role: str) -> dict[tuple[str, str], list[_Policy]]:
    rows = await fetch(conn, f"""
        SELECT n.nspname, c.relname, p.polname, p.polcmd, p.polpermissive,
               pg_catalog.pg_get_expr(p.polqual, p.polrelid),
               pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
               EXISTS (SELECT FROM pg_catalog.unnest(p.polroles) AS r(oid)
                       WHERE CASE WHEN r.oid {EQ} 0::pg_catalog.oid THEN true
                             ELSE pg_catalog.pg_has_role({name_literal(role)}, r.oid, 'USAGE') END)
        FROM pg_catalog.pg_policy AS p
        JOIN {TABLES_FROM} ON c.oid {EQ} p.polrelid
        WHERE {TABLES_WHERE}
        ORDER BY n.nspname, c.relname, p.polname""")
    policies: dict[tuple[str, str], list[_Policy]] = {}
    for schema, table, name, command, permissive, using, check, applies in rows:
        policies.setdefault((schema, table), []).append(
            _Policy(name, command, permissive == "t", using, check, applies == "t"))
    return policies


def _policy_problems(table: str, policies: list[_Policy], column: str, setting: str,
                     role: str) -> list[str]:
    applying = [p for p in policies if p.applies]
    shapes = {p.name: (policy_shape(p.using, column, setting),
                       policy_shape(p.check, column, setting)) for p in applying}

    def isolating(p: _Policy) -> bool:
        using, check = shapes[p.name]
        return p.command == "*" and using.isolates and check.isolates

    if any(not p.permissive and isolating(p) for p in applying):
        return []  # a restrictive tenant policy is AND-ed with whatever else applies
    permissive = [p for p in applying if p.permissive]
    problems: list[str] = []
    tenant = [p for p in permissive if p.command == "*" and shapes[p.name][0].reads_setting]
    if not tenant:
        problems.append(f"table {table}: no permissive FOR ALL policy that reads {setting} "
                        f"applies to role {quote_ident(role)} (tenantgate rls-sql prints one)")
    for p in tenant:
        using, check = shapes[p.name]
        if p.check is None:
            problems.append(f"table {table}: policy {quote_ident(p.name)} has no WITH CHECK "
                            f"clause; tenantgate requires an explicit WITH CHECK that compares "
                            f"{quote_ident(column)} with {setting}")
        if not using.isolates:
            problems.append(f"table {table}: policy {quote_ident(p.name)} can let rows through "
                            f"without the tenant's key (USING ({p.using})): {using.reason}")
        if p.check is not None and not check.isolates:
            problems.append(f"table {table}: policy {quote_ident(p.name)} can accept rows of "
                            f"another tenant (WITH CHECK ({p.check})): {check.reason}")
    overlaps: dict[tuple[str, ...], list[str]] = {}
    for code, command in COMMANDS.items():
        names = tuple(p.name for p in permissive if p.command in (code, "*"))
        if len(names) > 1:
            overlaps.setdefault(names, []).append(command)
    for names, commands in overlaps.items():
        problems.append(f"table {table}: permissive policies "
                        f"{', '.join(quote_ident(n) for n in names)} all apply to "
                        f"{', '.join(commands)} for role {quote_ident(role)}; PostgreSQL ORs "
                        "permissive policies, so any one of them opens the table")
    return problems


async def _shared_problems(conn, catalog: RowCatalog, role: str) -> list[str]:
    problems = []
    tenant_tables = {(t.schema, t.name) for t in catalog.tables}
    for schema, table in catalog.shared_tables:
        if (schema, table) in tenant_tables:
            continue  # it has the tenant column: a tenant table, checked as one
        name = qualified(schema, table)
        rows = await fetch(conn, f"""
            SELECT p.privilege FROM pg_catalog.pg_class AS c
            JOIN pg_catalog.pg_namespace AS n ON n.oid {EQ} c.relnamespace
            CROSS JOIN pg_catalog.unnest('{{INSERT,UPDATE,DELETE,TRUNCATE}}'::pg_catalog.text[])
                 WITH ORDINALITY AS p(privilege, i)
            WHERE n.nspname {EQ} {name_literal(schema)} AND c.relname {EQ} {name_literal(table)}
              AND pg_catalog.has_table_privilege({name_literal(role)}, c.oid, p.privilege)
            ORDER BY p.i""")
        if rows:
            granted = ", ".join(r[0] for r in rows)
            problems.append(f"shared table {name}: role {quote_ident(role)} may {granted}; shared "
                            f"tables must be read-only (REVOKE {granted} ON {name} FROM "
                            f"{quote_ident(role)}, PUBLIC)")
    return problems


async def _view_problems(conn, catalog: RowCatalog, role: str) -> list[str]:
    """Views that read tenant tables (directly or through other views) with their owner's
    rights, and materialized views (never under RLS), that `role` may SELECT (THREATS 31)."""
    rows = await fetch(conn, f"""
        SELECT DISTINCT vn.nspname, v.relname, v.relkind,
               pg_catalog.array_to_string(v.reloptions, ','),
               pg_catalog.has_table_privilege({name_literal(role)}, v.oid, 'SELECT'),
               tn.nspname, t.relname
        FROM pg_catalog.pg_rewrite AS rw
        JOIN pg_catalog.pg_class AS v ON v.oid {EQ} rw.ev_class
        JOIN pg_catalog.pg_namespace AS vn ON vn.oid {EQ} v.relnamespace
        JOIN pg_catalog.pg_depend AS d ON d.objid {EQ} rw.oid
         AND d.classid {EQ} 'pg_catalog.pg_rewrite'::pg_catalog.regclass
         AND d.refclassid {EQ} 'pg_catalog.pg_class'::pg_catalog.regclass
        JOIN pg_catalog.pg_class AS t ON t.oid {EQ} d.refobjid AND t.oid {NE} v.oid
        JOIN pg_catalog.pg_namespace AS tn ON tn.oid {EQ} t.relnamespace
        WHERE v.relkind {EQ} ANY ('{{v,m}}'::pg_catalog."char"[])
        ORDER BY 1, 2, 6, 7""")
    reads: dict[tuple[str, str], set[tuple[str, str]]] = {}
    info: dict[tuple[str, str], tuple[str, bool, bool]] = {}
    for vs, vname, kind, options, selectable, ts, tname in rows:
        reads.setdefault((vs, vname), set()).add((ts, tname))
        info[(vs, vname)] = (kind, _security_invoker(options), selectable == "t")
    reaching = {(t.schema, t.name): (t.schema, t.name) for t in catalog.tables}
    changed = True
    while changed:  # views over views: a view reaches the tenant tables its sources reach
        changed = False
        for view, sources in reads.items():
            if view not in reaching:
                hit = next((reaching[s] for s in sorted(sources) if s in reaching), None)
                if hit is not None:
                    reaching[view] = hit
                    changed = True
    problems = []
    for view, (kind, invoker, selectable) in sorted(info.items()):
        if view not in reaching or not selectable or (kind == "v" and invoker):
            continue
        name, table = qualified(*view), qualified(*reaching[view])
        if kind == "m":
            problems.append(f"materialized view {name} holds rows of tenant table {table}, "
                            f"row-level security does not apply to it, and role "
                            f"{quote_ident(role)} may SELECT it (REVOKE SELECT ON {name} FROM "
                            f"{quote_ident(role)}, PUBLIC)")
        else:
            problems.append(f"view {name} reads tenant table {table} with its owner's rights and "
                            f"role {quote_ident(role)} may SELECT it (ALTER VIEW {name} SET "
                            "(security_invoker = true), or REVOKE SELECT)")
    return problems


def _security_invoker(options: str | None) -> bool:
    for option in (options or "").split(","):
        key, _, value = option.partition("=")
        if key.strip().lower() == "security_invoker":
            return value.strip().lower() in ("true", "on", "yes", "1")
    return False


async def _leakproof_problems(conn) -> list[str]:
    rows = await fetch(conn, f"""
        SELECT p.oid::pg_catalog.regprocedure::pg_catalog.text FROM pg_catalog.pg_proc AS p
        WHERE p.proleakproof AND p.oid OPERATOR(pg_catalog.>=) {FIRST_USER_OID}::pg_catalog.oid
        ORDER BY 1""")
    return [f"function {name} is LEAKPROOF but not built in: PostgreSQL may run it on other "
            f"tenants' rows before the tenant policy filters them (ALTER FUNCTION {name} NOT "
            "LEAKPROOF)" for (name,) in rows]


# --- one row database, as `tenantgate check --connect` and the proxy's start see it ---------------

async def check_row_database(conn, config, cluster: str, database: str) -> list[str]:
    """The problems of one database that holds row tenants of `config` ([] when none)."""
    return (await inspect_row_database(conn, config, cluster, database))[1]


async def inspect_row_database(conn, config, cluster: str,
                               database: str) -> tuple[RowCatalog | None, list[str]]:
    """The catalog of one database that holds row tenants of `config`, and its problems:
    the catalog must load (shared tables exist, some table has the tenant column) and,
    unless `row.enforce` is `rewrite`, `verify_rls` must find nothing, for the backend
    role and the `role`s of the row tenants there."""
    roles = tuple(dict.fromkeys(
        t.role for t in config.tenants.values()
        if t.strategy == "row" and (t.cluster, t.database) == (cluster, database) and t.role))
    try:
        catalog = await load_row_catalog(conn, config.row.column, config.row.shared_tables)
    except RowCatalogError as exc:
        return None, [str(exc)]
    if not catalog.tables:
        return None, [f"database {quote_ident(database)}: no table has the tenant column "
                      f"{quote_ident(config.row.column)} (row.column)"]
    if config.row.enforce == "rewrite":
        return catalog, []
    return catalog, await verify_rls(conn, catalog, roles=roles)


# --- the administrator's SQL --------------------------------------------------------------------

def rls_sql(config, catalogs: dict[tuple[str, str], RowCatalog] | None = None,
            facts: dict | None = None) -> str:
    """The SQL that makes each row database of `config` right for the row strategy; see
    `proxy.tenancy.rls_sql.render`. Keys of `catalogs`/`facts` are (cluster, database)."""
    from proxy.tenancy.rls_sql import render

    return render(config, catalogs, facts)


__all__ = ["COMMANDS", "PolicyShape", "RowCatalogError", "check_row_database",
           "inspect_row_database", "load_row_catalog", "qualified", "rls_sql", "verify_rls"]
