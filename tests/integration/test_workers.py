"""`workers: 2` through the running proxy (proxy.workers): connections land on both workers,
a cancel works whichever worker the kernel hands the CancelRequest to, SIGHUP and SIGTERM
reach every worker, /metrics and the audit trail cover the whole proxy, a dead worker is
restarted, and a second proxy cannot share the port.

Which worker holds a client is read from its cancel key: the pid modulo the worker count is
the worker's index (proxy.workerlink.cancel_key); the first test checks that against the
worker's own log line for that client. Every wait polls a real condition with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from proxy.localpg import free_port
from proxy.observability.audit import read_entries
from tests.helpers import (RunningProxy, backend_query, cancel_packet, marked_sleep, raw_connect,
                           recv_until_closed, running, wait_running)

APP = "app-secret"
WORKERS = 2
EXTRA = f"workers: {WORKERS}"
CANCEL_DEADLINE = 2.0  # seconds from sending a cancel to the client seeing 57014
AUDIT_KEY = "k" * 32

pytestmark = pytest.mark.timeout(120)


# -- helpers -------------------------------------------------------------------------------------

def worker_of(conn: psycopg.Connection) -> int:
    return conn.info.backend_pid % WORKERS


def local_port(conn: psycopg.Connection) -> int:
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        return sock.getsockname()[1]


def connect_until_every_worker(proxy, user: str = "app.acme", password: str = APP,
                               at_least: int = 2, at_most: int = 40) -> list[psycopg.Connection]:
    """Open connections until every worker holds `at_least` of them."""
    conns: list[psycopg.Connection] = []
    try:
        while min(Counter(worker_of(c) for c in conns).get(i, 0)
                  for i in range(WORKERS)) < at_least:
            assert len(conns) < at_most, \
                f"{at_most} connections did not reach every worker: {Counter(map(worker_of, conns))}"
            conns.append(proxy.connect(user, password))
    except BaseException:
        close_all(conns)
        raise
    return conns


def close_all(conns) -> None:
    for conn in conns:
        conn.close()


def worker_pids(proxy, since=None) -> dict[int, int]:
    """worker index → pid of its latest process, from the supervisor's log."""
    found = re.findall(r"worker started\s.*pid=(\d+) worker=(\d+)", proxy.logs(since))
    return {int(index): int(pid) for pid, index in found}


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample_value(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{([^}]*)\})? (\S+)", line)
        if match and match[1] == name and ",".join(sorted((match[2] or "").split(","))) == wanted:
            return float(match[3])
    return None


# -- connections ---------------------------------------------------------------------------------

def test_connections_land_on_every_worker_and_the_key_names_it(proxy_factory) -> None:
    proxy = proxy_factory(extra=EXTRA)
    assert len(worker_pids(proxy)) == WORKERS
    conns = connect_until_every_worker(proxy, at_least=3)
    try:
        for conn in conns:
            assert conn.execute("SELECT current_database()").fetchone() == ("acme",)
            line = proxy.wait_for_log(rf"client connected\s.*client=127\.0\.0\.1:"
                                      rf"{local_port(conn)}\b")
            assert re.search(rf"\bworker={worker_of(conn)}\b", line), line
    finally:
        close_all(conns)


def test_a_second_proxy_cannot_share_the_port(pg, sample, proxy_factory, tmp_path) -> None:
    """SO_REUSEPORT would let it join silently and take half of the clients."""
    first = proxy_factory(extra=EXTRA)
    workdir = tmp_path / "second"
    workdir.mkdir()
    config = workdir / "tenantgate.yaml"
    config.write_text(sample.config_yaml(pg, first.port, extra=EXTRA))
    second = RunningProxy(workdir, first.port, config)
    second.spawn()
    try:
        assert second.wait(timeout=30) == 1
    finally:
        second.stop()
    assert "in use" in second.stderr()
    assert "worker started" not in second.logs()
    conns = [first.connect("app.acme", APP) for _ in range(8)]
    close_all(conns)


