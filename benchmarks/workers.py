"""tenantgate with `workers: 1` against `workers: 2`: pgbench -S through each, side by side.

    .venv/bin/python benchmarks/workers.py [--duration 10] [--repeat 3] [--clients 16]

Starts a throwaway PostgreSQL with the sample tenants and `pgbench -i -s 10` in database acme
(benchmarks.services), then two proxies from the sample config (transaction mode, pool_size
20), one with each worker count, warms each up for 2 s, and runs `pgbench -n -S -M simple
-c CLIENTS -j 2 -T DURATION` as `app.acme` against them in turn (1, 2, 1, 2, …), so a slow
spell of a shared machine hits both. Prints every run and the median TPS and latency of
each, with the CPU the proxy's processes used (100% = one core) and how busy the whole
machine was (200% = both cores of a 2-core machine): a proxy cannot gain from a second
process when the machine has no idle core left. Everything listens on 127.0.0.1 and is
stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/workers.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.pgbench import RunResult, Workload, run_pgbench  # noqa: E402
from benchmarks.services import REPO, Services, ServiceError, Target  # noqa: E402
from proxy.localpg import free_port  # noqa: E402

WARMUP_SECONDS = 2
WORKER_COUNTS = (1, 2)


def log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def start_tenantgate(services: Services, workers: int) -> Target:
    """`python -m proxy run` with the sample config and `workers: N`; waits for its ready line."""
    home = services.tmp / f"tenantgate-w{workers}"
    home.mkdir()
    port = free_port()
    config = home / "tenantgate.yaml"
    config.write_text(services.info.config_yaml(services.pg, port, pool_mode="transaction",
                                                pool_size=services.pool_size,
                                                extra=f"workers: {workers}"))
    log_path = home / "tenantgate.out"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "run", "--config", str(config)],
                                cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=_quiet_env())
    services.procs.append(proc)  # services.close() stops it
    deadline = time.monotonic() + 60
    while "tenantgate: listening on" not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise ServiceError(f"tenantgate (workers: {workers}) did not start:\n"
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    return Target(f"workers={workers}", "127.0.0.1", port, "app.acme",
                  services.info.password("app"), "app", proc.pid)


def _quiet_env() -> dict:
    return dict(os.environ, TENANTGATE_LOG_LEVEL="warning")


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (a supervisor's workers)."""
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return [pid]
    return [pid, *map(int, children)]


def user_system_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of one process, from /proc/PID/stat ((0, 0) once it is gone)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime (fields 14 and 15)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes."""
    return sum(sum(user_system_seconds(pid)) for pid in pids)


def machine_busy_seconds() -> float:
    """CPU time all cores spent not idle since boot, from /proc/stat."""
    values = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def measured_run(pgbench: str, target: Target, workload: Workload,
                 duration: int) -> tuple[RunResult, float, float]:
    """One pgbench run; its result, the proxy's CPU % and the machine's busy CPU %."""
    pids = process_tree(target.pid)
    proxy_before, machine_before, started = cpu_seconds(pids), machine_busy_seconds(), \
        time.monotonic()
    result = run_pgbench(pgbench, target, workload, duration)
    elapsed = time.monotonic() - started
    proxy = 100 * (cpu_seconds(pids) - proxy_before) / elapsed
    machine = 100 * (machine_busy_seconds() - machine_before) / elapsed
    return result, proxy, machine


def brief(result: RunResult) -> str:
    if result.error:
        return f"ERROR {result.error}"
    return (f"{result.tps or 0:,.0f} tps, p50 {result.p50_ms} ms, p99 {result.p99_ms} ms, "
            f"{result.aborted_clients} aborted, {result.failed_tx} failed")


def median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per worker count")
    parser.add_argument("--clients", type=int, default=16, help="pgbench -c")
    parser.add_argument("--pool-size", type=int, default=20, help="the proxy's pool_size")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    args = parser.parse_args(argv)
    services = Services(args.pool_size, max_connections=200)
    results: dict[str, list[RunResult]] = {}
    proxy_cpu: dict[str, list[float]] = {}
    try:
        log(f"starting PostgreSQL, loading pgbench -i -s {args.scale} …")
        services.start_postgres(args.scale)
        targets = [start_tenantgate(services, workers) for workers in WORKER_COUNTS]
        pgbench = services.pg.bin("pgbench")
        workload = Workload(args.clients, select_only=True, protocol="simple", threads=2)
        for target in targets:
            warm_up = run_pgbench(pgbench, target, workload, WARMUP_SECONDS)
            log(f"warm-up {target.name}: {brief(warm_up)}")
        for rep in range(1, args.repeat + 1):
            for target in targets:
                result, proxy, machine = measured_run(pgbench, target, workload, args.duration)
                results.setdefault(target.name, []).append(result)
                proxy_cpu.setdefault(target.name, []).append(proxy)
                log(f"{rep}/{args.repeat} {target.name}: {brief(result)}; proxy CPU "
                    f"{proxy:.0f}%, machine busy {machine:.0f}%")
    finally:
        services.close()
    print(f"pgbench -n -S -M simple -c {args.clients} -j 2 -T {args.duration}, "
          f"pool_size {args.pool_size}, median of {args.repeat}")
    for name, runs in results.items():
        tps = [run.tps for run in runs]
        print(f"{name:10} median {median(tps) or 0:8,.0f} tps  "
              f"p50 {median([r.p50_ms for r in runs])} ms  "
              f"p99 {median([r.p99_ms for r in runs])} ms  "
              f"proxy CPU {median(proxy_cpu[name]) or 0:.0f}%  runs: "
              + ", ".join(f"{value or 0:,.0f}" for value in tps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
