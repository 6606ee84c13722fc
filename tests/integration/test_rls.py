"""The database side of the row strategy, on the session's real PostgreSQL (no proxy):
the row catalog, `verify_rls` on the sample and on databases broken one way at a time
(THREATS 31, 40, 43, 44), what the installed policies do for the backend role directly
(THREATS 1–4, 20, 40, 45), and the `rls-sql` / `check --connect` commands."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest
from pglast import ast, parse_sql

from proxy.config import Cluster
from proxy.localpg import LocalPostgres, free_port
from proxy.pool.server import open_server_connection
from proxy.sample import (SampleInfo, canary, install_row_sample, row_sample_catalog,
                          row_sample_rls_sql, sample_customers, sample_orders)
from proxy.tenancy.rls import RowCatalogError, check_row_database, load_row_catalog, verify_rls
from proxy.tenancy.rls_sql import load_table_facts
from tests.helpers import REPO_ROOT, row_sample_copy, sqlstate

pytestmark = pytest.mark.timeout(120)

SHARED = ("public.countries",)
_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def row_sample(pg: LocalPostgres, sample: SampleInfo) -> SampleInfo:
    return install_row_sample(pg, sample)


@pytest.fixture
def scratch(pg: LocalPostgres, sample: SampleInfo) -> Iterator[SampleInfo]:
    """A fresh copy of the row sample in its own database (rlscheck_N), dropped afterwards."""
    with row_sample_copy(pg, sample, f"rlscheck_{os.getpid()}_{next(_numbers)}") as info:
        yield info


def cluster_for(pg: LocalPostgres, user: str, password: str) -> Cluster:
    return Cluster(name="main", hosts=((pg.host, pg.port),), user=user, password=password,
                   tls="disable")


async def problems_in(pg: LocalPostgres, info: SampleInfo, *, user: str | None = None,
                      password: str | None = None, roles: tuple[str, ...] = ()) -> list[str]:
    """load_row_catalog + verify_rls on `info.row_database`, as the backend role by default."""
    cluster = cluster_for(pg, user or info.backend_user, password or info.backend_password)
    conn = await open_server_connection(cluster, info.row_database)
    try:
        catalog = await load_row_catalog(conn, "tenant_id", SHARED)
        return await verify_rls(conn, catalog, roles=roles)
    finally:
        conn.close()


def tg_connect(pg: LocalPostgres, info: SampleInfo) -> psycopg.Connection:
    """A direct connection to rowdb as the backend role (what the proxy leases)."""
    return psycopg.connect(pg.dsn(info.backend_user, info.backend_password, info.row_database),
                           autocommit=True, connect_timeout=10)


def as_tenant(conn: psycopg.Connection, key: str | None) -> psycopg.Connection:
    """What the proxy's row setup does (proxy.tenancy.strategy._row_plan)."""
    if key is not None:
        conn.execute("SELECT pg_catalog.set_config('tenantgate.tenant', %s, false)", (key,))
    return conn


# --- the catalog ---------------------------------------------------------------------------------

async def test_catalog_finds_tenant_tables_in_column_order(pg, row_sample) -> None:
    conn = await open_server_connection(
        cluster_for(pg, row_sample.backend_user, row_sample.backend_password),
        row_sample.row_database)
    try:
        catalog = await load_row_catalog(conn, "tenant_id", SHARED)
        facts = await load_table_facts(conn, catalog)
    finally:
        conn.close()
    assert [(t.schema, t.name, t.columns) for t in catalog.tables] == [
        ("public", "customers", ("id", "tenant_id", "name", "email")),
        ("public", "orders", ("id", "tenant_id", "item", "amount", "secret"))]
    assert catalog.shared_tables == (("public", "countries"),)
    assert catalog.tenant_column == "tenant_id" and catalog.search_path == ("public",)
    assert (catalog, facts) == row_sample_catalog()  # the sample's static copy is right


