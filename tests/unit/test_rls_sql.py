"""`rls_sql` without a database (template and given catalogs) and the policy-expression
reader that `verify_rls` uses (THREATS 44). The database side is tests/integration/test_rls.py."""

from __future__ import annotations

import pytest
from pglast import ast, parse_sql

from proxy.config import Cluster, Config, RowSettings, Tenant, parse_config
from proxy.sql.rowmodel import RowCatalog, RowTable
from proxy.tenancy.rls import rls_sql
from proxy.tenancy.rls_policy import policy_shape
from proxy.tenancy.rls_sql import POLICY_NAME, TableFacts, row_databases, tenant_predicate

pytestmark = pytest.mark.timeout(30)


def config(tenants: dict[str, Tenant], **row: object) -> Config:
    return Config(path="t.yaml",
                  clusters={"main": Cluster(name="main", hosts=(("127.0.0.1", 5432),),
                                            user="tenantgate"),
                            "eu": Cluster(name="eu", hosts=(("127.0.0.2", 5432),), user="tg eu")},
                  row=RowSettings(**row), tenants=tenants)


ROW = {"initech": Tenant(name="initech", strategy="row", cluster="main", database="rowdb",
                         key="initech"),
       "vandelay": Tenant(name="vandelay", strategy="row", cluster="main", database="rowdb",
                          key="vandelay", role="vandelay_role"),
       "acme": Tenant(name="acme", strategy="database", cluster="main", database="acme"),
       "kramerica": Tenant(name="kramerica", strategy="row", cluster="eu", database="Row DB",
                           key="k")}
CFG = config(ROW, shared_tables=("public.countries", "ref.Currencies"))


def statements(sql: str) -> list:
    return [raw.stmt for raw in parse_sql(sql)]


def policies(sql: str) -> dict[tuple[str, str], ast.CreatePolicyStmt]:
    return {(s.table.schemaname, s.table.relname): s for s in statements(sql)
            if isinstance(s, ast.CreatePolicyStmt)}


def test_row_databases_in_config_order_with_tenant_roles() -> None:
    assert row_databases(CFG) == {("main", "rowdb"): (["initech", "vandelay"],
                                                      ["tenantgate", "vandelay_role"]),
                                  ("eu", "Row DB"): (["kramerica"], ["tg eu"])}


def test_template_without_catalogs_parses_and_covers_every_row_database() -> None:
    sql = rls_sql(CFG)
    stmts = statements(sql)  # the whole script is SQL pglast reads
    assert "-- ==== cluster main, database rowdb (row tenants: initech, vandelay) ====" in sql
    assert '-- ==== cluster eu, database Row DB (row tenants: kramerica) ====' in sql
    assert "acme" not in sql  # database tenants need nothing
    made = policies(sql)
    assert set(made) == {("public", "example_table")}  # the placeholder, once per database
    assert sql.count(f"CREATE POLICY {POLICY_NAME} ON public.example_table AS PERMISSIVE FOR ALL "
                     "TO tenantgate, vandelay_role\n") == 1
    assert sql.count(f'CREATE POLICY {POLICY_NAME} ON public.example_table AS PERMISSIVE FOR ALL '
                     'TO "tg eu"\n') == 1
    assert "rls-sql --connect" in sql
    assert "REVOKE TEMPORARY ON DATABASE rowdb FROM PUBLIC, tenantgate, vandelay_role;" in sql
    assert 'REVOKE TEMPORARY ON DATABASE "Row DB" FROM PUBLIC, "tg eu";' in sql
    assert 'GRANT SELECT ON TABLE ref."Currencies" TO tenantgate, vandelay_role;' in sql
    assert ("REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON TABLE "
            "public.countries FROM PUBLIC, tenantgate, vandelay_role;") in sql
    assert "GRANT USAGE ON SCHEMA ref TO tenantgate, vandelay_role;" in sql
    assert "FORCE ROW LEVEL SECURITY" in sql and "UNIQUE (tenant_id, email)" in sql
    kinds = [type(s).__name__ for s in stmts]
    assert kinds.count("TransactionStmt") == 4  # BEGIN … COMMIT per database


