"""The admin console's pure parts: command parsing, SHOW result sets over stand-in runtime
state, SHOW CONFIG without secrets, PAUSE/RESUME bookkeeping and KILL's choice of victims.
Through the running proxy: tests/integration/test_admin.py."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from proxy.admin import (AdminError, Command, all_clients, client_state, config_rows,
                         in_flight, parse_commands, show)
from proxy.config import parse_config
from proxy.console import kill_tenant, result_set, wants_console
from proxy.errors import ConfigError, SqlSyntaxError
from proxy.observability.metrics import Metrics
from proxy.pause import Pauses
from proxy.pool.pool import Pool
from proxy.pool.server import ServerConnection
from proxy.protocol import messages as m
from proxy.protocol.framing import MessageReader

pytestmark = pytest.mark.timeout(30)

HMAC_KEY = "audit-hmac-key-0123456789abcdef"
CONFIG = f"""\
clusters:
  main:
    hosts: ["127.0.0.1:5432"]
    user: tenantgate
    password: backend-password-xyz
    pool_size: 7
audit:
  path: /tmp/tenantgate-audit.jsonl
  hmac_key: {HMAC_KEY}
users:
  app:
    password: app-password-xyz
    tenants: ["*"]
  ops:
    password: ops-password-xyz
    admin: true
  migrator:
    password: migrator-password-xyz
    bypass: true
tenants:
  acme: {{strategy: database, database: acme}}
  globex: {{strategy: schema, database: shared, schema: globex, role: globex}}
"""


def config():
    return parse_config(CONFIG, "cfg.yaml", {})


# -- parsing -------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("SHOW POOLS", [Command("SHOW", "POOLS", "SHOW POOLS")]),
    ("  show   clients ;  ", [Command("SHOW", "CLIENTS", "show   clients")]),
    ("reload;", [Command("RELOAD", None, "reload")]),
    ("PAUSE", [Command("PAUSE", None, "PAUSE")]),
    ("pause acme", [Command("PAUSE", "acme", "pause acme")]),
    ('RESUME "Big ""Co"""', [Command("RESUME", 'Big "Co"', 'RESUME "Big ""Co"""')]),
    ("KILL globex; SHOW TENANTS", [Command("KILL", "globex", "KILL globex"),
                                    Command("SHOW", "TENANTS", "SHOW TENANTS")]),
    ('kill "a;b"', [Command("KILL", "a;b", 'kill "a;b"')]),
    ("", []),
    (" ; ;", []),
])
def test_parse_commands(text, expected) -> None:
    assert parse_commands(text) == expected


@pytest.mark.parametrize("text", [
    "SHOW", "SHOW ALL", "SHOW POOLS extra", "SELECT 1", "KILL", "KILL a b", "PAUSE a b",
    "RELOAD now", 'PAUSE "unterminated', "SET x = 1",
])
def test_unknown_commands_are_42601_naming_the_commands(text) -> None:
    with pytest.raises(SqlSyntaxError) as info:
        parse_commands(text)
    assert info.value.sqlstate == "42601" and not info.value.fatal
    assert "SHOW POOLS" in info.value.hint and "KILL tenant" in info.value.hint


def test_an_admin_login_needs_no_tenant_but_other_logins_still_do() -> None:
    assert config().users["ops"].admin and not config().users["ops"].tenants
    with pytest.raises(ConfigError, match="give 'tenant', a non-empty 'tenants'"):
        parse_config(CONFIG.replace("    admin: true\n", ""), "cfg.yaml", {})


def test_only_admin_logins_or_the_console_database_want_the_console() -> None:
    cfg = config()
    assert wants_console(cfg.users["ops"], "tenantgate")
    assert wants_console(cfg.users["ops"], "app")  # admin-only login: refused there, clearly
    assert wants_console(cfg.users["app"], "tenantgate")  # refused by open_console
    assert not wants_console(cfg.users["app"], "app")
    assert not wants_console(cfg.users["migrator"], "migrator")


# -- SHOW CONFIG -----------------------------------------------------------------------

def test_show_config_never_shows_secrets() -> None:
    cfg = config()
    rows = dict(config_rows(cfg))
    text = repr(rows)
    for secret in ("backend-password-xyz", "app-password-xyz", "ops-password-xyz",
                   "migrator-password-xyz", HMAC_KEY):
        assert secret not in text
    assert not any("password" in key or "hmac" in key for key in rows)
    assert rows["clusters.main.pool_size"] == 7
    assert rows["users.ops.admin"] is True and rows["users.app.tenants"] == "*"
    assert rows["audit.path"] == "/tmp/tenantgate-audit.jsonl"
    assert rows["pool_mode"] == "transaction" and rows["listen"] == "127.0.0.1:6432"


# -- stand-in runtime state -------------------------------------------------------------