def test_a_worker_failing_at_start_stops_the_proxy(pg, sample, tmp_path) -> None:
    """The supervisor's config check passes, but no worker can load the TLS key: exit 1."""
    config = tmp_path / "tenantgate.yaml"
    port = free_port()
    tls = f'tls: {{cert: "{tmp_path}/missing.crt", key: "{tmp_path}/missing.key"}}'
    config.write_text(sample.config_yaml(pg, port, extra=f"{EXTRA}\n{tls}"))
    proxy = RunningProxy(tmp_path, port, config)
    proxy.spawn()
    try:
        assert proxy.wait(timeout=60) == 1
    finally:
        proxy.stop()
    assert "cannot load the certificate" in proxy.logs()
    assert "worker exited during start-up; stopping" in proxy.logs()
    assert "listening on" not in proxy.stdout()


# -- cancel requests -----------------------------------------------------------------------------

def cancel_once(proxy, pg) -> str:
    """Cancel a sleeping query while another client's query runs; 'forwarded' when the
    worker that took the CancelRequest was not the victim's, else 'local'."""
    mark = proxy.log_mark()
    marker, sql = marked_sleep(30, "workers")
    bystander_marker, bystander_sql = marked_sleep(1, "workers")
    with proxy.connect("app.acme", APP) as victim, proxy.connect("app.acme", APP) as bystander, \
            ThreadPoolExecutor(2) as pool:
        other = pool.submit(lambda: bystander.execute(bystander_sql).fetchone())

        def cancel_when_running() -> float:
            wait_running(pg, marker)
            wait_running(pg, bystander_marker)
            started = time.monotonic()
            victim.cancel_safe(timeout=10)
            return started

        canceller = pool.submit(cancel_when_running)
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            victim.execute(sql)
        elapsed = time.monotonic() - canceller.result(timeout=15)
        assert info.value.sqlstate == "57014"
        assert elapsed < CANCEL_DEADLINE, f"the cancel took {elapsed:.2f} s"
        assert other.result(timeout=15) == (bystander_marker, "")  # not cancelled
        assert victim.execute("SELECT 1").fetchone() == (1,)  # usable afterwards
        owner = worker_of(victim)
    logs = proxy.logs(mark)
    if "cancel request forwarded" not in logs:
        return "local"
    assert re.search(rf"cancel request forwarded\s.*owner={owner}\b", logs), logs
    assert re.search(rf"cancel request from another worker\s.*worker={owner}\b", logs), logs
    return "forwarded"


def test_cancel_works_whichever_worker_takes_the_request(proxy_factory, pg) -> None:
    """The kernel picks the worker for the cancel's new connection by a hash of its source
    port: repeat until both routes were taken twice (24 tries miss that with p < 1e-5)."""
    proxy = proxy_factory(extra=EXTRA)
    routes: Counter[str] = Counter()
    for _ in range(24):
        routes[cancel_once(proxy, pg)] += 1
        if routes["local"] >= 2 and routes["forwarded"] >= 2:
            break
    assert routes["local"] >= 2 and routes["forwarded"] >= 2, routes


