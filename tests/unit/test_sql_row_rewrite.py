"""Row strategy rewrite of reads: every tenant-table reference becomes a confined derived
table, at every nesting level (THREATS 28–31); names out of reach are refused."""

from __future__ import annotations

import pytest

from proxy.sql import Scope, analyze_uncached, nodes
from proxy.sql.rewrite import RowContext
from proxy.sql.rewrite_check import verify_statement
from proxy.sql.rowmodel import RowCatalog, RowTable

from tests.unit.test_sql_allowed import APPLICATION
from tests.unit.test_sql_attacks import denied

pytestmark = pytest.mark.timeout(60)

CATALOG = RowCatalog(
    "tenant_id",
    tables=(RowTable("public", "orders", ("id", "tenant_id", "user_id", "total", "status")),
            RowTable("public", "users", ("id", "tenant_id", "email", "name")),
            RowTable("public", "orders_2025", ("id", "tenant_id", "user_id", "total", "status")),
            RowTable("app", "items", ("id", "tenant_id", "name")),
            RowTable("public", "pgbench_accounts", ("aid", "bid", "abalance", "filler",
                                                    "tenant_id"))),
    shared_tables=(("public", "countries"), ("ref", "currencies")),
    search_path=("app", "public"),
)
SCOPE = Scope("row", row_column="tenant_id", tenant_key="initech", row_enforce="both",
              row_catalog=CATALOG)
REWRITE_ONLY = Scope("row", row_column="tenant_id", tenant_key="initech",
                     row_enforce="rewrite", row_catalog=CATALOG)
RLS = Scope("row", row_column="tenant_id", tenant_key="initech", row_enforce="rls",
            row_catalog=CATALOG)


def confined(table: str, schema: str = "public", only: bool = False) -> str:
    """The derived table a tenant table becomes (without its alias)."""
    return (f"(SELECT * FROM {'ONLY ' if only else ''}{schema}.{table} "
            f"WHERE {table}.tenant_id = 'initech')")


O, U = confined("orders"), confined("users")


def rewritten(sql: str, scope: Scope = SCOPE) -> str:
    decision = analyze_uncached(sql, scope)
    assert decision.action == "rewrite", decision.error and decision.error.message
    assert decision.rule == "row-rewrite"
    return decision.sql


