"""A throwaway local PostgreSQL cluster from the system binaries (`tenantgate demo`, the tests).

The cluster lives in a fresh temp dir, listens on 127.0.0.1 only (unix socket inside its data
dir), authenticates TCP clients with SCRAM and is removed again by `stop()`. PostgreSQL refuses
to run as root, so when this process is root every server command runs as the `postgres` OS user.
`start(ssl=True)` also turns on TLS with a fresh self-signed certificate for 127.0.0.1/localhost
(`ssl_cert_pem` is that certificate, the CA a verifying client trusts).
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SERVER_USER = "postgres"  # OS user the server runs as when we are root
START_ATTEMPTS = 4  # a port taken between probing and binding: try another one


class LocalPostgresError(RuntimeError):
    """The local cluster could not be created, started, or queried."""


_HANDED_OUT: set[int] = set()  # ports free_port gave this process


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that was free a moment ago (bind to port 0, read it, close),
    never one it gave before in this process: two taken before either is bound (a
    listen and a metrics port) could otherwise be the same one."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free TCP port that was not handed out before")


def _version_key(bindir: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/([\d.]+)/bin$", bindir)
    return tuple(int(p) for p in match.group(1).split(".") if p) if match else (0,)


def find_bindir() -> str:
    """The PostgreSQL server binaries: $TENANTGATE_PG_BINDIR, the highest
    /usr/lib/postgresql/*/bin with initdb, else `pg_config --bindir`."""
    override = os.environ.get("TENANTGATE_PG_BINDIR")
    if override:
        if not os.path.exists(os.path.join(override, "initdb")):
            raise LocalPostgresError(f"TENANTGATE_PG_BINDIR={override} has no initdb")
        return override
    found = [os.path.dirname(p) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if found:
        return max(found, key=_version_key)
    try:
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        bindir = ""
    if bindir and os.path.exists(os.path.join(bindir, "initdb")):
        return bindir
    raise LocalPostgresError(
        "no PostgreSQL server binaries found (initdb): install them, e.g. "
        "`apt-get install -y postgresql`, or set TENANTGATE_PG_BINDIR")


class LocalPostgres:
    """A private PostgreSQL cluster in a temp dir; `with LocalPostgres() as pg:` starts, removes."""

    host = "127.0.0.1"
    superuser = "postgres"

    def __init__(self, bindir: str | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.superuser_password = secrets.token_urlsafe(18)
        self.port: int | None = None
        self.tempdir: str | None = None
        self.datadir: str | None = None
        self.logfile: str | None = None
        self._as_root = os.geteuid() == 0
        self._running = False
        self.ssl = False
        self.ssl_cert_pem: bytes | None = None  # the self-signed server certificate (ssl=True)
        self.ssl_key_pem: bytes | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, ssl: bool = False) -> LocalPostgres:
        """initdb into a fresh temp dir and start the server; raise with the log tail on failure.

        `ssl=True`: write a self-signed certificate into the data dir and set `ssl = on`.
        """
        if self._running:
            return self
        try:
            self._make_tempdir()
            self._initdb()
            if ssl:
                self._write_ssl_files()
            self.ssl = ssl
            self._start_on_free_port()
        except BaseException:  # also KeyboardInterrupt/SystemExit in the middle of pg_ctl start
            self._stop_if_started()
            self._remove_tempdir()
            raise
        self._running = True
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete the temp dir; safe to call twice."""
        if self._running:
            self._running = False
            atexit.unregister(self.stop)
            self._server_cmd([self.bin("pg_ctl"), "-D", self.datadir, "-m", "fast", "-w",
                              "-t", "60", "stop"], check=False)
        self._remove_tempdir()

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- use ---------------------------------------------------------------------------------

    def bin(self, name: str) -> str:
        """Path of a PostgreSQL program (initdb, pg_ctl, psql, pgbench, …) of this version."""
        path = os.path.join(self.bindir, name)
        if not os.path.exists(path):
            raise LocalPostgresError(f"{path} does not exist")
        return path

    def dsn(self, user: str | None = None, password: str | None = None,
            dbname: str = "postgres") -> str:
        """A libpq URL for this cluster; the superuser and its password by default."""
        from urllib.parse import quote

        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self.superuser_password
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def run_sql(self, sql: str, dbname: str = "postgres", *, user: str | None = None,
                password: str | None = None, timeout: float = 60) -> str:
        """Run `sql` with psql (ON_ERROR_STOP, one script on stdin) and return its output.

        Output is unaligned and tuples-only (`-At`): one line per row, fields joined by `|`.
        Raises LocalPostgresError with psql's stderr when anything fails.
        """
        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self.superuser_password
        env = dict(os.environ, PGPASSWORD=password or "", PGCONNECT_TIMEOUT="10",
                   PGAPPNAME="tenantgate-localpg")
        env.pop("PGSERVICE", None)
        cmd = [self.bin("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-q", "-At",
               "-h", self.host, "-p", str(self.port), "-U", user, "-d", dbname, "-f", "-"]
        proc = subprocess.run(cmd, input=sql, capture_output=True, text=True, env=env,
                              timeout=timeout)
        if proc.returncode != 0:
            raise LocalPostgresError(f"psql on {dbname} as {user} failed "
                                     f"(exit {proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def set_ssl_certificate(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Serve another certificate (ssl=True): replace the files and reload the config.
        The reload is asynchronous: new connections get the new certificate shortly after."""
        if not self.ssl:
            raise LocalPostgresError("the cluster was not started with ssl=True")
        self._write_certificate(cert_pem, key_pem)
        self.run_sql("SELECT pg_reload_conf();")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        try:
            text = Path(self.logfile).read_text(errors="replace") if self.logfile else ""
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals --------------------------------------------------------------------------

    def _make_tempdir(self) -> None:
        self.tempdir = tempfile.mkdtemp(prefix="tenantgate-pg-")
        self.datadir = os.path.join(self.tempdir, "data")
        self.logfile = os.path.join(self.tempdir, "postgresql.log")
        if self._as_root:
            shutil.chown(self.tempdir, user=SERVER_USER, group=None)

    def _stop_if_started(self) -> None:
        if self.datadir and os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
            self._server_cmd([self.bin("pg_ctl"), "-D", self.datadir, "-m", "immediate", "-w",
                              "stop"], check=False)

    def _remove_tempdir(self) -> None:
        if self.tempdir:
            shutil.rmtree(self.tempdir, ignore_errors=True)
        self.tempdir = None

    def _server_cmd(self, argv: list[str], *, check: bool = True,
                    timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a server program, as the postgres OS user when we are root."""
        program = os.path.basename(argv[0])
        if self._as_root:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        env = dict(os.environ, LC_ALL="C", LANG="C")
        for var in ("PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE", "PGOPTIONS"):
            env.pop(var, None)
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=self.tempdir,
                              env=env, timeout=timeout)
        if check and proc.returncode != 0:
            raise LocalPostgresError(f"{program} failed (exit {proc.returncode}): "
                                     f"{proc.stdout.strip()}\n{proc.stderr.strip()}")
        return proc

    def _write_private(self, path: str, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        if self._as_root:
            shutil.chown(path, user=SERVER_USER, group=None)

    def _initdb(self) -> None:
        pwfile = os.path.join(self.tempdir, "pwfile")
        self._write_private(pwfile, self.superuser_password + "\n")
        try:
            self._server_cmd([self.bin("initdb"), "-D", self.datadir, "-E", "UTF8",
                              "--locale=C", "--username", self.superuser,
                              "--pwfile", pwfile, "--auth-host=scram-sha-256",
                              "--auth-local=trust", "--no-instructions"])
        finally:
            os.unlink(pwfile)

    def _write_ssl_files(self) -> None:
        self.ssl_cert_pem, self.ssl_key_pem = self_signed_certificate("tenantgate LocalPostgres")
        self._write_certificate(self.ssl_cert_pem, self.ssl_key_pem)

    def _write_certificate(self, cert_pem: bytes, key_pem: bytes) -> None:
        self._write_private(os.path.join(self.datadir, "server.key"), key_pem.decode())
        self._write_private(os.path.join(self.datadir, "server.crt"), cert_pem.decode())

    def _configure(self, port: int) -> None:
        overrides = (
            "\n# tenantgate LocalPostgres\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {port}\n"
            f"unix_socket_directories = '{self.datadir}'\n"
            "max_connections = 400\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
            "shared_buffers = 128MB\n"
            "password_encryption = 'scram-sha-256'\n"
            + ("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
               if self.ssl else "")
        )
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as fh:
            fh.write(overrides)  # the last setting of a name wins

    def _start_on_free_port(self) -> None:
        conf = os.path.join(self.datadir, "postgresql.conf")
        pristine = Path(conf).read_text()
        for attempt in range(START_ATTEMPTS):
            Path(conf).write_text(pristine)
            port = free_port(self.host)
            self._configure(port)
            proc = self._server_cmd([self.bin("pg_ctl"), "-D", self.datadir, "-l",
                                     self.logfile, "-w", "-t", "60", "start"], check=False)
            if proc.returncode == 0:
                self.port = port
                return
            log = self.log_tail()
            clash = "could not bind" in log or "already in use" in log
            if not clash or attempt == START_ATTEMPTS - 1:
                raise LocalPostgresError(
                    f"PostgreSQL did not start on {self.host}:{port} "
                    f"(pg_ctl exit {proc.returncode}): {proc.stderr.strip()}\n"
                    f"--- server log tail ({self.logfile}) ---\n{log}")
            self._stop_if_started()
            Path(self.logfile).unlink(missing_ok=True)


def self_signed_certificate(common_name: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): a self-signed server certificate for 127.0.0.1 and
    localhost, valid for a week, that is also its own CA (so clients can verify it)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
