"""The YAML loader: the example configs load; every error is FILE:LINE: message."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from proxy.config import (ClientTls, Cluster, Config, RowSettings, Tenant, User, load_config,
                          parse_address, parse_config, password_kind)
from proxy.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ENV = {"MAIN_DB_PASSWORD": "main-secret", "APP_PASSWORD": "app-secret",
               "ACME_REPORTING_PASSWORD": "acme-secret", "MIGRATOR_PASSWORD": "mig-secret",
               "OPS_PASSWORD": "ops-secret", "AUDIT_HMAC_KEY": "an-audit-key-of-32-bytes-or-so!!"}

# lines 1-10; cases append from line 11 or replace a line
BASE = """\
clusters:
  main:
    hosts: ["127.0.0.1:5432"]
    user: tenantgate
users:
  app:
    password: pw
    tenants: ["*"]
tenants:
  acme: {strategy: database, database: acme}
"""

TWO_CLUSTERS = BASE.replace("users:\n", """\
  other:
    hosts: ["10.0.0.2:5432", "[::1]:5433"]
    user: tg
users:
""")  # lines 5-7 are cluster "other"; users start at line 8


def scram_verifier() -> str:
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return (f"SCRAM-SHA-256$4096:{b64(b'0123456789abcdef')}$"
            f"{b64(hashlib.sha256(b'stored').digest())}:{b64(hashlib.sha256(b'server').digest())}")


def load(text: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(text, "cfg.yaml", env or {})


def error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, env)
    assert info.value.path == "cfg.yaml"
    return str(info.value)


def replace(old: str, new: str, text: str = BASE) -> str:
    assert old in text
    return text.replace(old, new, 1)


# --- the shipped examples ------------------------------------------------------------------

def test_example_config_loads_every_strategy_and_user_kind() -> None:
    cfg = load_config(str(ROOT / "config" / "tenantgate.yaml"), EXAMPLE_ENV)
    assert cfg.listen == ("127.0.0.1", 6432)
    assert cfg.metrics == ("127.0.0.1", 9187)
    assert (cfg.pool_mode, cfg.isolation_level, cfg.tls) == ("transaction", "strict", None)
    assert cfg.clusters == {"main": Cluster(
        name="main", hosts=(("127.0.0.1", 5432),), user="tenantgate", password="main-secret",
        pool_size=20, tls="prefer", connect_timeout=5.0, wait_timeout=30.0,
        idle_timeout=600.0, max_lifetime=3600.0)}
    assert cfg.users == {
        "app": User(name="app", password="app-secret", auth="scram", tenants=("*",)),
        "acme_reporting": User(name="acme_reporting", password="acme-secret", tenant="acme"),
        "migrator": User(name="migrator", password="mig-secret", bypass=True, cluster="main"),
        "ops": User(name="ops", password="ops-secret", admin=True),
    }
    assert cfg.audit is not None and cfg.audit.path == "/var/log/tenantgate/audit.jsonl"
    assert cfg.audit.hmac_key == b"an-audit-key-of-32-bytes-or-so!!"
    assert cfg.tenants == {
        "acme": Tenant(name="acme", strategy="database", cluster="main", database="acme"),
        "globex": Tenant(name="globex", strategy="schema", cluster="main", database="shared",
                         schema="globex", role="globex"),
        "initech": Tenant(name="initech", strategy="row", cluster="main", database="shared",
                          key="initech", max_connections=50),
    }
    assert cfg.resolve == ("user_suffix", "login", "database", "options")
    assert cfg.user_separator == "."
    assert cfg.row == RowSettings(column="tenant_id", shared_tables=("public.countries",),
                                  enforce="both")
    assert cfg.shared_schemas == ("common",)
    assert (cfg.unknown_tenant, cfg.max_client_connections, cfg.max_message_size,
            cfg.shutdown_timeout) == ("reject", 10000, 16777216, 30.0)
    assert cfg.path.endswith("config/tenantgate.yaml")


def test_example_config_names_its_missing_variable() -> None:
    env = dict(EXAMPLE_ENV)
    del env["MAIN_DB_PASSWORD"]
    path = str(ROOT / "config" / "tenantgate.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path, env)
    line = next(i for i, text in enumerate(Path(path).read_text().splitlines(), 1)
                if "${MAIN_DB_PASSWORD}" in text and not text.lstrip().startswith("#"))
    assert str(info.value) == f"{path}:{line}: environment variable MAIN_DB_PASSWORD is not set"


def test_minimal_config_loads() -> None:
    cfg = load_config(str(ROOT / "config" / "minimal.yaml"), {"APP_PASSWORD": "x"})
    assert list(cfg.clusters) == ["main"] and cfg.clusters["main"].password is None
    assert cfg.tenants == {"acme": Tenant(name="acme", strategy="database", cluster="main",
                                          database="acme")}
    assert cfg.users == {"app": User(name="app", password="x", tenants=("acme",))}


# --- defaults and accepted forms -------------------------------------------------------------

def test_base_defaults() -> None:
    cfg = load(BASE)
    assert cfg == Config(
        path="cfg.yaml",
        clusters={"main": Cluster(name="main", hosts=(("127.0.0.1", 5432),), user="tenantgate")},
        users={"app": User(name="app", password="pw", tenants=("*",))},
        tenants={"acme": Tenant(name="acme", strategy="database", cluster="main",
                                database="acme")})


def test_full_forms() -> None:
    text = replace("{strategy: database,", "{strategy: database, cluster: main,",
                   TWO_CLUSTERS) + f"""\
  globex: {{strategy: schema, cluster: other, database: shared, schema: Globex, role: "g'x"}}
  initech: {{strategy: row, cluster: other, database: shared, key: 42}}
  hooli: {{strategy: row, cluster: other, database: shared, key: "hooli", role: hooli_r}}