def test_template_policy_fails_closed_and_reads_the_setting() -> None:
    policy = policies(rls_sql(config({"initech": ROW["initech"]})))[("public", "example_table")]
    assert policy.permissive and policy.cmd_name == "all"
    assert [r.rolename for r in policy.roles] == ["tenantgate"]
    for expr in (policy.qual, policy.with_check):
        assert isinstance(expr, ast.A_Expr) and expr.kind.name == "AEXPR_OP"
        assert expr.lexpr.fields[0].sval == "tenant_id"
        nullif = expr.rexpr
        assert nullif.kind.name == "AEXPR_NULLIF" and nullif.rexpr.val.sval == ""
        call = nullif.lexpr
        assert [n.sval for n in call.funcname] == ["pg_catalog", "current_setting"]
        assert call.args[0].val.sval == "tenantgate.tenant" and call.args[1].val.boolval


def test_no_row_tenants_means_nothing_to_install() -> None:
    sql = rls_sql(config({"acme": ROW["acme"]}))
    assert statements(sql) == []
    assert "no row-strategy tenants" in sql


def test_with_catalogs_real_tables_types_sequences_and_loose_keys() -> None:
    catalog = RowCatalog(tenant_column="org", tables=(
        RowTable("public", "orders", ("id", "org", "item")),
        RowTable("Sales", "Line Items", ("id", "org"))), shared_tables=(("public", "countries"),))
    facts = {("public", "orders"): TableFacts("uuid", (("public", "orders_id_seq"),),
                                              ("orders_email_key UNIQUE (email)",)),
             ("Sales", "Line Items"): TableFacts("integer")}
    cfg = config({"initech": ROW["initech"]}, column="org", shared_tables=("public.countries",))
    sql = rls_sql(cfg, {("main", "rowdb"): catalog}, {("main", "rowdb"): facts})
    made = policies(sql)
    assert set(made) == {("public", "orders"), ("Sales", "Line Items")}
    assert ("USING (org = NULLIF(pg_catalog.current_setting('tenantgate.tenant', true), ''))"
            "::uuid)") not in sql  # the cast applies to the setting, not the comparison
    assert ("    USING (org = NULLIF(pg_catalog.current_setting('tenantgate.tenant', true), '')"
            "::uuid)") in sql
    assert ('ALTER TABLE "Sales"."Line Items" FORCE ROW LEVEL SECURITY;' in sql
            and "''::integer)" in sql.replace("'')::integer", "''::integer)"))
    assert "GRANT USAGE ON SEQUENCE public.orders_id_seq TO tenantgate;" in sql
    assert "-- warning: orders_email_key UNIQUE (email) leaves out org (THREATS 45)" in sql
    assert "example_table" not in sql
    assert ('REVOKE TRUNCATE, REFERENCES, TRIGGER ON TABLE "Sales"."Line Items" '
            "FROM PUBLIC, tenantgate;") in sql


def test_catalog_without_tenant_tables_says_so() -> None:
    catalog = RowCatalog(tenant_column="tenant_id", tables=(), shared_tables=())
    sql = rls_sql(config({"initech": ROW["initech"]}), {("main", "rowdb"): catalog}, {})
    assert "No table in database rowdb has the tenant_id column." in sql
    assert policies(sql) == {}


def test_names_cannot_break_out_of_comments_or_identifiers() -> None:
    evil = 'x\nDROP TABLE victims; --'
    cfg = config({"t": Tenant(name="t\nDELETE FROM victims;", strategy="row", cluster="main",
                              database=evil, key="k", role='r"; DROP ROLE postgres; --')},
                 column='c"ol')
    sql = rls_sql(cfg)
    stmts = statements(sql)
    kinds = {type(s).__name__ for s in stmts}
    assert "DeleteStmt" not in kinds and "DropRoleStmt" not in kinds
    assert {s.removeType.name for s in stmts if isinstance(s, ast.DropStmt)} == {"OBJECT_POLICY"}
    assert '"c""ol" = NULLIF' in sql
    assert '"r""; DROP ROLE postgres; --"' in sql


def test_sample_config_renders_and_parses() -> None:
    text = """
clusters: {main: {hosts: ["127.0.0.1:5432"], user: tenantgate}}
users: {app: {password: pw, tenants: ["*"]}}
row: {column: tenant_id, shared_tables: [public.countries], enforce: both}
tenants:
  initech: {strategy: row, cluster: main, database: rowdb, key: initech}
"""
    sql = rls_sql(parse_config(text, "sample.yaml", env={}))
    assert sql.startswith("-- tenantgate rls-sql for sample.yaml\n")
    assert len(statements(sql)) > 10


