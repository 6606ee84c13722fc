"""Benchmark direct PostgreSQL, PgBouncer, tenantgate (and a minimal relay) in one run here.

    .venv/bin/python benchmarks/run.py [--quick] [--scenarios a,b,...] [--duration S] [--repeat N]

Starts a throwaway PostgreSQL (with the sample tenants and `pgbench -i -s 10` in database acme),
PgBouncer (transaction mode) and tenantgate (transaction mode), both with the same pool size,
and, when a selected scenario uses it ((a) and (d)), the minimal relay of benchmarks/relay.py;
runs each pgbench scenario against its targets in turn (direct, pgbouncer, tenantgate, relay,
direct, …) for every repetition; prints the medians and ratios; writes
benchmarks/results/latest.json and latest.png, and (unless --quick or --no-readme) the latest
table into benchmarks/README.md. Installs nothing: benchmarks/setup.sh does that. Progress goes
to stderr, the tables to stdout. Ctrl-C stops everything it started and reports what finished.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report  # noqa: E402
from benchmarks.chart import write_chart  # noqa: E402
from benchmarks.idle import IdleResult, measure_idle  # noqa: E402
from benchmarks.machine import describe, finish, machine_info  # noqa: E402
from benchmarks.pgbench import RunResult, Workload, run_pgbench  # noqa: E402
from benchmarks.scenarios import Scenario, all_scenarios, select  # noqa: E402
from benchmarks.services import (ROW_DB, SESSION_DB, Services, ServiceError,  # noqa: E402
                                 Target, analysis_cache_counters, find_pgbouncer,
                                 raise_nofile_limit, row_targets)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WARMUP_SECONDS = 2
FD_HEADROOM = 200  # descriptors this process needs besides the idle clients


def log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition × 5 s (a smoke run)")
    parser.add_argument("--scenarios", help="comma-separated letters, e.g. a,b,g (default: all)")
    parser.add_argument("--duration", type=int, help="seconds per pgbench run (default 10; 5 quick)")
    parser.add_argument("--repeat", type=int, help="repetitions per target (default 5; 1 quick)")
    parser.add_argument("--pool-size", type=int, default=20, help="server pool of both poolers")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor")
    parser.add_argument("--idle-clients", type=int, default=10_000, help="clients in scenario g")
    parser.add_argument("--max-connections", type=int, default=620,
                        help="PostgreSQL max_connections (direct scenario e needs 500+)")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md unchanged")
    args = parser.parse_args(argv)
    args.duration = args.duration or (5 if args.quick else 10)
    # 5, not 3: on a shared 2-core machine one slow round of three could set the median.
    args.repeat = args.repeat or (1 if args.quick else 5)
    return args


class Bench:
    """One benchmark run: the services, the scenarios, the results collected so far."""

    def __init__(self, args: argparse.Namespace, scenarios: list[Scenario]) -> None:
        self.args = args
        self.scenarios = scenarios
        self.services = Services(args.pool_size, args.max_connections)
        self.targets: dict[str, Target] = {}
        self.row_gates: dict[str, Target] = {}  # row.enforce → a tenantgate (not "both")
        self.entries: list[dict] = []
        self.versions: dict[str, str] = {}
        self.logs: dict[str, list[str]] = {}

    def start(self) -> None:
        log("starting PostgreSQL, loading pgbench -i -s "
            f"{self.args.scale} into database acme …")
        self.targets["direct"] = self.services.start_postgres(self.args.scale)
        modes = {s.row_enforce for s in self.scenarios if s.row_enforce}
        if modes:
            log(f"loading pgbench -i -s {self.args.scale} with a tenant column into {ROW_DB} …")
            self.services.start_row_database(self.args.scale)
        max_clients = self.args.idle_clients + 1000
        self.targets["pgbouncer"] = self.services.start_pgbouncer(max_clients)
        self.targets["tenantgate"] = self.services.start_tenantgate(max_clients)
        for mode in modes - {"both"}:
            self.row_gates[mode] = self.services.start_tenantgate(max_clients, enforce=mode)
        if any("relay" in s.targets for s in self.scenarios if s.kind == "pgbench"):
            self.targets["relay"] = self.services.start_relay()
        self.versions = self.services.versions()
        for name, target in self.targets.items():
            log(f"{name}: {target.host}:{target.port} as {target.user} to {target.dbname}")

    def warm_up(self) -> None:
        for target in self.targets.values():
            result = self._pgbench(target, Workload(16), WARMUP_SECONDS)
            log(f"warm-up {target.name}: {_brief(result)}")

    def run_all(self) -> None:
        for scenario in self.scenarios:
            if scenario.kind == "skipped":
                log(f"({scenario.key}) {scenario.skip_reason}")
                self.entries.append(report.scenario_entry(scenario))
            elif scenario.kind == "pgbench":
                self._run_pgbench_scenario(scenario)
            else:
                self._run_idle_scenario(scenario)

    def _run_pgbench_scenario(self, scenario: Scenario) -> None:
        by_target: dict[str, list[RunResult]] = {t: [] for t in scenario.targets}
        direct_workload, note = self._direct_workload(scenario.workload)
        entry = report.scenario_entry(scenario, note=note)
        self.entries.append(entry)  # filled in as runs finish, so Ctrl-C keeps what finished
        for rep in range(1, self.args.repeat + 1):
            for name in scenario.targets:
                if scenario.vacuum:
                    self.services.vacuum()
                workload = direct_workload if name == "direct" else scenario.workload
                result = self._pgbench(self._target(scenario, name), workload,
                                       self.args.duration)
                by_target[name].append(result)
                log(f"({scenario.key}) {rep}/{self.args.repeat} {name:10} {_brief(result)}")
                entry.update(report.scenario_entry(scenario, by_target, note=note))

    def _target(self, scenario: Scenario, name: str) -> Target | list[Target]:
        """Where a scenario's pgbench connects (row scenarios: services.row_targets, through
        the tenantgate of the scenario's `row.enforce`)."""
        if scenario.row_enforce is None:
            if name == "pgbouncer" and scenario.pgbouncer_mode == "session":
                return replace(self.targets[name], dbname=SESSION_DB)
            return self.targets[name]
        if name != "tenantgate":
            return row_targets(self.targets[name], tenantgate=False)
        gate = self.row_gates.get(scenario.row_enforce, self.targets["tenantgate"])
        return row_targets(gate, tenantgate=True)

    def _direct_workload(self, workload: Workload) -> tuple[Workload, str]:
        """Direct PostgreSQL gets the same clients when max_connections leaves room for them."""
        room = self.args.max_connections - 2 * self.args.pool_size - 10
        if workload.clients <= room:
            return workload, ""
        fewer = Workload(room, workload.select_only, workload.protocol, workload.threads)
        return fewer, f"direct ran {room} clients, not {workload.clients} (max_connections)"

    def _pgbench(self, targets: Target | list[Target], workload: Workload,
                 duration: int) -> RunResult:
        target = targets if isinstance(targets, Target) else targets[0]
        if not self.services.alive(target):
            return RunResult(target.name, error=f"{target.name} process has exited")
        before = analysis_cache_counters(target)
        result = run_pgbench(self.services.pg.bin("pgbench"), targets, workload, duration)
        after = analysis_cache_counters(target)
        if before is not None and after is not None:
            lookups = (after[0] - before[0]) + (after[1] - before[1])
            result.cache_hit_ratio = round((after[0] - before[0]) / lookups, 5) if lookups else None
        if not self.services.alive(target):
            result.error = f"{target.name} process exited during the run"
            log(f"{target.name} died; log tail:\n{self.services.log_tail(target)}")
        return result

    def _run_idle_scenario(self, scenario: Scenario) -> None:
        clients = self.args.idle_clients
        results: dict[str, IdleResult] = {}
        for name in scenario.targets:
            target = self.targets[name]
            if not self.services.alive(target):
                results[name] = IdleResult(name, clients, first_error="process has exited")
                continue
            log(f"({scenario.key}) {name}: opening {clients:,} authenticated idle clients …")
            results[name] = measure_idle(target, clients)
            r = results[name]
            per = r.bytes_per_client
            log(f"({scenario.key}) {name}: {r.clients_ok:,} ok, {r.errors} errors, "
                f"{(per or 0):,.0f} bytes/client, logins took {r.login_seconds} s")
        self.entries.append(report.scenario_entry(scenario, idle=results))


