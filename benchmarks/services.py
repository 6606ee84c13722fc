"""The targets of a benchmark run, started and stopped: PostgreSQL, PgBouncer, tenantgate and
(for the scenarios that use it) the minimal relay of benchmarks/relay.py.

`Services` owns every process and temp dir it starts; `close()` (also on Ctrl-C, through the
caller's `finally`) stops them and removes the dirs. Everything listens on 127.0.0.1 on ports
chosen at run time. PostgreSQL and PgBouncer refuse to run as root, so when we are root they
run as the `postgres` OS user.
"""

from __future__ import annotations

import os
import pwd
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from proxy.localpg import LocalPostgres, free_port
from proxy.sample import SampleInfo, install_sample

REPO = Path(__file__).resolve().parent.parent
SERVER_USER = "postgres"
PGBENCH_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
BENCH_DB = "acme"  # a database-strategy sample tenant: the pgbench tables live there
SESSION_DB = f"{BENCH_DB}_session"  # PgBouncer's alias of BENCH_DB in session mode
ROW_DB = "pgrow"  # scenario f: pgbench tables whose accounts carry a tenant column
ROW_TENANTS = ("t1", "t2", "t3", "t4")  # row tenants of ROW_DB; accounts spread evenly
NOFILE_WANTED = 65536  # 10,000 idle clients + the rest, in this process and in each proxy


class ServiceError(RuntimeError):
    """A target could not be started."""


@dataclass(frozen=True)
class Target:
    """How pgbench (or any libpq client) reaches one target."""

    name: str  # direct | pgbouncer | tenantgate | relay
    host: str
    port: int
    user: str
    password: str
    dbname: str
    pid: int | None = None  # its own process (poolers, relay): checked alive; idle RSS
    metrics_port: int | None = None  # tenantgate's /metrics (analysis cache counters)


def row_targets(target: Target, tenantgate: bool) -> list[Target]:
    """Where a row scenario's pgbench processes connect, one per row tenant: through
    tenantgate as that tenant; elsewhere as many on (a)'s tables, without a tenant column
    or RLS (what the row strategy costs is the difference)."""
    if tenantgate:
        return [replace(target, user=f"app.{tenant}") for tenant in ROW_TENANTS]
    return [target for _ in ROW_TENANTS]


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE as far as allowed (children inherit it); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0:
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            nr_open = NOFILE_WANTED
        hard = max(hard, min(NOFILE_WANTED, nr_open))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard


