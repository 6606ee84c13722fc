"""Metrics: exact values in the exposition, tenant labels off, watchers, the dashboard summary."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.observability.audit import AuditLog
from proxy.observability.metrics import (ALL_TENANTS, EVENTS_KEPT, MAX_LABEL_VALUES, NO_TENANT,
                                         QUERY_BUCKETS, Metrics, quantile)

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeAnalyzer:
    def __init__(self, hits: int, misses: int, entries: int) -> None:
        self.hits, self.misses, self.entries = hits, misses, entries

    def __len__(self) -> int:
        return self.entries


def fake_pool(cluster: str, database: str, size: int, idle: int, waiting: int,
              pool_size: int = 20) -> types.SimpleNamespace:
    return types.SimpleNamespace(cluster=types.SimpleNamespace(name=cluster, pool_size=pool_size),
                                 database=database, size=size, idle=[object()] * idle,
                                 waiting=waiting)


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def lines(metrics: Metrics) -> set[str]:
    return set(metrics.render().decode().splitlines())


def test_tenant_counters_exact_values():
    metrics = Metrics()
    acme = metrics.for_tenant("acme")
    assert metrics.for_tenant("acme") is acme  # the handle is cached
    for _ in range(3):
        acme.client_connected()
    acme.client_disconnected()
    for _ in range(5):
        acme.transaction()
    acme.error()
    acme.bytes_in(100)
    acme.bytes_in(23)
    acme.bytes_out(4096)
    acme.refusal("cross-tenant-schema", shape="SELECT 1", sqlstate="42P01")
    acme.refusal("cross-tenant-schema")
    acme.refusal("forbidden-function")
    metrics.for_tenant("globex").client_connected()
    text = lines(metrics)
    for expected in [
        'tenantgate_client_connections{tenant="acme"} 2.0',
        'tenantgate_client_connections_accepted_total{tenant="acme"} 3.0',
        'tenantgate_transactions_total{tenant="acme"} 5.0',
        'tenantgate_query_errors_total{tenant="acme"} 1.0',
        'tenantgate_client_received_bytes_total{tenant="acme"} 123.0',
        'tenantgate_client_sent_bytes_total{tenant="acme"} 4096.0',
        'tenantgate_refusals_total{rule="cross-tenant-schema",tenant="acme"} 2.0',
        'tenantgate_refusals_total{rule="forbidden-function",tenant="acme"} 1.0',
        'tenantgate_client_connections{tenant="globex"} 1.0',
        'tenantgate_transactions_total{tenant="globex"} 0.0',
    ]:
        assert expected in text, expected


def test_query_histogram_buckets_sum_and_count():
    metrics = Metrics()
    acme = metrics.for_tenant("acme")
    for seconds in (0.0002, 0.0005, 0.003, 0.003, 0.2, 42.0):
        acme.query(seconds)
    acme.pool_wait(0.002)
    got = samples(metrics)

    def bucket(name: str, le: str) -> float:
        return got[(name, (("le", le), ("tenant", "acme")))]

    q = "tenantgate_query_duration_seconds_bucket"
    assert bucket(q, "0.0005") == 2  # le is inclusive: 0.0005 counts in its own bucket
    assert bucket(q, "0.001") == 2
    assert bucket(q, "0.005") == 4
    assert bucket(q, "0.25") == 5
    assert bucket(q, "10.0") == 5
    assert bucket(q, "+Inf") == 6
    assert got[("tenantgate_query_duration_seconds_count", (("tenant", "acme"),))] == 6
    assert got[("tenantgate_query_duration_seconds_sum", (("tenant", "acme"),))] == \
        pytest.approx(0.0002 + 0.0005 + 0.006 + 0.2 + 42.0)
    w = "tenantgate_pool_wait_seconds_bucket"
    assert bucket(w, "0.001") == 0 and bucket(w, "0.005") == 1 and bucket(w, "+Inf") == 1


def test_tenant_labels_off_counts_everything_as_all():
    metrics = Metrics(tenant_labels=False)
    for name in ("acme", "globex", "initech"):
        handle = metrics.for_tenant(name)
        handle.client_connected()
        handle.query(0.001)
    metrics.for_tenant("globex").refusal("forbidden-function", shape="SELECT 1")
    text = metrics.render().decode()
    assert 'tenantgate_client_connections{tenant="_all"} 3.0' in text
    assert 'tenantgate_query_duration_seconds_count{tenant="_all"} 3.0' in text
    assert 'tenantgate_refusals_total{rule="forbidden-function",tenant="_all"} 1.0' in text
    assert "acme" not in text and "globex" not in text
    assert set(re.findall(r'tenant="([^"]*)"', text)) == {ALL_TENANTS}
    # the event ring buffer still names the real tenant
    assert metrics.events[-1]["tenant"] == "globex"
    assert [row["tenant"] for row in metrics.summary()["tenants"]] == [ALL_TENANTS]


def test_session_without_tenant_counts_as_bypass():
    metrics = Metrics()
    metrics.for_tenant(None).client_connected()
    assert f'tenantgate_client_connections{{tenant="{NO_TENANT}"}} 1.0' in lines(metrics)


def test_login_refusals_and_events():
    metrics = Metrics()
    metrics.login_refused("bad-password", tenant="acme", login="app")
    metrics.login_refused("bad-password")
    metrics.login_refused("unknown-tenant", login="app")
    text = lines(metrics)
    assert 'tenantgate_login_refusals_total{reason="bad-password"} 2.0' in text
    assert 'tenantgate_login_refusals_total{reason="unknown-tenant"} 1.0' in text
    assert [e["kind"] for e in metrics.events] == ["login_refused"] * 3
    assert metrics.events[0]["tenant"] == "acme" and metrics.events[0]["rule"] == "bad-password"


def test_watchers_pools_cache_audit(tmp_path):
    metrics = Metrics()
    pools = [fake_pool("main", "acme", size=5, idle=2, waiting=3),
             fake_pool("main", "shared", size=1, idle=1, waiting=0, pool_size=4)]
    metrics.watch_pools(lambda: pools)
    metrics.watch_analyzer(lambda: FakeAnalyzer(hits=90, misses=10, entries=7))
    audit = AuditLog(tmp_path / "audit.log", b"k" * 32, queue_size=2)
    metrics.watch_audit(lambda: audit)
    for _ in range(5):
        audit.record("connect", tenant="acme")  # not started: 2 queued, 3 dropped
    text = lines(metrics)
    for expected in [
        'tenantgate_pool_server_connections{cluster="main",database="acme",state="active"} 3.0',
        'tenantgate_pool_server_connections{cluster="main",database="acme",state="idle"} 2.0',
        'tenantgate_pool_size{cluster="main",database="acme"} 5.0',
        'tenantgate_pool_max_size{cluster="main",database="acme"} 20.0',
        'tenantgate_pool_clients_waiting{cluster="main",database="acme"} 3.0',
        'tenantgate_pool_server_connections{cluster="main",database="shared",state="active"} 0.0',
        'tenantgate_pool_max_size{cluster="main",database="shared"} 4.0',
        "tenantgate_analysis_cache_hits_total 90.0",
        "tenantgate_analysis_cache_misses_total 10.0",
        "tenantgate_analysis_cache_entries 7.0",
        "tenantgate_audit_queue_depth 3.0",  # 2 entries + the gap marker
        "tenantgate_audit_queue_capacity 2.0",
        "tenantgate_audit_entries_dropped_total 3.0",
        "tenantgate_audit_entries_written_total 0.0",
        "tenantgate_audit_blocked_total 0.0",
        "tenantgate_audit_write_errors_total 0.0",
    ]:
        assert expected in text, expected


def test_pools_with_the_same_key_are_added_up():
    metrics = Metrics()
    metrics.watch_pools(lambda: [fake_pool("main", "acme", 2, 1, 0),
                                 fake_pool("main", "acme", 3, 0, 1)])
    assert metrics.pools() == [{"cluster": "main", "database": "acme", "active": 4, "idle": 1,
                                "size": 5, "max": 20, "waiting": 1}]
    assert 'tenantgate_pool_size{cluster="main",database="acme"} 5.0' in lines(metrics)


def test_a_broken_watcher_does_not_break_the_scrape():
    metrics = Metrics()
    metrics.for_tenant("acme").transaction()

    def broken():
        raise RuntimeError("boom")
    metrics.watch_pools(broken)
    metrics.watch_analyzer(lambda: FakeAnalyzer(1, 2, 3))
    text = lines(metrics)
    assert 'tenantgate_transactions_total{tenant="acme"} 1.0' in text
    assert "tenantgate_analysis_cache_misses_total 2.0" in text
    assert metrics.summary()["pools"] == []


def test_label_values_and_event_text_are_bounded():
    metrics = Metrics()
    acme = metrics.for_tenant("acme")
    for index in range(MAX_LABEL_VALUES + 10):
        acme.refusal(f"rule-{index}")
        metrics.login_refused(f"reason-{index}", login="x" * 10_000)
    text = metrics.render().decode()
    assert text.count("tenantgate_refusals_total{") == MAX_LABEL_VALUES + 1
    assert 'tenantgate_refusals_total{rule="other",tenant="acme"} 10.0' in text
    assert 'tenantgate_login_refusals_total{reason="other"} 10.0' in text
    assert len(metrics.events[-1]["login"]) == 257


def test_nothing_is_registered_globally():
    from prometheus_client import REGISTRY
    Metrics().for_tenant("acme").transaction()
    assert all(not name.startswith("tenantgate") for name in REGISTRY._names_to_collectors)


def test_quantile_interpolates_like_prometheus():
    bounds = (0.1, 0.2, 0.4)
    assert quantile(0.95, bounds, [0, 0, 0, 0]) is None
    assert quantile(0.5, bounds, [10, 0, 0, 0]) == pytest.approx(0.05)
    assert quantile(0.5, bounds, [0, 10, 0, 0]) == pytest.approx(0.15)
    assert quantile(0.95, bounds, [50, 50, 0, 0]) == pytest.approx(0.19)
    assert quantile(0.99, bounds, [0, 0, 0, 5]) == 0.4  # only +Inf: the highest finite bound


def test_summary_rates_and_p95_between_calls():
    clock, wall = FakeClock(1000.0), FakeClock(1_700_000_000.0)
    metrics = Metrics(clock=clock, wall=wall)
    acme = metrics.for_tenant("acme")
    acme.client_connected()
    for _ in range(100):
        acme.query(0.003)  # bucket (0.0025, 0.005]
    acme.refusal("forbidden-function")
    clock.now += 10
    first = metrics.summary()
    row = first["tenants"][0]
    assert row == {"tenant": "acme", "connections": 1, "queries": 100,
                   "queries_per_second": 10.0, "p95_ms": pytest.approx(4.875),
                   "transactions": 0, "errors": 0, "refusals": 1}
    for _ in range(40):
        acme.query(0.2)  # bucket (0.1, 0.25]
    clock.now += 2
    second = metrics.summary()["tenants"][0]
    assert second["queries"] == 140
    assert second["queries_per_second"] == 20.0  # 40 queries in the 2 s since the last call
    assert second["p95_ms"] == pytest.approx(242.5)  # this window only
    clock.now += 2
    idle = metrics.summary()["tenants"][0]
    assert idle["queries_per_second"] == 0.0 and idle["p95_ms"] is None
    assert first["uptime_seconds"] == 10.0


def test_summary_events_newest_first_bounded_and_without_literals():
    metrics = Metrics()
    acme = metrics.for_tenant("acme")
    for index in range(EVENTS_KEPT + 10):
        acme.refusal(f"rule-{index}", shape=f"SELECT * FROM t WHERE secret = 'v{index}' /* pw */",
                     sqlstate="42501")
    acme.refusal("syntax", shape="SELEC 'broken secret")
    summary = metrics.summary()
    events = summary["events"]
    assert len(events) == EVENTS_KEPT
    assert events[0]["rule"] == "syntax" and events[0]["shape"] is None  # unparseable: dropped
    assert events[1]["rule"] == f"rule-{EVENTS_KEPT + 9}"
    assert events[1]["shape"] == "SELECT * FROM t WHERE secret = $1"
    assert events[1]["tenant"] == "acme" and events[1]["kind"] == "refusal"
    assert events[1]["time"].endswith("Z")
    body = json.dumps(summary)
    assert "'v" not in body and "pw" not in body and "broken" not in body


def test_summary_cache_audit_and_login_refusals(tmp_path):
    metrics = Metrics()
    assert metrics.summary()["cache"] is None and metrics.summary()["audit"] is None
    metrics.watch_analyzer(lambda: FakeAnalyzer(3, 1, 2))
    audit = AuditLog(tmp_path / "a.log", b"k" * 32)
    audit.record("connect")
    metrics.watch_audit(lambda: audit)
    metrics.login_refused("bad-password")
    summary = metrics.summary()
    assert summary["cache"] == {"hits": 3, "misses": 1, "entries": 2, "hit_ratio": 0.75}
    assert summary["audit"] == {"queue_depth": 1, "queue_capacity": 10000, "written": 0,
                                "dropped": 0, "blocked": 0, "write_errors": 0}
    assert summary["login_refusals"] == {"bad-password": 1}


def test_grafana_dashboard_uses_only_exported_metrics(tmp_path):
    """Every metric name in docker/grafana-dashboard.json exists in a full exposition."""
    dashboard = json.loads((ROOT / "docker" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    used = {name for expr in exprs for name in re.findall(r"\btenantgate_[a-z_]+", expr)}
    metrics = Metrics()
    handle = metrics.for_tenant("acme")
    handle.query(0.001)
    handle.pool_wait(0.001)
    handle.refusal("r")
    metrics.login_refused("bad-password")
    metrics.watch_pools(lambda: [fake_pool("main", "acme", 1, 1, 0)])
    metrics.watch_analyzer(lambda: FakeAnalyzer(1, 1, 1))
    audit = AuditLog(tmp_path / "a.log", b"k" * 32)
    metrics.watch_audit(lambda: audit)
    exported = {name for (name, _labels) in samples(metrics)}
    assert used - exported == set()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_bucket_bounds_are_sorted():
    assert list(QUERY_BUCKETS) == sorted(QUERY_BUCKETS)
