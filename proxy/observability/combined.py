"""The whole proxy's metrics when `workers: N` runs several processes (proxy.workers).

Each worker keeps its own `Metrics`; `snapshot(metrics)` turns that state into JSON data:
per-tenant counts and histogram buckets, login refusals, recent security events, pool rows
and analysis-cache counts. The supervisor's `CombinedMetrics` is a `Metrics` whose state is
replaced by the sum of every worker's snapshot just before each scrape (`refresh()`), so
/metrics, /api/summary and the dashboard show the whole proxy through the same code that
renders one process.

Summed: every counter and gauge, histogram buckets and sums, pool connections and waiting
clients, and the pools' max size (each worker has pools of its own, so the proxy may open
`pool_size` × workers server connections per pool), cache hits, misses and entries. Events:
the newest EVENTS_KEPT over all workers. Audit figures: the supervisor's own AuditLog, the
one writer of the trail (`watch_audit`). A restarted worker counts from 0 again, which
Prometheus' rate() reads as a counter reset; a worker that does not answer within the
request timeout is left out of that scrape, and `tenantgate_workers{state="reporting"}`
says how many were included.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from proxy.observability.metrics import EVENTS_KEPT, Metrics, _Counts, _Histogram

_SCALARS = ("connected", "accepted", "transactions", "errors", "bytes_in", "bytes_out")
_POOL_SUMS = ("active", "idle", "size", "max", "waiting")


def snapshot(metrics: Metrics) -> dict[str, Any]:
    """One process's metric state as JSON-able data (event shapes already sanitised)."""
    return {
        "tenants": {label: _counts_state(counts)
                    for label, counts in metrics.tenant_counts().items()},
        "login_refusals": dict(metrics.login_refusals),
        "events": [metrics._event_row(event) for event in metrics.events],
        "pools": metrics._safe(metrics.pools, []),
        "cache": metrics._safe(lambda: _cache_state(metrics.analyzer())),
    }


def _counts_state(counts: _Counts) -> dict[str, Any]:
    state: dict[str, Any] = {name: getattr(counts, name) for name in _SCALARS}
    state["refusals"] = dict(counts.refusals)
    state["query"] = [counts.query.counts, counts.query.sum]
    state["pool_wait"] = [counts.pool_wait.counts, counts.pool_wait.sum]
    return state


def _cache_state(analyzer: Any) -> dict[str, int] | None:
    if analyzer is None:
        return None
    return {"hits": analyzer.hits, "misses": analyzer.misses, "entries": len(analyzer)}


class CacheTotals:
    """The analysis caches of all workers, added up; reads like an Analyzer for metrics."""

    def __init__(self) -> None:
        self.hits = self.misses = self.entries = 0

    def __len__(self) -> int:
        return self.entries


class CombinedMetrics(Metrics):
    """The sum of the workers' snapshots; `fetch()` returns them (None: did not answer)."""

    def __init__(self, tenant_labels: bool, workers: int,
                 fetch: Callable[[], Awaitable[list[dict[str, Any] | None]]] | None = None
                 ) -> None:
        super().__init__(tenant_labels)
        self.workers = workers
        self.reporting = 0
        self.restarts = 0
        self._fetch = fetch
        self._pool_rows: list[dict[str, Any]] = []
        self._cache: CacheTotals | None = None
        self.registry.register(_WorkerCollector(self))

    async def refresh(self) -> None:
        if self._fetch is not None:
            self.load(await self._fetch())

    def load(self, snapshots: Iterable[dict[str, Any] | None]) -> None:
        """Replace the state with the sum of these snapshots."""
        present = [item for item in snapshots if item is not None]
        counts: dict[str, _Counts] = {}
        refusals: dict[str, int] = {}
        events: list[dict[str, Any]] = []
        for item in present:
            for label, state in item["tenants"].items():
                _add_counts(counts.setdefault(label, _Counts()), state)
            for reason, count in item["login_refusals"].items():
                refusals[reason] = refusals.get(reason, 0) + count
            events += [{**event, "_clean": True} for event in item["events"]]
        events.sort(key=lambda event: event["ts"])
        self._counts = counts
        self.login_refusals = refusals
        self.events = collections.deque(events[-EVENTS_KEPT:], maxlen=EVENTS_KEPT)
        self._pool_rows = _sum_pools(item["pools"] for item in present)
        self._cache = _sum_caches(item["cache"] for item in present)
        self.reporting = len(present)

    def pools(self) -> list[dict[str, Any]]:
        return self._pool_rows

    def analyzer(self) -> Any:
        return self._cache

    def summary(self) -> dict[str, Any]:
        summary = super().summary()
        summary["workers"] = {"configured": self.workers, "reporting": self.reporting,
                              "restarts": self.restarts}
        return summary


def _add_counts(total: _Counts, state: dict[str, Any]) -> None:
    for name in _SCALARS:
        setattr(total, name, getattr(total, name) + state[name])
    for rule, count in state["refusals"].items():
        total.refusals[rule] = total.refusals.get(rule, 0) + count
    _add_histogram(total.query, state["query"])
    _add_histogram(total.pool_wait, state["pool_wait"])


def _add_histogram(total: _Histogram, state: list) -> None:
    counts, seconds = state
    if len(counts) != len(total.counts):
        return  # other bucket bounds (a worker of another version): cannot be added
    total.counts = [mine + theirs for mine, theirs in zip(total.counts, counts)]
    total.sum += seconds


def _sum_pools(row_lists: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for row_list in row_lists:
        for row in row_list:
            key = (row["cluster"], row["database"])
            total = rows.setdefault(key, {"cluster": key[0], "database": key[1],
                                          **{name: 0 for name in _POOL_SUMS}})
            for name in _POOL_SUMS:
                total[name] += row[name]
    return [rows[key] for key in sorted(rows)]


def _sum_caches(states: Iterable[dict[str, int] | None]) -> CacheTotals | None:
    total = None
    for state in states:
        if state is None:
            continue
        total = total or CacheTotals()
        total.hits += state["hits"]
        total.misses += state["misses"]
        total.entries += state["entries"]
    return total


class _WorkerCollector:
    """tenantgate_workers{state} and tenantgate_worker_restarts_total."""

    def __init__(self, metrics: CombinedMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        workers = GaugeMetricFamily("tenantgate_workers", "Worker processes: configured, and "
                                    "those whose metrics this scrape includes", labels=["state"])
        workers.add_metric(["configured"], self.metrics.workers)
        workers.add_metric(["reporting"], self.metrics.reporting)
        yield workers
        yield CounterMetricFamily("tenantgate_worker_restarts",
                                  "Worker processes started again after they died",
                                  value=self.metrics.restarts)
