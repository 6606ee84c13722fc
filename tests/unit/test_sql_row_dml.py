"""Row strategy rewrite of writes: UPDATE/DELETE predicates, the forced tenant column on
INSERT, ON CONFLICT, MERGE, COPY, data-modifying CTEs (THREATS 33–40)."""

from __future__ import annotations

import pytest

from proxy.errors import NotSupported
from proxy.sql import analyze_uncached, nodes
from proxy.sql.rewrite import RowContext
from proxy.sql.rewrite_check import verify_statement

from tests.unit.test_sql_attacks import denied
from tests.unit.test_sql_row_rewrite import SCOPE, U, rewritten

pytestmark = pytest.mark.timeout(60)

KEY = "'initech'"


@pytest.mark.parametrize("sql, expected", [
    ("UPDATE orders SET status = 'x' WHERE id = 1",
     f"UPDATE public.orders SET status = 'x' WHERE id = 1 AND orders.tenant_id = {KEY}"),
    ("UPDATE orders SET status = 'x'",
     f"UPDATE public.orders SET status = 'x' WHERE orders.tenant_id = {KEY}"),
    ("UPDATE orders SET status = 'x' WHERE id = 1 OR id = 2",
     f"UPDATE public.orders SET status = 'x' WHERE (id = 1 OR id = 2) "
     f"AND orders.tenant_id = {KEY}"),
    # UPDATE … FROM: the FROM items' filters join the target's in the WHERE
    ("UPDATE ONLY orders o SET status = 'x' FROM users u WHERE u.id = o.user_id RETURNING o.id",
     f"UPDATE ONLY public.orders AS o SET status = 'x' FROM public.users AS u "
     f"WHERE u.id = o.user_id AND o.tenant_id = {KEY} AND u.tenant_id = {KEY} RETURNING o.id"),
    ("UPDATE orders o SET status = 'x' FROM users u LEFT JOIN orders p ON p.user_id = u.id "
     "WHERE u.id = o.user_id OR p.id IS NULL",
     f"UPDATE public.orders AS o SET status = 'x' FROM public.users AS u LEFT JOIN "
     f"public.orders AS p ON p.user_id = u.id AND p.tenant_id = {KEY} "
     f"WHERE (u.id = o.user_id OR p.id IS NULL) AND o.tenant_id = {KEY} "
     f"AND u.tenant_id = {KEY}"),
    ("UPDATE orders o SET status = 'x' FROM users u FULL JOIN countries c ON true",
     f"UPDATE public.orders AS o SET status = 'x' FROM {U} AS u FULL JOIN public.countries "
     f"AS c ON TRUE WHERE o.tenant_id = {KEY}"),
    ("UPDATE orders SET total = (SELECT count(*) FROM users) WHERE id IN "
     "(SELECT user_id FROM orders)",
     f"UPDATE public.orders SET total = (SELECT count(*) FROM public.users "
     f"WHERE users.tenant_id = {KEY}) WHERE id IN (SELECT user_id FROM public.orders "
     f"WHERE orders.tenant_id = {KEY}) AND orders.tenant_id = {KEY}"),
    ("DELETE FROM orders WHERE id = 1",
     f"DELETE FROM public.orders WHERE id = 1 AND orders.tenant_id = {KEY}"),
    # DELETE … USING likewise; the target's name is taken at that level
    ("DELETE FROM orders o USING users u WHERE o.user_id = u.id RETURNING *",
     f"DELETE FROM public.orders AS o USING public.users AS u WHERE o.user_id = u.id "
     f"AND o.tenant_id = {KEY} AND u.tenant_id = {KEY} RETURNING *"),
    ("DELETE FROM orders USING orders AS o2, users WHERE o2.id = orders.id",
     f"DELETE FROM public.orders USING public.orders AS o2, public.users "
     f"WHERE o2.id = orders.id AND orders.tenant_id = {KEY} AND o2.tenant_id = {KEY} "
     f"AND users.tenant_id = {KEY}"),
    ("DELETE FROM orders WHERE id IN (SELECT id FROM orders)",
     f"DELETE FROM public.orders WHERE id IN (SELECT id FROM public.orders "
     f"WHERE orders.tenant_id = {KEY}) AND orders.tenant_id = {KEY}"),
])
def test_update_and_delete_only_reach_the_tenants_rows(sql: str, expected: str) -> None:
    assert rewritten(sql) == expected  # THREATS 35, 36


