"""Statement types, settings, session features, multi-statement strings and limits."""

from __future__ import annotations

import pytest

from proxy.sql import Scope, SettingChange, analyze_uncached, render_settings
from proxy.sql.nodes import MAX_STATEMENT_BYTES
from proxy.sql.settings import duration_ms
from proxy.sql.scope import DEALLOCATE_ALL

from tests.unit.test_sql_attacks import BOTH, DATABASE, ROW, SCHEMA, denied

SESSION_DB = Scope("database", pool_mode="session")
SESSION_SCHEMA = Scope("schema", pool_mode="session", schemas=("globex",))
PINNED = Scope("database", pinned_settings=(("statement_timeout", "30s"),))


@pytest.mark.parametrize("sql", [
    "SET app.tenant_id = 'b'", "SET SESSION app.tenant_id = 'b'",
    "SET LOCAL app.tenant_id = 'b'", "RESET app.tenant_id", "SET app.tenant_id TO DEFAULT",
    "SET/**/app.tenant_id = 'b'", "SET app.tenant_id = $$b$$",
    "/* /* nested */ */ SET app.tenant_id = 'b'", 'SET "APP".tenant_id = \'b\'',
    "set tenantgate.tenant to 'x'", "SET anything.at_all = 1", "SHOW ALL; SET a.b = 1",
])
def test_reserved_and_custom_settings_are_denied(sql: str) -> None:  # THREATS 1, 2, 65
    rule = "show" if sql.startswith("SHOW ALL") else "reserved-setting"
    for scope in [DATABASE, SCHEMA, ROW]:
        denied(sql, scope, "42501", rule)


@pytest.mark.parametrize("sql", [
    "SET ROLE tenant_b", "SET LOCAL ROLE tenant_b", "SET ROLE NONE", "RESET ROLE",
    "SET role = 'x'", 'SET "ROLE" TO x', "SET SESSION AUTHORIZATION x",
    "SET SESSION AUTHORIZATION DEFAULT", "RESET SESSION AUTHORIZATION",
])
def test_role_changes_are_denied(sql: str) -> None:  # THREATS 5
    for scope in [DATABASE, SCHEMA, ROW]:
        denied(sql, scope, "42501", "role")


@pytest.mark.parametrize("sql", [
    "SET search_path = tb, public", "SET search_path TO DEFAULT", "RESET search_path",
    "SET LOCAL search_path TO tb", "SET SEARCH_PATH TO tb", 'SET "search_path" TO tb',
    "SELECT set_config('search_path', 'tb', true)",
])
def test_search_path_is_pinned_for_shared_databases(sql: str) -> None:  # THREATS 17
    denied(sql, SCHEMA, "42501", "search-path")
    denied(sql, ROW, "42501", "search-path")


def test_database_tenants_may_set_search_path_but_not_to_system_schemas() -> None:
    decision = analyze_uncached('SET search_path TO app, "Mixed Case", public', DATABASE)
    assert decision.settings == (SettingChange("search_path", 'app, "Mixed Case", public'),)
    for value in ("information_schema", "pg_temp", "pg_toast, public"):
        denied(f"SET search_path TO {value}", DATABASE, "42501", "search-path")
    denied("SELECT set_config('search_path', 'public, information_schema', false)",
           DATABASE, "42501", "search-path")


@pytest.mark.parametrize("sql", [
    "SET standard_conforming_strings = off", "RESET standard_conforming_strings",
    "SET backslash_quote = on", "SET client_encoding = 'GBK'", "SET NAMES 'SJIS'",
    "SET client_encoding TO DEFAULT", "RESET client_encoding",
])
def test_settings_that_change_lexing_are_denied(sql: str) -> None:  # THREATS 12, 13
    for scope in BOTH:
        denied(sql, scope, "42501", "lexing-setting")


@pytest.mark.parametrize("sql, rule", [
    ("SET work_mem = '64GB'", "setting-allowlist"),
    ("SET maintenance_work_mem = '1GB'", "setting-allowlist"),
    ("SET idle_in_transaction_session_timeout = 0", "setting-allowlist"),
    ("SET jit = off", "setting-allowlist"),
    ("SET session_replication_role = replica", "setting-allowlist"),
    ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", "setting-allowlist"),
    ("SET statement_timeout = 0", "setting-value"),
    ("SET statement_timeout = '0s'", "setting-value"),
    ("SET statement_timeout TO DEFAULT", "setting-value"),
    ("RESET statement_timeout", "setting-value"),
    ("SET lock_timeout = '0'", "setting-value"),
    ("SET statement_timeout = 'forever'", "setting-value"),
    ("SET TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE", "setting-value"),
])
def test_resource_settings_are_denied(sql: str, rule: str) -> None:  # THREATS 57
    for scope in BOTH:
        denied(sql, scope, "42501", rule)