@pytest.mark.parametrize("sql, expected", [
    ("SELECT * FROM orders", f"SELECT * FROM {O} AS orders"),
    ("SELECT * FROM public.orders o", f"SELECT * FROM {O} AS o"),
    ("SELECT * FROM ONLY orders", f"SELECT * FROM {confined('orders', only=True)} AS orders"),
    ("TABLE orders", f"SELECT * FROM {O} AS orders"),
    ("SELECT * FROM orders AS o (a, b)", f"SELECT * FROM {O} AS o (a, b)"),
    ("SELECT * FROM orders_2025", f"SELECT * FROM {confined('orders_2025')} AS orders_2025"),
    ("SELECT * FROM items", f"SELECT * FROM {confined('items', 'app')} AS items"),
    # comma joins and JOINs of every kind keep their meaning (THREATS 29)
    ("SELECT * FROM orders o, users u WHERE o.user_id = u.id",
     f"SELECT * FROM {O} AS o, {U} AS u WHERE o.user_id = u.id"),
    ("SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id",
     f"SELECT * FROM {U} AS u LEFT JOIN {O} AS o ON o.user_id = u.id"),
    ("SELECT * FROM users u RIGHT JOIN orders o USING (id)",
     f"SELECT * FROM {U} AS u RIGHT JOIN {O} AS o USING (id)"),
    ("SELECT * FROM users u FULL JOIN orders o ON true",
     f"SELECT * FROM {U} AS u FULL JOIN {O} AS o ON TRUE"),
    ("SELECT * FROM users CROSS JOIN orders",
     f"SELECT * FROM {U} AS users CROSS JOIN {O} AS orders"),
    ("SELECT * FROM users NATURAL JOIN orders",
     f"SELECT * FROM {U} AS users NATURAL INNER JOIN {O} AS orders"),
    ("SELECT * FROM users a JOIN (orders b JOIN users c ON b.user_id = c.id) ON a.id = b.id",
     f"SELECT * FROM {U} AS a INNER JOIN ({O} AS b INNER JOIN {U} AS c "
     f"ON b.user_id = c.id) ON a.id = b.id"),
    # subqueries wherever they hide
    ("SELECT * FROM (SELECT * FROM orders) s", f"SELECT * FROM (SELECT * FROM {O} AS orders) AS s"),
    ("SELECT * FROM users WHERE id IN (SELECT user_id FROM orders)",
     f"SELECT * FROM {U} AS users WHERE id IN (SELECT user_id FROM {O} AS orders)"),
    ("SELECT (SELECT count(*) FROM orders)",
     f"SELECT (SELECT count(*) FROM {O} AS orders)"),
    ("SELECT 1 WHERE EXISTS (SELECT 1 FROM orders)",
     f"SELECT 1 WHERE EXISTS (SELECT 1 FROM {O} AS orders)"),
    ("SELECT status FROM orders GROUP BY status HAVING count(*) > (SELECT count(*) FROM users)",
     f"SELECT status FROM {O} AS orders GROUP BY status "
     f"HAVING count(*) > (SELECT count(*) FROM {U} AS users)"),
    ("SELECT 1 ORDER BY (SELECT max(id) FROM orders)",
     f"SELECT 1 ORDER BY (SELECT max(id) FROM {O} AS orders)"),
    ("SELECT * FROM users u, LATERAL (SELECT * FROM orders o WHERE o.user_id = u.id) x",
     f"SELECT * FROM {U} AS u, LATERAL (SELECT * FROM {O} AS o WHERE o.user_id = u.id) AS x"),
    ("SELECT * FROM generate_series(1, (SELECT count(*) FROM orders)::int) g",
     "SELECT * FROM generate_series(1, CAST((SELECT count(*) FROM "
     f"{O} AS orders) AS integer)) AS g"),
    # set operations
    ("SELECT id FROM orders UNION ALL SELECT id FROM users",
     f"SELECT id FROM {O} AS orders UNION ALL SELECT id FROM {U} AS users"),
    ("SELECT id FROM orders EXCEPT SELECT id FROM users INTERSECT SELECT 1",
     f"SELECT id FROM {O} AS orders EXCEPT(SELECT id FROM {U} AS users INTERSECT SELECT 1)"),
    # CTEs: references to the CTE stay, the CTE's own query is rewritten
    ("WITH r AS (SELECT * FROM orders) SELECT * FROM r",
     f"WITH r AS (SELECT * FROM {O} AS orders) SELECT * FROM r"),
    ("WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t, orders WHERE n < 3) "
     "SELECT * FROM t",
     f"WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t, {O} AS orders "
     f"WHERE n < 3) SELECT * FROM t"),
    # TABLESAMPLE moves inside the derived table; FOR UPDATE names the FROM item
    ("SELECT * FROM orders TABLESAMPLE SYSTEM (10) REPEATABLE (1)",
     "SELECT * FROM (SELECT * FROM public.orders TABLESAMPLE system(10) REPEATABLE (1) "
     "WHERE orders.tenant_id = 'initech') AS orders"),
    ("SELECT * FROM orders o FOR UPDATE OF o SKIP LOCKED",
     f"SELECT * FROM {O} AS o FOR UPDATE OF o SKIP LOCKED"),
    ("DECLARE c CURSOR FOR SELECT * FROM orders",
     f"DECLARE c CURSOR FOR SELECT * FROM {O} AS orders"),
    # shared tables are read as they are, qualified with the schema they resolved to
    ("SELECT * FROM countries", "SELECT * FROM public.countries"),
    ("SELECT * FROM orders o JOIN ref.currencies c ON true",
     f"SELECT * FROM {O} AS o INNER JOIN ref.currencies AS c ON TRUE"),
    ("SELECT * FROM pgbench_accounts WHERE aid = 5",
     f"SELECT * FROM {confined('pgbench_accounts')} AS pgbench_accounts WHERE aid = 5"),
])
def test_every_tenant_reference_is_confined(sql: str, expected: str) -> None:
    assert rewritten(sql) == expected


