"""One pgbench run against one target, bounded by `timeout`, and what it measured.

TPS comes from pgbench's summary ("tps = … (without initial connection time)"); the latency
percentiles come from its per-transaction log (`-l`, one file per thread, latency in µs in the
third field), so they cover every transaction of the run. Failed transactions and aborted clients
are counted, never hidden: a client that hits an error stops, and pgbench exits 2.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.services import Target

CONNECT_GRACE = 90  # seconds on top of -T: logging in 500 clients, the final report
KILL_AFTER = 10


@dataclass
class Workload:
    """The pgbench options of a scenario."""

    clients: int
    select_only: bool = True  # -S; False: the default TPC-B-like script
    protocol: str = "simple"  # -M simple | extended | prepared
    threads: int = 2

    def args(self) -> list[str]:
        threads = max(1, min(self.threads, self.clients))
        return [*(["-S"] if self.select_only else []), "-M", self.protocol,
                "-c", str(self.clients), "-j", str(threads)]


@dataclass
class RunResult:
    """What one pgbench run measured (latencies in ms); `error` set when it did not finish."""

    target: str
    tps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    transactions: int = 0
    failed_tx: int = 0
    aborted_clients: int = 0
    cache_hit_ratio: float | None = None  # tenantgate's analysis cache during the run
    exit_code: int | None = None
    error: str | None = None
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.error is None and self.failed_tx == 0 and self.aborted_clients == 0

    def to_json(self) -> dict:
        return asdict(self)


def run_pgbench(pgbench: str, targets: Target | list[Target], workload: Workload,
                duration: int) -> RunResult:
    """Run pgbench for `duration` seconds; never hangs longer than duration + CONNECT_GRACE.

    With several targets (scenario f: one login per tenant) one pgbench per target runs at
    the same time, the clients split evenly between them; TPS and counts are summed and the
    latency percentiles taken over every transaction of all of them.
    """
    group = [targets] if isinstance(targets, Target) else list(targets)
    share = Workload(max(1, workload.clients // len(group)), workload.select_only,
                     workload.protocol, max(1, workload.threads // len(group)))
    logdir = tempfile.mkdtemp(prefix="tenantgate-pgbench-")
    try:
        argvs = [["timeout", "-k", str(KILL_AFTER), str(duration + CONNECT_GRACE), pgbench,
                  "-n", "-T", str(duration), *share.args(), "-l",
                  f"--log-prefix={os.path.join(logdir, f'tx{index}')}",
                  "-h", target.host, "-p", str(target.port), "-U", target.user, target.dbname]
                 for index, target in enumerate(group)]
        outputs = _bounded(argvs, [_env(target) for target in group],
                           duration + CONNECT_GRACE + KILL_AFTER + 30)
        results = [parse_summary(group[0].name, *output) for output in outputs]
        result = _combined(results)
        result.p50_ms, result.p99_ms = latency_percentiles(Path(logdir), (0.50, 0.99))
        return result
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def _env(target: Target) -> dict:
    env = dict(os.environ, PGPASSWORD=target.password, PGSSLMODE="disable",
               PGGSSENCMODE="disable", PGCONNECT_TIMEOUT="30")
    for var in ("PGSERVICE", "PGOPTIONS", "PGDATABASE", "PGUSER", "PGHOST", "PGPORT"):
        env.pop(var, None)
    return env


def _combined(results: list[RunResult]) -> RunResult:
    """One result for pgbench runs that ran side by side."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    merged = RunResult(first.target, exit_code=max(r.exit_code or 0 for r in results))
    merged.error = next((r.error for r in results if r.error), None)
    merged.tps = None if merged.error else sum(r.tps or 0.0 for r in results)
    merged.transactions = sum(r.transactions for r in results)
    merged.failed_tx = sum(r.failed_tx for r in results)
    merged.aborted_clients = sum(r.aborted_clients for r in results)
    merged.stderr_tail = [line for r in results for line in r.stderr_tail][-5:]
    return merged


def _bounded(argvs: list[list[str]], envs: list[dict],
             limit: float) -> list[tuple[int, str, str]]:
    """Run side by side, each in its own process group; on any exit path (Ctrl-C too)
    the groups still running are killed."""
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, start_new_session=True)
             for argv, env in zip(argvs, envs)]
    outputs = []
    try:
        for proc in procs:  # `timeout` in each argv bounds them all to about `limit`
            stdout, stderr = proc.communicate(timeout=limit)
            outputs.append((proc.returncode, stdout, stderr))
    except BaseException:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    return outputs


def parse_summary(target: str, code: int, stdout: str, stderr: str) -> RunResult:
    """Read pgbench's report and error lines into a RunResult."""
    result = RunResult(target, exit_code=code)
    errors = [line for line in stderr.splitlines() if line.strip()]
    result.stderr_tail = errors[-5:]
    if match := re.search(r"^tps = ([\d.]+)", stdout, re.MULTILINE):
        result.tps = float(match.group(1))
    if match := re.search(r"^number of transactions actually processed: (\d+)", stdout,
                          re.MULTILINE):
        result.transactions = int(match.group(1))
    if match := re.search(r"^number of failed transactions: (\d+)", stdout, re.MULTILINE):
        result.failed_tx = int(match.group(1))
    result.aborted_clients = sum(1 for line in errors if re.search(r"client \d+ .*aborted", line))
    if code in (124, 137):
        result.error = "timeout: pgbench did not finish in time and was killed"
    elif result.tps is None:
        first = next((line for line in errors if "error" in line.lower()), None)
        result.error = first or f"pgbench exited {code} without a report"
    return result


def latency_percentiles(logdir: Path, quantiles: tuple[float, ...]) -> tuple[float | None, ...]:
    """Nearest-rank percentiles (ms) of the successful transactions in pgbench's -l logs."""
    latencies: list[int] = []
    for path in logdir.iterdir():
        with open(path) as fh:
            for line in fh:
                fields = line.split(" ", 3)
                if len(fields) > 2 and fields[2].isdigit():  # "failed"/"skipped" otherwise
                    latencies.append(int(fields[2]))
    if not latencies:
        return tuple(None for _ in quantiles)
    latencies.sort()
    last = len(latencies) - 1
    return tuple(latencies[min(last, max(0, round(q * len(latencies)) - 1))] / 1000.0
                 for q in quantiles)
