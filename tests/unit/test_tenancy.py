"""Tenant resolution, startup parameter filtering and per-strategy session plans."""

from __future__ import annotations

import dataclasses

import pytest
from pglast import parse_sql

from proxy.config import Cluster, Config, Tenant, User
from proxy.errors import FatalError, ProtocolViolation, TenantRefused
from proxy.sql.scope import Scope
from proxy.sql.sharedmodel import SharedCatalog
from proxy.tenancy.resolve import filter_startup_params, parse_options, resolve_tenant, split_user
from proxy.tenancy.strategy import SessionPlan, plan_session, quote_ident, quote_literal

pytestmark = pytest.mark.timeout(30)

CFG = Config(
    path="t.yaml",
    clusters={"main": Cluster(name="main", hosts=(("127.0.0.1", 5432),), user="tg"),
              "other": Cluster(name="other", hosts=(("127.0.0.2", 5432),), user="tg")},
    users={
        "app": User(name="app", password="pw", tenants=("*",)),
        "app.x": User(name="app.x", password="pw", tenants=("*",)),
        "acme_reporting": User(name="acme_reporting", password="pw", tenant="acme"),
        "limited": User(name="limited", password="pw", tenants=("globex", "initech")),
        "migrator": User(name="migrator", password="pw", bypass=True, cluster="other"),
    },
    tenants={
        "acme": Tenant(name="acme", strategy="database", cluster="main", database="acme"),
        "globex": Tenant(name="globex", strategy="schema", cluster="main", database="shared",
                         schema="globex", role="globex"),
        "initech": Tenant(name="initech", strategy="row", cluster="main", database="shared",
                          key="initech"),
        "hooli": Tenant(name="hooli", strategy="database", cluster="other", database="hooli_db"),
    },
    shared_schemas=("common", "Ext"),
)
USERS = CFG.users


def cfg_with(**changes: object) -> Config:
    return dataclasses.replace(CFG, **changes)


def resolve(login: str, suffix: str | None = None, cfg: Config = CFG, sni: str | None = None,
            **params: str) -> str | None:
    tenant = resolve_tenant(cfg, cfg.users[login], suffix, params, sni)
    return None if tenant is None else tenant.name


def refused(exc_type: type, login: str, suffix: str | None = None, cfg: Config = CFG,
            sni: str | None = None, **params: str) -> FatalError:
    with pytest.raises(exc_type) as info:
        resolve_tenant(cfg, cfg.users[login], suffix, params, sni)
    assert info.value.fatal
    return info.value


# --- split_user -------------------------------------------------------------------------------

@pytest.mark.parametrize("startup_user, expected", [
    ("app.acme", ("app", "acme")),
    ("app", ("app", None)),
    ("app.x", ("app.x", None)),  # the whole name is a configured user
    ("app.x.acme", ("app", "x.acme")),  # leftmost separator whose left part is a user
    ("nobody.acme", ("nobody.acme", None)),
    ("app.", ("app.", None)),
    (".app.acme", (".app.acme", None)),
    ("", ("", None)),
])
def test_split_user(startup_user: str, expected: tuple[str, str | None]) -> None:
    assert split_user(startup_user, CFG) == expected


def test_split_user_with_other_separators() -> None:
    assert split_user("app@acme", cfg_with(user_separator="@")) == ("app", "acme")
    assert split_user("app.acme", cfg_with(user_separator="@")) == ("app.acme", None)
    assert split_user("app--acme", cfg_with(user_separator="--")) == ("app", "acme")


def test_split_user_only_when_user_suffix_is_a_source() -> None:
    assert split_user("app.acme", cfg_with(resolve=("login", "options"))) == ("app.acme", None)


# --- parse_options ----------------------------------------------------------------------------

@pytest.mark.parametrize("options, expected", [
    ("", {}),
    ("  \t ", {}),
    ("-c tenant=acme", {"tenant": "acme"}),
    ("-ctenant=acme", {"tenant": "acme"}),
    ("--tenant=acme", {"tenant": "acme"}),
    ("  -c\tTenant=acme  ", {"tenant": "acme"}),
    ("-c tenant=acme -c tenant=acme", {"tenant": "acme"}),
    (r"-c tenant=a\ b", {"tenant": "a b"}),
    (r"-c tenant=a\\b", {"tenant": "a\\b"}),
    ("-c tenant=acme\\", {"tenant": "acme"}),  # a trailing backslash escapes nothing
    ("-c tenant=", {"tenant": ""}),
    ("-c tenant=a=b", {"tenant": "a=b"}),
    # THREATS 10: escaped spaces keep an injection attempt inside the value
    (r"--tenant=acme\ -c\ search_path=evil", {"tenant": "acme -c search_path=evil"}),
])
def test_parse_options(options: str, expected: dict[str, str]) -> None:
    assert parse_options(options) == expected