@pytest.mark.parametrize("sql, expected", [
    # A CTE shadows a table in the statement body …
    ("WITH orders AS (SELECT 1 AS id) SELECT * FROM orders", None),
    ("WITH RECURSIVE orders(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM orders "
     "WHERE id < 3) SELECT * FROM orders", None),
    # … but not in its own (non-recursive) query, nor in an earlier sibling
    ("WITH orders AS (SELECT * FROM orders) SELECT * FROM orders",
     f"WITH orders AS (SELECT * FROM {O} AS orders) SELECT * FROM orders"),
    ("WITH a AS (SELECT * FROM orders), orders AS (SELECT 1) SELECT * FROM a, orders",
     f"WITH a AS (SELECT * FROM {O} AS orders), orders AS (SELECT 1) SELECT * FROM a, orders"),
    # a qualified name is never a CTE; the CTE is visible in nested subqueries
    ("WITH orders AS (SELECT 1) SELECT * FROM public.orders",
     f"WITH orders AS (SELECT 1) SELECT * FROM {O} AS orders"),
    ("WITH orders AS (SELECT 1) SELECT * FROM (SELECT * FROM orders) x", None),
])
def test_cte_names_are_scoped_like_postgresql(sql: str, expected: str | None) -> None:
    decision = analyze_uncached(sql, SCOPE)
    if expected is None:
        assert decision.action == "allow", decision.error and decision.error.message
    else:
        assert (decision.action, decision.sql) == ("rewrite", expected)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM secrets", "SELECT * FROM public.secrets", "SELECT * FROM orders_view",
    "SELECT * FROM other.orders", "SELECT * FROM orders JOIN secrets ON true",
    "SELECT (SELECT 1 FROM secrets)", "WITH x AS (SELECT * FROM secrets) SELECT 1",
    "SELECT * FROM orders_id_seq", "COPY secrets TO STDOUT",
    "SELECT * FROM ref.countries",  # shared only where the catalog says
])
def test_relations_that_are_neither_tenant_nor_shared_are_hidden(sql: str) -> None:
    message = denied(sql, SCOPE, "42P01", "relation-reach")
    assert message.endswith("does not exist (rule relation-reach)")


def test_the_refusal_reads_the_same_whether_or_not_the_relation_exists() -> None:
    # THREATS 31: a view is not in the catalog, so it reads like a missing relation.
    view = analyze_uncached("SELECT * FROM orders_view", SCOPE).error.message
    missing = analyze_uncached("SELECT * FROM no_such_thing", SCOPE).error.message
    assert view.replace("orders_view", "X") == missing.replace("no_such_thing", "X")


@pytest.mark.parametrize("sql, same_as", [
    ("SELECT 'secrets'::regclass", "SELECT * FROM secrets"),
    ("SELECT to_regclass('public.secrets')", "SELECT * FROM public.secrets"),
    ("SELECT 'public.secrets'::regclass::oid", "SELECT * FROM public.secrets"),
    ("SELECT id FROM orders WHERE 'orders_view'::regclass IS NOT NULL",
     "SELECT * FROM orders_view"),
    ("SELECT to_regclass('orders_id_seq')", "SELECT * FROM orders_id_seq"),
    ("SELECT pg_get_serial_sequence('secrets', 'id')", "SELECT * FROM secrets"),
])
def test_relations_out_of_reach_named_in_strings_are_hidden(sql: str, same_as: str) -> None:
    """THREATS 18: a reg* literal answers like a FROM item naming the relation."""
    message = denied(sql, SCOPE, "42P01", "relation-reach")
    assert message == analyze_uncached(same_as, SCOPE).error.message
    denied(sql, REWRITE_ONLY, "42P01", "relation-reach")
    # with RLS alone, reach is the database's (as for `SELECT * FROM secrets`)
    assert analyze_uncached(sql, RLS).action == "allow"