class FakeSession:
    """The attributes of a ClientSession the console reads (hashable, as sessions are)."""

    def __init__(self, tenant, pool=None, *, server=None, leasing=None, console=None, tx="I",
                 login="app", peer="127.0.0.1:50000", relaying=True, database="acme"):
        self.plan = None if console else SimpleNamespace(strategy="database", cluster="main",
                                                         database=database)
        self.login, self.tenant, self.pool, self.server = login, tenant, pool, server
        self.leasing, self.console, self.relaying, self.peer = leasing, console, relaying, peer
        self.closed = self.tls = self.session_pooling = False
        self.connect_time, self.request_started = time.time(), time.perf_counter()
        self.tx_status = ord(tx)
        self.params = {"application_name": "test"}
        self.failed = None

    def idle(self) -> bool:
        return self.leasing is None and self.tx_status == ord("I") and self.server is None

    def fail(self, error) -> None:
        self.failed, self.closed = error, True


fake_session = FakeSession


def fake_conn(pid: int, tenant: str | None, dirty: bool = False) -> ServerConnection:
    conn = ServerConnection("127.0.0.1", 5432)
    conn.backend_pid = pid
    conn.context_key = ("database", tenant, ()) if tenant else None
    conn.dirty = dirty
    return conn


@pytest.fixture
def app():
    cfg = config()
    acme_pool = Pool(cfg.clusters["main"], "acme")
    shared_pool = Pool(cfg.clusters["main"], "shared")
    held = fake_conn(101, "acme")
    acme_pool.idle = [fake_conn(102, "acme"), fake_conn(103, "acme", dirty=True)]
    acme_pool.size = 4  # 1 held, 2 idle, 1 opening
    shared_pool.idle = [fake_conn(201, "globex")]
    shared_pool.size = 1
    pauses = Pauses()
    sessions = {
        "active": fake_session("acme", acme_pool, server=held, tx="T"),
        "idle": fake_session("acme", acme_pool),
        "waiting": fake_session("acme", acme_pool, leasing=object()),
        "paused": fake_session("globex", shared_pool, leasing=object(), database="shared"),
        "console": fake_session(None, console=object(), login="ops", relaying=False),
        "handshaking": fake_session("acme", acme_pool, relaying=False),
    }
    pauses.pause("globex")
    pauses.waiting.add(sessions["paused"])
    return SimpleNamespace(config=cfg, pools={("main", "acme"): acme_pool,
                                              ("main", "shared"): shared_pool},
                           sessions=set(sessions.values()), pauses=pauses,
                           tenant_clients={"acme": 4, "globex": 1}, metrics=Metrics(),
                           named=sessions,
                           shared_catalogs=SimpleNamespace(connections=lambda: []))


def rows_of(result) -> list[dict]:
    return [dict(zip(result.columns, row)) for row in result.rows]


def test_client_states(app) -> None:
    states = {name: client_state(s, app.pauses) for name, s in app.named.items()}
    assert states == {"active": "active", "idle": "idle", "waiting": "waiting",
                      "paused": "paused", "console": "admin", "handshaking": "idle"}
    assert app.named["handshaking"] not in all_clients(app)
    assert in_flight(app.named["active"], app.pauses)
    assert in_flight(app.named["waiting"], app.pauses)
    assert not in_flight(app.named["paused"], app.pauses)  # held by PAUSE, not running
    assert not in_flight(app.named["idle"], app.pauses)


def test_show_pools_counts_clients_and_servers(app) -> None:
    pools = {row["database"]: row for row in rows_of(show("POOLS", app))}
    assert pools["acme"] == {
        "cluster": "main", "database": "acme", "pool_mode": "transaction", "pool_size": 7,
        "cl_active": 2, "cl_waiting": 1, "sv_active": 1, "sv_idle": 1, "sv_used": 1,
        "sv_login": 1, "maxwait": 0, "maxwait_us": pools["acme"]["maxwait_us"]}
    assert (pools["shared"]["cl_waiting"], pools["shared"]["sv_idle"]) == (1, 1)


def test_show_servers_lists_backend_pids_and_who_holds_them(app) -> None:
    servers = {row["backend_pid"]: row for row in rows_of(show("SERVERS", app))}
    assert set(servers) == {101, 102, 103, 201}
    assert servers[101]["state"] == "active" and servers[101]["tenant"] == "acme"
    assert servers[101]["client"] == "127.0.0.1:50000"
    assert servers[102]["state"] == "idle" and servers[102]["tenant"] is None
    assert servers[102]["prepared_for"] == "acme" and servers[103]["needs_reset"] is True
    assert servers[201]["database"] == "shared" and servers[201]["prepared_for"] == "globex"


def test_show_clients_includes_the_console_and_the_held_backend(app) -> None:
    clients = rows_of(show("CLIENTS", app))
    assert len(clients) == 5  # not the client still in its handshake
    by_state = {row["state"]: row for row in clients}
    assert by_state["active"]["backend_pid"] == 101 and by_state["active"]["tx"] == "T"
    assert by_state["admin"]["database"] == "tenantgate" and by_state["admin"]["login"] == "ops"
    assert by_state["paused"]["tenant"] == "globex" and by_state["paused"]["wait"] >= 0
    assert by_state["idle"]["addr"] == "127.0.0.1" and by_state["idle"]["port"] == 50000


