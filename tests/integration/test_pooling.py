"""Transaction pooling through the running proxy (pool_size 4): many clients, few server
connections, correct results; pgbench in simple, extended and prepared mode."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time

import asyncpg
import psycopg
import pytest

from tests.helpers import abackend_query, backend_query

APP = "app-secret"
POOL_SIZE = 4  # the sample config's pool_size
CLIENTS = 200
TRANSACTIONS = 20
BACKEND_COUNT = ("SELECT count(*) FROM pg_stat_activity "
                 "WHERE usename = 'tenantgate' AND datname = 'acme'")


@pytest.fixture
def pool_probe(pg):
    pg.run_sql("CREATE TABLE public.pool_probe (client int NOT NULL, n int NOT NULL, "
               "PRIMARY KEY (client, n));\n"
               "ALTER TABLE public.pool_probe OWNER TO tenantgate;", dbname="acme")
    yield "pool_probe"
    pg.run_sql("DROP TABLE IF EXISTS public.pool_probe;", dbname="acme")


async def one_client(proxy, client: int) -> list[int]:
    """TRANSACTIONS transactions; each sees exactly this client's rows written so far."""
    seen = []
    conn = await proxy.aconnect("app.acme", APP, timeout=60)
    try:
        for n in range(TRANSACTIONS):
            async with conn.transaction():
                await conn.execute("INSERT INTO pool_probe (client, n) VALUES ($1, $2)",
                                   client, n)
                seen.append(await conn.fetchval(
                    "SELECT count(*) FROM pool_probe WHERE client = $1", client))
    finally:
        await conn.close()
    return seen


async def watch_backends(pg, done: asyncio.Event) -> list[int]:
    """Sample the proxy's server connections to acme, directly on PostgreSQL, until `done`."""
    conn = await asyncpg.connect(pg.dsn(dbname="postgres"), timeout=10)
    counts = []
    try:
        while not done.is_set():
            counts.append(await conn.fetchval(BACKEND_COUNT))
    finally:
        await conn.close()
    return counts


@pytest.mark.timeout(300)
async def test_200_clients_share_the_pool_and_get_correct_results(proxy, pg, pool_probe) -> None:
    done = asyncio.Event()
    watcher = asyncio.create_task(watch_backends(pg, done))
    try:
        results = await asyncio.gather(*(one_client(proxy, i) for i in range(CLIENTS)))
    finally:
        done.set()
        counts = await watcher
    assert results == [list(range(1, TRANSACTIONS + 1))] * CLIENTS
    assert counts and max(counts) <= POOL_SIZE, f"server connections seen: max {max(counts)}"
    assert max(counts) >= 1  # the watcher did see the pool at work
    rows = await abackend_query(pg, "acme",
                                "SELECT count(*), count(DISTINCT client), min(n), max(n) "
                                "FROM pool_probe")
    assert rows == [(CLIENTS * TRANSACTIONS, CLIENTS, 0, TRANSACTIONS - 1)]


async def test_pool_is_shared_by_sequential_clients(proxy, pg) -> None:
    """Connections come and go; the server connections stay within the pool size."""
    for _ in range(3):
        conns = [await proxy.aconnect("app.acme", APP) for _ in range(3 * POOL_SIZE)]
        try:
            values = await asyncio.gather(*(c.fetchval("SELECT count(*) FROM items")
                                            for c in conns))
            assert values == [3] * len(conns)
        finally:
            for conn in conns:
                await conn.close()
    assert (await abackend_query(pg, "postgres", BACKEND_COUNT))[0][0] <= POOL_SIZE


# -- pgbench -------------------------------------------------------------------------------------

PGBENCH_TABLES = "pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"