def find_pgbouncer() -> str | None:
    """The pgbouncer binary (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None


def _wait_port(host: str, port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise ServiceError(f"not listening on {host}:{port} after {timeout:.0f} s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Services:
    """PostgreSQL with the sample and pgbench tables, PgBouncer and tenantgate in front of it."""

    def __init__(self, pool_size: int, max_connections: int) -> None:
        self.pool_size = pool_size
        self.max_connections = max_connections
        self.as_root = os.geteuid() == 0
        self.pg = LocalPostgres()
        self.info = SampleInfo()
        self.tmp = Path(tempfile.mkdtemp(prefix="tenantgate-bench-"))
        self.tmp.chmod(0o711)  # the server user may enter its own subdir, not list ours
        self.procs: list[subprocess.Popen] = []
        self.row_db = False  # start_row_database ran
        self.tenantgate_logs: dict[int, Path] = {}  # pid → output of each tenantgate started
        self.relay_log: Path | None = None
        self.direct: Target | None = None
        self.pgbouncer: Target | None = None
        self.tenantgate: Target | None = None
        self.relay: Target | None = None

    # -- PostgreSQL --------------------------------------------------------------------------

    def start_postgres(self, scale: int) -> Target:
        """Start the cluster, allow `max_connections`, install the sample, `pgbench -i -s`."""
        self.pg.start()
        self.pg.run_sql(f"ALTER SYSTEM SET max_connections = {self.max_connections};")
        self._pg_ctl("restart")
        install_sample(self.pg, self.info)
        self._pgbench_init(scale)
        self.direct = Target("direct", self.pg.host, self.pg.port, self.info.backend_user,
                             self.info.backend_password, BENCH_DB)
        return self.direct

    def _pg_ctl(self, action: str) -> None:
        pg = self.pg
        argv = [pg.bin("pg_ctl"), "-D", pg.datadir, "-l", pg.logfile, "-w", "-t", "120", action]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=pg.tempdir,
                              **self._as_server_user())
        if proc.returncode != 0:
            raise ServiceError(f"pg_ctl {action} failed: {proc.stderr.strip()}\n{pg.log_tail()}")

    def _pgbench_init(self, scale: int, dbname: str = BENCH_DB, grant: bool = True) -> None:
        env = dict(os.environ, PGPASSWORD=self.pg.superuser_password, PGSSLMODE="disable")
        argv = [self.pg.bin("pgbench"), "-i", "-q", "-s", str(scale), "-h", self.pg.host,
                "-p", str(self.pg.port), "-U", self.pg.superuser, dbname]
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            raise ServiceError(f"pgbench -i failed: {proc.stderr.strip()}")
        if grant:
            self.pg.run_sql(f"GRANT ALL ON {', '.join(PGBENCH_TABLES)} "
                        f"TO {self.info.backend_user};", dbname=BENCH_DB)

    def start_row_database(self, scale: int) -> None:
        """Scenario f: `pgbench -i` into ROW_DB, a `tenant_id` column on pgbench_accounts
        spread over ROW_TENANTS, pgbench_branches a shared (read-only) table, and the RLS
        policies and grants `tenantgate rls-sql --connect` prints (applied as the superuser).
        The other pgbench tables stay out of the row tenants' reach."""
        self.pg.run_sql(f"CREATE DATABASE {ROW_DB}")
        self._pgbench_init(scale, ROW_DB, grant=False)
        count = len(ROW_TENANTS)
        self.pg.run_sql(
            "ALTER TABLE pgbench_accounts ADD COLUMN tenant_id text;\n"
            f"UPDATE pgbench_accounts SET tenant_id = 't' || (aid % {count} + 1);\n"
            "ALTER TABLE pgbench_accounts ALTER COLUMN tenant_id SET NOT NULL;\n"
            "VACUUM ANALYZE pgbench_accounts;", dbname=ROW_DB, timeout=900)
        self.pg.run_sql(f"GRANT SELECT ON pgbench_branches TO {self.info.backend_user};",
                        dbname=ROW_DB)  # pgbench counts the branches to learn the scale
        self.row_db = True  # from now on tenantgate configs name the row tenants
        config = self.tmp / "rls-sql.yaml"
        config.write_text(self._tenantgate_config(free_port(), 1, "both"))
        proc = subprocess.run([sys.executable, "-m", "proxy", "rls-sql", "--connect",
                               "--config", str(config)], capture_output=True, text=True,
                              cwd=REPO, timeout=120)
        if proc.returncode != 0:
            raise ServiceError(f"tenantgate rls-sql failed: {proc.stderr.strip()}")
        self.pg.run_sql(proc.stdout, dbname=ROW_DB)

    def vacuum(self) -> None:
        """What pgbench does before a run without -n: vacuum the small tables, empty history."""
        self.pg.run_sql("VACUUM pgbench_branches; VACUUM pgbench_tellers; "
                        "TRUNCATE pgbench_history;", dbname=BENCH_DB, timeout=300)

    def versions(self) -> dict[str, str]:
        def first_line(argv: list[str]) -> str:
            try:
                out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
            except OSError:
                return "unknown"
            return out.strip().splitlines()[0] if out.strip() else "unknown"
        bouncer = find_pgbouncer()
        return {"postgresql": first_line([self.pg.bin("postgres"), "--version"]),
                "pgbench": first_line([self.pg.bin("pgbench"), "--version"]),
                "pgbouncer": first_line([bouncer, "--version"]) if bouncer else "missing",
                "python": sys.version.split()[0]}

    # -- PgBouncer ----------------------------------------------------------------------------

    def start_pgbouncer(self, max_client_conn: int) -> Target:
        """PgBouncer in transaction mode with the same pool size, SCRAM logins from a userlist."""
        binary = find_pgbouncer()
        if binary is None:
            raise ServiceError("pgbouncer is not installed (benchmarks/setup.sh installs it)")
        home = self.tmp / "pgbouncer"
        home.mkdir()
        port = free_port()
        user, password = self.info.backend_user, self.info.backend_password
        (home / "userlist.txt").write_text(f'"{user}" "{password}"\n')
        (home / "pgbouncer.ini").write_text(self._pgbouncer_ini(home, port, max_client_conn))
        self._give_to_server_user(home)
        log = home / "pgbouncer.out"
        proc = self._spawn([binary, str(home / "pgbouncer.ini")], cwd=home, log=log,
                           as_server_user=True)
        try:
            _wait_port("127.0.0.1", port, proc, home / "pgbouncer.log", 30)
        except ServiceError as exc:
            raise ServiceError(f"pgbouncer: {exc}\n{_tail(log)}") from None
        self.pgbouncer = Target("pgbouncer", "127.0.0.1", port, user, password, BENCH_DB, proc.pid)
        return self.pgbouncer

    def _pgbouncer_ini(self, home: Path, port: int, max_client_conn: int) -> str:
        row = [f"{ROW_DB} = host={self.pg.host} port={self.pg.port} dbname={ROW_DB}"]
        return "\n".join([
            "[databases]",
            f"{BENCH_DB} = host={self.pg.host} port={self.pg.port} dbname={BENCH_DB}",
            f"{SESSION_DB} = host={self.pg.host} port={self.pg.port} dbname={BENCH_DB} "
            "pool_mode=session",
            *(row if self.row_db else []),
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "auth_type = scram-sha-256",
            f"auth_file = {home / 'userlist.txt'}",
            "pool_mode = transaction",
            f"default_pool_size = {self.pool_size}",
            f"max_client_conn = {max_client_conn}",
            "server_reset_query =",
            "ignore_startup_parameters = extra_float_digits,options",
            f"logfile = {home / 'pgbouncer.log'}",
            "log_connections = 0",
            "log_disconnections = 0",
            "",
        ])

    # -- tenantgate ---------------------------------------------------------------------------

    def start_tenantgate(self, max_client_conn: int, enforce: str = "both",
                         wrapper: tuple[str, ...] = ()) -> Target:
        """`python -m proxy run` with the sample config (transaction mode, same pool size) and,
        after start_row_database, the row tenants of ROW_DB with `row.enforce: enforce`;
        `wrapper` goes before the command (valgrind: benchmarks/instructions.py)."""
        name = "tenantgate" if enforce == "both" else f"tenantgate-{enforce}"
        home = self.tmp / name
        if home.exists():  # started again (benchmarks/instructions.py): a directory of its own
            home = self.tmp / f"{name}-{len(self.procs)}"
        home.mkdir()
        port, metrics_port = free_port(), free_port()
        config = home / "tenantgate.yaml"
        config.write_text(self._tenantgate_config(port, max_client_conn, enforce, metrics_port))
        log = home / "tenantgate.out"
        env = dict(os.environ, TENANTGATE_LOG_LEVEL=os.environ.get("TENANTGATE_LOG_LEVEL",
                                                                   "warning"))
        proc = self._spawn([*wrapper, sys.executable, "-m", "proxy", "run", "--config",
                            str(config)], cwd=REPO, log=log, env=env)
        self.tenantgate_logs[proc.pid] = log
        deadline = time.monotonic() + (300 if wrapper else 60)
        while "tenantgate: listening on" not in _tail(log, 200):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"tenantgate did not start (exit {proc.poll()}):\n{_tail(log)}")
            time.sleep(0.1)
        target = Target("tenantgate", "127.0.0.1", port, f"app.{BENCH_DB}",
                        self.info.password("app"), "app", proc.pid, metrics_port)
        if enforce == "both":
            self.tenantgate = target
        return target

    def _tenantgate_config(self, port: int, max_client_conn: int, enforce: str,
                           metrics_port: int | None = None) -> str:
        extra = [f"max_client_connections: {max_client_conn}"]
        if metrics_port is not None:
            extra.append(f'metrics: "127.0.0.1:{metrics_port}"')
        tenants = ""
        if self.row_db or enforce != "both":
            extra += ["row:", "  column: tenant_id", "  shared_tables: [public.pgbench_branches]",
                      f"  enforce: {enforce}"]
            tenants = "\n".join(f'{t}: {{strategy: row, cluster: main, database: {ROW_DB}, '
                                f'key: "{t}"}}' for t in ROW_TENANTS)
        return self.info.config_yaml(self.pg, port, pool_mode="transaction",
                                     pool_size=self.pool_size, extra="\n".join(extra),
                                     extra_tenants=tenants)

    # -- the minimal relay ------------------------------------------------------------------

    def start_relay(self) -> Target:
        """`python -m benchmarks.relay` in front of PostgreSQL: one upstream connection per
        client, startup and SCRAM passed through, so pgbench logs in as for `direct`."""
        home = self.tmp / "relay"
        home.mkdir()
        port = free_port()
        self.relay_log = log = home / "relay.out"
        proc = self._spawn([sys.executable, "-m", "benchmarks.relay",
                            "--listen", f"127.0.0.1:{port}",
                            "--upstream", f"{self.pg.host}:{self.pg.port}"], cwd=REPO, log=log)
        deadline = time.monotonic() + 30
        while "relay: listening on" not in _tail(log, 200):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"relay did not start (exit {proc.poll()}):\n{_tail(log)}")
            time.sleep(0.1)
        self.relay = Target("relay", "127.0.0.1", port, self.info.backend_user,
                            self.info.backend_password, BENCH_DB, proc.pid)
        return self.relay

    def alive(self, target: Target) -> bool:
        """False when the target's own process (pooler) has exited."""
        for proc in self.procs:
            if proc.pid == target.pid:
                return proc.poll() is None
        return True

    def log_tail(self, target: Target) -> str:
        if target.name == "direct":
            return self.pg.log_tail()
        if target.name == "pgbouncer":
            return _tail(self.tmp / "pgbouncer" / "pgbouncer.log")
        if target.name == "relay":
            return _tail(self.relay_log) if self.relay_log else ""
        return _tail(self.tenantgate_logs[target.pid])

    def log_excerpts(self, lines: int = 20) -> dict[str, list[str]]:
        """Warnings and errors the targets logged during the run (for the JSON)."""
        def pick(text: str, pattern: str) -> list[str]:
            return [ln for ln in text.splitlines() if re.search(pattern, ln)][-lines:]
        bouncer = _tail(self.tmp / "pgbouncer" / "pgbouncer.log", 5000)
        gate = "\n".join(_tail(path, 5000) for path in self.tenantgate_logs.values())
        excerpts = {"postgresql": pick(self.pg.log_tail(5000), r"ERROR|FATAL|PANIC"),
                    "pgbouncer": pick(bouncer, r"WARNING|ERROR|FATAL"),
                    "tenantgate": pick(gate, r"(?i)warn|error|critical|traceback|exception")}
        if self.relay_log is not None:
            excerpts["relay"] = pick(_tail(self.relay_log, 5000),
                                     r"(?i)closing|error|traceback|exception")
        return excerpts

    # -- processes ----------------------------------------------------------------------------

    def _as_server_user(self) -> dict:
        if not self.as_root:
            return {}
        return {"user": SERVER_USER, "group": pwd.getpwnam(SERVER_USER).pw_gid, "extra_groups": []}

    def _give_to_server_user(self, path: Path) -> None:
        if self.as_root:
            for item in [path, *path.rglob("*")]:
                shutil.chown(item, user=SERVER_USER, group=pwd.getpwnam(SERVER_USER).pw_gid)

    def _spawn(self, argv: list[str], *, cwd: Path, log: Path, env: dict | None = None,
               as_server_user: bool = False) -> subprocess.Popen:
        """A long-running child in its own session (Ctrl-C reaches only us), output to `log`."""
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    **(self._as_server_user() if as_server_user else {}))
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after 10 s), PostgreSQL, remove temp dirs."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()
        self.pg.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def analysis_cache_counters(target: Target) -> tuple[float, float] | None:
    """(hits, misses) of tenantgate's analysis cache from its /metrics, None if unreadable."""
    if target.metrics_port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{target.metrics_port}/metrics",
                                    timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    found = dict(re.findall(r"^tenantgate_analysis_cache_(hits|misses)_total ([0-9.e+]+)$",
                            text, re.MULTILINE))
    if len(found) != 2:
        return None
    return float(found["hits"]), float(found["misses"])


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a process, from /proc/PID/status."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None