def test_show_tenants_and_help(app) -> None:
    tenants = {row["tenant"]: row for row in rows_of(show("TENANTS", app))}
    assert tenants["globex"]["paused"] is True and tenants["acme"]["paused"] is False
    assert tenants["globex"]["waiting"] == 1 and tenants["acme"]["waiting"] == 1
    assert tenants["acme"]["clients"] == 4 and tenants["globex"]["schema"] == "globex"
    commands = [row[0] for row in show("HELP", app).rows]
    assert {"SHOW POOLS", "RELOAD", "PAUSE [tenant]", "KILL tenant"} <= set(commands)


def test_show_stats_per_tenant(app) -> None:
    handle = app.metrics.for_tenant("acme")
    handle.client_connected()
    handle.query(0.002)
    handle.query(0.004)
    handle.transaction()
    stats = {row["tenant"]: row for row in rows_of(show("STATS", app))}
    assert stats["acme"]["total_query_count"] == 2 and stats["acme"]["total_xact_count"] == 1
    assert stats["acme"]["avg_query_time"] == 3000 and stats["acme"]["clients"] == 1


def test_result_set_is_a_well_formed_reply(app) -> None:
    result = show("TENANTS", app)
    reader = MessageReader(1 << 20)
    reader.feed(result_set(result, "SHOW"))
    messages = []
    while (message := reader.next()) is not None:
        messages.append(message)
    assert [mtype for mtype, _ in messages] == (
        [m.ROW_DESCRIPTION] + [m.DATA_ROW] * len(result.rows) + [m.COMMAND_COMPLETE])
    assert m.decode_row_description(messages[0][1]) == list(result.columns)
    first = m.decode_data_row(messages[1][1])
    assert first[0] == b"acme" and first[9] == b"false"  # paused: false
    assert first[4] is None  # NULL schema of a database tenant


def test_kill_closes_only_that_tenants_clients_and_idle_connections(app) -> None:
    clients, servers = kill_tenant(app, "acme")
    assert clients == 4  # active, idle, waiting and the one in its handshake
    assert servers == 2  # the idle connections of acme's own database
    for name in ("active", "idle", "waiting", "handshaking"):
        assert app.named[name].failed.sqlstate == "57P01"
    assert app.named["paused"].failed is None and app.named["console"].failed is None
    assert app.pools[("main", "acme")].idle == []
    assert [conn.backend_pid for conn in app.pools[("main", "shared")].idle] == [201]


def test_kill_of_a_shared_database_tenant_closes_its_prepared_connections_only(app) -> None:
    shared = app.pools[("main", "shared")]
    shared.idle.append(fake_conn(202, "hooli"))
    shared.size = 2
    assert kill_tenant(app, "globex") == (1, 1)
    assert [conn.backend_pid for conn in shared.idle] == [202]


# -- PAUSE / RESUME ------------------------------------------------------------------------

def test_pause_bookkeeping() -> None:
    pauses = Pauses()
    assert not pauses.holds("acme") and not pauses.holds(None)
    pauses.pause("acme")
    assert pauses.holds("acme") and not pauses.holds("globex") and not pauses.holds(None)
    assert not pauses.resume("globex")
    assert pauses.resume("acme") and not pauses.holds("acme")
    pauses.pause(None)
    assert pauses.holds("globex") and pauses.holds(None)  # bypass logins too
    assert pauses.paused_names() == ["*"]
    assert pauses.resume(None) and not pauses.holds("globex")
    assert not pauses.resume(None)


async def test_wait_returns_at_resume_of_its_own_tenant() -> None:
    pauses = Pauses()
    pauses.pause("acme")
    pauses.pause("globex")
    acme, globex = FakeSession("acme"), FakeSession("globex")
    acme_wait = asyncio.create_task(pauses.wait(acme))
    globex_wait = asyncio.create_task(pauses.wait(globex))
    await asyncio.sleep(0)  # let both reach the gate
    assert pauses.waiting == {acme, globex}
    pauses.resume("globex")
    await asyncio.wait_for(globex_wait, 5)
    assert not acme_wait.done() and pauses.waiting == {acme}
    pauses.resume("acme")
    await asyncio.wait_for(acme_wait, 5)
    assert pauses.waiting == set()


async def test_wait_gives_back_a_connection_it_took() -> None:
    pauses = Pauses()
    pauses.pause(None)
    released = []
    session = FakeSession("acme", SimpleNamespace(release=released.append))
    task = asyncio.create_task(pauses.wait(session, "conn"))
    await asyncio.sleep(0)
    assert released == ["conn"]
    pauses.resume(None)
    await asyncio.wait_for(task, 5)


def test_admin_error_keeps_the_console_usable() -> None:
    error = AdminError("tenant \"x\" is not known", sqlstate="42704")
    assert not error.fatal and error.fields()["C"] == "42704"