def _brief(result: RunResult) -> str:
    if result.error:
        return f"ERROR {result.error}"
    text = f"{result.tps or 0:,.0f} tps, p50 {result.p50_ms} ms, p99 {result.p99_ms} ms"
    if result.cache_hit_ratio is not None:
        text += f", analysis cache hits {result.cache_hit_ratio:.2%}"
    if result.aborted_clients or result.failed_tx:
        text += f", {result.aborted_clients} clients aborted, {result.failed_tx} failed tx"
    return text


def check_prerequisites(args: argparse.Namespace) -> None:
    if find_pgbouncer() is None:
        sys.exit("bench: pgbouncer is not installed: run `bash benchmarks/setup.sh` first")
    limit = raise_nofile_limit()
    if limit < args.idle_clients + FD_HEADROOM:
        fitting = max(0, limit - FD_HEADROOM)
        log(f"open-file limit is {limit}: scenario g uses {fitting:,} idle clients, "
            f"not {args.idle_clients:,}")
        args.idle_clients = fitting


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # same path as Ctrl-C: stop everything, report what finished


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        scenarios = select(all_scenarios(args.pool_size, args.idle_clients), args.scenarios)
    except ValueError as exc:
        sys.exit(f"bench: {exc}")
    check_prerequisites(args)
    scenarios = select(all_scenarios(args.pool_size, args.idle_clients), args.scenarios)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    machine = machine_info()
    bench = Bench(args, scenarios)
    interrupted = False
    try:
        bench.start()
        bench.warm_up()
        bench.run_all()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping everything, reporting what finished")
    except ServiceError as exc:
        log(f"could not start the targets: {exc}")
        return 1
    finally:
        bench.logs = bench.services.log_excerpts()
        bench.services.close()
    return publish(args, bench, machine, interrupted, argv)