@pytest.mark.parametrize("sql", ["SELECT 'orders'::regclass", "SELECT 'countries'::regclass",
                                 "SELECT to_regclass('ref.currencies')",
                                 "SELECT 'pg_type'::regclass",
                                 "SELECT pg_get_serial_sequence('orders', 'id')"])
def test_tables_in_reach_named_in_strings_are_allowed(sql: str) -> None:
    assert analyze_uncached(sql, SCOPE).action == "allow"


@pytest.mark.parametrize("sql", [
    "SELECT nextval('orders_id_seq')", "SELECT currval('public.orders_id_seq')",
    "SELECT setval('orders_id_seq', 1)", "SELECT nextval('orders_id_seq'::regclass)",
    "SELECT pg_catalog.nextval('x')", "INSERT INTO orders (id) VALUES (nextval('s'))",
    "SELECT nextval(relname) FROM pg_class",
])
def test_sequence_functions_are_refused_for_row_tenants(sql: str) -> None:
    """THREATS 27: direct sequence access shows every tenant's volume; only column
    defaults (on the server) use the sequences. In every enforcement mode."""
    for scope in (SCOPE, REWRITE_ONLY, RLS):
        denied(sql, scope, "42501", "sequence-function")
    assert analyze_uncached("INSERT INTO orders (total) VALUES (1)", SCOPE).action == "rewrite"


def test_catalogs_on_the_allowlist_are_read_unchanged() -> None:
    for sql in ["SELECT * FROM pg_catalog.pg_type", "SELECT oid FROM pg_class",
                "SELECT 1", "SELECT now()"]:
        decision = analyze_uncached(sql, SCOPE)
        assert (decision.action, decision.sql) == ("allow", None), sql
    denied("SELECT * FROM pg_authid", SCOPE, "42501", "catalog")


def test_existing_checks_still_apply_inside_rewritten_statements() -> None:
    denied("SELECT set_config('tenantgate.tenant', 'globex', false) FROM orders", SCOPE,
           "42501", "function-allowlist")
    denied("SELECT * FROM orders WHERE pg_sleep(1) IS NULL OR lo_get(1) IS NULL", SCOPE,
           "42501", "function-allowlist")
    denied("SELECT * INTO x FROM orders", SCOPE, "42501", "statement-type")
    denied("EXPLAIN SELECT * FROM orders", SCOPE, "42501", "explain")
    denied("SELECT * FROM otherdb.public.orders", SCOPE, "0A000", "cross-database")


def test_rls_enforcement_does_not_rewrite() -> None:
    decision = analyze_uncached("SELECT * FROM orders", RLS)
    assert (decision.action, decision.sql) == ("allow", None)
    denied("MERGE INTO orders o USING users u ON true WHEN MATCHED THEN DELETE", RLS,
           "0A000", "row-strategy")


def test_rewrite_enforcement_without_a_catalog_refuses_everything() -> None:
    scope = Scope("row", row_column="tenant_id", tenant_key="initech", row_enforce="rewrite")
    denied("SELECT 1", scope, "0A000", "row-catalog")
    for broken in [Scope("row", row_enforce="both", row_catalog=("not", "a", "catalog")),
                   Scope("row", row_enforce="rewrit", row_catalog=CATALOG)]:
        denied("SELECT * FROM orders", broken, "0A000", "row-catalog")
    # `both` without a catalog leaves the tenant to RLS (the tenancy layer's choice)
    both = Scope("row", row_column="tenant_id", tenant_key="initech", row_enforce="both")
    assert analyze_uncached("SELECT * FROM orders", both).action == "allow"


def test_rewrite_only_enforcement_rewrites_the_same_way() -> None:
    assert rewritten("SELECT * FROM orders", REWRITE_ONLY) == f"SELECT * FROM {O} AS orders"


def test_the_tenant_key_is_quoted_as_a_literal() -> None:
    scope = Scope("row", row_column="tenant_id", tenant_key="o'brien; --",
                  row_catalog=CATALOG)
    assert rewritten("SELECT * FROM orders", scope) == (
        "SELECT * FROM (SELECT * FROM public.orders WHERE orders.tenant_id = 'o''brien; --') "
        "AS orders")