def test_pinned_timeouts_can_only_be_tightened() -> None:
    assert analyze_uncached("SET statement_timeout = '10s'", PINNED).action == "allow"
    assert analyze_uncached("SET statement_timeout = 30000", PINNED).action == "allow"
    denied("SET statement_timeout = '1min'", PINNED, "42501", "setting-value")


@pytest.mark.parametrize("sql", [
    # PostgreSQL rounds to whole milliseconds, and 0 disables the timeout
    "SET statement_timeout = 0.4", "SET statement_timeout = '0.5'",
    "SET statement_timeout = '100us'", "SET lock_timeout = '0.2ms'",
    "SET statement_timeout = '0.0004s'", "SET LOCAL statement_timeout = '500us'",
    "SELECT set_config('statement_timeout', '0.3', false)",
    "SELECT set_config('lock_timeout', '0.0001min', true)",
    "SET statement_timeout = '-1'", "SET statement_timeout = '1e3'",
    "SET statement_timeout = '08'", "SET statement_timeout = '5 S'",
    "SET statement_timeout = '" + "9" * 400 + "ms'",
])
def test_timeouts_that_round_to_zero_or_are_unclear_are_denied(sql: str) -> None:  # T57
    for scope in [*BOTH, PINNED]:
        denied(sql, scope, "42501", "setting-value")


@pytest.mark.parametrize("sql", [
    "SET statement_timeout = 0.6", "SET statement_timeout = '1500us'",
    "SET lock_timeout = '0.0015s'", "SET statement_timeout = ' 5 s '",
])
def test_timeouts_of_at_least_a_millisecond_are_allowed(sql: str) -> None:
    for scope in [*BOTH, PINNED]:
        assert analyze_uncached(sql, scope).action == "allow", (sql, scope.strategy)


def test_pinned_timeouts_compare_what_the_server_stores() -> None:
    pinned = Scope("database", pinned_settings=(("statement_timeout", "2"),))
    assert analyze_uncached("SET statement_timeout = '2500us'", pinned).action == "allow"
    denied("SET statement_timeout = '2501us'", pinned, "42501", "setting-value")
    denied("SET statement_timeout = '0.0026s'", pinned, "42501", "setting-value")


@pytest.mark.parametrize("text, stored", [
    # what PostgreSQL 15 showed for SET statement_timeout = '<text>'
    ("0.4", 0), ("0.5", 0), ("0.6", 1), ("1.5", 2), ("2.5", 2), ("100us", 0),
    ("1500us", 2), ("2500us", 2), ("0.2ms", 0), ("0.0004s", 0), ("0.0015s", 2),
    ("0.0025s", 2), ("5s", 5000), ("1min", 60000), ("010", 8), ("017s", 15000),
    ("010.5", 10), ("00", 0), ("0.00001min", 0), ("1.0000001ms", 1), ("08", None),
    ("-1", None), ("1e3", None), (".5", None), ("5 S", None), ("forever", None),
])
def test_durations_read_as_the_server_stores_them(text: str, stored: int | None) -> None:
    assert duration_ms(text) == stored


def test_setting_changes_are_reported_in_order() -> None:
    decision = analyze_uncached("SET TimeZone = 'Europe/Berlin'; SET LOCAL lock_timeout "
                                "= '2s'; RESET application_name; SET DateStyle = ISO, DMY; "
                                "SET client_encoding = 'UTF-8'; SET TRANSACTION READ ONLY",
                                SCHEMA)
    assert decision.action == "allow" and decision.statements == 6
    assert decision.settings == (
        SettingChange("timezone", "Europe/Berlin"),
        SettingChange("lock_timeout", "2s", local=True),
        SettingChange("application_name", None),
        SettingChange("datestyle", "iso, dmy"),
    )


def test_session_characteristics_become_default_settings() -> None:
    decision = analyze_uncached("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION "
                                "LEVEL SERIALIZABLE, READ ONLY", DATABASE)
    assert decision.settings == (
        SettingChange("default_transaction_isolation", "serializable"),
        SettingChange("default_transaction_read_only", "on"))