@pytest.mark.parametrize("options, message", [
    ("-c app.tenant_id=b", "startup option 'app.tenant_id' is not allowed"),
    ("-c tenant=acme -c role=tenant_b", "startup option 'role' is not allowed"),
    ("-c search_path=tb", "startup option 'search_path' is not allowed"),
    ("--search-path=tb", "startup option 'search_path' is not allowed"),
    ("-c standard_conforming_strings=off", "startup option 'standard_conforming_strings' is "
                                           "not allowed"),
    (r"-c\ search_path=x", "startup option ' search_path' is not allowed"),
    ("-c", "-c without a setting"),
    ("-c tenant", "malformed startup option 'tenant'"),
    ("--=x", "malformed startup option '=x'"),
    ("tenant=acme", "unsupported startup option 'tenant=acme'"),
    ("-B 100", "unsupported startup option '-B'"),
    ("-c tenant=a -c tenant=b", "the tenant option is given twice with different values"),
])
def test_parse_options_refuses(options: str, message: str) -> None:
    with pytest.raises(FatalError) as info:
        parse_options(options)
    assert info.value.sqlstate == "42501" and info.value.rule == "startup-options"
    assert str(info.value) == (f"tenantgate: {message}; only -c tenant=NAME is allowed in "
                               "options (rule startup-options)")


# --- resolve_tenant: each source ----------------------------------------------------------------

def test_source_user_suffix() -> None:
    assert resolve("app", "acme") == "acme"
    assert resolve("app", "hooli", database="hooli_db") == "hooli"


def test_source_login() -> None:
    assert resolve("acme_reporting") == "acme"
    assert resolve("acme_reporting", "acme") == "acme"  # agreeing sources are fine


def test_source_database() -> None:
    assert resolve("app", database="globex") == "globex"
    assert resolve("limited", database="initech") == "initech"


def test_source_options() -> None:
    assert resolve("app", options="-c tenant=initech") == "initech"
    assert resolve("app", "initech", options="--tenant=initech", database="app") == "initech"


def test_source_sni() -> None:
    cfg = cfg_with(resolve=("user_suffix", "sni"))
    assert resolve("app", cfg=cfg, sni="ACME.db.example.com") == "acme"
    assert resolve("app", cfg=cfg, sni="hooli") == "hooli"
    assert resolve("app", "acme", cfg=cfg, sni="db.example.com") == "acme"  # no tenant "db"
    with pytest.raises(TenantRefused):  # SNI is not a source unless configured
        resolve_tenant(CFG, USERS["app"], None, {}, "acme.db.example.com")


def test_disabled_sources_name_no_tenant() -> None:
    cfg = cfg_with(resolve=("user_suffix",))
    assert str(refused(TenantRefused, "acme_reporting", cfg=cfg)) == (
        "tenantgate: no tenant given (looked in: user_suffix) (rule tenant-missing)")
    refused(TenantRefused, "app", cfg=cfg, database="acme")


def test_tenant_option_needs_options_source() -> None:
    exc = refused(TenantRefused, "app", "acme", cfg=cfg_with(resolve=("user_suffix",)),
                  options="-c tenant=acme")
    assert str(exc) == ("tenantgate: the tenant option is not enabled (resolve has no "
                        "'options') (rule tenant-source)")


# --- resolve_tenant: refusals ----------------------------------------------------------------

def test_no_tenant_is_refused() -> None:
    exc = refused(TenantRefused, "app", database="app")
    assert exc.sqlstate == "28000"
    assert str(exc) == ("tenantgate: no tenant given (looked in: user_suffix, login, database, "
                        "options) (rule tenant-missing)")