def test_a_forwarded_cancel_with_a_wrong_key_cancels_nothing(proxy_factory, pg) -> None:
    """The victim's UPDATE waits for a row lock held directly on PostgreSQL, so it is still
    running after every wrong-key cancel has been handled, and then completes normally."""
    proxy = proxy_factory(extra=EXTRA)
    marker = f"workers-{uuid.uuid4().hex[:12]}"
    update = f"UPDATE items SET name = name WHERE id = 3 AND '{marker}' <> '' RETURNING id"
    mark = proxy.log_mark()
    with proxy.connect("app.acme", APP) as victim, ThreadPoolExecutor(1) as pool, \
            psycopg.connect(pg.dsn(dbname="acme"), connect_timeout=10) as locker:
        locker.execute("SELECT id FROM items WHERE id = 3 FOR UPDATE")
        result = pool.submit(lambda: victim.execute(update).fetchone())
        wait_running(pg, marker)
        pid = victim.info.backend_pid
        for _ in range(12):  # the right pid, a wrong key; each lands on either worker
            with raw_connect(proxy.host, proxy.port) as sock:
                sock.sendall(cancel_packet(pid, os.urandom(4)))
                assert recv_until_closed(sock) == b""

        def forwarded_all_arrived() -> bool:
            logs = proxy.logs(mark)
            sent = logs.count("cancel request forwarded")
            return sent > 0 and logs.count("cancel request from another worker") == sent
        proxy.wait_until(forwarded_all_arrived, 10, "forwarded cancels to reach the owner")
        assert running(pg, marker) == 1  # still waiting for the lock: nothing was cancelled
        locker.commit()
        assert result.result(timeout=15) == (3,)  # completed, not cancelled


# -- signals -------------------------------------------------------------------------------------

def test_sighup_reaches_every_worker(pg, sample, proxy_factory) -> None:
    proxy = proxy_factory(extra=EXTRA)
    password = sample.password("limited")
    for _ in range(6):  # whichever worker: limited may not act for umbrella yet
        with pytest.raises(psycopg.OperationalError, match="umbrella"):
            proxy.connect("limited.umbrella", password)
    text = proxy.config_path.read_text()
    assert text.count("    tenants: [acme]\n") == 1
    mark = proxy.log_mark()
    proxy.write_config(text.replace("    tenants: [acme]\n", "    tenants: [acme, umbrella]\n"))
    proxy.reload()
    for index in range(WORKERS):
        proxy.wait_for_log(rf"configuration reloaded\s.*worker={index}\b", since=mark)
    conns = connect_until_every_worker(proxy, "limited.umbrella", password)
    try:
        for conn in conns:
            assert conn.execute("SELECT current_database()").fetchone() == ("umbrella",)
    finally:
        close_all(conns)


def test_sigterm_drains_every_worker_and_exits_0(pg, proxy_factory) -> None:
    proxy = proxy_factory(extra=EXTRA)
    probe = f"drain-{uuid.uuid4().hex[:12]}"
    conns = connect_until_every_worker(proxy, "app.globex", at_least=1)
    in_tx = {worker_of(conn): conn for conn in conns}  # one open transaction per worker
    try:
        for index, conn in in_tx.items():
            conn.execute("BEGIN")
            conn.execute("INSERT INTO items (name) VALUES (%s)", (f"{probe}-{index}",))
        mark = proxy.log_mark()
        proxy.send_signal(signal.SIGTERM)
        for index in range(WORKERS):
            proxy.wait_for_log(rf"\bdraining\s.*worker={index}\b", since=mark)
        for index, conn in in_tx.items():
            assert conn.execute("COMMIT").statusmessage == "COMMIT"
        assert proxy.wait(timeout=30) == 0
        for index in range(WORKERS):
            assert backend_query(pg, "shared", "SELECT count(*) FROM globex.items WHERE "
                                 "name = %s", (f"{probe}-{index}",)) == [(1,)]
        assert re.findall(r"worker exited\s.*code=(\S+)", proxy.logs(mark)) == ["0"] * WORKERS
    finally:
        close_all(conns)
        backend_query(pg, "shared", "DELETE FROM globex.items WHERE name LIKE %s",
                      (f"{probe}-%",))


