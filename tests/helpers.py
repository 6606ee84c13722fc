"""Test helpers: a tenantgate proxy run as a real subprocess, direct backend queries, raw protocol.

Nothing here mocks PostgreSQL: `pg` is a LocalPostgres with the sample installed
(proxy/sample.py), the proxy is `python -m proxy run --config FILE`, and the clients are
psycopg, asyncpg, psql and pgbench. Waiting always polls a real condition with a deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import asyncpg
import psycopg

from proxy.localpg import LocalPostgres, free_port
from proxy.sample import SampleInfo, install_row_sample

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 20.0
POLL = 0.05  # seconds between two looks at a condition (each look waits on the process)
T = TypeVar("T")


class ProxyExited(AssertionError):
    """The proxy process ended while a test waited for something."""


class RunningProxy:
    """One `python -m proxy run` subprocess with its config file and log files."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, port: int, config_path: Path) -> None:
        self.workdir = workdir
        self.port = port
        self.config_path = config_path
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- process ------------------------------------------------------------------------

    def spawn(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TENANTGATE_", "TENANT_", "PG"))}
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                          os.environ.get("PYTHONPATH")]))
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy", "run", "--config", str(self.config_path)],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=env)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None, "proxy is not running"
        self.proc.send_signal(sig)

    def reload(self) -> None:
        """SIGHUP: reload the config file."""
        self.send_signal(signal.SIGHUP)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its return code (raises TimeoutExpired)."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=timeout)

    def __enter__(self) -> RunningProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- logs and waiting -----------------------------------------------------------------

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def logs(self, since: tuple[int, int] | None = None) -> str:
        """What the proxy wrote (stdout, then stderr), all of it or after a `log_mark()`."""
        out, err = since or (0, 0)
        return self.stdout()[out:] + "\n" + self.stderr()[err:]

    def log_mark(self) -> tuple[int, int]:
        """A position in the logs, for `logs(since=…)` / `wait_for_log(since=…)`."""
        return len(self.stdout()), len(self.stderr())

    def wait_until(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        """Poll `predicate` until it returns something truthy; fail on proxy exit or timeout.

        Between looks this waits on the proxy process itself, so an exit is noticed at once.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if self.returncode is not None:
                raise ProxyExited(f"proxy exited with {self.returncode} while waiting for {what}; "
                                  f"log:\n{self.logs()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"log:\n{self.logs()[-4000:]}")
            try:
                self.proc.wait(timeout=POLL)
            except subprocess.TimeoutExpired:
                pass

    def wait_for_log(self, pattern: str, timeout: float = 10.0, *,
                     since: tuple[int, int] | None = None, flags: int = re.I) -> str:
        """Wait until a log line (written after `since`) matches `pattern`; return that line."""
        regex = re.compile(pattern, flags)

        def find() -> str | None:
            return next((ln for ln in self.logs(since).splitlines() if regex.search(ln)), None)

        return self.wait_until(find, timeout, f"a log line matching {pattern!r}")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        line = re.compile(rf"^tenantgate: listening on 127\.0\.0\.1:{self.port}\b", re.M)
        try:
            self.wait_until(lambda: line.search(self.stdout()), timeout,
                            f"'tenantgate: listening on 127.0.0.1:{self.port}' on stdout")
        except AssertionError as exc:
            if line.search(self.stderr()):
                raise AssertionError("the ready line went to stderr, not stdout") from exc
            raise

    # -- clients ------------------------------------------------------------------------------

    def dsn(self, user: str, password: str | None, dbname: str = "app", **params: str) -> str:
        """A libpq URL to this proxy; `params` become URL query parameters (options=…, …)."""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        url = f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"
        return url + ("?" + urlencode(params, quote_via=quote) if params else "")

    def connect(self, user: str, password: str | None, dbname: str = "app",
                **kwargs: Any) -> psycopg.Connection:
        """A psycopg 3 connection through the proxy (autocommit unless told otherwise)."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn(user, password, dbname), **kwargs)

    async def aconnect(self, user: str, password: str | None, dbname: str = "app",
                       **kwargs: Any) -> asyncpg.Connection:
        """An asyncpg connection through the proxy."""
        kwargs.setdefault("timeout", 10)
        return await asyncpg.connect(host=self.host, port=self.port, user=user,
                                     password=password, database=dbname, **kwargs)

    def write_config(self, text: str) -> None:
        self.config_path.write_text(text)


def start_proxy(pg: LocalPostgres, sample: SampleInfo | None = None, *,
                workdir: Path | None = None,
                config_text: str | None = None, ready_timeout: float = READY_TIMEOUT,
                **config_options: Any) -> RunningProxy:
    """Write a config for the sample (`SampleInfo.config_yaml(**config_options)`) with a free
    listen port, start the proxy and wait for its ready line. `config_text` replaces the
    generated config; it may contain `{port}` for the listen port."""
    sample = sample or SampleInfo()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="tenantgate-proxy-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        port = free_port()
        config_path = workdir / "tenantgate.yaml"
        text = (config_text.replace("{port}", str(port)) if config_text is not None
                else sample.config_yaml(pg, port, **config_options))
        config_path.write_text(text)
        proxy = RunningProxy(workdir, port, config_path)
        proxy.spawn()
        try:
            proxy.wait_ready(ready_timeout)
            return proxy
        except ProxyExited:
            if attempt == 2 or "in use" not in proxy.logs():
                raise
        except BaseException:
            proxy.stop()
            raise
    raise AssertionError("unreachable")


# -- direct access to the backend -------------------------------------------------------------

@contextlib.contextmanager
def row_sample_copy(pg: LocalPostgres, sample: SampleInfo, database: str) -> Iterator[SampleInfo]:
    """The row sample installed in `database` of its own (for tests that write rows or
    change tables), dropped afterwards."""
    info = dataclasses.replace(sample, row_database=database)
    install_row_sample(pg, info)
    try:
        yield info
    finally:
        pg.run_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def backend_query(pg: LocalPostgres, db: str, sql: str,
                  params: tuple | list | None = None) -> list[tuple]:
    """Run one statement DIRECTLY on PostgreSQL as the superuser; all rows (empty for DDL)."""
    with psycopg.connect(pg.dsn(dbname=db), autocommit=True, connect_timeout=10) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


async def abackend_query(pg: LocalPostgres, db: str, sql: str, *args: Any) -> list[tuple]:
    """Like backend_query, with asyncpg, for use inside a running event loop."""
    conn = await asyncpg.connect(pg.dsn(dbname=db), timeout=10)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def table_checksum(pg: LocalPostgres, db: str, table: str) -> tuple[int, str]:
    """(row count, md5 over every row's text) of a table, read directly on the backend."""
    rows = backend_query(
        pg, db, f"SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') "
                f"FROM {table} AS t")
    return rows[0][0], rows[0][1]


def run_psql(dsn: str, sql: str, *, psql: str = "psql", timeout: float = 30,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """psql -X -At against `dsn` with one -c command; the completed process (not checked)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    full_env.update(env or {})
    full_env["PGCONNECT_TIMEOUT"] = "10"
    return subprocess.run([psql, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose",
                           "-d", dsn, "-c", sql],
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          stdin=subprocess.DEVNULL)


# -- errors ------------------------------------------------------------------------------------

def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg or asyncpg error (None when it carries none)."""
    return getattr(exc, "sqlstate", None)


def error_message(exc: BaseException) -> str:
    """The primary message of a psycopg or asyncpg error."""
    diag = getattr(exc, "diag", None)
    if diag is not None and diag.message_primary:
        return diag.message_primary
    return str(exc.args[0]) if exc.args else str(exc)


# -- raw protocol (robustness tests) ------------------------------------------------------------

PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103


def startup_packet(params: dict[str, str], protocol: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!I", protocol)
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def raw_connect(host: str, port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def recv_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the peer sends until it closes (the socket's timeout bounds each read)."""
    data = b""
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def parse_messages(data: bytes, after_ssl_request: bool = False) -> list[tuple[str, bytes]]:
    """Split backend bytes into (type, payload) messages. After an SSLRequest the one-byte
    answer ('N' or 'S'), if present, comes first as a message with an empty payload."""
    out: list[tuple[str, bytes]] = []
    if after_ssl_request and data[:1] in (b"N", b"S"):
        out.append((data[:1].decode(), b""))
        data = data[1:]
    while len(data) >= 5:
        kind = data[:1].decode("latin-1")
        (length,) = struct.unpack("!I", data[1:5])
        out.append((kind, data[5:1 + length]))
        data = data[1 + length:]
    if data:
        out.append(("?", data))
    return out


def error_fields(payload: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse/NoticeResponse payload, keyed by their code letter."""
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes; fewer only when the peer closed first."""
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def read_message(sock: socket.socket) -> tuple[str, bytes] | None:
    """One backend message (type, payload); None when the peer closed."""
    head = recv_exact(sock, 5)
    if len(head) < 5:
        return None
    (length,) = struct.unpack("!I", head[1:])
    return head[:1].decode("latin-1"), recv_exact(sock, length - 4)


def message(kind: bytes, payload: bytes) -> bytes:
    """A frontend message: type byte, length, payload."""
    return kind + struct.pack("!I", len(payload) + 4) + payload


class LoginRefused(AssertionError):
    """raw_login got an ErrorResponse; `fields` holds it."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        super().__init__(f"login refused: {fields}")


def raw_login(host: str, port: int, user: str, password: str, database: str = "app",
              timeout: float = 10.0, params: dict[str, str] | None = None) -> socket.socket:
    """A raw socket logged in through the proxy (SCRAM-SHA-256, md5 or cleartext) and past
    its first ReadyForQuery, for sending hand-made messages. `params` are extra startup
    parameters; an ErrorResponse raises LoginRefused."""
    import hashlib

    import scramp

    sock = raw_connect(host, port, timeout)
    sock.sendall(startup_packet({"user": user, "database": database, **(params or {})}))
    scram = None
    while True:
        msg = read_message(sock)
        if msg is None:
            sock.close()
            raise AssertionError("proxy closed the connection during login")
        kind, body = msg
        if kind == "E":
            sock.close()
            raise LoginRefused(error_fields(body))
        if kind == "Z":
            return sock
        if kind != "R":
            continue
        (code,) = struct.unpack("!I", body[:4])
        if code == 10:  # AuthenticationSASL
            scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
            first = scram.get_client_first().encode()
            sock.sendall(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
        elif code == 11:  # SASLContinue
            scram.set_server_first(body[4:].decode())
            sock.sendall(message(b"p", scram.get_client_final().encode()))
        elif code == 12:  # SASLFinal
            scram.set_server_final(body[4:].decode())
        elif code == 5:  # MD5Password
            inner = hashlib.md5((password + user).encode()).hexdigest().encode()
            digest = b"md5" + hashlib.md5(inner + body[4:8]).hexdigest().encode()
            sock.sendall(message(b"p", digest + b"\0"))
        elif code == 3:  # CleartextPassword
            sock.sendall(message(b"p", password.encode() + b"\0"))
        elif code != 0:
            raise AssertionError(f"unsupported authentication request {code}")


# -- cancel requests and the queries they stop ------------------------------------------------

CANCEL_REQUEST_CODE = 80877102


def cancel_packet(pid: int, key: bytes) -> bytes:
    """A CancelRequest for the BackendKeyData (pid, key)."""
    return struct.pack("!II", 16, CANCEL_REQUEST_CODE) + struct.pack("!I", pid) + key


def send_cancel(proxy, pid: int, key: bytes) -> bytes:
    """Send one CancelRequest and wait until the proxy closes that connection (it has then
    handled the request); what it answered (nothing, per protocol)."""
    with raw_connect(proxy.host, proxy.port) as sock:
        sock.sendall(cancel_packet(pid, key))
        return recv_until_closed(sock)


def psycopg_cancel(conn: psycopg.Connection) -> None:
    """Cancel the connection's running query the way psycopg does (cancel_safe when there)."""
    cancel = getattr(conn, "cancel_safe", None)
    if cancel is not None:
        cancel(timeout=10)
    else:
        conn.cancel()


def marked_sleep(seconds: float, prefix: str = "cancel") -> tuple[str, str]:
    """A sleeping query with a marker that identifies it in pg_stat_activity."""
    import uuid

    marker = f"{prefix}-{uuid.uuid4().hex[:12]}"
    return marker, f"SELECT '{marker}' AS marker, pg_sleep({seconds})"


def running(pg: LocalPostgres, marker: str) -> int:
    """How many active queries on PostgreSQL carry `marker` (read directly on it)."""
    return backend_query(pg, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE state = "
                         "'active' AND query LIKE %s AND pid <> pg_backend_pid()",
                         (f"%{marker}%",))[0][0]


def wait_running(pg: LocalPostgres, marker: str, timeout: float = 10.0,
                 expect: bool = True) -> None:
    """Poll PostgreSQL until the marked query is (or is no longer) running."""
    deadline = time.monotonic() + timeout
    while (running(pg, marker) > 0) != expect:
        assert time.monotonic() < deadline, \
            f"query {marker} {'never started' if expect else 'still running'}"
        time.sleep(0.02)