def publish(args, bench: Bench, machine: dict, interrupted: bool, argv) -> int:
    """Print the tables, write latest.json / latest.png and the README block."""
    finish(machine)
    entries = bench.entries
    labels = {s.key: s.short for s in bench.scenarios}
    command = "python benchmarks/run.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    settings = {"duration_s": args.duration, "repeat": args.repeat, "pool_size": args.pool_size,
                "scale": args.scale, "idle_clients": args.idle_clients, "quick": args.quick,
                "pgbench_threads": 2, "pool_mode": "transaction"}
    about = describe(machine, bench.versions)
    header = (f"{command.strip()}: {args.repeat} × {args.duration} s per target and scenario, "
              f"medians; pool_size {args.pool_size}, transaction mode, scale {args.scale}"
              + (" (INTERRUPTED: partial)" if interrupted else ""))
    tables = "\n\n".join(t for t in (report.throughput_table(entries, labels),
                                     report.idle_table(entries)) if t)
    summary = report.summary_line(entries)
    print(f"\n{header}\n{about}\n\n{tables}\n" + (f"\n{summary}\n" if summary else ""),
          flush=True)
    payload = {"command": command.strip(), "settings": settings, "machine": machine,
               "versions": bench.versions, "interrupted": interrupted, "scenarios": entries,
               "target_log_excerpts": bench.logs, "summary": summary or None}
    report.write_json(RESULTS / "latest.json", payload)
    problem = write_chart(RESULTS / "latest.png", entries, about)
    log(problem or f"wrote {RESULTS / 'latest.json'} and {RESULTS / 'latest.png'}")
    if not (args.quick or args.no_readme or interrupted):
        block = (f"Measured {about}.\n\n`{header}`\n\n{tables}\n\n"
                 + (f"{summary}\n\n" if summary else "")
                 + "![latest results](results/latest.png)\n")
        if report.update_readme(HERE / "README.md", block):
            log("updated the latest results in benchmarks/README.md")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