def test_a_worker_that_dies_is_restarted(proxy_factory) -> None:
    proxy = proxy_factory(extra=EXTRA)
    conns = connect_until_every_worker(proxy, at_least=1)
    try:
        survivor = next(conn for conn in conns if worker_of(conn) == 0)
        victim = next(conn for conn in conns if worker_of(conn) == 1)
        old_pid = worker_pids(proxy)[1]
        mark = proxy.log_mark()
        os.kill(old_pid, signal.SIGKILL)
        proxy.wait_for_log(r"worker died; restarting it\s.*worker=1\b", since=mark)
        proxy.wait_for_log(r"worker ready\s.*worker=1\b", since=mark)
        assert worker_pids(proxy, mark)[1] != old_pid
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")  # its clients lost their connections
        assert survivor.execute("SELECT 1").fetchone() == (1,)
        close_all(connect_until_every_worker(proxy, at_least=1))
    finally:
        close_all(conns)
    assert proxy.stop() == 0


# -- metrics and audit ---------------------------------------------------------------------------

def test_metrics_count_every_worker(proxy_factory) -> None:
    metrics_port = free_port()
    proxy = proxy_factory(extra=f'{EXTRA}\nmetrics: "127.0.0.1:{metrics_port}"')
    conns = connect_until_every_worker(proxy)
    try:
        for conn in conns:
            for i in range(3):
                assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT set_config('app.x', 'literal', false)")
        wanted = {"tenantgate_client_connections": len(conns),
                  "tenantgate_query_duration_seconds_count": 3 * len(conns)}

        def counted() -> str | None:
            status, text = scrape(metrics_port)
            values = {name: sample_value(text, name, tenant="acme") for name in wanted}
            return text if status == 200 and values == wanted else None
        text = proxy.wait_until(counted, 10, f"/metrics to show {wanted}")
        assert sample_value(text, "tenantgate_refusals_total", tenant="acme",
                            rule="reserved-setting") == len(conns)
        assert sample_value(text, "tenantgate_workers", state="reporting") == WORKERS
        status, summary = scrape(metrics_port, "/api/summary")
        assert status == 200 and f'"connections": {len(conns)}' in summary
        assert scrape(metrics_port, "/readyz")[0] == 200
    finally:
        close_all(conns)


def test_one_audit_trail_for_every_worker(proxy_factory, tmp_path) -> None:
    audit_path = tmp_path / "audit" / "audit.jsonl"
    audit_path.parent.mkdir()
    proxy = proxy_factory(extra=f'{EXTRA}\naudit: {{path: "{audit_path}", '
                                f'hmac_key: "{AUDIT_KEY}"}}')
    conns = connect_until_every_worker(proxy)
    holders = Counter(worker_of(conn) for conn in conns)
    try:
        for conn in conns:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT set_config('app.x', 'secret-literal', false)")
    finally:
        close_all(conns)
    assert proxy.stop() == 0
    assert os.listdir(audit_path.parent) == ["audit.jsonl"]  # nobody rotated it away
    entries = list(read_entries(audit_path))
    assert entries[0]["event"] == "rotate" and entries[0]["reason"] == "new"
    assert entries[-1]["event"] == "checkpoint" and entries[-1]["final"] is True
    for event in ("connect", "refusal", "disconnect"):
        by_worker = Counter(e["worker"] for e in entries if e["event"] == event)
        assert by_worker == holders, event
    assert "secret-literal" not in audit_path.read_text()
    verify = subprocess.run([sys.executable, "-m", "proxy", "audit", "verify", str(audit_path)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TENANTGATE_AUDIT_KEY": AUDIT_KEY})
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_show_stats_on_the_console_counts_every_worker(pg, sample, proxy_factory) -> None:
    """The admin console lands on one worker; SHOW STATS still adds up the whole proxy."""
    from tests.integration.test_admin import admin_config, console, show

    proxy = proxy_factory(config_text=admin_config(pg, sample, "{port}", extra=EXTRA))
    conns = connect_until_every_worker(proxy)
    try:
        for conn in conns:
            for i in range(3):
                assert conn.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        with console(proxy) as admin:
            acme = {row["tenant"]: row for row in show(admin, "STATS")}["acme"]
        assert int(acme["total_query_count"]) == 3 * len(conns)
        assert int(acme["clients"]) == len(conns)
    finally:
        close_all(conns)
