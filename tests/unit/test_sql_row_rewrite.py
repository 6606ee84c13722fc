"""Row strategy rewrite of reads: every tenant-table reference is confined at every nesting
level (THREATS 28–31) — filtered in its level's WHERE or its outer join's ON, or read
through a derived table where a filter is not certainly right; names out of reach are
refused; and the proof of what is sent accepts exactly those forms."""

from __future__ import annotations

import pytest

from proxy.errors import NotSupported
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
MINE = "SELECT * FROM public.orders WHERE orders.tenant_id = 'initech'"  # SELECT * FROM orders


def rewritten(sql: str, scope: Scope = SCOPE) -> str:
    decision = analyze_uncached(sql, scope)
    assert decision.action == "rewrite", decision.error and decision.error.message
    assert decision.rule == "row-rewrite"
    return decision.sql


def mine(ref: str) -> str:
    """The filter of the tenant table called `ref` at its query level."""
    return f"{ref}.tenant_id = 'initech'"


@pytest.mark.parametrize("sql, expected", [
    # a plain reference keeps the table; its filter goes into the level's WHERE
    ("SELECT * FROM orders", f"SELECT * FROM public.orders WHERE {mine('orders')}"),
    ("SELECT * FROM public.orders o", f"SELECT * FROM public.orders AS o WHERE {mine('o')}"),
    ("SELECT * FROM ONLY orders", f"SELECT * FROM ONLY public.orders WHERE {mine('orders')}"),
    ("TABLE orders", f"SELECT * FROM public.orders WHERE {mine('orders')}"),
    ("SELECT * FROM orders_2025",
     f"SELECT * FROM public.orders_2025 WHERE {mine('orders_2025')}"),
    ("SELECT * FROM items", f"SELECT * FROM app.items WHERE {mine('items')}"),
    ('SELECT * FROM "orders" "O"', 'SELECT * FROM public.orders AS "O" WHERE '
                                   + mine('"O"')),
    # an existing WHERE is AND-ed as a whole: an OR stays inside its parentheses
    ("SELECT * FROM orders WHERE id = 1 OR status = 'x'",
     f"SELECT * FROM public.orders WHERE (id = 1 OR status = 'x') AND {mine('orders')}"),
    ("SELECT * FROM orders WHERE id = 1 AND status = 'x' OR true",
     f"SELECT * FROM public.orders WHERE ((id = 1 AND status = 'x') OR TRUE) "
     f"AND {mine('orders')}"),
    ("SELECT * FROM orders WHERE NOT (id = 1 AND true)",
     f"SELECT * FROM public.orders WHERE NOT(id = 1 AND TRUE) AND {mine('orders')}"),
    # comma and inner joins: every table's filter in the WHERE
    ("SELECT * FROM orders o, users u WHERE o.user_id = u.id",
     f"SELECT * FROM public.orders AS o, public.users AS u WHERE o.user_id = u.id "
     f"AND {mine('o')} AND {mine('u')}"),
    ("SELECT * FROM users CROSS JOIN orders",
     f"SELECT * FROM public.users CROSS JOIN public.orders "
     f"WHERE {mine('users')} AND {mine('orders')}"),
    ("SELECT * FROM users a JOIN (orders b JOIN users c ON b.user_id = c.id) ON a.id = b.id",
     f"SELECT * FROM public.users AS a INNER JOIN (public.orders AS b INNER JOIN "
     f"public.users AS c ON b.user_id = c.id) ON a.id = b.id "
     f"WHERE {mine('a')} AND {mine('b')} AND {mine('c')}"),
    ("SELECT * FROM users NATURAL JOIN orders",
     f"SELECT * FROM public.users NATURAL INNER JOIN public.orders "
     f"WHERE {mine('users')} AND {mine('orders')}"),
    # outer joins (THREATS 29): the nullable side's filter in that join's ON, the
    # preserved side's in the WHERE
    ("SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id",
     f"SELECT * FROM public.users AS u LEFT JOIN public.orders AS o ON o.user_id = u.id "
     f"AND {mine('o')} WHERE {mine('u')}"),
    ("SELECT * FROM users u RIGHT JOIN orders o ON o.user_id = u.id OR u.id IS NULL",
     f"SELECT * FROM public.users AS u RIGHT JOIN public.orders AS o ON "
     f"(o.user_id = u.id OR u.id IS NULL) AND {mine('u')} WHERE {mine('o')}"),
    ("SELECT * FROM users u LEFT JOIN countries c ON true LEFT JOIN orders o ON false",
     f"SELECT * FROM public.users AS u LEFT JOIN public.countries AS c ON TRUE "
     f"LEFT JOIN public.orders AS o ON FALSE AND {mine('o')} WHERE {mine('u')}"),
    # nested: b is preserved inside the nullable side of the outer join (its ON), c is the
    # inner join's nullable side (its own ON)
    ("SELECT * FROM users a LEFT JOIN (orders b LEFT JOIN users c ON b.user_id = c.id) "
     "ON a.id = b.id",
     f"SELECT * FROM public.users AS a LEFT JOIN (public.orders AS b LEFT JOIN "
     f"public.users AS c ON b.user_id = c.id AND {mine('c')}) ON a.id = b.id "
     f"AND {mine('b')} WHERE {mine('a')}"),
    ("SELECT * FROM users a LEFT JOIN (orders b JOIN users c ON b.user_id = c.id) "
     "ON a.id = b.id",
     f"SELECT * FROM public.users AS a LEFT JOIN (public.orders AS b INNER JOIN "
     f"public.users AS c ON b.user_id = c.id) ON a.id = b.id AND {mine('b')} "
     f"AND {mine('c')} WHERE {mine('a')}"),
    ("SELECT * FROM (orders o RIGHT JOIN users u ON true) LEFT JOIN items i ON true",
     f"SELECT * FROM public.orders AS o RIGHT JOIN public.users AS u ON TRUE "
     f"AND {mine('o')} LEFT JOIN app.items AS i ON TRUE AND {mine('i')} WHERE {mine('u')}"),
    # a LEFT join inside a FULL join's side: its nullable side still has its own ON
    ("SELECT * FROM countries k FULL JOIN (users u LEFT JOIN orders o ON true) ON false",
     f"SELECT * FROM public.countries AS k FULL JOIN ({U} AS u LEFT JOIN public.orders "
     f"AS o ON TRUE AND {mine('o')}) ON FALSE"),
    # fallback to the derived table: FULL joins, USING/NATURAL nullable sides, join
    # aliases, column aliases
    ("SELECT * FROM users u FULL JOIN orders o ON true",
     f"SELECT * FROM {U} AS u FULL JOIN {O} AS o ON TRUE"),
    ("SELECT * FROM users u RIGHT JOIN orders o USING (id)",
     f"SELECT * FROM {U} AS u RIGHT JOIN public.orders AS o USING (id) WHERE {mine('o')}"),
    ("SELECT * FROM users NATURAL LEFT JOIN orders",
     f"SELECT * FROM public.users NATURAL LEFT JOIN {O} AS orders WHERE {mine('users')}"),
    ("SELECT * FROM (users u JOIN orders o ON true) AS j",
     f"SELECT * FROM ({U} AS u INNER JOIN {O} AS o ON TRUE) AS j"),
    ("SELECT * FROM users a LEFT JOIN (orders b LEFT JOIN users c ON true) AS j ON true",
     f"SELECT * FROM public.users AS a LEFT JOIN ({O} AS b LEFT JOIN public.users AS c "
     f"ON TRUE AND {mine('c')}) AS j ON TRUE WHERE {mine('a')}"),
    ("SELECT * FROM orders AS o (a, b)", f"SELECT * FROM {O} AS o (a, b)"),
    # a refname that is not unique at its level: no filter could name one table only
    ("SELECT * FROM (orders JOIN users ON true) AS j, orders",
     f"SELECT * FROM ({O} AS orders INNER JOIN {U} AS users ON TRUE) AS j, {O} AS orders"),
    ("SELECT * FROM orders, ROWS FROM (generate_series(1, 2), now())",
     f"SELECT * FROM public.orders, ROWS FROM (generate_series(1, 2), now()) "
     f"WHERE {mine('orders')}"),
    ("SELECT * FROM orders, CAST(1 AS int)",
     f"SELECT * FROM {O} AS orders, CAST(1 AS integer)"),
    # schema-qualified column references still resolve to a derived table
    ("SELECT public.orders.id FROM orders FULL JOIN users ON true",
     f"SELECT orders.id FROM {O} AS orders FULL JOIN {U} AS users ON TRUE"),
    ("SELECT public.orders.id FROM orders", f"SELECT public.orders.id FROM public.orders "
                                            f"WHERE {mine('orders')}"),
    # subqueries wherever they hide: each query level filters its own tables
    ("SELECT * FROM (SELECT * FROM orders) s",
     f"SELECT * FROM (SELECT * FROM public.orders WHERE {mine('orders')}) AS s"),
    ("SELECT * FROM users WHERE id IN (SELECT user_id FROM orders)",
     f"SELECT * FROM public.users WHERE id IN (SELECT user_id FROM public.orders "
     f"WHERE {mine('orders')}) AND {mine('users')}"),
    ("SELECT (SELECT count(*) FROM orders)",
     f"SELECT (SELECT count(*) FROM public.orders WHERE {mine('orders')})"),
    ("SELECT 1 WHERE EXISTS (SELECT 1 FROM orders)",
     f"SELECT 1 WHERE EXISTS (SELECT 1 FROM public.orders WHERE {mine('orders')})"),
    ("SELECT status FROM orders GROUP BY status HAVING count(*) > (SELECT count(*) FROM users)",
     f"SELECT status FROM public.orders WHERE {mine('orders')} GROUP BY status "
     f"HAVING count(*) > (SELECT count(*) FROM public.users WHERE {mine('users')})"),
    ("SELECT 1 ORDER BY (SELECT max(id) FROM orders)",
     f"SELECT 1 ORDER BY (SELECT max(id) FROM public.orders WHERE {mine('orders')})"),
    ("SELECT * FROM users u, LATERAL (SELECT * FROM orders o WHERE o.user_id = u.id) x",
     f"SELECT * FROM public.users AS u, LATERAL (SELECT * FROM public.orders AS o "
     f"WHERE o.user_id = u.id AND {mine('o')}) AS x WHERE {mine('u')}"),
    # a lateral subquery with an item of the outer level's name: the filter of each level
    # names its own item (the nearest level's name wins in PostgreSQL)
    ("SELECT * FROM orders o, LATERAL (SELECT * FROM users o WHERE o.id = 1) x",
     f"SELECT * FROM public.orders AS o, LATERAL (SELECT * FROM public.users AS o "
     f"WHERE o.id = 1 AND {mine('o')}) AS x WHERE {mine('o')}"),
    ("SELECT * FROM users u LEFT JOIN LATERAL (SELECT * FROM orders o WHERE o.user_id = u.id)"
     " x ON true",
     f"SELECT * FROM public.users AS u LEFT JOIN LATERAL (SELECT * FROM public.orders AS o "
     f"WHERE o.user_id = u.id AND {mine('o')}) AS x ON TRUE WHERE {mine('u')}"),
    ("SELECT * FROM generate_series(1, (SELECT count(*) FROM orders)::int) g",
     "SELECT * FROM generate_series(1, CAST((SELECT count(*) FROM public.orders "
     f"WHERE {mine('orders')}) AS integer)) AS g"),
    # set operations: every branch is a level
    ("SELECT id FROM orders UNION ALL SELECT id FROM users",
     f"SELECT id FROM public.orders WHERE {mine('orders')} UNION ALL "
     f"SELECT id FROM public.users WHERE {mine('users')}"),
    ("SELECT id FROM orders EXCEPT SELECT id FROM users INTERSECT SELECT 1",
     f"SELECT id FROM public.orders WHERE {mine('orders')} EXCEPT(SELECT id FROM "
     f"public.users WHERE {mine('users')} INTERSECT SELECT 1)"),
    # CTEs: references to the CTE stay, the CTE's own query is rewritten
    ("WITH r AS (SELECT * FROM orders) SELECT * FROM r",
     f"WITH r AS (SELECT * FROM public.orders WHERE {mine('orders')}) SELECT * FROM r"),
    ("WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t, orders WHERE n < 3) "
     "SELECT * FROM t",
     f"WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t, public.orders "
     f"WHERE n < 3 AND {mine('orders')}) SELECT * FROM t"),
    ("WITH r AS (SELECT * FROM orders) SELECT * FROM r LEFT JOIN users u ON true",
     f"WITH r AS (SELECT * FROM public.orders WHERE {mine('orders')}) SELECT * FROM r "
     f"LEFT JOIN public.users AS u ON TRUE AND {mine('u')}"),
    # TABLESAMPLE filters the sampled rows (inside the derived table when it falls back);
    # FOR UPDATE names the FROM item
    ("SELECT * FROM orders TABLESAMPLE SYSTEM (10) REPEATABLE (1)",
     "SELECT * FROM public.orders TABLESAMPLE system(10) REPEATABLE (1) "
     f"WHERE {mine('orders')}"),
    ("SELECT * FROM users FULL JOIN orders TABLESAMPLE SYSTEM (10) ON true",
     f"SELECT * FROM {U} AS users FULL JOIN (SELECT * FROM public.orders TABLESAMPLE "
     f"system(10) WHERE {mine('orders')}) AS orders ON TRUE"),
    ("SELECT * FROM orders o FOR UPDATE OF o SKIP LOCKED",
     f"SELECT * FROM public.orders AS o WHERE {mine('o')} FOR UPDATE OF o SKIP LOCKED"),
    ("DECLARE c CURSOR FOR SELECT * FROM orders",
     f"DECLARE c CURSOR FOR SELECT * FROM public.orders WHERE {mine('orders')}"),
    # shared tables are read as they are, qualified with the schema they resolved to
    ("SELECT * FROM countries", "SELECT * FROM public.countries"),
    ("SELECT * FROM orders o JOIN ref.currencies c ON true",
     f"SELECT * FROM public.orders AS o INNER JOIN ref.currencies AS c ON TRUE "
     f"WHERE {mine('o')}"),
    # pgbench -S: the tenant's index on aid serves, no subquery
    ("SELECT * FROM pgbench_accounts WHERE aid = 5",
     f"SELECT * FROM public.pgbench_accounts WHERE aid = 5 AND {mine('pgbench_accounts')}"),
    # Django's annotate(): GROUP BY the primary key of a plain table (functional dependency)
    ("SELECT u.id, u.email, count(o.id) FROM users u LEFT JOIN orders o ON o.user_id = u.id "
     "GROUP BY u.id",
     f"SELECT u.id, u.email, count(o.id) FROM public.users AS u LEFT JOIN public.orders AS o "
     f"ON o.user_id = u.id AND {mine('o')} WHERE {mine('u')} GROUP BY u.id"),
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
     f"WITH orders AS ({MINE}) SELECT * FROM orders"),
    ("WITH a AS (SELECT * FROM orders), orders AS (SELECT 1) SELECT * FROM a, orders",
     f"WITH a AS ({MINE}), orders AS (SELECT 1) SELECT * FROM a, orders"),
    # a qualified name is never a CTE (and a CTE's name is no FROM item's: the filter
    # names the table); the CTE is visible in nested subqueries
    ("WITH orders AS (SELECT 1) SELECT * FROM public.orders",
     f"WITH orders AS (SELECT 1) {MINE}"),
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
    assert rewritten("SELECT * FROM orders", REWRITE_ONLY) == MINE


def test_the_tenant_key_is_quoted_as_a_literal() -> None:
    scope = Scope("row", row_column="tenant_id", tenant_key="o'brien; --",
                  row_catalog=CATALOG)
    assert rewritten("SELECT * FROM orders", scope) == (
        "SELECT * FROM public.orders WHERE orders.tenant_id = 'o''brien; --'")
    assert rewritten("SELECT * FROM orders FULL JOIN users ON true", scope).startswith(
        "SELECT * FROM (SELECT * FROM public.orders WHERE orders.tenant_id = 'o''brien; --') "
        "AS orders FULL JOIN")


def test_multi_statement_strings_rewrite_each_statement() -> None:
    decision = analyze_uncached("BEGIN; SELECT * FROM orders; COMMIT", SCOPE)
    assert decision.sql == f"BEGIN\n;\n{MINE}\n;\nCOMMIT"
    assert decision.statements == 3
    denied("SELECT * FROM orders; SELECT * FROM secrets", SCOPE, "42P01", "relation-reach")


def test_reset_all_still_reapplies_the_pinned_settings() -> None:
    scope = Scope("row", row_column="tenant_id", tenant_key="initech", row_catalog=CATALOG,
                  pinned_settings=(("search_path", "app, public"),))
    decision = analyze_uncached("RESET ALL; SELECT * FROM orders", scope)
    assert decision.sql == (f"RESET ALL\n;\nSET search_path TO 'app', 'public'\n;\n"
                            f"{MINE}")


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
    # not the canonical derived table, but its query is a level of its own that filters
    # its one table in its WHERE: confined as well
    ("SELECT * FROM (SELECT * FROM public.orders o2 WHERE o2.tenant_id = 'initech') o", True),
    ("SELECT * FROM (SELECT * FROM public.orders WHERE orders.tenant_id = 'initech' "
     "LIMIT 5) o", True),
    ("SELECT * FROM (SELECT *, 1 FROM public.orders WHERE orders.tenant_id = 'initech') o",
     True),
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


def checks(sql: str) -> bool:
    """Does the confinement proof accept this (hand-written) final text?"""
    statement = nodes.parse(sql)[0]
    try:
        verify_statement(RowContext(SCOPE, verify=True), statement.kind, statement.fields)
    except NotSupported as exc:
        assert exc.rule == "rewrite-check"
        return False
    return True


K = "'initech'"


@pytest.mark.parametrize("sql", [
    f"SELECT * FROM public.orders WHERE orders.tenant_id = {K}",
    f"SELECT * FROM public.orders o WHERE o.id = 1 AND o.tenant_id = {K}",
    f"SELECT * FROM public.orders o WHERE (o.id = 1 OR o.id = 2) AND (true AND o.tenant_id = {K})",
    f"SELECT * FROM ONLY public.orders o TABLESAMPLE system(5) WHERE o.tenant_id = {K}",
    f"SELECT * FROM public.orders o, public.users u WHERE o.tenant_id = {K} AND u.tenant_id = {K}",
    f"SELECT * FROM public.orders o JOIN public.countries k ON true WHERE o.tenant_id = {K}",
    # nullable sides filtered in the ON of the nearest outer join that null-extends them
    f"SELECT * FROM public.users u LEFT JOIN public.orders o ON o.id = u.id AND "
    f"o.tenant_id = {K} WHERE u.tenant_id = {K}",
    f"SELECT * FROM public.users u RIGHT JOIN public.orders o ON u.tenant_id = {K} "
    f"WHERE o.tenant_id = {K}",
    f"SELECT * FROM public.users a LEFT JOIN (public.orders b LEFT JOIN public.users c ON "
    f"c.tenant_id = {K}) ON b.tenant_id = {K} WHERE a.tenant_id = {K}",
    f"SELECT * FROM public.users a LEFT JOIN (public.orders b JOIN public.users c ON true) "
    f"ON b.tenant_id = {K} AND c.tenant_id = {K} WHERE a.tenant_id = {K}",
    # u is a FULL join's side, so a derived table; o has its own LEFT join's ON
    f"SELECT * FROM public.countries k FULL JOIN ({W} AS u LEFT JOIN public.orders o "
    f"ON o.tenant_id = {K}) ON true",
    # under a join alias: c's ON is inside it, b's place (the WHERE) is not
    f"SELECT * FROM public.users a LEFT JOIN ({W} AS b LEFT JOIN public.users c ON "
    f"c.tenant_id = {K}) AS j ON true WHERE a.tenant_id = {K}",
    # every level filters its own items; the nearest level's name wins
    f"SELECT * FROM public.orders o WHERE o.tenant_id = {K} AND EXISTS (SELECT 1 FROM "
    f"public.users o WHERE o.tenant_id = {K})",
    f"SELECT * FROM public.users u, LATERAL (SELECT * FROM public.orders o WHERE "
    f"o.tenant_id = {K}) x WHERE u.tenant_id = {K}",
    f"WITH c AS (SELECT * FROM public.orders WHERE orders.tenant_id = {K}) SELECT * FROM c",
    f"SELECT id FROM public.orders WHERE orders.tenant_id = {K} UNION SELECT id FROM {W} AS w",
    f"UPDATE public.orders o SET status = 'x' FROM public.users u LEFT JOIN public.orders p ON "
    f"p.tenant_id = {K} WHERE o.tenant_id = {K} AND u.tenant_id = {K}",
    f"DELETE FROM public.orders USING public.users WHERE orders.tenant_id = {K} AND "
    f"users.tenant_id = {K}",
    f"INSERT INTO public.orders (id, tenant_id) SELECT id, tenant_id FROM public.users "
    f"WHERE users.tenant_id = {K}",
    f"INSERT INTO public.orders (id, tenant_id) SELECT u.id, u.tenant_id FROM public.users u "
    f"WHERE u.tenant_id = {K} AND u.id > 3",
    f"COPY (SELECT id FROM ONLY public.orders WHERE orders.tenant_id = {K}) TO STDOUT",
    f"MERGE INTO public.orders t USING {W} AS s ON t.tenant_id = {K} WHEN MATCHED THEN DELETE",
])
def test_the_check_accepts_filtered_tables(sql: str) -> None:
    assert checks(sql)


@pytest.mark.parametrize("sql", [
    # the filter missing, under OR or NOT, on another refname, key, column or operator
    "SELECT * FROM public.orders o WHERE o.id = 1",
    f"SELECT * FROM public.orders o WHERE o.id = 1 OR o.tenant_id = {K}",
    f"SELECT * FROM public.orders o WHERE NOT (o.id = 1 AND o.tenant_id = {K})",
    f"SELECT * FROM public.orders o WHERE orders.tenant_id = {K}",
    f"SELECT * FROM public.orders o, public.users u WHERE u.tenant_id = {K} "
    f"AND u.tenant_id = {K}",
    "SELECT * FROM public.orders o WHERE o.tenant_id = 'globex'",
    f"SELECT * FROM public.orders o WHERE o.user_id = {K}",
    f"SELECT * FROM public.orders o WHERE o.tenant_id >= {K}",
    f"SELECT * FROM public.orders o WHERE o.tenant_id = {K}::text",
    f"SELECT * FROM public.orders o WHERE {K} = o.tenant_id",
    f"SELECT * FROM public.orders o WHERE o.tenant_id IS NOT DISTINCT FROM {K}",
    # in a subquery of the level, not in its WHERE
    f"SELECT * FROM public.orders o WHERE EXISTS (SELECT 1 WHERE o.tenant_id = {K})",
    f"SELECT * FROM public.orders o GROUP BY o.id HAVING o.tenant_id = {K}",
    # a lateral subquery's table filtered by the outer item's name
    f"SELECT * FROM public.users o, LATERAL (SELECT * FROM public.orders WHERE "
    f"o.tenant_id = {K}) x WHERE o.tenant_id = {K}",
    f"SELECT * FROM public.users u, LATERAL (SELECT * FROM public.orders o) x "
    f"WHERE u.tenant_id = {K} AND x.tenant_id = {K}",
    # a FULL JOIN's sides: an ON filter removes no row (a leak), a WHERE filter is not
    # the join's meaning; either way only the derived table is accepted
    f"SELECT * FROM public.users u FULL JOIN public.orders o ON o.tenant_id = {K} "
    f"AND u.tenant_id = {K}",
    f"SELECT * FROM public.users u FULL JOIN public.orders o ON true "
    f"WHERE u.tenant_id = {K} AND o.tenant_id = {K}",
    f"SELECT * FROM public.countries k FULL JOIN (public.users u LEFT JOIN public.orders o "
    f"ON o.tenant_id = {K} AND u.tenant_id = {K}) ON true",
    f"SELECT * FROM public.countries k FULL JOIN (public.users u LEFT JOIN public.orders o "
    f"ON o.tenant_id = {K}) ON true",
    # a LEFT JOIN's nullable side filtered in the WHERE: confined (a null-extended row
    # fails the filter too), but an inner join then: not the form the rewriter writes
    f"SELECT * FROM public.users u LEFT JOIN public.orders o ON true "
    f"WHERE u.tenant_id = {K} AND o.tenant_id = {K}",
    f"SELECT * FROM public.users u RIGHT JOIN public.orders o ON true "
    f"WHERE u.tenant_id = {K} AND o.tenant_id = {K}",
    # a preserved side filtered in the ON: every other tenant's row stays (a leak)
    f"SELECT * FROM public.users u LEFT JOIN public.orders o ON u.tenant_id = {K} "
    f"AND o.tenant_id = {K}",
    f"SELECT * FROM public.users a LEFT JOIN (public.orders b LEFT JOIN public.users c ON "
    f"b.tenant_id = {K} AND c.tenant_id = {K}) ON true WHERE a.tenant_id = {K}",
    # an inner join's ON instead of the WHERE (as good, but not the form written)
    f"SELECT * FROM public.orders o JOIN public.users u ON o.tenant_id = {K} "
    f"AND u.tenant_id = {K}",
    # joins without an ON for the nullable side, a join alias hiding the names
    f"SELECT * FROM public.users NATURAL LEFT JOIN public.orders WHERE users.tenant_id = {K} "
    f"AND orders.tenant_id = {K}",
    f"SELECT * FROM public.users u LEFT JOIN public.orders o USING (id) "
    f"WHERE u.tenant_id = {K} AND o.tenant_id = {K}",
    f"SELECT * FROM (public.orders o JOIN public.users u ON true) AS j "
    f"WHERE o.tenant_id = {K} AND u.tenant_id = {K}",
    f"SELECT * FROM public.users a LEFT JOIN (public.orders b JOIN public.users c ON true) "
    f"AS j ON b.tenant_id = {K} AND c.tenant_id = {K} WHERE a.tenant_id = {K}",
    f"SELECT * FROM public.users a LEFT JOIN (public.orders b LEFT JOIN public.users c ON "
    f"c.tenant_id = {K}) AS j ON true WHERE a.tenant_id = {K} AND b.tenant_id = {K}",
    # a refname that is not only this table's; column aliases (tenant_id is now `id`)
    f"SELECT * FROM public.orders_2025 AS orders, public.orders WHERE orders.tenant_id = {K}",
    f"SELECT * FROM public.orders, CAST(1 AS int) WHERE orders.tenant_id = {K}",
    f"SELECT * FROM public.orders o (tenant_id) WHERE o.tenant_id = {K}",
    f"SELECT * FROM orders WHERE orders.tenant_id = {K}",  # unqualified
    # writes: FROM/USING items filtered in the WHERE, the target's name its own
    f"UPDATE public.orders o SET status = 'x' FROM public.users u WHERE o.tenant_id = {K}",
    f"UPDATE public.orders SET status = 'x' FROM public.users AS orders "
    f"WHERE orders.tenant_id = {K}",
    f"DELETE FROM public.orders USING public.users u LEFT JOIN public.orders p ON true "
    f"WHERE orders.tenant_id = {K} AND u.tenant_id = {K} AND p.tenant_id = {K}",
    # a MERGE source is the preserved side of the MERGE's own join: derived tables only
    f"MERGE INTO public.orders t USING public.users s ON t.tenant_id = {K} AND "
    f"s.tenant_id = {K} WHEN MATCHED THEN DELETE",
    f"INSERT INTO public.orders (id, tenant_id) SELECT id, tenant_id FROM public.users "
    f"WHERE users.tenant_id = {K} OR true",
    "INSERT INTO public.orders (id, tenant_id) SELECT u.id, u.tenant_id FROM public.users u "
    "WHERE u.id > 3",
    f"SELECT id FROM public.orders WHERE orders.tenant_id = {K} UNION SELECT id FROM "
    "public.users",
    "COPY (SELECT id FROM ONLY public.orders WHERE orders.tenant_id = 'x') TO STDOUT",
])
def test_the_check_refuses_tables_not_filtered_where_they_must_be(sql: str) -> None:
    assert not checks(sql)


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