def test_a_target_name_used_twice_is_refused() -> None:
    """PostgreSQL refuses the name twice (42712); the proof cannot name the target's rows
    alone either, so the statement never leaves the proxy."""
    for sql in ("DELETE FROM orders USING users AS orders",
                "UPDATE orders o SET status = 'x' FROM users o"):
        denied(sql, SCOPE, "0A000", "rewrite-check")


@pytest.mark.parametrize("sql", [
    "UPDATE orders SET tenant_id = 'globex'", "UPDATE orders o SET tenant_id = o.tenant_id",
    "UPDATE orders SET tenant_id = 'initech' || ''", "UPDATE orders SET tenant_id = NULL",
    "UPDATE orders SET (tenant_id, status) = ('globex', 'x')",
    "UPDATE orders SET (tenant_id, status) = ('initech', 'x')",
    "UPDATE orders SET (status, tenant_id) = (SELECT 'x', 'globex')",
    "UPDATE orders SET tenant_id[1] = 'g'",
    "WITH u AS (UPDATE orders SET tenant_id = 'g' RETURNING 1) SELECT * FROM u",
    "UPDATE orders SET tenant_id = (SELECT $1)",
])
def test_assigning_the_tenant_column_is_refused(sql: str) -> None:
    denied(sql, SCOPE, "42501", "tenant-column")  # THREATS 35


def guard(value: str = "$1") -> str:
    """The server-side check a bound tenant value gets (rewrite_dml.guarded)."""
    return (f"CASE WHEN {value} = {KEY} THEN {value} WHEN CAST(pg_catalog.concat("
            f"'tenantgate: the tenant column can only hold the tenant''s own key') AS integer)"
            f" = 0 THEN NULL END")


@pytest.mark.parametrize("sql, expected", [
    # the own key, as an ORM saving every column sends it: a no-op on the tenant's rows
    ("UPDATE orders SET tenant_id = 'initech', status = 'x' WHERE id = 1",
     f"UPDATE public.orders SET tenant_id = {KEY}, status = 'x' WHERE id = 1 "
     f"AND orders.tenant_id = {KEY}"),
    ("UPDATE orders SET tenant_id = DEFAULT",
     f"UPDATE public.orders SET tenant_id = {KEY} WHERE orders.tenant_id = {KEY}"),
    ("UPDATE orders SET status = $2, tenant_id = $1 WHERE id = $3",
     f"UPDATE public.orders SET status = $2, tenant_id = {guard()} WHERE id = $3 "
     f"AND orders.tenant_id = {KEY}"),
    ("INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET tenant_id = 'initech'",
     f"INSERT INTO public.orders (id, tenant_id) VALUES (1, {KEY}) ON CONFLICT (id) DO UPDATE "
     f"SET tenant_id = {KEY} WHERE orders.tenant_id = {KEY}"),
])
def test_assigning_the_own_key_is_a_no_op(sql: str, expected: str) -> None:
    assert rewritten(sql) == expected


@pytest.mark.parametrize("sql, expected", [
    ("INSERT INTO orders (tenant_id, total) VALUES ($1, $2)",
     f"INSERT INTO public.orders (tenant_id, total) VALUES ({guard()}, $2)"),
    ("INSERT INTO orders (id, tenant_id) VALUES ($1, $2::varchar), (3, 'initech')",
     f"INSERT INTO public.orders (id, tenant_id) VALUES ($1, {guard('CAST($2 AS varchar)')}), "
     f"(3, {KEY})"),
    ("INSERT INTO orders (id, tenant_id) SELECT 1, $1",
     f"INSERT INTO public.orders (id, tenant_id) SELECT 1, {guard()}"),
    ("MERGE INTO orders t USING users s ON t.id = s.id WHEN NOT MATCHED THEN "
     "INSERT (id, tenant_id) VALUES (s.id, $1)",
     f"MERGE INTO public.orders AS t USING {U} AS s ON t.id = s.id AND t.tenant_id = {KEY} "
     f"WHEN NOT MATCHED THEN INSERT (id, tenant_id) VALUES (s.id, {guard()})"),
])
def test_a_bound_tenant_value_is_checked_by_the_server(sql: str, expected: str) -> None:
    """ORMs bind tenant_id: the parameter's value is unknown to the analysis, so the
    server checks it; the re-check accepts exactly this guard and nothing else."""
    assert rewritten(sql) == expected