@pytest.mark.parametrize("column_type, cast", [("text", ""), ("uuid", "::uuid"),
                                               ("character varying(64)",
                                                "::character varying(64)")])
def test_tenant_predicate_casts_the_setting(column_type: str, cast: str) -> None:
    assert tenant_predicate("tenant_id", column_type) == (
        f"tenant_id = NULLIF(pg_catalog.current_setting('tenantgate.tenant', true), ''){cast}")


# --- the policy expression reader ---------------------------------------------------------------

S = "current_setting('tenantgate.tenant'::text, true)"


@pytest.mark.parametrize("expr", [
    f"(tenant_id = {S})",
    f"({S} = tenant_id)",
    f"(tenant_id = NULLIF({S}, ''::text))",
    f"(tenant_id = (NULLIF({S}, ''::text))::uuid)",
    f"((tenant_id)::text = {S})",
    "(tenant_id = current_setting('tenantgate.tenant'::text))",
    f"(tenant_id = pg_catalog.current_setting('tenantgate.tenant'::text, true))",
    f"((tenant_id = {S}) AND (amount > 0))",  # narrowing is fine
    f"((amount > 0) AND ((tenant_id = {S}) AND (id > 0)))",
    f"((tenant_id = {S}) AND ((amount > 0) OR (id > 0)))",  # OR only inside a narrowing AND
])
def test_isolating_expressions(expr: str) -> None:
    shape = policy_shape(expr, "tenant_id", "tenantgate.tenant")
    assert shape.reads_setting and shape.isolates, shape.reason


@pytest.mark.parametrize("expr, reason", [
    (f"((tenant_id = {S}) OR ({S} = ''::text))", "OR"),
    (f"((tenant_id = {S}) OR ({S} IS NULL))", "OR"),
    (f"(({S} IS NULL) OR (tenant_id = {S}))", "OR"),
    (f"(tenant_id = COALESCE(NULLIF({S}, ''::text), tenant_id))", "not tenant_id ="),
    (f"(tenant_id <> {S})", "not tenant_id ="),
    (f"(tenant_id = lower({S}))", "not tenant_id ="),
    (f"(tenant_id OPERATOR(public.=) {S})", "not tenant_id ="),  # a user-defined operator
    (f"(tenant_id = NULLIF({S}, 'x'::text))", "not tenant_id ="),
    (f"(other_id = {S})", "not tenant_id ="),
    (f"(tenant_id = public.current_setting('tenantgate.tenant'::text, true))", "does not read"),
    ("(tenant_id = current_setting('app.tenant'::text, true))", "does not read"),
    ("true", "does not read"),
    (f"((tenant_id = {S}) COLLATE \"C\")", "not tenant_id ="),
])
def test_fail_open_or_foreign_expressions(expr: str, reason: str) -> None:
    shape = policy_shape(expr, "tenant_id", "tenantgate.tenant")
    assert not shape.isolates
    assert reason in shape.reason


def test_missing_and_unparsable_expressions() -> None:
    assert policy_shape(None, "tenant_id", "tenantgate.tenant").reason == "there is no expression"
    shape = policy_shape("(tenant_id = ", "tenant_id", "tenantgate.tenant")
    assert not shape.isolates and "cannot be parsed" in shape.reason
    shape = policy_shape(f"1); SELECT (tenant_id = {S}", "tenant_id", "tenantgate.tenant")
    assert not shape.isolates


def test_a_shared_table_with_the_tenant_column_is_treated_as_a_tenant_table() -> None:
    catalog = RowCatalog(tenant_column="tenant_id", tables=(
        RowTable("public", "countries", ("code", "tenant_id")),),
        shared_tables=(("public", "countries"),))
    sql = rls_sql(config({"initech": ROW["initech"]}, shared_tables=("public.countries",)),
                  {("main", "rowdb"): catalog}, {})
    assert set(policies(sql)) == {("public", "countries")}
    assert "GRANT SELECT ON TABLE public.countries" not in sql
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.countries TO tenantgate;" in sql