def test_multi_statement_strings_rewrite_each_statement() -> None:
    decision = analyze_uncached("BEGIN; SELECT * FROM orders; COMMIT", SCOPE)
    assert decision.sql == f"BEGIN\n;\nSELECT * FROM {O} AS orders\n;\nCOMMIT"
    assert decision.statements == 3
    denied("SELECT * FROM orders; SELECT * FROM secrets", SCOPE, "42P01", "relation-reach")


def test_reset_all_still_reapplies_the_pinned_settings() -> None:
    scope = Scope("row", row_column="tenant_id", tenant_key="initech", row_catalog=CATALOG,
                  pinned_settings=(("search_path", "app, public"),))
    decision = analyze_uncached("RESET ALL; SELECT * FROM orders", scope)
    assert decision.sql == (f"RESET ALL\n;\nSET search_path TO 'app', 'public'\n;\n"
                            f"SELECT * FROM {O} AS orders")


# --- the check of what is sent (DESIGN 6.6, THREATS 4.5) --------------------------------

W = "(SELECT * FROM public.orders WHERE orders.tenant_id = 'initech')"


@pytest.mark.parametrize("sql, ok", [
    (f"SELECT * FROM {W} AS o", True),
    (f"SELECT * FROM {W} AS o WHERE EXISTS (SELECT 1 FROM {W} AS p)", True),
    ("SELECT * FROM orders", False),
    ("SELECT * FROM public.orders", False),
    ("SELECT * FROM countries", False),  # shared tables go out qualified
    ("SELECT * FROM public.countries", True),
    ("SELECT * FROM (SELECT * FROM public.orders WHERE orders.tenant_id = 'globex') o",
     False),
    ("SELECT * FROM (SELECT * FROM public.orders WHERE orders.tenant_id = 'initech' OR true) o",
     False),
    ("SELECT * FROM (SELECT * FROM public.orders WHERE orders.tenant_id = 'initech') o", True),
    ("SELECT * FROM (SELECT * FROM public.orders o2 WHERE o2.tenant_id = 'initech') o",
     False),
    ("SELECT * FROM (SELECT * FROM public.orders WHERE orders.tenant_id = 'initech' "
     "LIMIT 5) o", False),
    ("SELECT * FROM (SELECT * FROM public.orders WHERE orders.tenant_id = 'initech' "
     "OFFSET 1) o", False),
    ("SELECT * FROM (SELECT *, 1 FROM public.orders WHERE orders.tenant_id = 'initech') o",
     False),
    ("SELECT * FROM (SELECT * FROM public.orders, public.users WHERE orders.tenant_id = "
     "'initech') o", False),
    (f"SELECT * FROM {W} o WHERE EXISTS (SELECT 1 FROM users)", False),
    ("WITH orders AS (SELECT 1) SELECT * FROM orders", True),
    ("WITH x AS (SELECT * FROM orders) SELECT * FROM x", False),
    ("UPDATE public.orders SET status = 'x' WHERE id = 1", False),
    ("UPDATE public.orders SET status = 'x' WHERE id = 1 AND orders.tenant_id = 'initech'",
     True),
    ("UPDATE public.orders SET status = 'x' WHERE id = 1 OR orders.tenant_id = 'initech'",
     False),
    ("UPDATE public.orders SET tenant_id = 'x' WHERE orders.tenant_id = 'initech'", False),
    ("DELETE FROM public.orders WHERE orders.tenant_id = 'initech' AND id IN "
     "(SELECT id FROM orders)", False),
    ("DELETE FROM public.countries WHERE countries.tenant_id = 'initech'", False),
    ("INSERT INTO public.orders (id) VALUES (1)", False),
    ("INSERT INTO public.orders (id, tenant_id) VALUES (1, 'initech')", True),
    ("INSERT INTO public.orders (id, tenant_id) VALUES (1, 'initech'), (2, 'x')", False),
    ("INSERT INTO public.orders (id, tenant_id) VALUES (1, 'initech') ON CONFLICT (id) "
     "DO UPDATE SET status = 'x'", False),
    ("INSERT INTO public.orders (id, tenant_id) VALUES (1, 'initech') ON CONFLICT (id) "
     "DO UPDATE SET status = 'x' WHERE orders.tenant_id = 'initech'", True),
    ("COPY orders TO STDOUT", False),
    ("COPY public.countries TO STDOUT", True),
    ("MERGE INTO public.orders t USING public.countries c ON true WHEN MATCHED THEN DELETE",
     False),
    ("MERGE INTO public.orders t USING public.countries c ON true AND t.tenant_id = "
     "'initech' WHEN NOT MATCHED BY SOURCE THEN DELETE", False),
    ("MERGE INTO public.orders t USING public.countries c ON true AND t.tenant_id = "
     "'initech' WHEN MATCHED THEN DELETE", True),
    ("SELECT 1", True),
    ("SELECT oid FROM pg_class", True),
])
def test_the_check_of_rewritten_sql_proves_confinement(sql: str, ok: bool) -> None:
    statement = nodes.parse(sql)[0]
    ctx = RowContext(SCOPE, verify=True)
    if ok:
        verify_statement(ctx, statement.kind, statement.fields)
    else:
        with pytest.raises(Exception) as caught:
            verify_statement(ctx, statement.kind, statement.fields)
        assert (caught.value.sqlstate, caught.value.rule) == ("0A000", "rewrite-check")