@pytest.mark.parametrize("login, suffix, params, sources", [
    ("app", "acme", {"options": "-c tenant=globex"}, "user_suffix and options"),
    ("app", "acme", {"database": "globex"}, "user_suffix and database"),
    ("acme_reporting", "globex", {}, "user_suffix and login"),
    ("acme_reporting", None, {"options": "-c tenant=initech"}, "login and options"),
    ("app", None, {"database": "acme", "options": "-c tenant=hooli"}, "database and options"),
])
def test_conflicting_tenants(login: str, suffix: str | None, params: dict[str, str],
                             sources: str) -> None:
    exc = refused(TenantRefused, login, suffix, **params)
    assert str(exc) == (f"tenantgate: conflicting tenants: {sources} name different tenants "
                        "(rule tenant-conflict)")
    assert "acme" not in exc.message or "acme" in (suffix or "") + str(params)


def test_conflict_follows_resolve_order() -> None:
    cfg = cfg_with(resolve=("options", "user_suffix"))
    exc = refused(TenantRefused, "app", "acme", cfg=cfg, options="-c tenant=globex")
    assert str(exc) == ("tenantgate: conflicting tenants: options and user_suffix name "
                        "different tenants (rule tenant-conflict)")


@pytest.mark.parametrize("suffix, params, name", [
    ("nope", {}, "nope"),
    (None, {"options": "-c tenant=nope"}, "nope"),
    ("acme", {"options": "-c tenant=ghost"}, "ghost"),  # unknown beats conflict
    ("bad\nname", {}, "bad?name"),
])
def test_unknown_tenant(suffix: str | None, params: dict[str, str], name: str) -> None:
    exc = refused(TenantRefused, "app", suffix, **params)
    assert str(exc) == f'tenantgate: tenant "{name}" is not known (rule tenant-unknown)'


def test_login_not_allowed_for_tenant() -> None:
    exc = refused(TenantRefused, "limited", "acme")
    assert exc.sqlstate == "28000"
    assert str(exc) == ('tenantgate: login "limited" may not act for tenant "acme" '
                        "(rule tenant-not-allowed)")
    assert resolve("limited", "globex") == "globex"


def test_bypass_login_has_no_tenant() -> None:
    assert resolve("migrator") is None
    assert resolve("migrator", database="acme") is None
    assert resolve("migrator", cfg=cfg_with(resolve=("sni",)), sni="acme.example.com") is None


@pytest.mark.parametrize("suffix, params, name", [
    ("acme", {}, "acme"),
    (None, {"options": "-c tenant=globex"}, "globex"),
])
def test_bypass_login_naming_a_tenant_is_refused(suffix: str | None, params: dict[str, str],
                                                 name: str) -> None:
    exc = refused(TenantRefused, "migrator", suffix, **params)
    assert str(exc) == (f'tenantgate: login "migrator" is a bypass login and cannot act for '
                        f'tenant "{name}" (rule tenant-bypass)')


def test_bypass_login_options_are_still_filtered() -> None:
    with pytest.raises(FatalError) as info:
        resolve_tenant(CFG, USERS["migrator"], None, {"options": "-c role=x"}, None)
    assert info.value.sqlstate == "42501"


# --- resolve_tenant: the startup database (THREATS 61) --------------------------------------------

@pytest.mark.parametrize("database", ["acme", "app", "postgres", "anything", ""])
def test_database_label_is_accepted(database: str) -> None:
    assert resolve("app", "acme", database=database) == "acme"


@pytest.mark.parametrize("suffix, database, cfg", [
    ("acme", "shared", CFG),
    ("acme", "hooli_db", CFG),
    ("globex", "acme", cfg_with(resolve=("user_suffix",))),
    ("globex", "hooli", cfg_with(resolve=("user_suffix",))),
    ("hooli", "acme", cfg_with(resolve=("user_suffix",))),
])
def test_database_of_another_tenant_is_refused(suffix: str, database: str, cfg: Config) -> None:
    exc = refused(FatalError, "app", suffix, cfg=cfg, database=database)
    assert exc.sqlstate == "3D000"
    assert str(exc) == f'tenantgate: database "{database}" does not exist (rule tenant-database)'


def test_own_database_and_shared_database_are_accepted() -> None:
    assert resolve("app", "globex", database="shared") == "globex"
    assert resolve("app", "initech", database="shared") == "initech"
    assert resolve("app", "hooli", database="hooli") == "hooli"


# --- filter_startup_params -----------------------------------------------------------------------

def test_filter_keeps_the_allowlist() -> None:
    params = {"user": "app.acme", "database": "app", "options": "-c tenant=acme",
              "client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC",
              "IntervalStyle": "postgres", "extra_float_digits": "3",
              "application_name": "psql"}
    assert filter_startup_params(params) == {
        "client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC",
        "IntervalStyle": "postgres", "extra_float_digits": "3", "application_name": "psql"}