async def test_catalog_partitions_dropped_columns_other_schemas(pg, scratch) -> None:
    db = scratch.row_database
    pg.run_sql("CREATE SCHEMA billing;"
               "CREATE TABLE billing.invoices (a int, gone int, tenant_id uuid, total numeric);"
               "ALTER TABLE billing.invoices DROP COLUMN gone;"
               "CREATE TABLE public.events (tenant_id text, at date) PARTITION BY LIST (tenant_id);"
               "CREATE TABLE public.events_initech PARTITION OF public.events FOR VALUES IN "
               "('initech');"
               "CREATE TABLE public.plain (id int);"  # no tenant column: not a tenant table
               "CREATE VIEW public.orders_view AS SELECT * FROM public.orders;"  # not a table
               "ALTER TABLE public.countries ADD COLUMN tenant_id text;", dbname=db)  # tenant wins
    conn = await open_server_connection(cluster_for(pg, "postgres", pg.superuser_password), db)
    try:
        catalog = await load_row_catalog(conn, "tenant_id", SHARED, search_path=("app", "public"))
        facts = await load_table_facts(conn, catalog)
        with pytest.raises(RowCatalogError, match=r"shared table public\.nowhere .* does not "
                                                  f"exist in database {db}"):
            await load_row_catalog(conn, "tenant_id", ("public.countries", "public.nowhere"))
    finally:
        conn.close()
    assert [(t.schema, t.name, t.columns) for t in catalog.tables] == [
        ("billing", "invoices", ("a", "tenant_id", "total")),
        ("public", "countries", ("code", "name", "tenant_id")),
        ("public", "customers", ("id", "tenant_id", "name", "email")),
        ("public", "events", ("tenant_id", "at")),
        ("public", "events_initech", ("tenant_id", "at")),
        ("public", "orders", ("id", "tenant_id", "item", "amount", "secret"))]
    assert catalog.search_path == ("app", "public")
    assert catalog.shared_tables == (("public", "countries"),)  # as configured
    assert catalog.table(None, "countries") is not None  # but resolved as a tenant table
    assert facts[("billing", "invoices")].column_type == "uuid"
    assert facts[("public", "orders")].sequences == (("public", "orders_id_seq"),)


# --- verify_rls --------------------------------------------------------------------------------

async def test_the_sample_is_safe(pg, row_sample) -> None:
    assert await problems_in(pg, row_sample) == []


def only(problems: list[str], *needles: str) -> str:
    """The one problem that contains every needle (and there is exactly one such)."""
    hits = [p for p in problems if all(n in p for n in needles)]
    assert len(hits) == 1, f"{needles} in {problems}"
    return hits[0]


POLICY = "tenantgate_isolation ON public.orders"
SETTING = "current_setting('tenantgate.tenant', true)"

