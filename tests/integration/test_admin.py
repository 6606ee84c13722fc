"""The admin console through the running proxy: `psql -d tenantgate` as an admin login shows
pools, clients and servers that match pg_stat_activity; tenant and bypass logins are refused
(28000) and never reach a real database called tenantgate; PAUSE/RESUME hold and release a
tenant's new transactions; KILL closes one tenant's clients and server connections; RELOAD
picks up the config file. Waiting is always on a real condition or a future, with a deadline."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.helpers import (LoginRefused, backend_query, error_fields, raw_login, read_message,
                           run_psql)

pytestmark = pytest.mark.timeout(120)

APP = "app-secret"
OPS, OPS_PASSWORD = "ops", "ops-secret"  # an admin-only login added to the sample config
CONSOLE = "tenantgate"
NEWCO = "newco: {strategy: database, cluster: main, database: newco}"
# Column order of the console's result sets, as the README documents them.
SERVERS = ("cluster", "database", "state", "backend_pid", "tenant", "login", "client",
           "prepared_for", "addr", "port", "local_port", "connect_time", "last_used",
           "needs_reset")
CLIENTS = ("login", "tenant", "strategy", "cluster", "database", "state", "tx", "addr", "port",
           "connect_time", "wait", "backend_pid", "application_name", "tls")
POOLS = ("cluster", "database", "pool_mode", "pool_size", "cl_active", "cl_waiting",
         "sv_active", "sv_idle", "sv_used", "sv_login", "maxwait", "maxwait_us")
PROXY_BACKENDS = ("SELECT pid, datname, state, client_port FROM pg_stat_activity "
                  "WHERE usename = 'tenantgate' AND backend_type = 'client backend'")


def admin_config(pg, sample, port, *, admin: bool = True, **options) -> str:
    """The sample config plus the login `ops` (admin: true, or a plain tenant login)."""
    entry = "    admin: true\n" if admin else '    tenants: ["*"]\n'
    login = f'  {OPS}:\n    password: "{OPS_PASSWORD}"\n{entry}'
    return sample.config_yaml(pg, port, **options).replace("users:\n", "users:\n" + login, 1)


@pytest.fixture
def proxy(pg, sample, proxy_factory):
    return proxy_factory(config_text=admin_config(pg, sample, "{port}"))


def console(proxy) -> psycopg.Connection:
    """A psycopg connection to the admin console (psycopg sends parameterless statements
    as simple queries, which is all the console speaks)."""
    return proxy.connect(OPS, OPS_PASSWORD, CONSOLE)


def show(conn: psycopg.Connection, what: str) -> list[dict]:
    cur = conn.execute(f"SHOW {what}")
    names = [column.name for column in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def psql_show(proxy, what: str, columns: tuple[str, ...]) -> list[dict]:
    done = run_psql(proxy.dsn(OPS, OPS_PASSWORD, CONSOLE), f"SHOW {what}")
    assert done.returncode == 0, done.stderr
    rows = [line.split("|") for line in done.stdout.splitlines() if line]
    assert all(len(row) == len(columns) for row in rows), done.stdout
    return [dict(zip(columns, row)) for row in rows]


def backends(pg) -> dict[int, tuple[str, str, int]]:
    """The proxy's server connections as PostgreSQL lists them: pid → (database, state,
    client port)."""
    return {pid: (db, state, port)
            for pid, db, state, port in backend_query(pg, "postgres", PROXY_BACKENDS)}


def refusal(proxy, user: str, password: str, database: str) -> dict[str, str]:
    with pytest.raises(LoginRefused) as info:
        raw_login(proxy.host, proxy.port, user, password, database).close()
    return info.value.fields


# -- acceptance: psql as an admin, and tenants refused ------------------------------------

def test_psql_shows_pools_clients_and_servers_matching_pg_stat_activity(pg, proxy):
    in_tx = proxy.connect("app.acme", APP)
    in_tx.execute("BEGIN")
    held_pid = in_tx.execute("SELECT pg_backend_pid()").fetchone()[0]
    idle = proxy.connect("app.globex", APP)
    idle.execute("SELECT count(*) FROM items")  # its server connection goes back to the pool

    def servers_match() -> list[dict] | None:
        servers = psql_show(proxy, "SERVERS", SERVERS)
        listed = {int(row["backend_pid"]): (row["database"], row["state"]) for row in servers}
        seen = backends(pg)  # a stopped proxy's backends may take a moment to go away
        if set(listed) != set(seen):
            return None
        return servers

    servers = proxy.wait_until(servers_match, 15, "SHOW SERVERS to match pg_stat_activity")
    seen = backends(pg)
    for row in servers:
        pid = int(row["backend_pid"])
        assert seen[pid][0] == row["database"] and seen[pid][2] == int(row["local_port"])
        expected = "idle in transaction" if row["state"] == "active" else "idle"
        assert seen[pid][1] == expected, (row, seen[pid])
    held = [row for row in servers if int(row["backend_pid"]) == held_pid]
    assert len(held) == 1 and held[0]["state"] == "active" and held[0]["tenant"] == "acme"
    assert any(row["database"] == "shared" and row["state"] == "idle" for row in servers)

    clients = {row["tenant"]: row for row in psql_show(proxy, "CLIENTS", CLIENTS)}
    assert clients["acme"]["backend_pid"] == str(held_pid)
    assert (clients["acme"]["state"], clients["acme"]["tx"]) == ("active", "T")
    assert (clients["globex"]["state"], clients["globex"]["backend_pid"]) == ("idle", "")
    assert clients[""]["login"] == OPS and clients[""]["state"] == "admin"  # psql itself

    pools = {row["database"]: row for row in psql_show(proxy, "POOLS", POOLS)}
    catalog = {int(row["backend_pid"]) for row in servers if row["state"] == "catalog"}
    assert {row["database"] for row in servers if row["state"] == "catalog"} == {"shared"}
    for database in ("acme", "shared"):  # the pools: every backend but the catalog reader
        open_here = sum(1 for pid, (db, _, _) in seen.items()
                        if db == database and pid not in catalog)
        row = pools[database]
        assert int(row["sv_active"]) + int(row["sv_idle"]) + int(row["sv_used"]) == open_here
        assert int(row["cl_active"]) == 1 and int(row["cl_waiting"]) == 0
    assert int(pools["acme"]["sv_active"]) == 1 and int(pools["shared"]["sv_active"]) == 0
    in_tx.execute("COMMIT")
    in_tx.close()
    idle.close()


def test_psql_as_a_tenant_login_is_refused(proxy):
    done = run_psql(proxy.dsn("app.acme", APP, CONSOLE), "SHOW POOLS")
    assert done.returncode != 0
    assert "admin console" in done.stderr and "not an admin login" in done.stderr


@pytest.mark.parametrize(("user", "password"), [
    ("app.acme", APP), ("app", APP), ("acme_reporting", "reporting-secret"),
    ("migrator", "migrator-secret")])
def test_non_admin_logins_get_28000_for_the_console(proxy, user, password):
    fields = refusal(proxy, user, password, CONSOLE)
    assert fields["C"] == "28000" and fields["S"] == "FATAL"
    assert "admin console" in fields["M"]


@pytest.fixture
def real_tenantgate_database(pg):
    """A real database named tenantgate that the backend login may connect to: a bypass
    login routed to it by name would get in."""
    pg.run_sql("CREATE DATABASE tenantgate; GRANT CONNECT ON DATABASE tenantgate TO tenantgate;")
    yield
    pg.run_sql("DROP DATABASE IF EXISTS tenantgate WITH (FORCE);")


def test_bypass_login_never_reaches_a_real_database_called_tenantgate(
        pg, proxy, real_tenantgate_database):
    assert refusal(proxy, "migrator", "migrator-secret", CONSOLE)["C"] == "28000"
    assert backend_query(pg, "postgres", "SELECT count(*) FROM pg_stat_activity "
                                         "WHERE datname = 'tenantgate'") == [(0,)]


def test_admin_login_wrong_password_and_other_databases(proxy):
    assert refusal(proxy, OPS, "wrong", CONSOLE)["C"] == "28P01"
    fields = refusal(proxy, OPS, OPS_PASSWORD, "app")
    assert fields["C"] == "28000" and "may only use the admin console" in fields["M"]


# -- the console's protocol -------------------------------------------------------------

def test_unknown_command_is_an_error_and_the_console_stays_usable(proxy):
    with console(proxy) as admin:
        with pytest.raises(psycopg.errors.SyntaxError) as info:
            admin.execute("SELECT * FROM pg_stat_activity")
        assert info.value.sqlstate == "42601"
        assert "SHOW POOLS" in (info.value.diag.message_hint or "")
        commands = [row["command"] for row in show(admin, "HELP")]
        assert "KILL tenant" in commands and "RELOAD" in commands
        with pytest.raises(psycopg.Error) as info:
            admin.execute("KILL nosuchtenant")
        assert info.value.sqlstate == "42704"
        with pytest.raises(psycopg.Error) as info:
            admin.execute("RESUME acme")
        assert info.value.sqlstate == "55000"
        assert {row["tenant"] for row in show(admin, "TENANTS")} >= {"acme", "globex"}


def test_extended_protocol_is_refused_with_08p01(proxy):
    admin = console(proxy)
    with pytest.raises(psycopg.OperationalError) as info:
        admin.execute("SHOW POOLS", prepare=True)  # Parse/Bind/Execute
    assert info.value.sqlstate == "08P01"
    assert admin.closed or admin.broken
    admin.close()


def test_show_config_and_stats(proxy):
    with console(proxy) as admin:
        tenant = proxy.connect("app.acme", APP)
        tenant.execute("SELECT 1")
        config = {row["key"]: row["value"] for row in show(admin, "CONFIG")}
        assert config["clusters.main.pool_size"] == "4" and config["users.ops.admin"] == "true"
        text = json.dumps(config)
        for secret in (APP, OPS_PASSWORD, "tenantgate-secret", "migrator-secret"):
            assert secret not in text
        stats = {row["tenant"]: row for row in show(admin, "STATS")}
        assert int(stats["acme"]["total_query_count"]) >= 1
        tenant.close()


# -- PAUSE / RESUME ------------------------------------------------------------------------

def tenant_paused(conn, tenant: str) -> bool:
    return any(row["tenant"] == tenant and row["paused"] == "true" for row in show(conn, "TENANTS"))


def states(conn, tenant: str) -> list[str]:
    return [row["state"] for row in show(conn, "CLIENTS") if row["tenant"] == tenant]


def test_pause_waits_for_open_transactions_and_holds_new_ones_until_resume(proxy):
    admin, watcher = console(proxy), console(proxy)
    busy = proxy.connect("app.acme", APP)
    busy.execute("BEGIN")
    busy.execute("SELECT count(*) FROM items")
    later = proxy.connect("app.acme", APP)
    other = proxy.connect("app.globex", APP)
    with ThreadPoolExecutor(2) as threads:
        pausing = threads.submit(admin.execute, "PAUSE acme")
        proxy.wait_until(lambda: tenant_paused(watcher, "acme"), 10, "acme to be paused")
        busy.execute("UPDATE items SET name = name WHERE id = 1")  # the open transaction goes on
        assert not pausing.done(), "PAUSE returned while a transaction was still open"
        busy.execute("COMMIT")
        pausing.result(timeout=10)

        held = threads.submit(lambda: later.execute("SELECT count(*) FROM items").fetchone())
        proxy.wait_until(lambda: "paused" in states(watcher, "acme"), 10,
                         "the acme query to be held by PAUSE")
        assert other.execute("SELECT count(*) FROM items").fetchone() == (3,)  # globex runs
        newcomer = proxy.connect("app.acme", APP)  # connecting is not paused, querying is
        assert not held.done()
        watcher.execute("RESUME acme")
        assert held.result(timeout=10) == (3,)
        assert newcomer.execute("SELECT count(*) FROM items").fetchone() == (3,)
    assert not tenant_paused(watcher, "acme")
    for conn in (admin, watcher, busy, later, other, newcomer):
        conn.close()


def test_pause_gives_up_waiting_after_shutdown_timeout_with_a_warning(pg, sample,
                                                                      proxy_factory):
    proxy = proxy_factory(config_text=admin_config(pg, sample, "{port}",
                                                   extra="shutdown_timeout: 1"))
    admin = console(proxy)
    notices = []
    # a notice's Diagnostic is only valid inside the handler
    admin.add_notice_handler(lambda diag: notices.append((diag.severity, diag.message_primary)))
    busy = proxy.connect("app.acme", APP)
    busy.execute("BEGIN")
    busy.execute("SELECT 1")
    admin.execute("PAUSE acme")  # returns after about 1 s, the transaction still open
    assert [(severity, "1 transaction(s) still open" in text)
            for severity, text in notices] == [("WARNING", True)]
    assert tenant_paused(admin, "acme")
    busy.execute("COMMIT")  # an open transaction is never cut off by PAUSE
    admin.execute("RESUME acme")
    for conn in (admin, busy):
        conn.close()


def test_pause_without_a_tenant_holds_everyone_until_resume(proxy):
    admin = console(proxy)
    tenant = proxy.connect("app.globex", APP)
    bypass = proxy.connect("migrator", "migrator-secret", "shared")
    admin.execute("PAUSE")
    with ThreadPoolExecutor(2) as threads:
        held = [threads.submit(lambda c=c: c.execute("SELECT 1").fetchone())
                for c in (tenant, bypass)]
        proxy.wait_until(lambda: [row["state"] for row in show(admin, "CLIENTS")].count(
            "paused") == 2, 10, "both queries to be held by PAUSE")
        with pytest.raises(psycopg.Error) as info:
            admin.execute("RESUME globex")  # everyone is paused: only RESUME lifts it
        assert info.value.sqlstate == "55000"
        assert not any(future.done() for future in held)
        admin.execute("RESUME")
        assert [future.result(timeout=10) for future in held] == [(1,), (1,)]
    for conn in (admin, tenant, bypass):
        conn.close()


# -- KILL ----------------------------------------------------------------------------------

def test_kill_closes_one_tenants_clients_and_their_server_connections(pg, proxy):
    admin = console(proxy)
    idle = proxy.connect("app.acme", APP)
    idle.execute("SELECT 1")
    busy = proxy.connect("app.acme", APP)
    busy.execute("BEGIN")
    held_pid = busy.execute("SELECT pg_backend_pid()").fetchone()[0]
    other = proxy.connect("app.globex", APP)
    other.execute("BEGIN")
    other_pid = other.execute("SELECT pg_backend_pid()").fetchone()[0]
    assert held_pid in backends(pg)
    mark = proxy.log_mark()

    admin.execute("KILL acme")
    for client in (idle, busy):
        with pytest.raises(psycopg.OperationalError):  # the FATAL, or the closed socket
            client.execute("SELECT 1")
        client.close()
    assert proxy.logs(since=mark).count("rule admin-kill") == 2
    proxy.wait_until(lambda: held_pid not in backends(pg), 10,
                     "the killed client's server connection to close")
    assert not [row for row in show(admin, "SERVERS") if row["database"] == "acme"]
    assert states(admin, "acme") == []

    assert other.execute("SELECT count(*) FROM items").fetchone() == (3,)  # globex untouched
    other.execute("COMMIT")
    assert other_pid in backends(pg)
    with proxy.connect("app.acme", APP) as again:  # KILL does not lock the tenant out
        assert again.execute("SELECT count(*) FROM items").fetchone() == (3,)
    other.close()
    admin.close()


def test_killed_client_gets_fatal_57p01_then_the_close(proxy):
    admin = console(proxy)
    victim = raw_login(proxy.host, proxy.port, "app.umbrella", APP)
    admin.execute("KILL umbrella")
    kind, payload = read_message(victim)
    fields = error_fields(payload)
    assert (kind, fields["S"], fields["C"]) == ("E", "FATAL", "57P01")
    assert "administrator command" in fields["M"]
    assert read_message(victim) is None  # and then the connection is closed
    victim.close()
    admin.close()


# -- RELOAD and the audit trail -------------------------------------------------------------

def test_reload_picks_up_the_file_and_reports_a_bad_one(pg, sample, proxy):
    admin = console(proxy)
    assert "newco" not in {row["tenant"] for row in show(admin, "TENANTS")}
    proxy.write_config(admin_config(pg, sample, proxy.port, extra_tenants=NEWCO))
    admin.execute("RELOAD")
    assert "newco" in {row["tenant"] for row in show(admin, "TENANTS")}

    proxy.write_config(admin_config(pg, sample, proxy.port) + "no_such_key: 1\n")
    with pytest.raises(psycopg.Error) as info:
        admin.execute("RELOAD")
    assert info.value.sqlstate == "F0000"
    assert re.search(re.escape(str(proxy.config_path)) + r":\d+:", str(info.value))
    assert "newco" in {row["tenant"] for row in show(admin, "TENANTS")}  # old config kept
    admin.close()


def test_reload_that_takes_the_admin_right_away_ends_the_console(pg, sample, proxy):
    admin = console(proxy)
    proxy.write_config(admin_config(pg, sample, proxy.port, admin=False))
    admin.execute("RELOAD")
    with pytest.raises(psycopg.OperationalError):
        admin.execute("SHOW POOLS")
    admin.close()
    assert refusal(proxy, OPS, OPS_PASSWORD, CONSOLE)["C"] == "28000"


def test_admin_commands_are_audited(pg, sample, proxy_factory, tmp_path):
    trail = tmp_path / "audit.jsonl"
    extra = f'audit:\n  path: "{trail}"\n  hmac_key: "0123456789abcdef0123456789abcdef"\n'
    proxy = proxy_factory(config_text=admin_config(pg, sample, "{port}", extra=extra))
    with console(proxy) as admin:
        admin.execute("PAUSE hooli")
        admin.execute("RESUME hooli")
        with pytest.raises(psycopg.Error):
            admin.execute("KILL nosuchtenant")

    def commands() -> list[tuple] | None:
        if not trail.exists():
            return None
        entries = [json.loads(line) for line in trail.read_text().splitlines() if line]
        found = [(e["command"], e.get("sqlstate")) for e in entries
                 if e["event"] == "admin_command"]
        return found if len(found) >= 3 else None

    found = proxy.wait_until(commands, 10, "three admin_command entries in the audit trail")
    assert found == [("PAUSE hooli", None), ("RESUME hooli", None),
                     ("KILL nosuchtenant", "42704")]
    entries = [json.loads(line) for line in trail.read_text().splitlines() if line]
    connects = [e for e in entries if e["event"] == "connect" and e.get("login") == OPS]
    assert connects and connects[0]["database"] == CONSOLE