def test_filter_matches_names_case_insensitively() -> None:
    assert filter_startup_params({"datestyle": "ISO", "TIMEZONE": "UTC", "Client_Encoding":
                                  "utf-8", "APPLICATION_NAME": "x"}) == {
        "DateStyle": "ISO", "TimeZone": "UTC", "client_encoding": "UTF8", "application_name": "x"}


@pytest.mark.parametrize("spelling", ["UTF8", "utf8", "utf-8", "UTF_8", "unicode", "Unicode"])
def test_client_encoding_utf8_spellings(spelling: str) -> None:
    assert filter_startup_params({"client_encoding": spelling}) == {"client_encoding": "UTF8"}


@pytest.mark.parametrize("encoding", ["GBK", "SJIS", "BIG5", "SQL_ASCII", "LATIN1", "UTF16",
                                      "utf8mb4", ""])
def test_client_encoding_other_is_refused(encoding: str) -> None:
    with pytest.raises(FatalError) as info:
        filter_startup_params({"client_encoding": encoding})
    assert (info.value.sqlstate, info.value.rule) == ("42501", "client-encoding")
    assert str(info.value) == (f'tenantgate: client_encoding "{encoding}" is not allowed; '
                               "use UTF8 (rule client-encoding)")


def test_application_name_is_sanitised() -> None:
    assert filter_startup_params({"application_name": "app\nname\té!"}) == {
        "application_name": "app?name??!"}
    assert filter_startup_params({"application_name": "x" * 100}) == {
        "application_name": "x" * 63}


@pytest.mark.parametrize("key", ["replication", "Replication"])
@pytest.mark.parametrize("value", ["database", "true", "false"])
def test_replication_is_a_protocol_violation(key: str, value: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        filter_startup_params({"user": "app", key: value})
    assert info.value.sqlstate == "08P01" and info.value.fatal


@pytest.mark.parametrize("key", ["search_path", "role", "standard_conforming_strings",
                                 "app.tenant_id", "session_authorization", "User", "Database",
                                 "work_mem", "_pq_.x"])
def test_other_startup_parameters_are_refused(key: str) -> None:
    with pytest.raises(FatalError) as info:
        filter_startup_params({"user": "app", key: "x"})
    assert (info.value.sqlstate, info.value.rule) == ("42501", "startup-parameter")
    assert str(info.value) == (f'tenantgate: startup parameter "{key}" is not allowed '
                               "(rule startup-parameter)")


# --- quoting --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, quoted", [
    ("globex", "globex"), ("_a1", "_a1"), ("role", "role"), ("Globex", '"Globex"'),
    ("select", '"select"'), ("user", '"user"'), ("a b", '"a b"'), ('x"y', '"x""y"'),
    ("1a", '"1a"'), ("a$b", '"a$b"'), ("é", '"é"'),
])
def test_quote_ident(name: str, quoted: str) -> None:
    assert quote_ident(name) == quoted
    stmt = parse_sql(f"SET ROLE {quoted}")[0].stmt
    assert stmt.args[0].val.sval == name  # reads back as exactly the configured name


@pytest.mark.parametrize("value, quoted", [
    ("initech", "'initech'"), ("o'brien", "'o''brien'"), ("a\\b", "E'a\\\\b'"),
    ("'\\'", "E'''\\\\'''"),
])
def test_quote_literal(value: str, quoted: str) -> None:
    assert quote_literal(value) == quoted
    for scs in ("on", "off"):
        stmt = parse_sql(f"SET standard_conforming_strings = {scs}; SELECT {quoted}")[1].stmt
        assert stmt.targetList[0].val.val.sval == value


# --- plan_session --------------------------------------------------------------------------------

def test_plan_database() -> None:
    assert plan_session(CFG, USERS["app"], CFG.tenants["hooli"], "app") == SessionPlan(
        tenant="hooli", strategy="database", cluster="other", database="hooli_db",
        setup_sql=(), context_key=("database", "hooli", ()),
        scope=Scope(strategy="database", isolation_level="strict", pool_mode="transaction"))