BROKEN = {
    "rls-disabled": ("ALTER TABLE public.orders DISABLE ROW LEVEL SECURITY",
                     ["table public.orders: row-level security is not enabled"]),
    "force-missing": ("ALTER TABLE public.orders NO FORCE ROW LEVEL SECURITY",
                      ["table public.orders: row-level security is not forced"]),
    "policy-missing": (f"DROP POLICY {POLICY}",
                       ["table public.orders: no permissive FOR ALL policy"]),
    "policy-for-another-role": (f"DROP POLICY {POLICY}; CREATE POLICY p ON public.orders TO "
                                f"postgres USING (tenant_id = {SETTING}) WITH CHECK (tenant_id = "
                                f"{SETTING})",
                                ["table public.orders: no permissive FOR ALL policy",
                                 "role tenantgate"]),
    "policy-reads-another-setting": (f"ALTER POLICY {POLICY} USING (tenant_id = "
                                     "current_setting('app.tenant', true))",
                                     ["table public.orders: no permissive FOR ALL policy"]),
    "using-only": (f"DROP POLICY {POLICY}; CREATE POLICY p ON public.orders FOR ALL TO "
                   f"tenantgate USING (tenant_id = {SETTING})",
                   ["table public.orders: policy p has no WITH CHECK"]),
    "fail-open-empty": (f"ALTER POLICY {POLICY} USING (tenant_id = {SETTING} OR {SETTING} = '')",
                        ["table public.orders: policy tenantgate_isolation can let rows through",
                         "OR"]),
    "fail-open-null": (f"ALTER POLICY {POLICY} USING (tenant_id = {SETTING} OR {SETTING} IS NULL)",
                       ["table public.orders: policy tenantgate_isolation can let rows through"]),
    "fail-open-coalesce": (f"ALTER POLICY {POLICY} USING (tenant_id = coalesce({SETTING}, "
                           "tenant_id))",
                           ["table public.orders: policy tenantgate_isolation can let rows"]),
    "check-fail-open": (f"ALTER POLICY {POLICY} WITH CHECK (tenant_id = {SETTING} OR true)",
                        ["table public.orders: policy tenantgate_isolation can accept rows of "
                         "another tenant"]),
    "two-permissive": ("CREATE POLICY extra ON public.orders FOR SELECT TO tenantgate "
                       "USING (amount > 50)",
                       ["table public.orders: permissive policies extra, tenantgate_isolation "
                        "all apply to SELECT for role tenantgate"]),
    "two-permissive-public": ("CREATE POLICY everyone ON public.orders USING (true)",
                              ["table public.orders: permissive policies everyone, "
                               "tenantgate_isolation all apply to SELECT, INSERT, UPDATE, DELETE"]),
    "backend-owns": ("ALTER TABLE public.orders OWNER TO tenantgate",
                     ["table public.orders: owned by tenantgate",
                      "must not own tenant tables"]),
    "backend-member-of-owner": ("CREATE ROLE rls_owner_{n} NOLOGIN; "
                                "GRANT rls_owner_{n} TO tenantgate; "
                                "ALTER TABLE public.orders OWNER TO rls_owner_{n}",
                                ["table public.orders: owned by rls_owner_"]),
    "truncate-granted": ("GRANT TRUNCATE ON public.orders TO tenantgate",
                         ["table public.orders: role tenantgate may TRUNCATE it"]),
    "shared-writable": ("GRANT INSERT, DELETE ON public.countries TO PUBLIC",
                        ["shared table public.countries: role tenantgate may INSERT, DELETE"]),
    "definer-view": ("CREATE VIEW public.all_orders AS SELECT * FROM public.orders; "
                     "CREATE VIEW public.summary AS SELECT count(*) FROM public.all_orders; "
                     "GRANT SELECT ON public.summary TO tenantgate",
                     ["view public.summary reads tenant table public.orders with its owner's "
                      "rights"]),
    "materialized-view": ("CREATE MATERIALIZED VIEW public.snap AS SELECT * FROM public.customers;"
                          " GRANT SELECT ON public.snap TO tenantgate",
                          ["materialized view public.snap holds rows of tenant table "
                           "public.customers"]),
    "temp-allowed": ("GRANT TEMPORARY ON DATABASE {db} TO PUBLIC",
                     ["database {db}: role tenantgate may create temporary tables"]),
    "leakproof": ("CREATE FUNCTION public.peek(text) RETURNS boolean LANGUAGE sql IMMUTABLE "
                  "LEAKPROOF AS 'SELECT true'",
                  ["function public.peek(text) is LEAKPROOF but not built in"]),
    "partition-without-rls": ("CREATE TABLE public.events (tenant_id text, at date) "
                              "PARTITION BY LIST (tenant_id); CREATE TABLE public.events_a "
                              "PARTITION OF public.events FOR VALUES IN ('initech')",
                              ["table public.events: row-level security is not enabled",
                               "table public.events_a: row-level security is not enabled"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
async def test_each_weakness_is_named(pg, scratch, case: str) -> None:
    sql, expected = BROKEN[case]
    n = next(_numbers)
    db = scratch.row_database
    pg.run_sql(sql.format(db=db, n=n), dbname=db)
    try:
        problems = await problems_in(pg, scratch)
    finally:
        if "rls_owner_" in sql:
            pg.run_sql(f"ALTER TABLE public.orders OWNER TO postgres; DROP ROLE rls_owner_{n}",
                       dbname=db)
    for needles in expected:
        only(problems, needles.format(db=db))
    assert problems, case


async def test_views_that_are_safe_are_not_reported(pg, scratch) -> None:
    pg.run_sql("CREATE VIEW public.mine WITH (security_invoker = on) AS "
               "SELECT * FROM public.orders; GRANT SELECT ON public.mine TO tenantgate;"
               "CREATE VIEW public.hidden AS SELECT * FROM public.orders;",  # no grant
               dbname=scratch.row_database)
    assert await problems_in(pg, scratch) == []


async def test_a_restrictive_tenant_policy_isolates_whatever_else_applies(pg, scratch) -> None:
    pg.run_sql(f"ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;"
               f"CREATE POLICY tenant_only ON public.orders AS RESTRICTIVE FOR ALL TO tenantgate "
               f"USING (tenant_id = {SETTING}) WITH CHECK (tenant_id = {SETTING});"
               "CREATE POLICY everyone ON public.orders USING (true) WITH CHECK (true);",
               dbname=scratch.row_database)
    assert await problems_in(pg, scratch) == []


async def test_superuser_and_bypassrls_backends(pg, scratch) -> None:
    problems = await problems_in(pg, scratch, user="postgres", password=pg.superuser_password)
    only(problems, "the backend role postgres is a superuser")
    only(problems, "table public.orders: owned by postgres")
    role = f"rls_bypass_{next(_numbers)}"
    pg.run_sql(f"CREATE ROLE {role} LOGIN PASSWORD 'bypass-secret' BYPASSRLS;"
               f"GRANT CONNECT ON DATABASE {scratch.row_database} TO {role}")
    try:
        problems = await problems_in(pg, scratch, user=role, password="bypass-secret")
    finally:
        pg.run_sql(f"DROP DATABASE {scratch.row_database} WITH (FORCE); DROP ROLE {role}")
    only(problems, f"the backend role {role} has BYPASSRLS")
    only(problems, "table public.orders: no permissive FOR ALL policy", f"role {role}")


async def test_tenant_roles_are_checked_too(pg, scratch) -> None:
    role = f"rls_tenant_{next(_numbers)}"
    pg.run_sql(f"CREATE ROLE {role} NOLOGIN")
    try:
        problems = await problems_in(pg, scratch, roles=(role, "no_such_role"))
    finally:
        pg.run_sql(f"DROP ROLE {role}")
    only(problems, "role no_such_role does not exist")
    only(problems, "table public.orders: no permissive FOR ALL policy", f"role {role}")
    only(problems, "table public.customers: no permissive FOR ALL policy", f"role {role}")
    assert not [p for p in problems if "role tenantgate" in p]


async def test_check_row_database_reports_catalog_problems(pg, scratch) -> None:
    from proxy.config import parse_config
    config = parse_config(scratch.config_yaml(pg, free_port(), row_tenants=True), "x.yaml",
                          env={})
    cluster = config.clusters["main"]
    conn = await open_server_connection(cluster, scratch.row_database)
    try:
        assert await check_row_database(conn, config, "main", scratch.row_database) == []
        missing = dataclasses.replace(config, row=dataclasses.replace(
            config.row, shared_tables=("public.countries", "ref.rates")))
        assert await check_row_database(conn, missing, "main", scratch.row_database) == [
            f"shared table ref.rates (row.shared_tables) does not exist in database "
            f"{scratch.row_database}"]
        other = dataclasses.replace(config, row=dataclasses.replace(config.row, column="org_id"))
        assert await check_row_database(conn, other, "main", scratch.row_database) == [
            f"database {scratch.row_database}: no table has the tenant column org_id (row.column)"]
    finally:
        conn.close()


# --- the policies at work, directly as the backend role -----------------------------------------

def test_a_tenant_sees_only_its_own_rows(pg, row_sample) -> None:
    with as_tenant(tg_connect(pg, row_sample), "initech") as conn:
        orders = conn.execute("SELECT tenant_id, item, amount, secret FROM public.orders "
                              "ORDER BY id").fetchall()
        assert orders == [("initech", *row) for row in sample_orders("initech")]
        assert canary("initech") in {r[3] for r in orders}
        customers = conn.execute("SELECT name, email FROM customers ORDER BY id").fetchall()
        assert customers == sample_customers("initech")
        assert conn.execute("SELECT count(*) FROM orders WHERE secret = %s",
                            (canary("vandelay"),)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM countries").fetchone() == (4,)


@pytest.mark.parametrize("setup", [None, "SELECT set_config('tenantgate.tenant', '', false)",
                                   "RESET tenantgate.tenant", "RESET ALL", "DISCARD ALL"])
def test_without_a_tenant_nothing_is_visible(pg, row_sample, setup: str | None) -> None:
    with as_tenant(tg_connect(pg, row_sample), "initech" if setup else None) as conn:
        if setup:
            conn.execute(setup)
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (0,)
        assert conn.execute("UPDATE orders SET amount = 0").rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO orders (tenant_id, item) VALUES ('', 'x')")


def test_writes_are_checked_against_the_tenant(pg, row_sample) -> None:
    with as_tenant(tg_connect(pg, row_sample), "initech") as conn:
        for sql in ("INSERT INTO orders (tenant_id, item) VALUES ('vandelay', 'forged')",
                    "UPDATE orders SET tenant_id = 'vandelay' WHERE item = 'initech-stapler'",
                    "INSERT INTO customers (tenant_id, name) SELECT 'vandelay', name "
                    "FROM customers"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(sql)
            assert sqlstate(info.value) == "42501", sql
            assert "row-level security" in str(info.value)
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO orders (tenant_id, item) VALUES ('initech', 'own')")
            # the same email as vandelay's contact: unique per tenant only (THREATS 45)
            conn.execute("INSERT INTO customers (tenant_id, name, email) "
                         "VALUES ('initech', 'n', 'owner@vandelay.example')")
        # another tenant's rows are neither updated nor deleted, just invisible
        assert conn.execute("DELETE FROM orders WHERE tenant_id = 'vandelay'").rowcount == 0
    with as_tenant(tg_connect(pg, row_sample), "vandelay") as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (3,)


@pytest.mark.parametrize("sql", ["TRUNCATE orders", "INSERT INTO countries VALUES ('XX', 'x')",
                                 "DELETE FROM countries", "CREATE TEMP TABLE orders (x int)",
                                 "ALTER TABLE orders DISABLE ROW LEVEL SECURITY",
                                 "DROP POLICY tenantgate_isolation ON orders",
                                 "SELECT last_value FROM orders_id_seq"])
def test_the_backend_role_cannot_get_around_the_policies(pg, row_sample, sql: str) -> None:
    with as_tenant(tg_connect(pg, row_sample), "initech") as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(sql)
        assert sqlstate(info.value) == "42501", info.value


# --- the commands --------------------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TENANTGATE_", "TENANT_", "PG"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                      os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=60, stdin=subprocess.DEVNULL)


def policy_tables(sql: str) -> set[tuple[str, str]]:
    return {(s.stmt.table.schemaname, s.stmt.table.relname) for s in parse_sql(sql)
            if isinstance(s.stmt, ast.CreatePolicyStmt)}


def test_rls_sql_connect_prints_what_the_sample_installed(pg, row_sample, tmp_path) -> None:
    path = tmp_path / "row.yaml"
    path.write_text(row_sample.config_yaml(pg, free_port(), row_tenants=True))
    result = cli("rls-sql", "--connect", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert policy_tables(result.stdout) == {("public", "orders"), ("public", "customers")}
    installed = row_sample_rls_sql(pg, row_sample)
    assert result.stdout.split("\n")[1:] == installed.split("\n")[1:]  # all but the file name
    template = cli("rls-sql", "--config", str(path))
    assert template.returncode == 0, template.stderr
    assert policy_tables(template.stdout) == {("public", "example_table")}


def test_rls_sql_connect_reports_a_missing_shared_table(pg, row_sample, tmp_path) -> None:
    path = tmp_path / "row.yaml"
    path.write_text(row_sample.config_yaml(pg, free_port(), row_tenants=True)
                    .replace("shared_tables: [public.countries]", "shared_tables: [public.gone]"))
    result = cli("rls-sql", "--connect", "--config", str(path))
    assert result.returncode == 1 and result.stdout == ""
    assert (f"{path}: cluster main, database rowdb: shared table public.gone "
            "(row.shared_tables) does not exist in database rowdb") in result.stderr


def test_check_connect_accepts_the_row_sample(pg, row_sample, tmp_path) -> None:
    path = tmp_path / "row.yaml"
    path.write_text(row_sample.config_yaml(pg, free_port(), row_tenants=True))
    result = cli("check", "--connect", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok (6 tenants")


def test_check_connect_names_the_broken_table(pg, scratch, tmp_path) -> None:
    pg.run_sql(f"ALTER POLICY {POLICY} USING (tenant_id = {SETTING} OR {SETTING} IS NULL);"
               "ALTER TABLE public.customers NO FORCE ROW LEVEL SECURITY",
               dbname=scratch.row_database)
    path = tmp_path / "row.yaml"
    path.write_text(scratch.config_yaml(pg, free_port(), row_tenants=True))
    result = cli("check", "--connect", "--config", str(path))
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines  # reported once for the database, not once per tenant
    assert lines[0].startswith(f"{path}: tenants.initech: table public.customers: row-level "
                               "security is not forced")
    assert lines[1].startswith(f"{path}: tenants.initech: table public.orders: policy "
                               "tenantgate_isolation can let rows through")
