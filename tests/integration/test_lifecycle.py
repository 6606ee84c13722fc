"""Process lifecycle (DESIGN.md section 1): SIGHUP reloads without dropping clients, a bad
config on reload keeps the old one (and says FILE:LINE), SIGTERM drains and exits 0."""

from __future__ import annotations

import asyncio
import re
import signal
import uuid

import asyncpg
import psycopg
import pytest

from proxy.sample import create_schema_tenant, drop_schema_tenant, sample_items
from tests.helpers import backend_query

APP = "app-secret"
INITRODE = "initrode: {strategy: schema, cluster: main, database: shared, schema: initrode, " \
           "role: initrode}"


def items(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT id, name, secret FROM items ORDER BY id").fetchall()


def try_items(proxy, user: str):
    """The items a new connection as `user` sees, or None if the proxy refuses it."""
    try:
        with proxy.connect(user, APP) as conn:
            return items(conn)
    except psycopg.OperationalError:
        return None


@pytest.fixture
def initrode(pg):
    """A schema tenant created directly on the backend (not yet in any proxy config)."""
    create_schema_tenant(pg, "initrode")
    yield "initrode"
    drop_schema_tenant(pg, "initrode")


def test_sighup_adds_a_tenant_without_dropping_clients(pg, sample, initrode, proxy_factory):
    proxy = proxy_factory()
    old_client = proxy.connect("app.globex", APP)
    old_in_tx = proxy.connect("app.acme", APP)
    old_in_tx.execute("BEGIN")
    assert old_in_tx.execute("SELECT count(*) FROM items").fetchone() == (3,)
    assert try_items(proxy, "app.initrode") is None  # unknown before the reload

    proxy.write_config(sample.config_yaml(pg, proxy.port, extra_tenants=INITRODE))
    proxy.reload()
    rows = proxy.wait_until(lambda: try_items(proxy, "app.initrode"), 15,
                            "tenant initrode to be accepted after SIGHUP")
    assert rows == sample_items("initrode")

    assert items(old_client) == sample_items("globex")
    assert old_in_tx.execute("SELECT current_database()").fetchone() == ("acme",)
    old_in_tx.execute("COMMIT")
    old_client.close()
    old_in_tx.close()
    assert try_items(proxy, "app.hooli") == sample_items("hooli")
    assert proxy.returncode is None


def test_sighup_removes_a_tenant_for_new_connections(pg, sample, proxy_factory):
    proxy = proxy_factory()
    text = sample.config_yaml(pg, proxy.port)
    lines = [ln for ln in text.splitlines() if not ln.startswith("  umbrella:")]
    assert len(lines) == len(text.splitlines()) - 1
    proxy.write_config("\n".join(lines) + "\n")
    proxy.reload()
    proxy.wait_until(lambda: try_items(proxy, "app.umbrella") is None, 15,
                     "tenant umbrella to be refused after SIGHUP")
    assert try_items(proxy, "app.acme") == sample_items("acme")


def test_sighup_closes_clients_of_a_removed_tenant_after_their_transaction(pg, sample,
                                                                          proxy_factory):
    """An existing client must not keep acting for a tenant the config no longer has."""
    proxy = proxy_factory()
    idle_client = proxy.connect("app.umbrella", APP)
    busy_client = proxy.connect("app.umbrella", APP)
    other = proxy.connect("app.acme", APP)
    busy_client.execute("BEGIN")
    busy_client.execute("UPDATE items SET name = name WHERE id = 1")
    text = sample.config_yaml(pg, proxy.port)
    proxy.write_config("\n".join(ln for ln in text.splitlines()
                                 if not ln.startswith("  umbrella:")) + "\n")
    mark = proxy.log_mark()
    proxy.reload()
    proxy.wait_for_log(r"configuration reloaded", since=mark)
    busy_client.execute("UPDATE items SET name = name WHERE id = 2")  # its transaction goes on
    busy_client.execute("COMMIT")
    for client in (idle_client, busy_client):
        # libpq reports either the FATAL or the closed socket, depending on timing
        with pytest.raises(psycopg.OperationalError):
            client.execute("SELECT 1")
        client.close()
    closed = proxy.logs(since=mark).count("the configuration of this login or tenant changed")
    assert closed == 2
    assert items(other) == sample_items("acme")
    other.close()


def bad_config(good: str, kind: str) -> tuple[str, int]:
    """`good` with one error; the text and the 1-based line the error is on."""
    lines = good.splitlines()
    if kind == "unknown key":
        at = lines.index("pool_mode: transaction") + 1
        lines.insert(at, "no_such_key: true")
    elif kind == "wrong type":
        at = next(i for i, ln in enumerate(lines) if ln.strip().startswith("pool_size:"))
        lines[at] = "    pool_size: lots"
    else:  # dangling reference
        at = lines.index("tenants:") + 1
        lines.insert(at, "  ghost: {strategy: database, cluster: nowhere, database: ghost}")
    return "\n".join(lines) + "\n", at + 1


@pytest.mark.parametrize("kind", ["unknown key", "wrong type", "dangling reference"])
def test_invalid_config_on_sighup_keeps_the_old_one(pg, sample, proxy_factory, kind):
    proxy = proxy_factory()
    client = proxy.connect("app.globex", APP)
    text, line = bad_config(proxy.config_path.read_text(), kind)
    proxy.write_config(text)
    mark = proxy.log_mark()
    proxy.reload()
    proxy.wait_for_log(re.escape(f"{proxy.config_path}:{line}:"), since=mark, flags=0)
    assert proxy.returncode is None
    assert items(client) == sample_items("globex")
    assert try_items(proxy, "app.acme") == sample_items("acme")
    if kind == "dangling reference":
        assert try_items(proxy, "app.ghost") is None
    client.close()


def test_sigterm_lets_an_open_transaction_commit_then_exits_0(pg, sample, proxy_factory):
    proxy = proxy_factory()
    probe = f"drain-{uuid.uuid4().hex[:12]}"
    idle = proxy.connect("app.acme", APP)
    in_tx = proxy.connect("app.globex", APP)
    try:
        in_tx.execute("BEGIN")
        in_tx.execute("INSERT INTO items (name) VALUES (%s)", (probe,))
        proxy.send_signal(signal.SIGTERM)

        outcome = proxy.wait_until(lambda: new_connection_outcome(proxy), 15,
                                   "new connections to be refused after SIGTERM")
        assert outcome in ("connection refused", "57P01")

        assert in_tx.execute("SELECT count(*) FROM items WHERE name = %s",
                             (probe,)).fetchone() == (1,)
        assert in_tx.execute("COMMIT").statusmessage == "COMMIT"
        assert backend_query(pg, "shared", "SELECT count(*) FROM globex.items WHERE name = %s",
                             (probe,)) == [(1,)]
        in_tx.close()
        assert proxy.wait(timeout=25) == 0
        with pytest.raises(psycopg.OperationalError):  # the idle client was disconnected
            idle.execute("SELECT 1")
    finally:
        idle.close()
        in_tx.close()
        backend_query(pg, "shared", "DELETE FROM globex.items WHERE name = %s", (probe,))


def new_connection_outcome(proxy) -> str | None:
    """How a new connection attempt ends: None if it got in, else 'connection refused' or the
    SQLSTATE it was refused with."""
    async def attempt():
        try:
            conn = await proxy.aconnect("app.acme", APP, timeout=5)
        except (OSError, asyncpg.exceptions.ConnectionDoesNotExistError):
            return "connection refused"
        except asyncpg.PostgresError as exc:
            return exc.sqlstate
        await conn.close()
        return None
    return asyncio.run(attempt())


def test_sigterm_without_clients_exits_0(proxy_factory):
    proxy = proxy_factory()
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(timeout=15) == 0
    assert new_connection_outcome(proxy) == "connection refused"


def test_sigint_exits_0(proxy_factory):
    proxy = proxy_factory()
    proxy.send_signal(signal.SIGINT)
    assert proxy.wait(timeout=15) == 0