def test_django_set_config_is_tracked_like_set() -> None:
    decision = analyze_uncached("SELECT set_config('TimeZone', 'UTC', false)", SCHEMA)
    assert decision.settings == (SettingChange("timezone", "UTC"),)
    decision = analyze_uncached("SELECT pg_catalog.set_config('timezone', 'UTC', true)",
                                SCHEMA)
    assert decision.settings == (SettingChange("timezone", "UTC", local=True),)


def test_reset_all_reapplies_the_pinned_settings() -> None:
    decision = analyze_uncached("RESET ALL", SCHEMA)
    assert decision.action == "rewrite" and decision.rule == "reset-all"
    assert decision.settings == (SettingChange("*", None),)
    assert decision.sql == ("RESET ALL\n;\nSET search_path TO 'globex', 'common'; "
                            "SET role TO 'globex'")


def test_reset_all_inside_a_string_keeps_the_other_statements() -> None:  # asyncpg reset
    sql = "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL -- bye"
    decision = analyze_uncached(sql, SCHEMA)
    assert decision.action == "rewrite" and decision.statements == 4
    assert decision.sql.startswith("SELECT pg_advisory_unlock_all()\n;\nCLOSE ALL\n;\n")
    assert "RESET ALL -- bye\n;\nSET search_path TO 'globex', 'common'" in decision.sql


def test_reset_all_without_pinned_settings_is_a_plain_allow() -> None:
    decision = analyze_uncached("RESET ALL", DATABASE)
    assert (decision.action, decision.settings) == ("allow", (SettingChange("*", None),))


def test_render_settings_quotes_through_the_ast() -> None:
    sql = render_settings([("search_path", 'globex, "We\'ird ""x"""'),
                           ("application_name", "it's; DROP TABLE x")])
    assert sql == ("SET search_path TO 'globex', 'We''ird \"x\"'; "
                   "SET application_name TO 'it''s; DROP TABLE x'")


@pytest.mark.parametrize("sql", [
    "DO $$BEGIN PERFORM set_config('app.tenant_id', 'b', false); END$$", "CALL p()",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'", "CREATE TABLE t (a int)",
    "CREATE TEMP TABLE orders (a int)", "DROP TABLE users", "ALTER TABLE t ADD b int",
    "GRANT SELECT ON t TO x", "REVOKE SELECT ON t FROM x", "LOCK TABLE orders",
    "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE", "TRUNCATE orders", "VACUUM", "ANALYZE t",
    "CLUSTER t", "REINDEX TABLE t", "LOAD 'plpgsql'", "CHECKPOINT",
    "ALTER ROLE x SET search_path = tb", "ALTER DATABASE d SET search_path = tb",
    "CREATE EXTENSION dblink", "CREATE SCHEMA s", "CREATE ROLE r", "CREATE DATABASE x "
    "TEMPLATE tenant_b", "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw",
    "CREATE USER MAPPING FOR CURRENT_USER SERVER s", "SELECT 1 INTO t",
    "SELECT * INTO TEMP t FROM users", "REFRESH MATERIALIZED VIEW v",
    "COMMENT ON TABLE t IS 'x'", "ALTER SYSTEM SET work_mem = '1GB'",
    "CREATE POLICY p ON t USING (true)", "ALTER TABLE t DISABLE ROW LEVEL SECURITY",
    "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
    "CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING", "SECURITY LABEL ON TABLE t IS 'x'",
    "IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y", "CREATE VIEW v AS SELECT 1",
])
def test_statements_off_the_strict_allowlist_are_denied(sql: str) -> None:  # THREATS 8, 11, 42
    for scope in [DATABASE, SCHEMA, ROW]:
        denied(sql, scope, "42501", "statement-type")


@pytest.mark.parametrize("sql", ["PREPARE TRANSACTION 'x'", "COMMIT PREPARED 'x'",
                                 "ROLLBACK PREPARED 'x'"])
def test_two_phase_commit_is_denied(sql: str) -> None:  # THREATS 51
    for scope in BOTH:
        denied(sql, scope, "42501", "two-phase")


@pytest.mark.parametrize("sql", ["EXPLAIN SELECT 1", "EXPLAIN ANALYZE SELECT * FROM users",
                                 "EXPLAIN (FORMAT JSON) DELETE FROM users", "explain verbose "
                                 "select 1"])
def test_explain_is_denied(sql: str) -> None:  # THREATS 24
    for scope in BOTH:
        denied(sql, scope, "42501", "explain")


