"""Instructions and data cache misses per transaction of tenantgate, counted by cachegrind.

    .venv/bin/python benchmarks/instructions.py [--clients 500] [--transactions 20]

TPS and CPU time move 10-20% between runs on a shared 2-core machine; what the proxy's own
code does per transaction moves far less. This runs tenantgate under valgrind's cachegrind
with a simulated 32 KiB first-level data cache and a 1 MiB last level (our guess at the share
of a cache that a machine busy with PostgreSQL and pgbench leaves one process), and counts per
transaction of `pgbench -n -S -M simple -c CLIENTS -j 2` what the proxy executes in user
space (the interpreter, uvloop, libc; not the kernel): instructions, first-level data cache
misses and last-level data cache misses. Start-up and logins are taken out: the proxy runs
twice, for WARM and for WARM + TRANSACTIONS transactions per client, and the difference is
divided by CLIENTS × TRANSACTIONS. Under valgrind the proxy is about 20 times slower
(1,200–1,300 TPS here, against some 25,000) and so the bottleneck: with 500 clients over
`pool_size: 20` (scenario e's shape) every request waits for a server connection and the
sessions take turns, going cold in the cache in between. Needs Debian's `valgrind`;
everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/instructions.py`: importable `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.services import Services, raise_nofile_limit  # noqa: E402
from benchmarks.workers import log  # noqa: E402

WARM = 4  # transactions per client in the first run (its logins and start-up are subtracted)
CACHES = ("--I1=32768,8,64", "--D1=32768,8,64", "--LL=1048576,16,64")
PGBENCH_TIMEOUT = 1800  # seconds: bounds a run that stalls


def counted_run(services: Services, clients: int, transactions: int, out: Path) -> dict:
    """Start tenantgate under cachegrind, run pgbench, stop it; cachegrind's totals."""
    wrapper = ("valgrind", "--tool=cachegrind", "--cache-sim=yes", *CACHES,
               f"--cachegrind-out-file={out}")
    target = services.start_tenantgate(clients + 100, wrapper=wrapper)
    env = dict(os.environ, PGPASSWORD=target.password, PGSSLMODE="disable")
    done = subprocess.run(
        [services.pg.bin("pgbench"), "-n", "-S", "-M", "simple", "-c", str(clients),
         "-j", "2", "-t", str(transactions), "-h", target.host, "-p", str(target.port),
         "-U", target.user, target.dbname],
        env=env, capture_output=True, text=True, timeout=PGBENCH_TIMEOUT)
    if done.returncode != 0 or "number of failed transactions: 0 (" not in done.stdout:
        raise SystemExit(f"pgbench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    proc = next(p for p in services.procs if p.pid == target.pid)
    proc.send_signal(signal.SIGINT)  # a clean exit: cachegrind writes its counts then
    proc.wait(timeout=300)
    return cachegrind_totals(out)


def cachegrind_totals(path: Path) -> dict[str, int]:
    """The `summary:` line of a cachegrind output file, by event name."""
    events: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:"):
            return dict(zip(events, map(int, line.split()[1:])))
    raise SystemExit(f"{path}: no summary line")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--transactions", type=int, default=20, help="per client, counted")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    parser.add_argument("--keep", type=Path, help="copy cachegrind's output files here "
                        "(for cg_annotate: where the instructions go, by C function)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    raise_nofile_limit()
    services = Services(pool_size=20, max_connections=200)
    try:
        log(f"starting PostgreSQL, loading pgbench -i -s {args.scale} …")
        services.start_postgres(args.scale)
        totals = []
        for per_client in (WARM, WARM + args.transactions):
            log(f"tenantgate under cachegrind, {args.clients} clients × {per_client} …")
            started = time.monotonic()
            totals.append(counted_run(services, args.clients, per_client,
                                      services.tmp / f"cachegrind.{per_client}.out"))
            log(f"… {time.monotonic() - started:.0f} s")
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(services.tmp / f"cachegrind.{per_client}.out", args.keep)
    finally:
        services.close()
    counted = args.clients * args.transactions
    per = {name: (totals[1][name] - totals[0][name]) / counted for name in totals[0]}
    print(f"tenantgate under cachegrind, pgbench -n -S -M simple -c {args.clients} -j 2, "
          f"{counted:,} transactions counted; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| per transaction | instructions | L1 data misses | last-level data misses |")
    print("|---|---:|---:|---:|")
    print(f"| tenantgate | {per['Ir']:,.0f} | {per['D1mr'] + per['D1mw']:,.0f} | "
          f"{per['DLmr'] + per['DLmw']:,.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
