"""Ordinary application and driver SQL that the analysis must let through unchanged."""

from __future__ import annotations

import pytest
from asyncpg import introspection

from proxy.sql import Scope, analyze_uncached

DATABASE = Scope("database")
SCHEMA = Scope("schema", schemas=("globex",), shared_schemas=("common",),
               pinned_settings=(("search_path", "globex, common"), ("role", "globex")))
ROW = Scope("row", row_column="tenant_id", tenant_key="initech")

APPLICATION = [
    "SELECT 1",
    "SELECT * FROM users WHERE id = $1",
    "SELECT u.id, o.total FROM users u JOIN orders o ON o.user_id = u.id",
    "SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id WHERE o.id IS NULL",
    "SELECT * FROM users u RIGHT OUTER JOIN orders o USING (user_id)",
    "SELECT * FROM users u FULL OUTER JOIN orders o ON o.user_id = u.id",
    "SELECT * FROM users CROSS JOIN plans",
    "SELECT * FROM users NATURAL JOIN profiles",
    "SELECT * FROM users u, orders o WHERE o.user_id = u.id",
    "SELECT user_id, count(*), sum(total), avg(total), min(created_at), max(created_at) "
    "FROM orders GROUP BY user_id HAVING count(*) > 1",
    "SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY created_at DESC) FROM orders",
    "SELECT id, sum(total) OVER w, lag(total) OVER w FROM orders "
    "WINDOW w AS (PARTITION BY user_id ORDER BY id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)",
    "WITH recent AS (SELECT * FROM orders WHERE created_at > now() - interval '7 days') "
    "SELECT user_id, count(*) FROM recent GROUP BY 1",
    "WITH RECURSIVE tree(id, parent_id, depth) AS (SELECT id, parent_id, 0 FROM nodes "
    "WHERE parent_id IS NULL UNION ALL SELECT n.id, n.parent_id, t.depth + 1 FROM nodes n "
    "JOIN tree t ON n.parent_id = t.id) SELECT * FROM tree",
    'SELECT "users"."id", "users"."email" FROM "users" WHERE "users"."id" = 1 LIMIT 1',
    'SELECT "app_user"."id" FROM "app_user" WHERE "app_user"."email" = $1 '
    "FETCH FIRST 1 ROWS ONLY",
    "SELECT users.id AS users_id, users.name AS users_name FROM users WHERE users.name = $1",
    "INSERT INTO users (email, name) VALUES ('a@example.com', 'Ann') RETURNING id",
    "INSERT INTO users (email, name) VALUES ($1, $2) ON CONFLICT (email) "
    "DO UPDATE SET name = EXCLUDED.name RETURNING *",
    "INSERT INTO users (email) VALUES ('x') ON CONFLICT DO NOTHING",
    "INSERT INTO users (email) VALUES ('x') ON CONFLICT ON CONSTRAINT users_pkey DO NOTHING",
    "INSERT INTO archive SELECT * FROM orders WHERE created_at < now()",
    "INSERT INTO tags (name) VALUES ('a'), ('b'), (DEFAULT)",
    "INSERT INTO counters DEFAULT VALUES",
    "INSERT INTO users (id, email) VALUES (nextval('users_id_seq'::regclass), 'x')",
    "UPDATE orders SET status = 'paid' FROM payments p WHERE p.order_id = orders.id",
    "UPDATE users SET name = $1, updated_at = now() WHERE id = $2 RETURNING *",
    "UPDATE users SET (a, b) = (SELECT 1, 2) WHERE id = 1",
    "UPDATE jobs SET done = true WHERE CURRENT OF c",
    "DELETE FROM sessions WHERE expires_at < now()",
    "DELETE FROM orders o USING users u WHERE o.user_id = u.id AND u.deleted",
    "BEGIN", "BEGIN ISOLATION LEVEL SERIALIZABLE", "START TRANSACTION READ ONLY",
    "COMMIT", "ROLLBACK", "SAVEPOINT sp1", "RELEASE SAVEPOINT sp1",
    "ROLLBACK TO SAVEPOINT sp1", "COMMIT AND CHAIN", "END", "ABORT",
    "SHOW TimeZone", "SHOW transaction isolation level", "SHOW standard_conforming_strings",
    "SHOW server_version", "SHOW search_path",
    "SET TIME ZONE 'UTC'", "SET datestyle = 'ISO, MDY'", "SET application_name = 'myapp'",
    "SET extra_float_digits = 3", "SET statement_timeout = '5s'",
    "SET LOCAL lock_timeout = '1s'", "SET intervalstyle = 'iso_8601'",
    "SET client_encoding = 'UTF8'", "SET NAMES 'utf8'", "SET bytea_output = 'hex'",
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "RESET TimeZone", "SET application_name TO DEFAULT",
    # SQLAlchemy's dialect initialisation and has_table
    "select pg_catalog.version()", "select current_schema()",
    "show standard_conforming_strings", "show transaction isolation level",
    "SELECT pg_catalog.pg_class.relname FROM pg_catalog.pg_class JOIN pg_catalog.pg_namespace "
    "ON pg_catalog.pg_namespace.oid = pg_catalog.pg_class.relnamespace WHERE "
    "pg_catalog.pg_class.relname = $1 AND pg_catalog.pg_class.relkind = ANY "
    "(ARRAY['r', 'p', 'f', 'v', 'm']) AND pg_catalog.pg_table_is_visible("
    "pg_catalog.pg_class.oid) AND pg_catalog.pg_namespace.nspname != 'pg_catalog'",
    # asyncpg type introspection, psycopg TypeInfo.fetch, Django get_type_oids
    introspection.INTRO_LOOKUP_TYPES, introspection.INTRO_LOOKUP_TYPES_13,
    introspection.TYPE_BY_NAME,
    "SELECT typname AS name, oid, typarray AS array_oid, oid::regtype::text AS regtype, "
    "typdelim AS delimiter FROM pg_type t WHERE t.oid = to_regtype($1) ORDER BY t.oid",
    "SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid "
    "WHERE typname = 'hstore'",
    # Django's time zone set-up (client-side binding), JDBC, libpq target_session_attrs
    "SELECT set_config('TimeZone', 'UTC', false)",
    "SET extra_float_digits = 3", "SET application_name = 'PostgreSQL JDBC Driver'",
    "SHOW transaction_read_only", "SELECT pg_is_in_recovery()",
    "SELECT 1 FROM users WHERE email ILIKE '%x%' AND name ~* 'abc' AND tags @> ARRAY['a'] "
    "AND data->>'k' = 'v' AND data @> '{\"a\": 1}'::jsonb",
    "SELECT jsonb_build_object('id', id, 'name', name), json_agg(tags) FROM users GROUP BY id",
    "SELECT DISTINCT ON (user_id) * FROM orders ORDER BY user_id, created_at DESC",
    "SELECT * FROM orders ORDER BY created_at DESC NULLS LAST LIMIT 10 OFFSET 20",
    "SELECT id FROM a UNION SELECT id FROM b INTERSECT SELECT id FROM c EXCEPT SELECT 1",
    "SELECT * FROM users WHERE EXISTS (SELECT 1 FROM orders WHERE user_id = users.id) "
    "AND id IN (SELECT user_id FROM orders) AND (SELECT count(*) FROM orders) > 0",
    "SELECT CASE WHEN total > 100 THEN 'big' ELSE 'small' END, coalesce(a, b), nullif(a, 0), "
    "greatest(a, b), least(a, b) FROM orders",
    "SELECT * FROM jobs WHERE NOT done ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
    "SELECT * FROM generate_series(1, 10) AS g(n)",
    "SELECT * FROM users u, LATERAL (SELECT * FROM orders o WHERE o.user_id = u.id "
    "LIMIT 1) o",
    "SELECT unnest(ARRAY[1, 2, 3])",
    "SELECT now(), current_timestamp, current_date, current_user, session_user, "
    "clock_timestamp(), date_trunc('day', now()), extract(epoch from now()), "
    "now() AT TIME ZONE 'UTC'",
    "SELECT gen_random_uuid(), md5('x'), encode(decode('aa', 'hex'), 'base64')",
    "SELECT substring(name from 1 for 3), position('a' in name), trim(both ' ' from name), "
    "upper(name), length(name), format('%s', name), concat(a, b), "
    "regexp_replace(name, 'a', 'b') FROM users",
    "SELECT x::int, CAST(y AS text), z::numeric(10, 2), '2020-01-01'::date, "
    "interval '1 day' FROM t",
    "VALUES (1, 'a'), (2, 'b')",
    "TABLE users",
    "COPY users TO STDOUT WITH (FORMAT csv, HEADER)",
    "COPY (SELECT * FROM users) TO STDOUT",
    "DECLARE c CURSOR FOR SELECT * FROM users", "FETCH 10 FROM c", "MOVE NEXT IN c",
    "CLOSE c",
    "SELECT nextval('users_id_seq'), currval('users_id_seq')",
    "SELECT pg_sleep(0.1)",
    "SELECT string_agg(name, ',' ORDER BY name) FROM users",
    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY total) FROM orders",
    "SELECT count(*) FILTER (WHERE status = 'paid') FROM orders",
    "SELECT * FROM users WHERE created_at BETWEEN $1 AND $2",
    "SELECT * FROM users WHERE id = ANY($1::int[])",
    "SELECT a, b, sum(c) FROM t GROUP BY GROUPING SETS ((a), (b), ()), ROLLUP (a), CUBE (b)",
    "SELECT to_tsvector('english', body) @@ plainto_tsquery('english', $1) FROM docs",
    "SELECT 'users'::regclass",
    "SELECT * FROM t WHERE x IS DISTINCT FROM y AND z IS NOT NULL AND flag IS TRUE",
    "SELECT row_to_json(u) FROM users u",
    "SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(id int, name text)",
    "SELECT version(), current_database(), pg_backend_pid(), current_setting('TimeZone')",
    "SELECT 1 /* a comment */; -- another",
    "SELECT EXISTS(SELECT 1 FROM users WHERE email = $1)",
    "SELECT * FROM users TABLESAMPLE bernoulli (10)",
    "SELECT array_agg(DISTINCT x ORDER BY x) FROM t",
    'SELECT a COLLATE "C" FROM t ORDER BY a COLLATE "C"',
    "WITH moved AS (DELETE FROM queue WHERE id = 1 RETURNING *) "
    "INSERT INTO done SELECT * FROM moved",
    "MERGE INTO users u USING new_users n ON u.id = n.id WHEN MATCHED THEN UPDATE SET "
    "name = n.name WHEN NOT MATCHED THEN INSERT (id, name) VALUES (n.id, n.name)",
    "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *",
    "SELECT json_value(j, '$.a'), xmlelement(name a, 'b') FROM t",
    "BEGIN; INSERT INTO t VALUES (1); SAVEPOINT a; UPDATE t SET x = 2; RELEASE a; COMMIT",
    "", "  ", "-- only a comment",
]