def test_the_guard_is_only_accepted_in_the_recheck() -> None:
    # written by the client, the guard is an expression like any other: refused
    denied(f"INSERT INTO orders (id, tenant_id) VALUES (1, {guard()})", SCOPE, "42501",
           "tenant-column")
    text = rewritten("INSERT INTO orders (id, tenant_id) VALUES (1, $1)")
    statement = nodes.parse(text)[0]
    verify_statement(RowContext(SCOPE, verify=True), statement.kind, statement.fields)
    for forged in (text.replace("THEN $1 WHEN", "THEN 'globex' WHEN"),
                   text.replace("= 0 THEN NULL", "= 0 THEN 'globex'"),
                   text.replace("concat('tenantgate", "concat('1', 'tenantgate"),
                   text.replace(guard(), "$1"), text.replace(guard(), "DEFAULT"),
                   text.replace("WHEN $1 = 'initech'", "WHEN $1 = 'globex'")):
        assert forged != text
        statement = nodes.parse(forged)[0]
        with pytest.raises(NotSupported):
            verify_statement(RowContext(SCOPE, verify=True), statement.kind, statement.fields)


@pytest.mark.parametrize("sql, expected", [
    ("INSERT INTO orders (id, tenant_id) SELECT id, tenant_id FROM users",
     f"INSERT INTO public.orders (id, tenant_id) SELECT id, tenant_id FROM public.users "
     f"WHERE users.tenant_id = {KEY}"),
    ("INSERT INTO orders (tenant_id, id) SELECT o.tenant_id, o.id + 100 FROM orders o "
     "WHERE o.total > 1 OR o.id = 1",
     f"INSERT INTO public.orders (tenant_id, id) SELECT o.tenant_id, o.id + 100 FROM "
     f"public.orders AS o WHERE (o.total > 1 OR o.id = 1) AND o.tenant_id = {KEY}"),
    ("INSERT INTO orders (tenant_id) SELECT DISTINCT tenant_id FROM orders UNION "
     "SELECT 'initech'",
     f"INSERT INTO public.orders (tenant_id) SELECT DISTINCT tenant_id FROM public.orders "
     f"WHERE orders.tenant_id = {KEY} UNION SELECT {KEY}"),
    ("INSERT INTO orders (id, tenant_id) SELECT id, tenant_id FROM users TABLESAMPLE "
     "BERNOULLI (50)",
     f"INSERT INTO public.orders (id, tenant_id) SELECT id, tenant_id FROM public.users "
     f"TABLESAMPLE bernoulli(50) WHERE users.tenant_id = {KEY}"),
])
def test_insert_may_copy_the_tenant_column_of_its_own_rows(sql: str, expected: str) -> None:
    assert rewritten(sql) == expected


@pytest.mark.parametrize("sql", [
    "INSERT INTO orders (id, tenant_id) SELECT id, tenant_id FROM users u (tenant_id)",
    "INSERT INTO orders (id, tenant_id) SELECT id, name FROM users",
    "INSERT INTO orders (id, tenant_id) SELECT u.id, u.tenant_id FROM users u, orders o",
    "INSERT INTO orders (id, tenant_id) SELECT u.id, u.tenant_id FROM users u "
    "LEFT JOIN orders o ON false",
    "INSERT INTO orders (id, tenant_id) SELECT o.id, o.tenant_id FROM users u "
    "RIGHT JOIN orders o ON false",
    "INSERT INTO orders (tenant_id) SELECT tenant_id FROM users GROUP BY ROLLUP (tenant_id)",
    "INSERT INTO orders (tenant_id) SELECT tenant_id FROM (SELECT 'globex' AS tenant_id) s",
    "WITH users AS (SELECT 'globex' AS tenant_id) INSERT INTO orders (tenant_id) "
    "SELECT tenant_id FROM users",
    "INSERT INTO orders (tenant_id) WITH users AS (SELECT 'globex' AS tenant_id) "
    "SELECT tenant_id FROM users",
    "INSERT INTO orders (tenant_id) SELECT x.tenant_id FROM users u",
    "INSERT INTO orders (tenant_id) SELECT tenant_id FROM countries",
])
def test_copying_an_unproven_tenant_column_is_refused(sql: str) -> None:
    decision = analyze_uncached(sql, SCOPE)
    assert decision.action == "deny", decision.sql
    assert (decision.error.sqlstate, decision.error.rule) in {
        ("42501", "tenant-column"), ("42P01", "relation-reach")}, decision.error