def test_plan_schema() -> None:
    setup = ('SET search_path TO globex, common, "Ext"', "SET ROLE globex")
    catalog = SharedCatalog.from_rows([["common", "v", "v"]])
    plan = plan_session(CFG, USERS["app"], CFG.tenants["globex"], "shared",
                        shared_catalog=catalog)
    assert plan == SessionPlan(
        tenant="globex", strategy="schema", cluster="main", database="shared",
        setup_sql=setup, context_key=("schema", "globex", setup),
        scope=Scope(strategy="schema", schemas=("globex",), shared_schemas=("common", "Ext"),
                    shared_catalog=catalog,
                    pinned_settings=(("search_path", 'globex, common, "Ext"'),
                                     ("role", "globex"))))


def test_plan_schema_quotes_names_and_omits_absent_role() -> None:
    tenant = Tenant(name="odd", strategy="schema", cluster="main", database="shared",
                    schema='Odd "S"')
    plan = plan_session(cfg_with(shared_schemas=()), USERS["app"], tenant, "")
    assert plan.setup_sql == ('SET search_path TO "Odd ""S"""',)
    assert plan.scope.pinned_settings == (("search_path", '"Odd ""S"""'),)
    assert plan.scope.schemas == ('Odd "S"',)
    args = parse_sql(plan.setup_sql[0])[0].stmt.args
    assert [arg.val.sval for arg in args] == ['Odd "S"']
    tenant = dataclasses.replace(tenant, role="select")
    assert plan_session(CFG, USERS["app"], tenant, "").setup_sql[1] == 'SET ROLE "select"'


def test_plan_row() -> None:
    setup = ("SELECT pg_catalog.set_config('tenantgate.tenant', 'initech', false)",
             "SET search_path TO public")
    assert plan_session(CFG, USERS["app"], CFG.tenants["initech"], "shared") == SessionPlan(
        tenant="initech", strategy="row", cluster="main", database="shared",
        setup_sql=setup, context_key=("row", "initech", setup),
        scope=Scope(strategy="row", row_column="tenant_id", tenant_key="initech",
                    row_enforce=CFG.row.enforce,
                    pinned_settings=(("tenantgate.tenant", "initech"),
                                     ("search_path", "public"))))


def test_plan_row_with_role_and_awkward_key() -> None:
    tenant = Tenant(name="ob", strategy="row", cluster="main", database="shared",
                    key="o'b\\x", role="Row Role")
    cfg = cfg_with(row=dataclasses.replace(CFG.row, column="org_id"))
    plan = plan_session(cfg, USERS["app"], tenant, "shared")
    assert plan.setup_sql == (
        "SELECT pg_catalog.set_config('tenantgate.tenant', E'o''b\\\\x', false)",
        "SET search_path TO public", 'SET ROLE "Row Role"')
    assert plan.scope.pinned_settings == (("tenantgate.tenant", "o'b\\x"),
                                          ("search_path", "public"), ("role", "Row Role"))
    assert (plan.scope.row_column, plan.scope.tenant_key) == ("org_id", "o'b\\x")
    call = parse_sql(plan.setup_sql[0])[0].stmt.targetList[0].val
    assert [arg.val.sval for arg in call.args[:2]] == ["tenantgate.tenant", "o'b\\x"]


def test_plan_bypass() -> None:
    cfg = cfg_with(isolation_level="standard", pool_mode="session")
    assert plan_session(cfg, USERS["migrator"], None, "acme") == SessionPlan(
        tenant=None, strategy="bypass", cluster="other", database="acme", setup_sql=(),
        context_key=("bypass", None, ()),
        scope=Scope(strategy="bypass", isolation_level="standard", pool_mode="session"))
    assert plan_session(cfg, USERS["migrator"], None, "").database == "migrator"


def test_plan_scope_follows_isolation_and_pool_mode() -> None:
    cfg = cfg_with(isolation_level="standard", pool_mode="session")
    scope = plan_session(cfg, USERS["app"], CFG.tenants["globex"], "").scope
    assert (scope.isolation_level, scope.pool_mode) == ("standard", "session")


def test_plan_context_keys_separate_tenants() -> None:
    plans = [plan_session(CFG, USERS["app"], tenant, "") for tenant in CFG.tenants.values()]
    assert len({plan.context_key for plan in plans}) == len(plans)
    again = plan_session(CFG, USERS["limited"], CFG.tenants["globex"], "x")
    assert again.context_key == plans[1].context_key
    hash(again)  # plans and scopes are usable as dict keys


def test_plan_needs_a_tenant_unless_bypass() -> None:
    with pytest.raises(ValueError):
        plan_session(CFG, USERS["app"], None, "app")
    with pytest.raises(ValueError):
        plan_session(CFG, USERS["migrator"], CFG.tenants["acme"], "acme")