@pytest.mark.parametrize("scope", [DATABASE, SCHEMA], ids=["database", "schema"])
@pytest.mark.parametrize("sql", APPLICATION)
def test_application_sql_is_allowed(sql: str, scope: Scope) -> None:
    decision = analyze_uncached(sql, scope)
    assert decision.action == "allow", (decision.error and decision.error.message)
    assert decision.sql is None and decision.error is None


def test_there_are_enough_application_queries() -> None:
    assert len(APPLICATION) >= 60


@pytest.mark.parametrize("sql", [
    "SELECT * FROM globex.users", "SELECT * FROM common.countries",
    "SELECT * FROM globex.users u JOIN common.countries c ON c.code = u.country",
    "INSERT INTO globex.users (id) VALUES (1)", "COPY globex.users FROM STDIN",
    "SELECT nextval('globex.users_id_seq')", "SELECT 'globex.users'::regclass",
    "SELECT 'common.countries'::regclass", "SELECT 'globex'::regnamespace",
])
def test_own_and_shared_schemas_are_reachable(sql: str) -> None:
    assert analyze_uncached(sql, SCHEMA).action == "allow"


@pytest.mark.parametrize("sql", [
    "SELECT * FROM hooli.items", "INSERT INTO other.t VALUES (1)",
    "SELECT pg_advisory_xact_lock(42)", "NOTIFY jobs, 'x'", "SELECT pg_notify('jobs', 'x')",
    "SET search_path TO app, public", "SELECT set_config('search_path', 'app', false)",
    "COPY users (id, email) FROM STDIN",
])
def test_database_strategy_owns_its_whole_database(sql: str) -> None:
    assert analyze_uncached(sql, DATABASE).action == "allow"


@pytest.mark.parametrize("sql", [
    "SELECT * FROM public.orders o JOIN public.countries c ON c.code = o.country",
    "UPDATE orders SET status = 'x' WHERE id = 1", "COPY orders TO STDOUT",
])
def test_row_strategy_allows_dml(sql: str) -> None:
    assert analyze_uncached(sql, ROW).action == "allow"


@pytest.mark.parametrize("sql", ["DROP DATABASE x", "SET ROLE postgres", "DO $$BEGIN END$$",
                                 "SELECT * FROM pg_authid", "SET app.tenant_id = 'x'"])
def test_bypass_allows_everything_that_parses(sql: str) -> None:
    decision = analyze_uncached(sql, Scope("bypass"))
    assert (decision.action, decision.rule, decision.settings) == ("allow", "bypass", ())