@pytest.mark.parametrize("sql, expected", [
    ("INSERT INTO orders (id, total) VALUES (1, 2.5)",
     f"INSERT INTO public.orders (id, total, tenant_id) VALUES (1, 2.5, {KEY})"),
    ("INSERT INTO orders (id) VALUES (1), (2), (DEFAULT)",
     f"INSERT INTO public.orders (id, tenant_id) VALUES (1, {KEY}), (2, {KEY}), "
     f"(DEFAULT, {KEY})"),
    ("INSERT INTO orders DEFAULT VALUES",
     f"INSERT INTO public.orders (tenant_id) VALUES ({KEY})"),
    ("INSERT INTO orders (id, tenant_id) VALUES (1, 'initech'), (2, 'initech')",
     f"INSERT INTO public.orders (id, tenant_id) VALUES (1, {KEY}), (2, {KEY})"),
    # DEFAULT for the tenant column: the key, as when the column is left out
    ("INSERT INTO orders (id, tenant_id) VALUES (1, DEFAULT), (2, 'initech')",
     f"INSERT INTO public.orders (id, tenant_id) VALUES (1, {KEY}), (2, {KEY})"),
    ("INSERT INTO orders VALUES (DEFAULT, DEFAULT, 7)",
     f"INSERT INTO public.orders (id, tenant_id, user_id) VALUES (DEFAULT, {KEY}, 7)"),
    # positional: the catalog's column order (id, tenant_id, user_id, total, status)
    ("INSERT INTO orders VALUES (1)",
     f"INSERT INTO public.orders (id, tenant_id) VALUES (1, {KEY})"),
    ("INSERT INTO orders VALUES (1, 'initech', 7)",
     f"INSERT INTO public.orders (id, tenant_id, user_id) VALUES (1, {KEY}, 7)"),
    ("INSERT INTO orders SELECT 1", f"INSERT INTO public.orders (id, tenant_id) SELECT 1, {KEY}"),
    # INSERT … SELECT: the source is rewritten like any query, the column forced
    ("INSERT INTO orders (id, user_id) SELECT id, id FROM users WHERE id > 1",
     f"INSERT INTO public.orders (id, user_id, tenant_id) SELECT id, id, {KEY} "
     f"FROM public.users WHERE id > 1 AND users.tenant_id = {KEY}"),
    ("INSERT INTO orders (id) SELECT * FROM (VALUES (1)) v",
     f"INSERT INTO public.orders (id, tenant_id) SELECT *, {KEY} FROM ((VALUES (1))) AS v"),
    ("INSERT INTO orders (id) SELECT id FROM users UNION SELECT 5",
     f"INSERT INTO public.orders (id, tenant_id) SELECT tenantgate_insert.*, {KEY} FROM "
     f"(SELECT id FROM public.users WHERE users.tenant_id = {KEY} UNION SELECT 5) "
     f"AS tenantgate_insert"),
    ("INSERT INTO orders (id, tenant_id) SELECT id, 'initech' FROM users",
     f"INSERT INTO public.orders (id, tenant_id) SELECT id, {KEY} FROM public.users "
     f"WHERE users.tenant_id = {KEY}"),
    ("INSERT INTO orders (id, tenant_id) SELECT *, 'initech' FROM (VALUES (1)) v",
     f"INSERT INTO public.orders (id, tenant_id) SELECT *, {KEY} FROM ((VALUES (1))) AS v"),
    ("INSERT INTO orders (id, tenant_id) SELECT 1, 'initech' UNION SELECT 2, 'initech'",
     f"INSERT INTO public.orders (id, tenant_id) SELECT 1, {KEY} UNION SELECT 2, {KEY}"),
    ("WITH s AS (SELECT id FROM users) INSERT INTO orders (id) SELECT id FROM s",
     f"WITH s AS (SELECT id FROM public.users WHERE users.tenant_id = {KEY}) INSERT INTO "
     f"public.orders (id, tenant_id) SELECT id, {KEY} FROM s"),
    # ON CONFLICT: only the tenant's own conflicting row is updated (THREATS 37)
    ("INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET status = "
     "excluded.status RETURNING *",
     f"INSERT INTO public.orders (id, tenant_id) VALUES (1, {KEY}) ON CONFLICT (id) DO UPDATE "
     f"SET status = excluded.status WHERE orders.tenant_id = {KEY} RETURNING *"),
    ("INSERT INTO orders AS o (id) VALUES (1) ON CONFLICT ON CONSTRAINT orders_pkey DO UPDATE "
     "SET status = 'a' WHERE o.status <> 'b'",
     f"INSERT INTO public.orders AS o (id, tenant_id) VALUES (1, {KEY}) ON CONFLICT ON "
     f"CONSTRAINT orders_pkey DO UPDATE SET status = 'a' WHERE o.status <> 'b' "
     f"AND o.tenant_id = {KEY}"),
    ("INSERT INTO orders (id) VALUES (1) ON CONFLICT DO NOTHING",
     f"INSERT INTO public.orders (id, tenant_id) VALUES (1, {KEY}) ON CONFLICT DO NOTHING"),
    ("INSERT INTO orders (id, tenant_id) VALUES (1, 'initech') ON CONFLICT (id) DO UPDATE "
     "SET status = excluded.tenant_id",
     f"INSERT INTO public.orders (id, tenant_id) VALUES (1, {KEY}) ON CONFLICT (id) DO UPDATE "
     f"SET status = excluded.tenant_id WHERE orders.tenant_id = {KEY}"),
])
def test_insert_forces_the_tenant_column(sql: str, expected: str) -> None:
    assert rewritten(sql) == expected  # THREATS 34, 37