tls: {{cert: c.pem, key: k.pem, mode: require}}
resolve: [sni, options]
user_separator: "@"
metrics: null
pool_mode: session
isolation_level: standard
shared_schemas: [common, "Ext"]
row: {{column: org_id, enforce: rls, prepare: false}}
max_client_connections: 5
max_message_size: 2048
shutdown_timeout: 0
"""
    text = replace("  app:\n", f"""\
  rep:
    password: "{scram_verifier()}"
    tenant: globex
  legacy:
    password: md5{"0f" * 16}
    auth: md5
    tenants:
      - initech
      - hooli
  local:
    auth: trust
    bypass: true
    cluster: other
    admin: true
  app:
""", text)
    cfg = load(text)
    assert cfg.clusters["other"].hosts == (("10.0.0.2", 5432), ("::1", 5433))
    assert cfg.tls == ClientTls(cert="c.pem", key="k.pem", mode="require")
    assert cfg.resolve == ("sni", "options") and cfg.user_separator == "@"
    assert (cfg.metrics, cfg.pool_mode, cfg.isolation_level) == (None, "session", "standard")
    assert cfg.shared_schemas == ("common", "Ext")
    assert cfg.row == RowSettings(column="org_id", shared_tables=(), enforce="rls",
                                  prepare=False)
    assert (cfg.max_client_connections, cfg.max_message_size, cfg.shutdown_timeout) == (
        5, 2048, 0.0)
    assert cfg.tenants["globex"] == Tenant(name="globex", strategy="schema", cluster="other",
                                           database="shared", schema="Globex", role="g'x")
    assert cfg.tenants["initech"].key == "42"
    assert cfg.users["rep"].password == scram_verifier()
    assert cfg.users["legacy"] == User(name="legacy", password="md5" + "0f" * 16, auth="md5",
                                       tenants=("initech", "hooli"))
    assert cfg.users["local"] == User(name="local", auth="trust", bypass=True, cluster="other",
                                      admin=True)


def test_bypass_login_defaults_to_the_only_cluster() -> None:
    cfg = load(replace("  app:\n", "  mig:\n    password: x\n    bypass: true\n  app:\n"))
    assert cfg.users["mig"].cluster == "main"


def test_file_order_of_sections_does_not_matter() -> None:
    text = BASE.split("tenants:\n")[1]
    cfg = load("tenants:\n" + text + BASE.split("tenants:\n")[0])
    assert cfg.tenants["acme"].cluster == "main"


def test_password_kind() -> None:
    assert password_kind(scram_verifier()) == "scram"
    assert password_kind("md5" + "a" * 32) == "md5"
    assert password_kind("md5" + "A" * 32) == "md5"  # as proxy.protocol.auth reads it
    assert password_kind("md5" + "g" * 32) == "plain"
    assert password_kind("md5" + "a" * 31) == "plain"
    assert password_kind("secret") == "plain"


def test_parse_address() -> None:
    assert parse_address("db.example.com:5432") == ("db.example.com", 5432)
    assert parse_address("[::1]:6432") == ("::1", 6432)
    for bad in ("localhost", ":5432", "h:0", "h:65536", "h:x", "::1:5432", "a b:1", "h:+1"):
        with pytest.raises(ValueError):
            parse_address(bad)


# --- ${VAR} ---------------------------------------------------------------------------------

def test_variables_expand_in_any_string() -> None:
    text = replace("password: pw", 'password: "pre-${PW}-${PW}"')
    text = replace("user: tenantgate", "user: ${ROLE}", text)
    cfg = load(text, {"PW": "p$w", "ROLE": "tg"})
    assert cfg.users["app"].password == "pre-p$w-p$w"
    assert cfg.clusters["main"].user == "tg"


def test_dollar_dollar_brace_is_a_literal() -> None:
    cfg = load(replace("password: pw", 'password: "a$${PW}b$c"'), {})
    assert cfg.users["app"].password == "a${PW}b$c"


def test_plain_variable_is_typed_after_expansion() -> None:
    text = replace("user: tenantgate", "user: tenantgate\n    pool_size: ${POOL}")
    assert load(text, {"POOL": "7"}).clusters["main"].pool_size == 7
    assert error(text, {"POOL": "many"}) == (
        "cfg.yaml:5: clusters.main.pool_size: expected an integer, got the string 'many'")


def test_variable_errors() -> None:
    assert error(replace("password: pw", "password: ${NOPE}")) == (
        "cfg.yaml:7: environment variable NOPE is not set")
    assert error(replace("password: pw", 'password: "x${OPEN"')) == (
        "cfg.yaml:7: unterminated ${ (write $${ for a literal ${)")
    assert error(replace("password: pw", 'password: "${1X}"')) == (
        "cfg.yaml:7: bad environment variable name '1X' in ${...}")


# --- environment overrides ---------------------------------------------------------------

def test_environment_overrides() -> None:
    cfg = load(BASE + "isolation_level: strict\n", {
        "TENANT_ISOLATION_LEVEL": "standard", "TENANT_MONITORING_ENABLED": "0",
        "TENANT_ENCRYPTION_ENABLED": "TRUE", "TENANT_CACHE_TTL": "1.5"})
    assert (cfg.isolation_level, cfg.monitoring_enabled, cfg.encryption_enabled,
            cfg.cache_ttl) == ("standard", False, True, 1.5)
    cfg = load(BASE, {"TENANT_MONITORING_ENABLED": "false", "TENANT_CACHE_TTL": "0"})
    assert (cfg.monitoring_enabled, cfg.cache_ttl, cfg.isolation_level) == (False, 0.0, "strict")


@pytest.mark.parametrize("variable, value, problem", [
    ("TENANT_ISOLATION_LEVEL", "loose", "expected strict or standard"),
    ("TENANT_MONITORING_ENABLED", "maybe", "expected true, false, 1 or 0"),
    ("TENANT_ENCRYPTION_ENABLED", "", "expected true, false, 1 or 0"),
    ("TENANT_CACHE_TTL", "soon", "expected a number of seconds"),
    ("TENANT_CACHE_TTL", "-1", "expected a number of seconds, at least 0"),
    ("TENANT_CACHE_TTL", "nan", "expected a number of seconds, at least 0"),
])
def test_bad_environment_override(variable: str, value: str, problem: str) -> None:
    assert error(BASE, {variable: value}) == (
        f"cfg.yaml: environment variable {variable}={value!r}: {problem}")


# --- errors, each with its exact line ----------------------------------------------------------

CLUSTER_LINE = "    user: tenantgate\n"

ERRORS = [
    # unknown keys, at every level, with a suggestion
    (BASE + "pool_mod: session\n",
     "cfg.yaml:11: unknown key 'pool_mod' (did you mean 'pool_mode'?)"),
    (BASE + "audit: {path: a.log}\n", "cfg.yaml:11: audit: missing required key 'hmac_key'"),
    (replace(CLUSTER_LINE, CLUSTER_LINE + "    pool_sise: 3\n"),
     "cfg.yaml:5: clusters.main: unknown key 'pool_sise' (did you mean 'pool_size'?)"),
    (replace("tenants: [\"*\"]", "tenants: [\"*\"]\n    bypas: true"),
     "cfg.yaml:9: users.app: unknown key 'bypas' (did you mean 'bypass'?)"),
    (replace("database: acme}", "database: acme, strategie: x}"),
     "cfg.yaml:10: tenants.acme: unknown key 'strategie' (did you mean 'strategy'?)"),
    (BASE + "tls: {cert: c, key: k, mod: allow}\n",
     "cfg.yaml:11: tls: unknown key 'mod' (did you mean 'mode'?)"),
    (BASE + "row:\n  colum: tid\n",
     "cfg.yaml:12: row: unknown key 'colum' (did you mean 'column'?)"),
    (BASE + "<<: {listen: 'a:1'}\n", "cfg.yaml:11: YAML merge keys (<<) are not supported"),
    # duplicate keys
    (BASE + "listen: 'a:1'\nlisten: 'b:2'\n",
     "cfg.yaml:12: duplicate key 'listen' (first given on line 11)"),
    (replace(CLUSTER_LINE, CLUSTER_LINE + "    user: again\n"),
     "cfg.yaml:5: clusters.main: duplicate key 'user' (first given on line 4)"),
    (BASE + "  acme: {strategy: database, database: acme2}\n",
     "cfg.yaml:11: tenants: duplicate key 'acme' (first given on line 10)"),
    # wrong types
    (replace(CLUSTER_LINE, CLUSTER_LINE + "    pool_size: twenty\n"),
     "cfg.yaml:5: clusters.main.pool_size: expected an integer, got the string 'twenty'"),
    (replace(CLUSTER_LINE, CLUSTER_LINE + "    pool_size: true\n"),
     "cfg.yaml:5: clusters.main.pool_size: expected an integer, got the boolean true"),
    (replace(CLUSTER_LINE, CLUSTER_LINE + "    pool_size: 0\n"),
     "cfg.yaml:5: clusters.main.pool_size: must be at least 1, got 0"),
    (replace(CLUSTER_LINE, CLUSTER_LINE + "    connect_timeout: 0\n"),
     "cfg.yaml:5: clusters.main.connect_timeout: must be more than 0"),
    (replace(CLUSTER_LINE, CLUSTER_LINE + "    wait_timeout: .inf\n"),
     "cfg.yaml:5: clusters.main.wait_timeout: expected a number of seconds, "
     "got the number inf"),
    (BASE + "shutdown_timeout: -1\n", "cfg.yaml:11: shutdown_timeout: must be at least 0"),
    (replace("user: tenantgate", "user: 5432"),
     "cfg.yaml:4: clusters.main.user: expected a string, got the number 5432"),
    (replace("user: tenantgate", "user:"),
     "cfg.yaml:4: clusters.main.user: expected a string, got null (no value)"),
    (replace("tenants: [\"*\"]", "tenants: \"*\""),
     "cfg.yaml:8: users.app.tenants: expected a list, got the string '*'"),
    (replace("tenants: [\"*\"]", "tenants: [\"*\"]\n    bypass: 'yes'"),
     "cfg.yaml:9: users.app.bypass: expected true or false, got the string 'yes'"),
    (BASE + "tls: [a]\n", "cfg.yaml:11: tls: expected a mapping, got a list"),
    (BASE + "users: 3\n", "cfg.yaml:11: duplicate key 'users' (first given on line 5)"),
    ("clusters: []\n", "cfg.yaml:1: clusters: expected a mapping, got a list"),
    # bad enums
    (BASE + "pool_mode: statement\n",
     "cfg.yaml:11: pool_mode: expected one of transaction | session, got the string 'statement'"),
    (BASE + "isolation_level: strikt\n",
     "cfg.yaml:11: isolation_level: expected one of strict | standard, "
     "got the string 'strikt' (did you mean 'strict'?)"),
    (BASE + "tls: {cert: c, key: k, mode: prefer}\n",
     "cfg.yaml:11: tls.mode: expected one of allow | require, got the string 'prefer'"),
    (replace(CLUSTER_LINE, CLUSTER_LINE + "    tls: off\n"),
     "cfg.yaml:5: clusters.main.tls: expected one of disable | prefer | require | verify-full, "
     "got the boolean false"),
    (BASE + "row: {enforce: all}\n",
     "cfg.yaml:11: row.enforce: expected one of rls | rewrite | both, got the string 'all'"),
    (BASE + "row:\n  prepare: sometimes\n",
     "cfg.yaml:12: row.prepare: expected true or false, got the string 'sometimes'"),
    (replace("strategy: database", "strategy: databse"),
     "cfg.yaml:10: tenants.acme.strategy: expected one of database | schema | row, "
     "got the string 'databse' (did you mean 'database'?)"),
    (BASE + "resolve:\n  - login\n  - hostname\n",
     "cfg.yaml:13: resolve: expected one of user_suffix | login | database | options | sni, "
     "got the string 'hostname'"),
    (BASE + "resolve: [login, login]\n", "cfg.yaml:11: resolve: 'login' is listed twice"),
    (BASE + "resolve: []\n", "cfg.yaml:11: resolve: at least one source is needed"),
    (BASE + "unknown_tenant: default\n",
     "cfg.yaml:11: unknown_tenant: expected one of reject, got the string 'default'"),
    (replace("tenants: [\"*\"]", "tenants: [\"*\"]\n    auth: password"),
     "cfg.yaml:9: users.app.auth: expected one of scram | md5 | plain | trust, "
     "got the string 'password'"),
    # addresses
    (BASE + "listen: localhost\n", "cfg.yaml:11: listen: expected \"host:port\", got 'localhost'"),
    (BASE + "listen: 'localhost:70000'\n",
     "cfg.yaml:11: listen: the port must be a number from 1 to 65535, got 'localhost:70000'"),
    (BASE + "listen: 6432\n", "cfg.yaml:11: listen: expected a string, got the number 6432"),
    (replace('["127.0.0.1:5432"]', '\n      - "127.0.0.1:5432"\n      - "::1:5432"'),
     "cfg.yaml:5: clusters.main.hosts: an IPv6 host needs brackets, as in \"[::1]:6432\", "
     "got '::1:5432'"),
    (replace('["127.0.0.1:5432"]', "[]"),
     "cfg.yaml:3: clusters.main.hosts: at least one \"host:port\" is needed"),
    (BASE + "metrics: '127.0.0.1:6432'\n", "cfg.yaml:11: metrics: must differ from listen"),
    # required keys, per strategy
    (replace(CLUSTER_LINE, ""), "cfg.yaml:2: clusters.main: missing required key 'user'"),
    (BASE + "  globex: {strategy: schema, database: shared}\n",
     "cfg.yaml:11: tenants.globex: missing required key 'schema' (the schema strategy needs it)"),
    (BASE + "  initech:\n    strategy: row\n    database: shared\n",
     "cfg.yaml:11: tenants.initech: missing required key 'key' (the row strategy needs it)"),
    (BASE + "  hooli: {strategy: database}\n",
     "cfg.yaml:11: tenants.hooli: missing required key 'database' "
     "(the database strategy needs it)"),
    (BASE + "  hooli: {database: h}\n",
     "cfg.yaml:11: tenants.hooli: missing required key 'strategy'"),
    (BASE + "  hooli:\n    strategy: database\n    database: h\n    schema: s\n",
     "cfg.yaml:14: tenants.hooli.schema: not used by the database strategy"),
    (BASE + "  hooli: {strategy: schema, database: s, schema: h, key: h}\n",
     "cfg.yaml:11: tenants.hooli.key: not used by the schema strategy"),
    (BASE + "  hooli: {strategy: row, database: s, key: ''}\n",
     "cfg.yaml:11: tenants.hooli.key: must not be empty"),
    (BASE + "  '*': {strategy: database, database: star}\n",
     "cfg.yaml:11: tenants: '*' is not a tenant name (it means any tenant)"),
    ("users: {}\n", "cfg.yaml:1: missing required section 'clusters'"),
    ("clusters: {}\n", "cfg.yaml:1: clusters: at least one entry is needed"),
    (BASE.split("users:")[0], "cfg.yaml:1: missing required section 'users'"),
    # dangling references
    (replace("{strategy: database, database: acme}",
             "{strategy: database, cluster: mian, database: acme}"),
     "cfg.yaml:10: tenants.acme.cluster: there is no cluster 'mian' (did you mean 'main'?)"),
    (replace('tenants: ["*"]', "tenant: acm"),
     "cfg.yaml:8: users.app.tenant: there is no tenant 'acm' (did you mean 'acme'?)"),
    (replace('tenants: ["*"]', "tenants:\n      - acme\n      - initech"),
     "cfg.yaml:10: users.app.tenants: there is no tenant 'initech'"),
    (replace('tenants: ["*"]', "bypass: true\n    cluster: backup"),
     "cfg.yaml:9: users.app.cluster: there is no cluster 'backup'"),
    (replace("database: acme}", "database: acme}\n  b: {strategy: database, database: b}",
             TWO_CLUSTERS),
     "cfg.yaml:13: tenants.acme: 'cluster' is required when there is more than one cluster"),
    # user kinds
    (replace('tenants: ["*"]', 'tenants: ["*"]\n    tenant: acme'),
     "cfg.yaml:9: users.app: give either 'tenant' or 'tenants', not both"),
    (replace('    tenants: ["*"]\n', ""),
     "cfg.yaml:6: users.app: give 'tenant', a non-empty 'tenants' or 'bypass: true'"),
    (replace('tenants: ["*"]', "tenants: []"),
     "cfg.yaml:6: users.app: give 'tenant', a non-empty 'tenants' or 'bypass: true'"),
    (replace('tenants: ["*"]', 'tenants: ["*"]\n    bypass: true'),
     "cfg.yaml:9: users.app: a bypass login acts for no tenant; remove 'tenants'"),
    (replace('tenants: ["*"]', "bypass: true",
             replace("{strategy: database,", "{strategy: database, cluster: main,", TWO_CLUSTERS)),
     "cfg.yaml:9: users.app: 'cluster' is required when there is more than one cluster"),
    (replace('tenants: ["*"]', 'tenants: ["*"]\n    cluster: main'),
     "cfg.yaml:9: users.app.cluster: only used by bypass logins"),
    (BASE + "resolve: [user_suffix, sni]\n",
     "cfg.yaml:11: resolve: 'sni' needs client TLS (a 'tls' section)"),
    # passwords and auth
    (replace("password: pw", "password: pw\n    auth: trust"),
     "cfg.yaml:7: users.app.password: auth: trust takes no password"),
    (replace("    password: pw\n", "    auth: md5\n"),
     "cfg.yaml:6: users.app: a password is required (auth: md5)"),
    (replace("    password: pw\n", ""),
     "cfg.yaml:6: users.app: a password is required (auth: scram)"),
    (replace("password: pw", "password: ''"), "cfg.yaml:7: users.app.password: must not be empty"),
    (replace("password: pw", f"password: '{scram_verifier()}'\n    auth: md5"),
     "cfg.yaml:7: users.app.password: auth: md5 cannot work from a SCRAM verifier; "
     "give the password or its md5 hash"),
    (replace("password: pw", "password: md5" + "a" * 32),
     "cfg.yaml:7: users.app.password: auth: scram cannot work from an md5 hash; "
     "give the password or a SCRAM verifier"),
    (replace("password: pw", "password: SCRAM-SHA-256$4096:abc"),
     "cfg.yaml:7: users.app.password: malformed SCRAM verifier "
     "(expected SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY)"),
    (replace("password: pw", "password: SCRAM-SHA-256$4096:c2FsdA==$YQ==:Yg=="),
     "cfg.yaml:7: users.app.password: malformed SCRAM verifier (keys must be 32 bytes)"),
    # names
    (replace("database: acme}", f"database: {'d' * 64}}}"),
     f"cfg.yaml:10: tenants.acme.database: name {'d' * 20!r}... is longer than 63 bytes"),
    (replace("user: tenantgate", 'user: "ten\\0ant"'),
     "cfg.yaml:4: clusters.main.user: must not contain NUL"),
    (BASE + f"  {'é' * 32}: {{strategy: database, database: e}}\n",
     f"cfg.yaml:11: tenants.{'é' * 32}: name {'é' * 20!r}... is longer than 63 bytes"),
    (BASE + "row: {shared_tables: [countries]}\n",
     "cfg.yaml:11: row.shared_tables: expected a schema-qualified table \"schema.table\", "
     "got 'countries'"),
    (BASE + "user_separator: ' '\n", "cfg.yaml:11: user_separator: must not contain spaces"),
    # tenants that would share what isolates them
    (BASE + "  globex: {strategy: schema, database: acme, schema: g}\n",
     "cfg.yaml:11: tenants.globex: database 'acme' on cluster 'main' is also used by tenant "
     "'acme'; a database-strategy tenant needs its own"),
    (BASE + "  g1: {strategy: schema, database: s, schema: g}\n"
            "  g2: {strategy: schema, database: s, schema: g}\n",
     "cfg.yaml:12: tenants.g2.schema: tenant 'g1' already has schema 'g' in database 's'"),
    (BASE + "  r1: {strategy: row, database: s, key: k}\n"
            "  r2: {strategy: row, database: s, key: k}\n",
     "cfg.yaml:12: tenants.r2.key: tenant 'r1' already has key 'k' in database 's'"),
    (BASE + "  g1: {strategy: schema, database: s, schema: common}\nshared_schemas: [common]\n",
     "cfg.yaml:11: tenants.g1.schema: 'common' is also a shared schema"),
    (replace(CLUSTER_LINE, CLUSTER_LINE + "    tls: require\n    tls_ca: ca.pem\n"),
     "cfg.yaml:6: clusters.main.tls_ca: only used with tls: verify-full"),
    # the file itself
    ("", "cfg.yaml:1: the configuration is empty"),
    ("# nothing but a comment\n\n", "cfg.yaml:1: the configuration is empty"),
    ("- a\n", "cfg.yaml:1: expected a mapping, got a list"),
    (BASE + "listen: [\n", "cfg.yaml:12: invalid YAML: expected the node content, but found "
                           "'<stream end>'"),
    (BASE + "listen: 'a:1'\n  x: 1\n", "cfg.yaml:12: invalid YAML: expected <block end>, "
                                       "but found '<block mapping start>'"),
    (BASE + "\tlisten: 'a:1'\n", "cfg.yaml:11: invalid YAML: found character '\\t' that "
                                "cannot start any token"),
    (BASE + "---\nlisten: 'a:1'\n", "cfg.yaml:11: invalid YAML: but found another document"),
    (BASE + "listen: !env X\n",
     "cfg.yaml:11: invalid YAML: could not determine a constructor for the tag '!env'"),
]


@pytest.mark.parametrize("text, expected", ERRORS)
def test_error_has_file_line_and_message(text: str, expected: str) -> None:
    assert error(text) == expected


def test_error_carries_path_and_line_attributes() -> None:
    with pytest.raises(ConfigError) as info:
        load(BASE + "pool_mode: statement\n")
    assert (info.value.path, info.value.line) == ("cfg.yaml", 11)


def test_load_config_reads_files(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(BASE)
    assert load_config(str(path), {}).path == str(path)
    path.write_bytes(BASE.encode() + b"listen: '\xff:1'\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert str(info.value) == f"{path}:11: the file is not valid UTF-8"
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(missing), {})
    assert str(info.value) == f"{missing}: cannot read the configuration: No such file or directory"


def test_docker_sidecar_config_loads() -> None:
    """docker/tenantgate.yaml cannot be run here (no Docker engine), but it must be valid."""
    env = {"MAIN_DB_PASSWORD": "x", "APP_PASSWORD": "y", "MIGRATOR_PASSWORD": "z"}
    cfg = load_config(str(ROOT / "docker" / "tenantgate.yaml"), env)
    assert cfg.users["app"].tenants == ("*",)
    assert cfg.clusters and all(t.cluster in cfg.clusters for t in cfg.tenants.values())
