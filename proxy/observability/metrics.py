"""Prometheus metrics: cheap per-tenant counting on the hot path, the rest read at scrape time.

`Metrics` owns its own `CollectorRegistry` (never the global one). Sessions count through
`metrics.for_tenant(name)`, a `TenantMetrics` handle cached per tenant whose methods only
bump plain integers (about 0.06 µs each, against 0.4-1 µs for a prometheus-client child,
whose every update takes a lock). One custom collector turns those integers into metric
families when `/metrics` is scraped, and reads the state the app registered with
`watch_pools`, `watch_analyzer` and `watch_audit` at the same moment.

With `tenant_labels=False` (very many tenants) every tenant counts under the label "_all";
the security-event ring buffer `events` still names the real tenant. Sessions without a
tenant (bypass logins) count under "_bypass". `summary()` is the JSON for the dashboard.
"""

from __future__ import annotations

import bisect
import collections
import datetime
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.utils import floatToGoString

from proxy.observability.audit import shape_of
from proxy.observability.logging import get_logger

ALL_TENANTS = "_all"  # the tenant label when tenant labels are off
NO_TENANT = "_bypass"  # the tenant label of sessions that act for no tenant
EVENTS_KEPT = 50  # security events kept for the dashboard
SUMMARY_WINDOW = 1.0  # seconds: summary() rates cover at least this long
MAX_LABEL_VALUES = 64  # distinct refusal rules per tenant / login-refusal reasons; then "other"
MAX_EVENT_TEXT = 256  # characters kept of a tenant or login name in an event
QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                 1.0, 2.5, 5.0, 10.0)
POOL_WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)


class _Histogram:
    """Per-bucket (not cumulative) counts; the last bucket is +Inf."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        total, out = 0, []
        for bound, count in zip((*map(_float_text, self.bounds), "+Inf"), self.counts):
            total += count
            out.append((bound, total))
        return out


class _Counts:
    """The numbers behind one tenant label value."""

    __slots__ = ("connected", "accepted", "transactions", "errors", "bytes_in", "bytes_out",
                 "refusals", "query", "pool_wait")

    def __init__(self) -> None:
        self.connected = self.accepted = self.transactions = self.errors = 0
        self.bytes_in = self.bytes_out = 0
        self.refusals: dict[str, int] = {}
        self.query = _Histogram(QUERY_BUCKETS)
        self.pool_wait = _Histogram(POOL_WAIT_BUCKETS)


class TenantMetrics:
    """What one tenant's sessions count; every method is a few integer updates."""

    __slots__ = ("tenant", "_c", "_metrics")

    def __init__(self, tenant: str, counts: _Counts, metrics: Metrics) -> None:
        self.tenant = tenant
        self._c = counts
        self._metrics = metrics

    def client_connected(self) -> None:
        counts = self._c
        counts.connected += 1
        counts.accepted += 1

    def client_disconnected(self) -> None:
        self._c.connected -= 1

    def transaction(self) -> None:
        self._c.transactions += 1

    def query(self, seconds: float) -> None:
        self._c.query.observe(seconds)

    def answered(self, seconds: float, sent: int, transaction_ended: bool) -> None:
        """A request answered: `query`, `bytes_out` and (if so) `transaction` in one call."""
        counts = self._c
        counts.bytes_out += sent
        counts.query.observe(seconds)
        if transaction_ended:
            counts.transactions += 1

    def error(self) -> None:
        self._c.errors += 1

    def bytes_in(self, n: int) -> None:
        self._c.bytes_in += n

    def bytes_out(self, n: int) -> None:
        self._c.bytes_out += n

    def pool_wait(self, seconds: float) -> None:
        self._c.pool_wait.observe(seconds)

    def refusal(self, rule: str | None, shape: str | None = None,
                sqlstate: str | None = None) -> None:
        """A refused statement; also a dashboard security event (shape sanitised when shown)."""
        rule = rule or "unknown"
        refusals = self._c.refusals
        if rule not in refusals and len(refusals) >= MAX_LABEL_VALUES:
            rule = "other"  # rules are a fixed vocabulary; never let labels grow without bound
        refusals[rule] = refusals.get(rule, 0) + 1
        self._metrics.add_event("refusal", self.tenant, rule, shape=shape, sqlstate=sqlstate)