@pytest.mark.parametrize("sql", ["COPY users TO '/tmp/x'", "COPY users FROM '/etc/passwd'",
                                 "COPY users FROM PROGRAM 'id'",
                                 "COPY (SELECT 1) TO PROGRAM 'curl x'"])
def test_copy_with_files_or_programs_is_denied(sql: str) -> None:  # THREATS 39
    for scope in BOTH:
        denied(sql, scope, "42501", "copy")


@pytest.mark.parametrize("sql", [
    "PREPARE p AS SELECT 1", "EXECUTE p", "EXECUTE p(1, 'a')",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1", "SELECT lastval()",
])
def test_session_features_are_refused_in_transaction_pooling(sql: str) -> None:  # 47, 52
    for scope in BOTH:
        message = denied(sql, scope, "0A000", "session-feature")
        assert "transaction pooling" in message


def test_deallocate_all_is_forwarded_and_tracked_in_transaction_pooling() -> None:
    """psycopg sends it after a rollback: the session forgets the statements once the
    server completed it (the DEALLOCATE_ALL event), in every strategy."""
    for scope in BOTH:
        decision = analyze_uncached("DEALLOCATE ALL", scope)
        assert (decision.action, decision.settings) == ("allow", (DEALLOCATE_ALL,))
        assert not decision.session_state
    for scope in [SESSION_DB, SESSION_SCHEMA]:
        assert analyze_uncached("DEALLOCATE ALL", scope).settings == ()


@pytest.mark.parametrize("sql", [
    "PREPARE p (int) AS SELECT * FROM users WHERE id = $1", "EXECUTE p(1)", "DEALLOCATE p",
    "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM users",
])
def test_session_features_work_in_session_pooling(sql: str) -> None:
    for scope in [SESSION_DB, SESSION_SCHEMA]:
        decision = analyze_uncached(sql, scope)
        assert (decision.action, decision.session_state) == ("allow", True)


def test_session_features_still_check_what_they_run() -> None:
    denied("PREPARE p AS SELECT * FROM hooli.items", SESSION_SCHEMA, "42P01",
           "relation-reach")
    denied("PREPARE p AS SELECT set_config('timezone', 'UTC', false)", SESSION_SCHEMA,
           "42501", "function-allowlist")
    denied("EXECUTE p(set_config('a.b', 'c', false))", SESSION_DB, "42501",
           "function-allowlist")
    denied("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM pg_authid", SESSION_DB, "42501",
           "catalog")
    denied("PREPARE p AS SELECT 1 INTO t", SESSION_DB, "42501", "statement-type")


def test_notifications() -> None:  # THREATS 53
    denied("LISTEN jobs", DATABASE, "0A000", "session-feature")
    decision = analyze_uncached("LISTEN jobs", SESSION_DB)
    assert (decision.action, decision.session_state) == ("allow", True)
    for sql in ["LISTEN jobs", "NOTIFY jobs", "NOTIFY jobs, 'x'",
                "SELECT pg_notify('jobs', 'x')", "SELECT * FROM users WHERE pg_notify('a', "
                "'b') IS NULL"]:
        for scope in [SCHEMA, ROW, SESSION_SCHEMA]:
            denied(sql, scope, "42501", "shared-channel")
    assert analyze_uncached("UNLISTEN *", SCHEMA).action == "allow"


def test_advisory_locks() -> None:  # THREATS 54
    for scope in [SCHEMA, ROW, SESSION_SCHEMA]:
        denied("SELECT pg_advisory_xact_lock(42)", scope, "42501", "advisory-lock")
        denied("SELECT pg_try_advisory_lock(1, 2)", scope, "42501", "advisory-lock")
    denied("SELECT pg_advisory_lock(42)", DATABASE, "0A000", "session-feature")
    assert analyze_uncached("SELECT pg_advisory_xact_lock(42)", DATABASE).action == "allow"
    decision = analyze_uncached("SELECT pg_advisory_lock(42)", SESSION_DB)
    assert (decision.action, decision.session_state) == ("allow", True)
    for scope in [DATABASE, SCHEMA]:
        assert analyze_uncached("SELECT pg_advisory_unlock(1)", scope).action == "allow"


@pytest.mark.parametrize("sql", ["DISCARD PLANS", "DISCARD SEQUENCES", "DISCARD TEMP",
                                 "discard temporary"])