@pytest.fixture(scope="module")
def pgbench_tables(pg):
    env = dict(os.environ, PGPASSWORD=pg.superuser_password)
    done = subprocess.run([pg.bin("pgbench"), "-i", "-s", "1", "-q", "-h", pg.host,
                           "-p", str(pg.port), "-U", pg.superuser, "acme"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    pg.run_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {PGBENCH_TABLES} TO tenantgate;",
               dbname="acme")
    yield
    pg.run_sql(f"DROP TABLE IF EXISTS {PGBENCH_TABLES};", dbname="acme")


def reset_pgbench(pg) -> None:
    pg.run_sql("UPDATE pgbench_accounts SET abalance = 0 WHERE abalance <> 0;\n"
               "UPDATE pgbench_tellers SET tbalance = 0;\n"
               "UPDATE pgbench_branches SET bbalance = 0;\n"
               "TRUNCATE pgbench_history;", dbname="acme")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_through_the_proxy(proxy, pg, pgbench_tables, mode) -> None:
    reset_pgbench(pg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = APP
    done = subprocess.run([pg.bin("pgbench"), "-h", proxy.host, "-p", str(proxy.port),
                           "-U", "app.acme", "-c", "16", "-j", "2", "-T", "5", "-n",
                           "-M", mode, "app"],
                          capture_output=True, text=True, env=env, timeout=90)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"^number of failed transactions: 0 \(", output, re.M), output
    processed = int(re.search(r"^number of transactions actually processed: (\d+)",
                              output, re.M).group(1))
    assert processed > 0
    # every committed pgbench transaction updated three balances and wrote one history row
    sums = backend_query(pg, "acme",
                         "SELECT (SELECT count(*) FROM pgbench_history), "
                         "(SELECT coalesce(sum(delta), 0) FROM pgbench_history), "
                         "(SELECT sum(abalance) FROM pgbench_accounts), "
                         "(SELECT sum(tbalance) FROM pgbench_tellers), "
                         "(SELECT sum(bbalance) FROM pgbench_branches)")
    history_rows, delta, accounts, tellers, branches = sums[0]
    assert history_rows == processed
    assert delta == accounts == tellers == branches


# -- waiting for a server connection ----------------------------------------------------------

def _waiting_clients(port: int) -> float:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found = re.findall(r'^tenantgate_pool_clients_waiting\{[^}]*database="acme"[^}]*\} (\S+)$',
                       text, re.MULTILINE)
    return sum(float(value) for value in found)


async def test_a_waiting_client_gets_the_connection_as_soon_as_it_is_free(proxy_factory):
    """pool_size 1: a second client waits (the pool says so) while the first holds the
    connection in a transaction, and is served by the hand-off at COMMIT, long before
    wait_timeout (30 s) would end its wait."""
    from proxy.localpg import free_port

    metrics_port = free_port()
    small = proxy_factory(pool_size=1, extra=f'metrics: "127.0.0.1:{metrics_port}"')
    holder = await small.aconnect("app.acme", APP)
    waiter = await small.aconnect("app.acme", APP)
    try:
        transaction = holder.transaction()
        await transaction.start()
        assert await holder.fetchval("SELECT count(*) FROM items") == 3
        waiting = asyncio.create_task(waiter.fetchval("SELECT count(*) FROM items"))
        await asyncio.to_thread(small.wait_until, lambda: _waiting_clients(metrics_port) == 1,
                                15, "the second client to wait for the pool")
        assert not waiting.done()
        await transaction.commit()
        assert await asyncio.wait_for(waiting, 10) == 3  # handed over, no wait_timeout
    finally:
        await holder.close()
        await waiter.close()


async def test_no_connection_within_wait_timeout_is_53300_and_the_holder_keeps_working(
        proxy_factory, pg, sample):
    text = sample.config_yaml(pg, 11111, pool_size=1)
    text = text.replace('"127.0.0.1:11111"', '"127.0.0.1:{port}"')
    text = text.replace("    pool_size: 1\n", "    pool_size: 1\n    wait_timeout: 1\n")
    assert "wait_timeout: 1" in text and "{port}" in text
    small = proxy_factory(config_text=text)
    import psycopg

    def wait_in_vain() -> psycopg.Error:
        with small.connect("app.acme", APP) as waiter:
            with pytest.raises(psycopg.Error) as refused:
                waiter.execute("SELECT count(*) FROM items")
            return refused.value

    holder = await small.aconnect("app.acme", APP)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.fetchval("SELECT 1")
        error = await asyncio.wait_for(asyncio.to_thread(wait_in_vain), 20)
        assert error.sqlstate == "53300"  # FATAL: the session cannot go on without a server
        assert "no server connection became free within 1 s" in str(error)
        assert await holder.fetchval("SELECT count(*) FROM items") == 3
        await transaction.commit()
    finally:
        await holder.close()


async def test_a_waiting_client_that_pipelines_past_the_held_bound_gets_every_answer_in_order(
        proxy_factory):
    """pool_size 1: while the only connection is held in a transaction, a raw client sends
    3,000 Query messages at once (~200 KB, past the 64 KiB the session keeps before it
    stops reading a waiting client). At COMMIT it is handed the connection and every
    query is answered, in order, with its own value."""
    from tests.helpers import message, raw_login, read_message

    small = proxy_factory(pool_size=1)
    holder = await small.aconnect("app.acme", APP)
    transaction = holder.transaction()
    await transaction.start()
    await holder.fetchval("SELECT 1")
    count = 5000
    queries = b"".join(message(b"Q", f"SELECT {n} AS n, repeat('x', 40) AS pad\0".encode())
                       for n in range(count))
    assert len(queries) > 3 * 65536
    sock = await asyncio.to_thread(raw_login, "127.0.0.1", small.port, "app.acme", APP)

    def send_then_read() -> list[int]:
        sock.sendall(queries)  # returns once the kernel buffers hold the rest
        values = []
        while len(values) < count:
            kind, body = read_message(sock)
            assert kind != "E", body
            if kind == "D":
                values.append(int(body[6:6 + int.from_bytes(body[2:6], "big")]))
        return values

    try:
        reading = asyncio.create_task(asyncio.to_thread(send_then_read))
        assert await holder.fetchval("SELECT count(*) FROM items") == 3  # still its own
        await transaction.commit()
        assert await asyncio.wait_for(reading, 60) == list(range(count))
    finally:
        sock.close()
        await holder.close()


def test_a_query_that_waits_for_a_server_is_analysed_once(proxy_factory) -> None:
    """The message held while a client waits for a server connection is handled when one
    is handed over; its analysis from before the wait is used, not done again."""
    from concurrent.futures import ThreadPoolExecutor

    from proxy.localpg import free_port
    from tests.integration.test_observability import scrape

    metrics_port = free_port()
    proxy = proxy_factory(pool_size=1, extra=f'metrics: "127.0.0.1:{metrics_port}"\n')

    def total(*prefixes: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in scrape(metrics_port)[1].splitlines()
                   if line.startswith(prefixes))

    def analyses() -> float:
        return total("tenantgate_analysis_cache_hits_total ",
                     "tenantgate_analysis_cache_misses_total ")

    def waiting() -> float:
        return total("tenantgate_pool_clients_waiting{")

    with proxy.connect("app.acme", APP) as holder, proxy.connect("app.acme", APP) as waiter, \
            ThreadPoolExecutor(1) as pool:
        holder.execute("BEGIN")  # holds the only server connection
        before = analyses()
        result = pool.submit(lambda: waiter.execute("SELECT 'waited-' || 41 + 1").fetchone())
        deadline = time.monotonic() + 15
        while waiting() < 1:
            assert time.monotonic() < deadline, "the second client never waited"
            time.sleep(0.02)
        holder.execute("COMMIT")
        assert result.result(timeout=15) == ("waited-42",)
        assert analyses() - before == 2  # the waiting SELECT once, and the COMMIT


async def test_simple_queries_over_a_contended_pool_each_get_their_own_answers_in_order(
        proxy_factory) -> None:
    """pool_size 1, held in a transaction until 24 raw clients have each sent a pipelined
    pair of simple Queries; from its COMMIT on, every release hands the connection to a
    waiting client, so a whole answer is held to the end of the proxy's loop pass and
    written with the pass's others (WriteBatch). Every client gets exactly its own values,
    in order, for 40 pairs."""
    from tests.helpers import message, raw_login, read_message

    small = proxy_factory(pool_size=1)
    clients, rounds = 24, 40

    def expected(number: int) -> list[int]:
        return [number * 100_000 + n * 10 + k for n in range(rounds) for k in (0, 1)]

    def pair(first: int, second: int) -> bytes:
        return (message(b"Q", f"SELECT {first}\0".encode())
                + message(b"Q", f"SELECT {second}\0".encode()))

    def answers(sock) -> list[int]:
        values, ready = [], 0
        while ready < 2:
            kind, body = read_message(sock)
            assert kind != "E", body
            if kind == "D":
                values.append(int(body[6:]))
            ready += kind == "Z"
        return values

    def rest_of(sock, number: int) -> list[int]:
        pairs = list(zip(*[iter(expected(number))] * 2))
        values = answers(sock)  # the first pair, sent while the pool was held
        for first, second in pairs[1:]:
            sock.sendall(pair(first, second))
            values += answers(sock)
        return values

    holder = await small.aconnect("app.acme", APP)
    transaction = holder.transaction()
    await transaction.start()
    await holder.fetchval("SELECT 1")  # holds the only server connection
    socks = [await asyncio.to_thread(raw_login, "127.0.0.1", small.port, "app.acme", APP)
             for _ in range(clients)]
    try:
        for number, sock in enumerate(socks):
            sock.sendall(pair(*expected(number)[:2]))
        await transaction.commit()
        results = await asyncio.gather(*(asyncio.to_thread(rest_of, sock, number)
                                         for number, sock in enumerate(socks)))
        assert results == [expected(number) for number in range(clients)]
    finally:
        for sock in socks:
            sock.close()
        await holder.close()


def test_a_server_connection_lost_mid_transaction_ends_that_client_only(
        proxy_factory, pg, sample) -> None:
    """PostgreSQL ends the backend a client holds in a transaction (pool_size 1). That
    client's connection ends (the server's FATAL is relayed, then the proxy's 08006), and
    the dead connection leaves the pool at once: a second client, still beside the first,
    is served on a new server connection well within wait_timeout (2 s)."""
    text = sample.config_yaml(pg, 11111, pool_size=1)
    text = text.replace('"127.0.0.1:11111"', '"127.0.0.1:{port}"')
    text = text.replace("    pool_size: 1\n", "    pool_size: 1\n    wait_timeout: 2\n")
    assert "wait_timeout: 2" in text and "{port}" in text
    small = proxy_factory(config_text=text)
    with small.connect("app.acme", APP) as holder, small.connect("app.acme", APP) as other:
        holder.execute("BEGIN")
        (pid,) = holder.execute("SELECT pg_backend_pid()").fetchone()
        assert backend_query(pg, "postgres", "SELECT pg_terminate_backend(%s)", (pid,)) \
            == [(True,)]
        with pytest.raises(psycopg.OperationalError) as lost:
            holder.execute("SELECT count(*) FROM items")
        assert lost.value.sqlstate in ("57P01", "08006"), lost.value
        assert other.execute("SELECT count(*) FROM items").fetchone() == (3,)
        assert other.execute("SELECT pg_backend_pid()").fetchone() != (pid,)
        small.wait_until(lambda: "server closed the connection unexpectedly" in small.logs(),
                         10, "the proxy to end the client whose server connection was lost")