def test_a_rewrite_that_fails_the_check_is_never_forwarded(monkeypatch) -> None:
    import proxy.sql.analysis as analysis

    # A deparser bug that dropped the confinement must be caught on the re-parsed text.
    monkeypatch.setattr(analysis, "deparse", lambda kind, fields: "SELECT * FROM public.orders")
    denied("SELECT * FROM orders", SCOPE, "0A000", "rewrite-check")


# --- driver and application SQL ---------------------------------------------------------

_APP_TABLES = ("a", "app_user", "archive", "b", "c", "counters", "docs", "done", "jobs",
               "new_users", "nodes", "orders", "payments", "profiles", "queue", "sessions",
               "t", "tags", "users")
APP_SCOPE = Scope("row", row_column="tenant_id", tenant_key="initech", row_catalog=RowCatalog(
    "tenant_id", tuple(RowTable("public", n, ("id", "tenant_id", "x")) for n in _APP_TABLES),
    shared_tables=(("public", "plans"),)))
_APP_REFUSED = {
    "INSERT INTO archive SELECT * FROM orders WHERE created_at < now()": "row-insert",
    "UPDATE jobs SET done = true WHERE CURRENT OF c": "row-strategy",
    "WITH moved AS (DELETE FROM queue WHERE id = 1 RETURNING *) "
    "INSERT INTO done SELECT * FROM moved": "row-insert",
    # THREATS 27: a sequence is shared by the row tenants; column defaults still use it
    "INSERT INTO users (id, email) VALUES (nextval('users_id_seq'::regclass), 'x')":
        "sequence-function",
    "SELECT nextval('users_id_seq'), currval('users_id_seq')": "sequence-function",
}
_APP_SQLSTATE = {"sequence-function": "42501"}


@pytest.mark.parametrize("sql", APPLICATION)
def test_application_sql_still_works_with_the_rewrite(sql: str) -> None:
    decision = analyze_uncached(sql, APP_SCOPE)
    if sql in _APP_REFUSED:
        assert (decision.action, decision.rule) == ("deny", _APP_REFUSED[sql])
        assert decision.error.sqlstate == _APP_SQLSTATE.get(decision.rule, "0A000")
        return
    assert decision.action in ("allow", "rewrite"), decision.error and decision.error.message
    if decision.action == "rewrite":
        for statement in nodes.parse(decision.sql):  # parses, and is confined
            verify_statement(RowContext(APP_SCOPE, verify=True), statement.kind,
                             statement.fields)