def test_an_integer_key_is_compared_as_text() -> None:
    from proxy.sql import Scope
    from tests.unit.test_sql_row_rewrite import CATALOG

    scope = Scope("row", row_column="tenant_id", tenant_key="42", row_catalog=CATALOG)
    assert analyze_uncached("INSERT INTO orders (id, tenant_id) VALUES (1, 42)",
                            scope).sql == ("INSERT INTO public.orders (id, tenant_id) "
                                           "VALUES (1, 42)")
    denied("INSERT INTO orders (id, tenant_id) VALUES (1, 43)", scope, "42501", "tenant-column")


@pytest.mark.parametrize("sql", [
    "INSERT INTO orders (id, tenant_id) VALUES (1, 'globex')",
    "INSERT INTO orders (id, tenant_id) VALUES (1, 'initech'), (2, 'globex')",
    "INSERT INTO orders (id, tenant_id) VALUES (1, $1 || '')",
    "INSERT INTO orders (id, tenant_id) VALUES (1, NULL)",
    "INSERT INTO orders (id, tenant_id) VALUES (1, 'initech'::text)",
    "INSERT INTO orders (id, tenant_id) VALUES (1, lower('INITECH'))",
    "INSERT INTO orders (id, tenant_id) VALUES (1, (SELECT 'initech'))",
    "INSERT INTO orders VALUES (1, 'globex')",
    "INSERT INTO orders (tenant_id, id) SELECT *, 1 FROM (VALUES ('initech')) v",
    "INSERT INTO orders (id, tenant_id) SELECT 1, 'initech' UNION SELECT 2, 'globex'",
    "INSERT INTO orders (id, tenant_id[1]) VALUES (1, 'x')",
    "INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET tenant_id = 'x'",
    "INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE "
    "SET tenant_id = excluded.tenant_id",
])
def test_insert_with_another_or_unproven_tenant_is_refused(sql: str) -> None:
    denied(sql, SCOPE, "42501", "tenant-column")  # THREATS 34


@pytest.mark.parametrize("sql", [
    "INSERT INTO orders VALUES (1, 'initech', 1, 2, 'x', 'too many')",
    "INSERT INTO orders SELECT * FROM users",
    "INSERT INTO orders SELECT id, * FROM users",
])
def test_positional_insert_needs_a_known_column_count(sql: str) -> None:
    denied(sql, SCOPE, "0A000", "row-insert")