class Metrics:
    """All metrics of one proxy process; `render()` is the /metrics body."""

    def __init__(self, tenant_labels: bool = True, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.tenant_labels = tenant_labels
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS_KEPT)
        self.login_refusals: dict[str, int] = {}
        self.log = get_logger(component="metrics")
        self._clock = clock
        self._wall = wall
        self._counts: dict[str, _Counts] = {}
        self._handles: dict[str | None, TenantMetrics] = {}
        self._pools: Callable[[], Iterable[Any]] | None = None
        self._analyzer: Callable[[], Any] | None = None
        self._audit: Callable[[], Any] | None = None
        self.started = clock()
        self._window: tuple[float, dict[str, list[int]]] = (self.started, {})
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    # -- the hot path -------------------------------------------------------------------

    def for_tenant(self, tenant: str | None) -> TenantMetrics:
        """The cached handle for `tenant` (None: a session acting for no tenant)."""
        handle = self._handles.get(tenant)
        if handle is None:
            name = NO_TENANT if tenant is None else tenant
            label = name if self.tenant_labels else ALL_TENANTS
            counts = self._counts.get(label)
            if counts is None:
                counts = self._counts[label] = _Counts()
            handle = self._handles[tenant] = TenantMetrics(name, counts, self)
        return handle

    def login_refused(self, reason: str, tenant: str | None = None,
                      login: str | None = None) -> None:
        """A client refused at startup; `reason` is a rule name (bad-password, …), not text."""
        refusals = self.login_refusals
        if reason not in refusals and len(refusals) >= MAX_LABEL_VALUES:
            reason = "other"
        refusals[reason] = refusals.get(reason, 0) + 1
        self.add_event("login_refused", tenant, reason, login=login)

    def add_event(self, kind: str, tenant: str | None, rule: str, *, shape: str | None = None,
                  sqlstate: str | None = None, login: str | None = None) -> None:
        self.events.append({"ts": self._wall(), "kind": kind, "tenant": _bounded(tenant),
                            "rule": rule, "sqlstate": sqlstate, "login": _bounded(login),
                            "shape": shape, "_clean": shape is None})

    # -- what the app registers ---------------------------------------------------------

    def watch_pools(self, pools: Callable[[], Iterable[Any]]) -> None:
        """`pools()` returns the live Pool objects (cluster, database, size, idle, waiting)."""
        self._pools = pools

    def watch_analyzer(self, analyzer: Callable[[], Any]) -> None:
        """`analyzer()` returns the current Analyzer (hits, misses, len())."""
        self._analyzer = analyzer

    def watch_audit(self, audit: Callable[[], Any]) -> None:
        """`audit()` returns the AuditLog (queue_depth, dropped, blocked, ...) or None."""
        self._audit = audit

    # -- reading --------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of everything."""
        return generate_latest(self.registry)

    def tenant_counts(self) -> dict[str, _Counts]:
        return self._counts

    def pools(self) -> list[dict[str, Any]]:
        """One row per (cluster, database) pool; pools sharing a key are added up."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for pool in (self._pools() if self._pools is not None else ()):
            key = (pool.cluster.name, pool.database)
            row = rows.setdefault(key, {"cluster": key[0], "database": key[1], "active": 0,
                                        "idle": 0, "size": 0, "max": 0, "waiting": 0})
            idle = len(pool.idle)
            row["active"] += pool.size - idle
            row["idle"] += idle
            row["size"] += pool.size
            row["max"] = max(row["max"], pool.cluster.pool_size)
            row["waiting"] += pool.waiting
        return [rows[key] for key in sorted(rows)]

    def analyzer(self) -> Any:
        return self._analyzer() if self._analyzer is not None else None

    def audit(self) -> Any:
        return self._audit() if self._audit is not None else None

    def summary(self) -> dict[str, Any]:
        """The dashboard's JSON: per-tenant rates over the time since the previous call."""
        now = self._clock()
        since, previous = self._window
        elapsed = now - since
        tenants = [self._tenant_row(name, counts, previous.get(name), elapsed)
                   for name, counts in sorted(self._counts.items())]
        if elapsed >= SUMMARY_WINDOW:
            self._window = (now, {name: list(counts.query.counts)
                                  for name, counts in self._counts.items()})
        return {"uptime_seconds": round(now - self.started, 1), "time": _iso(self._wall()),
                "tenant_labels": self.tenant_labels, "tenants": tenants,
                "pools": self._safe(self.pools, []), "cache": self._safe(self._cache_summary),
                "audit": self._safe(self._audit_summary),
                "login_refusals": dict(sorted(self.login_refusals.items())),
                "events": [self._event_row(event) for event in reversed(self.events)]}

    def _tenant_row(self, name: str, counts: _Counts, before: list[int] | None,
                    elapsed: float) -> dict[str, Any]:
        buckets = counts.query.counts
        window = [now - then for now, then in zip(buckets, before)] if before else list(buckets)
        p95 = quantile(0.95, QUERY_BUCKETS, window)
        return {"tenant": name, "connections": counts.connected, "queries": sum(buckets),
                "queries_per_second": round(sum(window) / elapsed, 2) if elapsed > 0 else 0.0,
                "p95_ms": None if p95 is None else round(p95 * 1000, 3),
                "transactions": counts.transactions, "errors": counts.errors,
                "refusals": sum(counts.refusals.values())}

    def _event_row(self, event: dict[str, Any]) -> dict[str, Any]:
        if not event["_clean"]:  # sanitised once, here, off the query path
            event["shape"] = shape_of(event["shape"])
            event["_clean"] = True
        row = {key: value for key, value in event.items() if key != "_clean"}
        row["time"] = _iso(event["ts"])
        return row

    def _cache_summary(self) -> dict[str, Any] | None:
        analyzer = self.analyzer()
        if analyzer is None:
            return None
        total = analyzer.hits + analyzer.misses
        return {"hits": analyzer.hits, "misses": analyzer.misses, "entries": len(analyzer),
                "hit_ratio": round(analyzer.hits / total, 4) if total else None}

    def _audit_summary(self) -> dict[str, Any] | None:
        audit = self.audit()
        if audit is None:
            return None
        return {name: getattr(audit, name) for name in _AUDIT_FIELDS}

    def _safe(self, read: Callable[[], Any], default: Any = None) -> Any:
        try:
            return read()
        except Exception as exc:  # a broken watcher must not take the endpoint down
            self.log.warning("metrics watcher failed", error=repr(exc))
            return default


