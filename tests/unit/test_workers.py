"""Pieces of `workers: N` that need no processes: cancel-key routing, the sum of the
workers' metrics, audit entries a worker could not hand over, and the listen-port guard."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import types

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from proxy.listener import check_address_free
from proxy.observability.audit import AuditLog, read_entries, verify
from proxy.observability.combined import CombinedMetrics, snapshot
from proxy.observability.metrics import EVENTS_KEPT, Metrics
from proxy.workerlink import AuditForwarder, WorkerLink, cancel_key, encode, owner_of
from tests.unit.test_audit import FakeLog

pytestmark = pytest.mark.timeout(30)


# -- cancel keys ---------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 2, 3, 64])
def test_cancel_keys_name_their_worker(count: int) -> None:
    for index in range(count):
        keys = [cancel_key(index, count) for _ in range(300)]
        assert all(owner_of(pid, count) == index for pid, _ in keys)
        assert all(0 < pid < 2 ** 31 and len(key) == 4 for pid, key in keys)
        assert len(set(keys)) == len(keys)


def test_cancel_key_pids_use_the_whole_range() -> None:
    """31 - log2(N) random bits: with two workers, the pids of one worker reach both the
    bottom and the top of the positive 31-bit range, and every bit above the lowest varies."""
    pids = [cancel_key(1, 2)[0] for _ in range(2000)]
    assert min(pids) < 2 ** 27 and max(pids) > 2 ** 31 - 2 ** 27
    for bit in range(1, 31):
        assert {pid >> bit & 1 for pid in pids} == {0, 1}, bit
    keys = {cancel_key(0, 2)[1] for _ in range(2000)}
    assert len(keys) > 1990  # 32 random bits: collisions among 2000 are very rare


# -- metrics of several workers ------------------------------------------------------------------

def fake_pool(size: int, idle: int, waiting: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(cluster=types.SimpleNamespace(name="main", pool_size=20),
                                 database="acme", size=size, idle=[object()] * idle,
                                 waiting=waiting)


class FakeAnalyzer:
    def __init__(self, hits: int, misses: int, entries: int) -> None:
        self.hits, self.misses, self.entries = hits, misses, entries

    def __len__(self) -> int:
        return self.entries


def worker_metrics(connected: int, queries: list[float], refusals: int, pool: tuple,
                   cache: tuple) -> Metrics:
    metrics = Metrics()
    acme = metrics.for_tenant("acme")
    for _ in range(connected):
        acme.client_connected()
    for seconds in queries:
        acme.query(seconds)
        acme.transaction()
    for _ in range(refusals):
        acme.refusal("catalog", shape="SELECT * FROM pg_authid WHERE x = 'secret'")
    metrics.login_refused("bad-password", tenant="acme")
    metrics.watch_pools(lambda: [fake_pool(*pool)])
    metrics.watch_analyzer(lambda: FakeAnalyzer(*cache))
    return metrics


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_combined_metrics_are_the_sum_of_the_workers() -> None:
    first = worker_metrics(2, [0.0002, 0.003], 1, pool=(4, 1, 0), cache=(10, 2, 5))
    second = worker_metrics(3, [0.0002], 2, pool=(6, 2, 1), cache=(5, 1, 4))
    # through JSON, as they travel between processes
    snapshots = [json.loads(encode(snapshot(m))) for m in (first, second)] + [None]
    combined = CombinedMetrics(True, workers=3)
    combined.load(snapshots)
    got = samples(combined.render().decode())
    acme = (("tenant", "acme"),)
    assert got[("tenantgate_client_connections", acme)] == 5
    assert got[("tenantgate_client_connections_accepted_total", acme)] == 5
    assert got[("tenantgate_transactions_total", acme)] == 3
    assert got[("tenantgate_query_duration_seconds_count", acme)] == 3
    assert got[("tenantgate_query_duration_seconds_bucket", (("le", "0.0005"), *acme))] == 2
    assert got[("tenantgate_query_duration_seconds_sum", acme)] == pytest.approx(0.0034)
    assert got[("tenantgate_refusals_total", (("rule", "catalog"), *acme))] == 3
    assert got[("tenantgate_login_refusals_total", (("reason", "bad-password"),))] == 2
    pool = (("cluster", "main"), ("database", "acme"))
    assert got[("tenantgate_pool_size", pool)] == 10
    assert got[("tenantgate_pool_max_size", pool)] == 40  # each worker has its own pool
    assert got[("tenantgate_pool_server_connections", (*pool, ("state", "idle")))] == 3
    assert got[("tenantgate_pool_clients_waiting", pool)] == 1
    assert got[("tenantgate_analysis_cache_hits_total", ())] == 15
    assert got[("tenantgate_analysis_cache_entries", ())] == 9
    assert got[("tenantgate_workers", (("state", "configured"),))] == 3
    assert got[("tenantgate_workers", (("state", "reporting"),))] == 2
    summary = combined.summary()
    assert summary["tenants"][0]["connections"] == 5 and summary["tenants"][0]["refusals"] == 3
    assert summary["workers"] == {"configured": 3, "reporting": 2, "restarts": 0}
    assert len(summary["events"]) == 5 and "secret" not in json.dumps(summary["events"])


def test_combined_events_are_the_newest_of_all_workers() -> None:
    workers = [Metrics(wall=lambda: 1.0), Metrics(wall=lambda: 2.0)]
    for metrics in workers:
        for _ in range(EVENTS_KEPT):
            metrics.login_refused("bad-password")
    combined = CombinedMetrics(True, workers=2)
    combined.load([snapshot(m) for m in workers])
    assert [event["ts"] for event in combined.events] == [2.0] * EVENTS_KEPT


async def test_refresh_reads_the_snapshots_again_each_time() -> None:
    metrics = Metrics()
    calls = []

    async def fetch():
        calls.append(1)
        return [snapshot(metrics)]
    combined = CombinedMetrics(True, workers=1, fetch=fetch)
    metrics.for_tenant("acme").transaction()
    await combined.refresh()
    metrics.for_tenant("acme").transaction()
    await combined.refresh()
    assert len(calls) == 2
    assert combined.tenant_counts()["acme"].transactions == 2


# -- audit entries from workers ------------------------------------------------------------------

async def test_entries_lost_in_a_worker_become_a_gap_in_the_trail(tmp_path) -> None:
    key = b"k" * 32
    audit = AuditLog(tmp_path / "audit.log", key)
    await audit.start()
    audit.record("connect", tenant="acme", worker=0)
    audit.lost(7)
    audit.record("disconnect", tenant="acme", worker=1)
    await audit.close()
    entries = list(read_entries(tmp_path / "audit.log"))
    assert [(e["event"], e.get("count"), e.get("worker")) for e in entries[1:4]] == [
        ("connect", None, 0), ("gap", 7, None), ("disconnect", None, 1)]
    assert audit.dropped == 7
    assert verify(tmp_path / "audit.log", key).ok


class FakeLink:
    """What an AuditForwarder needs of a WorkerLink: send_many and drain."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send_many(self, messages: list[dict]) -> None:
        self.sent += [json.loads(encode(message)) for message in messages]

    async def drain(self) -> None:
        await asyncio.sleep(0)