def test_discard_is_not_supported(sql: str) -> None:  # THREATS 6
    for scope in [DATABASE, SCHEMA, SESSION_DB]:
        denied(sql, scope, "0A000", "discard")


def test_deallocate_name_and_discard_all_are_answered_by_the_session() -> None:
    """Transaction pooling: they reset what the session keeps, so it answers them alone;
    session pooling: DISCARD ALL would also drop the tenant's pinned settings."""
    for scope in [DATABASE, SCHEMA]:
        assert analyze_uncached("DEALLOCATE PREPARE _pg3_0", scope).local == \
            ("deallocate", "_pg3_0")
        assert analyze_uncached("discard all", scope).local == ("discard_all",)
        denied("DISCARD ALL; SELECT 1", scope, "0A000", "session-feature")
        denied("SELECT 1; DEALLOCATE x", scope, "0A000", "session-feature")
    denied("DISCARD ALL", SESSION_DB, "0A000", "discard")
    assert analyze_uncached("DEALLOCATE p", SESSION_DB).action == "allow"


def test_row_strategy_refuses_what_the_rewriter_will_handle() -> None:
    denied("MERGE INTO orders o USING x ON true WHEN MATCHED THEN DELETE", ROW, "0A000",
           "row-strategy")
    denied("COPY orders FROM STDIN", ROW, "0A000", "row-strategy")
    denied("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", ROW, "0A000",
           "row-strategy")
    denied("COPY (DELETE FROM orders RETURNING *) TO STDOUT", ROW, "0A000", "row-strategy")
    denied("CREATE TABLE t (a int)", Scope("row", isolation_level="standard"), "42501",
           "statement-type")


@pytest.mark.parametrize("sql, sqlstate, rule", [
    ("SELECT 1; SET app.tenant_id = 'b'; SELECT * FROM users", "42501", "reserved-setting"),
    ("SELECT 1; DROP TABLE users", "42501", "statement-type"),
    ("BEGIN; SELECT 1; SELECT * FROM hooli.items; COMMIT", "42P01", "relation-reach"),
    ("SELECT 1; SELEC 2", "42601", "parse"),
])
def test_one_bad_statement_denies_the_whole_string(sql, sqlstate, rule) -> None:  # 46
    denied(sql, SCHEMA, sqlstate, rule)
    assert analyze_uncached(sql, SCHEMA).statements == sql.count(";") + 1 or rule == "parse"


@pytest.mark.parametrize("sql", ["SELEC 1", "SELECT 'unterminated", "SELECT * FROM users "
                                 "WHERE", "SELECT $$x", "\\d users"])
def test_syntax_errors_are_never_forwarded(sql: str) -> None:  # THREATS 14
    for scope in [DATABASE, SCHEMA, Scope("bypass")]:
        message = denied(sql, scope, "42601", "parse")
        assert message.startswith("tenantgate: syntax error")


@pytest.mark.parametrize("sql", [
    "SELECT '" + "x" * MAX_STATEMENT_BYTES + "'",
    "SELECT " + "1+(" * 300 + "1" + ")" * 300,
    "SELECT " + "1+(" * 1500 + "1" + ")" * 1500,
    "SELECT " + "1+(" * 20000 + "1" + ")" * 20000,
    "SELECT " + "(SELECT " * 150 + "1" + ")" * 150,
])
def test_huge_or_deep_statements_are_too_complex(sql: str) -> None:
    denied(sql, SCHEMA, "54001", "too-complex")


def test_unknown_strategy_fails_closed() -> None:
    denied("SELECT 1", Scope("tenant-of-the-month"), "42501", "strategy")


def test_nul_bytes_and_broken_text_are_refused() -> None:
    denied("SELECT 1\x00; DROP TABLE users", SCHEMA, "42601", "parse")
    denied("SELECT '\ud800'", SCHEMA, "22021", "encoding")


def test_nul_bytes_never_share_a_shape() -> None:
    from proxy.sql import Analyzer
    analyzer = Analyzer()
    assert analyzer.analyze("SELECT 1", SCHEMA).action == "allow"
    assert analyzer.analyze("SELECT 2\x00; DROP TABLE users", SCHEMA).action == "deny"


def test_pg_catalog_can_only_lead_the_search_path() -> None:
    assert analyze_uncached("SET search_path TO pg_catalog, public", DATABASE).action \
        == "allow"
    denied("SET search_path TO public, pg_catalog", DATABASE, "42501", "search-path")
