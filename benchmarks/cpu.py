"""Where the time goes: CPU per transaction of each pooler under pgbench, side by side.

    .venv/bin/python benchmarks/cpu.py [--scenarios a,f] [--duration 8] [--repeat 3]

Starts a throwaway PostgreSQL (with the row database for f), PgBouncer (transaction mode),
tenantgate and, for (a), the minimal relay of benchmarks/relay.py (benchmarks.services), and
runs `pgbench -n -S -M simple` with 16 clients through each in turn (PgBouncer, tenantgate,
relay, PgBouncer, …), as scenario (a) and (f) of benchmarks/run.py do. Around every run it
reads the pooler's user and system CPU from /proc/PID/stat and the whole machine's busy time
from /proc/stat, and prints per transaction, medians: the pooler's user µs (its own code:
the interpreter for tenantgate and the relay), its system µs (loopback TCP: the same two
sends and two receives for every pooler) and the machine's busy µs (PostgreSQL and pgbench
too: on 2 cores that total is what bounds TPS). Figures move 10-20 % between runs on a shared
machine; compare within one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/cpu.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.pgbench import Workload, run_pgbench  # noqa: E402
from benchmarks.services import (Services, Target, raise_nofile_limit,  # noqa: E402
                                 row_targets)
from benchmarks.workers import (log, machine_busy_seconds, median,  # noqa: E402
                                user_system_seconds)

WARMUP_SECONDS = 2
CLIENTS = 16


def measure(pgbench: str, pooler: Target, targets: Target | list[Target],
            duration: int) -> dict:
    """One pgbench run; TPS and CPU µs per transaction (pooler user, system; machine)."""
    user0, system0 = user_system_seconds(pooler.pid)
    busy0 = machine_busy_seconds()
    result = run_pgbench(pgbench, targets, Workload(CLIENTS), duration)
    user1, system1 = user_system_seconds(pooler.pid)
    done = (result.tps or 0) * duration
    per = 1e6 / done if done else 0.0
    return {"tps": result.tps, "user": (user1 - user0) * per, "system": (system1 - system0) * per,
            "machine": (machine_busy_seconds() - busy0) * per, "error": result.error}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="a,f", help="a (pgbench -S), f (row, both)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per pgbench run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per pooler")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    args = parser.parse_args(argv)
    scenarios = [key.strip() for key in args.scenarios.split(",") if key.strip()]
    raise_nofile_limit()
    services = Services(pool_size=20, max_connections=200)
    rows: list[tuple[str, str, dict]] = []
    try:
        log(f"starting PostgreSQL, loading pgbench -i -s {args.scale} …")
        services.start_postgres(args.scale)
        if "f" in scenarios:
            services.start_row_database(args.scale)
        poolers = {"pgbouncer": services.start_pgbouncer(1000),
                   "tenantgate": services.start_tenantgate(1000)}
        if "a" in scenarios:
            poolers["relay"] = services.start_relay()
        pgbench = services.pg.bin("pgbench")
        for scenario in scenarios:
            runs: dict[str, list[dict]] = {name: [] for name in poolers}
            if scenario == "f":
                runs.pop("relay", None)
            for name in runs:
                run_pgbench(pgbench, _targets(scenario, poolers[name]), Workload(CLIENTS),
                            WARMUP_SECONDS)
            for rep in range(1, args.repeat + 1):
                for name in runs:
                    got = measure(pgbench, poolers[name], _targets(scenario, poolers[name]),
                                  args.duration)
                    runs[name].append(got)
                    log(f"({scenario}) {rep}/{args.repeat} {name:10} {got['tps'] or 0:8,.0f} tps"
                        f"  user {got['user']:5.1f} µs  system {got['system']:5.1f} µs"
                        f"  machine {got['machine']:5.1f} µs" + (f"  {got['error']}"
                                                               if got["error"] else ""))
            rows += [(scenario, name, {key: median([r[key] for r in found])
                                       for key in ("tps", "user", "system", "machine")})
                     for name, found in runs.items()]
    finally:
        services.close()
    print(f"pgbench -n -S -M simple -c {CLIENTS}, {args.duration} s × {args.repeat}, medians; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| scenario | pooler | TPS | pooler user µs/tx | pooler system µs/tx | machine µs/tx |")
    print("|---|---|---:|---:|---:|---:|")
    for scenario, name, values in rows:
        print(f"| {scenario} | {name} | {values['tps'] or 0:,.0f} | {values['user'] or 0:.1f} | "
              f"{values['system'] or 0:.1f} | {values['machine'] or 0:.1f} |")
    return 0


def _targets(scenario: str, pooler: Target) -> Target | list[Target]:
    """(f): one pgbench per row tenant, as benchmarks/run.py runs it."""
    if scenario != "f":
        return pooler
    return row_targets(pooler, tenantgate=pooler.name == "tenantgate")


if __name__ == "__main__":
    sys.exit(main())