async def test_a_full_forwarder_queue_drops_into_one_counted_gap() -> None:
    link = FakeLink()
    forwarder = AuditForwarder(link, every_statement=False, queue_size=2)
    forwarder.log = FakeLog()
    kept = [forwarder.record("connect", tenant="acme", n=n) for n in range(5)]
    assert kept == [True, True, False, False, False]
    assert forwarder.record("statement", shape="SELECT 1") is False  # not every_statement
    assert forwarder.dropped == 3 and forwarder.queue_depth == 3  # 2 entries + the gap
    assert [(level, message, fields["dropped"]) for level, message, fields
            in forwarder.log.records] == [  # once per second, not 3
        ("warning", "audit entries dropped: the worker's audit queue is full", 1)]
    await forwarder.start()
    await forwarder.close()
    assert [(m["kind"], m.get("count"), m.get("fields", {}).get("n")) for m in link.sent] == [
        ("audit", None, 0), ("audit", None, 1), ("gap", 3, None)]
    assert forwarder.written == 2
    with pytest.raises(ValueError):
        forwarder.record("no-such-event")


# -- the listen-port guard -----------------------------------------------------------------------

@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "so_reuseport"])
def test_address_in_use_is_found_even_behind_so_reuseport(reuse_port: bool) -> None:
    """A listener with SO_REUSEPORT would let our workers join it silently; the guard's
    plain bind fails on it all the same."""
    with socket.socket() as other:
        if reuse_port:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(OSError) as info:
            check_address_free("127.0.0.1", port)
        assert "in use" in str(info.value)
    check_address_free("127.0.0.1", port)  # closed: free again


# -- a worker's link without a supervisor --------------------------------------------------------

def make_link(tmp_path, index: int = 0, count: int = 2, supervisor_pid: int = 0) -> WorkerLink:
    (tmp_path / "settings.json").write_text(json.dumps({
        "workers": count, "listen": ["127.0.0.1", 6432], "supervisor_pid": supervisor_pid,
        "audit": None}))
    link = WorkerLink(index, str(tmp_path))
    structlog.contextvars.unbind_contextvars("worker")  # the link names its process in logs
    return link


async def test_a_worker_keeps_its_own_keys_and_forwards_the_others(tmp_path) -> None:
    link = make_link(tmp_path, index=1, count=2)
    pid, key = link.new_cancel_key()
    assert owner_of(pid, 2) == 1
    assert link.forward_cancel(pid, key) is False  # ours: App.cancel applies it here
    assert link.forward_cancel(pid + 1, key) is True  # worker 0's: sent there
    await link.close()  # the send fails quietly: worker 0 does not exist here


async def test_whole_proxy_metrics_count_who_answered(tmp_path) -> None:
    link = make_link(tmp_path, index=0, count=3)
    link.app = types.SimpleNamespace(metrics=Metrics(),
                                     config=types.SimpleNamespace(metrics_tenant_labels=True))
    link.app.metrics.for_tenant("acme").transaction()
    combined = await link.whole_proxy_metrics()  # workers 1 and 2 have no socket: missing
    assert (combined.reporting, combined.workers) == (1, 3)
    assert combined.tenant_counts()["acme"].transactions == 1


def test_reload_all_never_signals_a_process_that_is_not_our_supervisor(tmp_path) -> None:
    link = make_link(tmp_path, supervisor_pid=os.getppid() + 1)
    assert link.reload_all() is False
