"""The benchmark scenarios (a)–(g): what each one runs and against which targets.

A scenario is a pgbench workload run against every target, an idle-clients measurement of the
poolers, or a placeholder that is reported as skipped, with its reason, in the table.
Scenarios (a) and (d) also run against "relay", the minimal Python relay of relay.py: how
near PgBouncer a Python + uvloop proxy that frames every message can get on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.pgbench import Workload

TARGETS = ("direct", "pgbouncer", "tenantgate")
POOLERS = ("pgbouncer", "tenantgate")
WITH_RELAY = (*TARGETS, "relay")


@dataclass(frozen=True)
class Scenario:
    key: str
    short: str  # the label in the table
    title: str
    kind: str  # pgbench | idle | skipped
    workload: Workload | None = None
    vacuum: bool = False  # vacuum/truncate like pgbench does before each run (write scenarios)
    skip_reason: str = ""
    targets: tuple[str, ...] = TARGETS
    row_enforce: str | None = None  # row scenarios: tenantgate's row.enforce, 4 tenants
    # PgBouncer's pool_mode for this scenario: "session" where transaction mode cannot run
    # it (prepared statements before PgBouncer 1.21); tenantgate stays in transaction mode.
    pgbouncer_mode: str = "transaction"


def all_scenarios(pool_size: int, idle_clients: int) -> dict[str, Scenario]:
    """Every scenario by its letter, in the order they run."""
    return {s.key: s for s in [
        Scenario("a", "-S simple, 16 cl", "pgbench -S, simple protocol, 16 clients", "pgbench", Workload(16),
                 targets=WITH_RELAY),
        Scenario("b", "-S prepared, 16 cl", "pgbench -S -M prepared, 16 clients (PgBouncer in "
                 "session mode)", "pgbench", Workload(16, protocol="prepared"),
                 pgbouncer_mode="session"),
        Scenario("c", "TPC-B, 16 cl", "pgbench TPC-B-like (default script), 16 clients", "pgbench",
                 Workload(16, select_only=False), vacuum=True),
        Scenario("d", "-S, 1 client", "pgbench -S, 1 client (added latency per query)", "pgbench",
                 Workload(1, threads=1), targets=WITH_RELAY),
        Scenario("e", f"-S, 500 cl/pool {pool_size}", f"pgbench -S, 500 clients over pool_size {pool_size}", "pgbench",
                 Workload(500)),
        Scenario("f", "row both, -S 16 cl", "row strategy, enforce both: pgbench -S, simple "
                 "protocol, 4 tenants × 4 clients", "pgbench", Workload(16), row_enforce="both"),
        Scenario("fr", "row rewrite, -S 16 cl", "row strategy, enforce rewrite: pgbench -S, "
                 "simple protocol, 4 tenants × 4 clients", "pgbench", Workload(16),
                 row_enforce="rewrite"),
        Scenario("g", f"{idle_clients:,} idle clients", f"{idle_clients:,} authenticated idle clients: proxy RSS", "idle",
                 targets=POOLERS),
    ]}


def select(scenarios: dict[str, Scenario], keys: str | None) -> list[Scenario]:
    """The scenarios named in `--scenarios a,b,…` (all when None), in run order."""
    if not keys:
        return list(scenarios.values())
    wanted = [k.strip().lower() for k in keys.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in scenarios]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; "
                         f"known: {', '.join(scenarios)}")
    return [s for k, s in scenarios.items() if k in wanted]