@pytest.mark.parametrize("sql, expected", [
    ("MERGE INTO orders o USING users u ON o.user_id = u.id WHEN MATCHED THEN "
     "UPDATE SET status = u.name WHEN NOT MATCHED THEN INSERT (id) VALUES (u.id)",
     f"MERGE INTO public.orders AS o USING {U} AS u ON o.user_id = u.id AND o.tenant_id = "
     f"{KEY} WHEN MATCHED THEN UPDATE SET status = u.name WHEN NOT MATCHED THEN "
     f"INSERT (id, tenant_id) VALUES (u.id, {KEY})"),
    ("MERGE INTO orders t USING (SELECT 1 AS id) s ON t.id = s.id WHEN NOT MATCHED "
     "THEN INSERT DEFAULT VALUES",
     f"MERGE INTO public.orders AS t USING (SELECT 1 AS id) AS s ON t.id = s.id AND "
     f"t.tenant_id = {KEY} WHEN NOT MATCHED THEN INSERT (tenant_id) VALUES ({KEY})"),
    ("MERGE INTO orders t USING users s ON t.id = s.id WHEN NOT MATCHED THEN "
     "INSERT VALUES (s.id, 'initech')",
     f"MERGE INTO public.orders AS t USING {U} AS s ON t.id = s.id AND t.tenant_id = {KEY} "
     f"WHEN NOT MATCHED THEN INSERT (id, tenant_id) VALUES (s.id, {KEY})"),
    # unmatched target rows include every other tenant's: the action is confined too
    ("MERGE INTO orders t USING users s ON t.id = s.id WHEN NOT MATCHED BY SOURCE "
     "AND t.total > 1 THEN DELETE",
     f"MERGE INTO public.orders AS t USING {U} AS s ON t.id = s.id AND t.tenant_id = {KEY} "
     f"WHEN NOT MATCHED BY SOURCE AND t.total > 1 AND t.tenant_id = {KEY} THEN DELETE"),
    # the source has no WHERE: its own tables are derived tables, but a join inside it
    # filters its nullable side in its ON
    ("MERGE INTO orders t USING users s LEFT JOIN orders o ON o.user_id = s.id ON t.id = s.id "
     "WHEN MATCHED THEN DELETE",
     f"MERGE INTO public.orders AS t USING {U} AS s LEFT JOIN public.orders AS o ON "
     f"o.user_id = s.id AND o.tenant_id = {KEY} ON t.id = s.id AND t.tenant_id = {KEY} "
     f"WHEN MATCHED THEN DELETE"),
])
def test_merge_is_confined(sql: str, expected: str) -> None:
    assert rewritten(sql) == expected  # THREATS 38


@pytest.mark.parametrize("sql, sqlstate, rule", [
    ("MERGE INTO orders t USING users s ON true WHEN MATCHED THEN UPDATE SET tenant_id = 'g'",
     "42501", "tenant-column"),
    ("MERGE INTO orders t USING users s ON true WHEN NOT MATCHED THEN "
     "INSERT (id, tenant_id) VALUES (1, s.tenant_id)", "42501", "tenant-column"),
    ("MERGE INTO countries t USING users s ON true WHEN MATCHED THEN DELETE", "42501",
     "shared-read-only"),
    ("MERGE INTO orders t USING secrets s ON true WHEN MATCHED THEN DELETE", "42P01",
     "relation-reach"),
])
def test_merge_refusals(sql: str, sqlstate: str, rule: str) -> None:
    denied(sql, SCOPE, sqlstate, rule)


@pytest.mark.parametrize("sql, expected", [
    # COPY t TO reads t alone (ONLY), filtered like a query
    ("COPY orders TO STDOUT",
     "COPY (SELECT id, tenant_id, user_id, total, status FROM ONLY public.orders "
     f"WHERE orders.tenant_id = {KEY}) TO STDOUT"),
    ("COPY public.orders (id, total) TO STDOUT WITH (FORMAT csv, HEADER)",
     f"COPY (SELECT id, total FROM ONLY public.orders WHERE orders.tenant_id = {KEY}) "
     f"TO STDOUT WITH (FORMAT csv, HEADER)"),
    ("COPY (SELECT * FROM orders WHERE id = 7) TO STDOUT",
     f"COPY (SELECT * FROM public.orders WHERE id = 7 AND orders.tenant_id = {KEY}) "
     f"TO STDOUT"),
    ("COPY countries TO STDOUT", "COPY public.countries TO STDOUT"),
])
def test_copy_to_is_confined(sql: str, expected: str) -> None:
    assert rewritten(sql) == expected  # THREATS 39