_AUDIT_FIELDS = ("queue_depth", "queue_capacity", "written", "dropped", "blocked",
                 "write_errors")


def quantile(q: float, bounds: tuple[float, ...], counts: list[int]) -> float | None:
    """Prometheus-style histogram_quantile over per-bucket counts; None without samples."""
    total = sum(counts)
    if total <= 0:
        return None
    rank, seen = q * total, 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index == len(bounds):  # the +Inf bucket: the highest finite bound
                return bounds[-1]
            lower = bounds[index - 1] if index else 0.0
            return lower + (bounds[index] - lower) * (rank - seen) / count
        seen += count
    return bounds[-1]


def _bounded(text: str | None) -> str | None:
    return text if text is None or len(text) <= MAX_EVENT_TEXT else text[:MAX_EVENT_TEXT] + "…"


def _iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _float_text(value: float) -> str:
    return floatToGoString(value)


class _Collector:
    """Builds every metric family at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        yield from self._tenant_families()
        refused = CounterMetricFamily("tenantgate_login_refusals",
                                      "Clients refused during startup, by reason",
                                      labels=["reason"])
        for reason, count in sorted(self.metrics.login_refusals.items()):
            refused.add_metric([reason], count)
        yield refused
        for section in (self._pool_families, self._cache_families, self._audit_families):
            yield from self.metrics._safe(lambda: list(section()), [])

    def _tenant_families(self) -> Iterable[Any]:
        counts = sorted(self.metrics.tenant_counts().items())
        simple = (
            (GaugeMetricFamily, "tenantgate_client_connections",
             "Client connections open now", "connected"),
            (CounterMetricFamily, "tenantgate_client_connections_accepted",
             "Client connections accepted after login", "accepted"),
            (CounterMetricFamily, "tenantgate_transactions", "Transactions completed",
             "transactions"),
            (CounterMetricFamily, "tenantgate_query_errors", "Queries that ended in an error",
             "errors"),
            (CounterMetricFamily, "tenantgate_client_received_bytes",
             "Bytes received from clients", "bytes_in"),
            (CounterMetricFamily, "tenantgate_client_sent_bytes", "Bytes sent to clients",
             "bytes_out"),
        )
        for family_type, name, doc, attr in simple:
            family = family_type(name, doc, labels=["tenant"])
            for tenant, c in counts:
                family.add_metric([tenant], getattr(c, attr))
            yield family
        refusals = CounterMetricFamily("tenantgate_refusals",
                                       "Statements refused by the proxy, by rule",
                                       labels=["tenant", "rule"])
        for tenant, c in counts:
            for rule, count in sorted(c.refusals.items()):
                refusals.add_metric([tenant, rule], count)
        yield refusals
        yield _histogram("tenantgate_query_duration_seconds",
                         "Query time from the client's message to ReadyForQuery",
                         [(tenant, c.query) for tenant, c in counts])
        yield _histogram("tenantgate_pool_wait_seconds",
                         "Time a client waited for a server connection",
                         [(tenant, c.pool_wait) for tenant, c in counts])

    def _pool_families(self) -> Iterable[Any]:
        labels = ["cluster", "database"]
        conns = GaugeMetricFamily("tenantgate_pool_server_connections",
                                  "Server connections by state", labels=[*labels, "state"])
        size = GaugeMetricFamily("tenantgate_pool_size",
                                 "Server connections open or opening", labels=labels)
        most = GaugeMetricFamily("tenantgate_pool_max_size",
                                 "Configured pool_size of the pool", labels=labels)
        waiting = GaugeMetricFamily("tenantgate_pool_clients_waiting",
                                    "Clients waiting for a server connection", labels=labels)
        for row in self.metrics.pools():
            key = [row["cluster"], row["database"]]
            conns.add_metric([*key, "active"], row["active"])
            conns.add_metric([*key, "idle"], row["idle"])
            size.add_metric(key, row["size"])
            most.add_metric(key, row["max"])
            waiting.add_metric(key, row["waiting"])
        return [conns, size, most, waiting]

    def _cache_families(self) -> Iterable[Any]:
        analyzer = self.metrics.analyzer()
        if analyzer is None:
            return []
        return [
            CounterMetricFamily("tenantgate_analysis_cache_hits",
                                "Statements decided from the analysis cache", value=analyzer.hits),
            CounterMetricFamily("tenantgate_analysis_cache_misses",
                                "Statements analysed in full", value=analyzer.misses),
            GaugeMetricFamily("tenantgate_analysis_cache_entries",
                              "Entries in the analysis cache", value=len(analyzer)),
        ]

    def _audit_families(self) -> Iterable[Any]:
        audit = self.metrics.audit()
        if audit is None:
            return []
        return [
            GaugeMetricFamily("tenantgate_audit_queue_depth",
                              "Audit entries waiting to be written", value=audit.queue_depth),
            GaugeMetricFamily("tenantgate_audit_queue_capacity",
                              "Size of the audit queue", value=audit.queue_capacity),
            CounterMetricFamily("tenantgate_audit_entries_written",
                                "Audit entries written to the file", value=audit.written),
            CounterMetricFamily("tenantgate_audit_entries_dropped",
                                "Audit entries lost because the queue was full or closed",
                                value=audit.dropped),
            CounterMetricFamily("tenantgate_audit_blocked",
                                "record_wait() calls that had to wait for queue space",
                                value=audit.blocked),
            CounterMetricFamily("tenantgate_audit_write_errors",
                                "Audit entries lost to file write errors",
                                value=audit.write_errors),
        ]


def _histogram(name: str, doc: str, series: list[tuple[str, _Histogram]]) -> Any:
    family = HistogramMetricFamily(name, doc, labels=["tenant"])
    for tenant, histogram in series:
        family.add_metric([tenant], histogram.cumulative(), histogram.sum)
    return family
