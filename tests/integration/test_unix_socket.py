"""A cluster reached over PostgreSQL's Unix-domain socket (`hosts: ["/dir:5432"]`, as
libpq and PgBouncer name it): tenants are served, isolation holds, cancels arrive."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import asyncpg
import psycopg
import pytest

from tests.helpers import abackend_query, marked_sleep, psycopg_cancel, running, wait_running

APP = "app-secret"


@pytest.fixture
def unix_proxy(proxy_factory, pg, sample):
    text = sample.config_yaml(pg, 11111)
    tcp_host = f'"{pg.host}:{pg.port}"'
    assert tcp_host in text and '"127.0.0.1:11111"' in text
    text = text.replace(tcp_host, f'"{pg.datadir}:{pg.port}"')
    text = text.replace('"127.0.0.1:11111"', '"127.0.0.1:{port}"')
    return proxy_factory(config_text=text)


async def test_tenants_are_served_over_the_unix_socket(unix_proxy, pg):
    acme = await unix_proxy.aconnect("app.acme", APP)
    globex = await unix_proxy.aconnect("app.globex", APP)
    try:
        acme_pid = await acme.fetchval("SELECT pg_backend_pid()")
        rows = await abackend_query(pg, "postgres", "SELECT client_addr, client_port FROM "
                                    "pg_stat_activity WHERE pid = $1", acme_pid)
        assert rows == [(None, -1)]  # PostgreSQL's mark of a Unix-socket client
        assert sorted(await acme.fetch("SELECT name FROM items")) == sorted(
            await abackend_query(pg, "acme", "SELECT name FROM items"))
        with pytest.raises(asyncpg.PostgresError) as hidden:
            await globex.fetch("SELECT * FROM hooli.items")
        assert hidden.value.sqlstate == "42P01"
    finally:
        await acme.close()
        await globex.close()


def test_a_cancel_reaches_the_backend_over_the_unix_socket(unix_proxy, pg):
    """The CancelRequest goes to PostgreSQL over the same socket kind as the connection."""
    marker, sql = marked_sleep(30)
    with unix_proxy.connect("app.acme", APP) as victim, ThreadPoolExecutor(1) as pool:
        def cancel_when_running() -> None:
            wait_running(pg, marker)
            psycopg_cancel(victim)

        canceller = pool.submit(cancel_when_running)
        with pytest.raises(psycopg.errors.QueryCanceled):
            victim.execute(sql)
        canceller.result(timeout=15)
        assert victim.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    assert running(pg, marker) == 0