@pytest.mark.parametrize("sql, sqlstate, rule", [
    ("COPY orders FROM STDIN", "0A000", "row-strategy"),
    ("COPY orders (id) FROM STDIN WITH (FORMAT csv)", "0A000", "row-strategy"),
    ("COPY orders TO '/tmp/x'", "42501", "copy"),
    ("COPY orders FROM PROGRAM 'id'", "42501", "copy"),
    ("COPY (DELETE FROM orders RETURNING *) TO STDOUT", "0A000", "row-strategy"),
    ("TRUNCATE orders", "42501", "statement-type"),  # THREATS 40
    ("LOCK TABLE orders", "42501", "statement-type"),
    ("UPDATE orders SET status = 'x' WHERE CURRENT OF c", "0A000", "row-strategy"),
])
def test_copy_truncate_and_other_refusals(sql: str, sqlstate: str, rule: str) -> None:
    denied(sql, SCOPE, sqlstate, rule)


@pytest.mark.parametrize("sql", [
    "INSERT INTO countries (code) VALUES ('x')", "UPDATE countries SET name = 'x'",
    "DELETE FROM ref.currencies", "INSERT INTO orders (id) SELECT 1 FROM countries "
    "RETURNING (SELECT 1); DELETE FROM countries",
    "WITH d AS (DELETE FROM countries RETURNING *) SELECT * FROM d",
])
def test_shared_tables_are_read_only(sql: str) -> None:
    denied(sql, SCOPE, "42501", "shared-read-only")


@pytest.mark.parametrize("sql", [
    "INSERT INTO secrets VALUES (1)", "UPDATE secrets SET x = 1", "DELETE FROM other.t",
])
def test_writes_out_of_reach_are_hidden(sql: str) -> None:
    denied(sql, SCOPE, "42P01", "relation-reach")


@pytest.mark.parametrize("sql, expected", [
    ("WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM d",
     f"WITH d AS (DELETE FROM public.orders WHERE id = 1 AND orders.tenant_id = {KEY} "
     f"RETURNING *) SELECT * FROM d"),
    ("WITH i AS (INSERT INTO orders (id) VALUES (1) RETURNING id) "
     "UPDATE users SET name = 'x' WHERE id IN (SELECT id FROM i)",
     f"WITH i AS (INSERT INTO public.orders (id, tenant_id) VALUES (1, {KEY}) RETURNING id) "
     f"UPDATE public.users SET name = 'x' WHERE id IN (SELECT id FROM i) "
     f"AND users.tenant_id = {KEY}"),
    ("WITH u AS (UPDATE orders SET status = 'x' RETURNING id) "
     "INSERT INTO users (id) SELECT id FROM u",
     f"WITH u AS (UPDATE public.orders SET status = 'x' WHERE orders.tenant_id = {KEY} "
     f"RETURNING id) INSERT INTO public.users (id, tenant_id) SELECT id, {KEY} FROM u"),
])
def test_data_modifying_ctes_are_rewritten_like_statements(sql: str, expected: str) -> None:
    assert rewritten(sql) == expected  # THREATS 33


def test_data_modifying_ctes_below_the_top_level_stay_refused() -> None:
    denied("SELECT * FROM (WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d) x",
           SCOPE, "0A000", "row-strategy")


def test_every_rewritten_write_parses_again() -> None:
    for sql in ["UPDATE orders SET status = 'x'", "INSERT INTO orders DEFAULT VALUES",
                "MERGE INTO orders t USING users s ON true WHEN MATCHED THEN DELETE",
                "COPY orders TO STDOUT"]:
        assert len(nodes.parse(rewritten(sql))) == 1


@pytest.mark.parametrize("sql, numbers", [
    ("INSERT INTO orders (tenant_id, item) VALUES ($1, $2)", {1}),
    ("INSERT INTO orders (item, tenant_id) VALUES ($1, $2::text)", {2}),
    ("INSERT INTO orders (tenant_id, item) VALUES ($2, $1), ($3, 'x')", {2, 3}),
    ("UPDATE orders SET tenant_id = $1, item = $2 WHERE id = $3", {1}),
    ("INSERT INTO orders (item) VALUES ($1)", set()),
    ("SELECT * FROM orders WHERE tenant_id = $1", set()),  # a read: the filter decides
])
def test_the_bound_tenant_column_values_are_named_for_the_bind_check(sql, numbers):
    decision = analyze_uncached(sql, SCOPE)
    assert decision.action == "rewrite", decision
    assert decision.key_params == frozenset(numbers)
