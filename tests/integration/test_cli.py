"""The command line as a user runs it: `python -m proxy check | run | passwd | demo` in a
subprocess, against the session's PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from proxy.localpg import free_port
from tests.helpers import REPO_ROOT, backend_query, run_psql, start_proxy
from tests.tlsutil import make_ca, write_server_cert

APP = "app-secret"
SCRAM_VERIFIER = re.compile(r"^SCRAM-SHA-256\$4096:[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*:"
                            r"[A-Za-z0-9+/]+=*$")


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m proxy ARGS` with a clean environment (plus `env`); never checked."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("TENANTGATE_", "TENANT_", "PG"))}
    full_env["PYTHONPATH"] = str(REPO_ROOT)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True,
                          env=full_env, cwd=REPO_ROOT, timeout=timeout,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


@pytest.fixture
def good_config(pg, sample, tmp_path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(sample.config_yaml(pg, free_port()))
    return path


def with_line_changed(source: Path, old: str, new: str, target: Path) -> int:
    """Write `source` with the one line equal to `old` replaced by `new`; its line number."""
    lines = source.read_text().split("\n")
    matches = [i for i, line in enumerate(lines) if line == old]
    assert len(matches) == 1, f"{old!r} is on lines {matches}"
    lines[matches[0]] = new
    target.write_text("\n".join(lines))
    return matches[0] + 1


# -- check ------------------------------------------------------------------------------------

def test_check_good_config(good_config) -> None:
    result = cli("check", "--config", str(good_config))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{good_config}: ok (4 tenants, 4 logins, 1 clusters)\n"
    assert result.stderr == ""


@pytest.mark.parametrize("old, new, expected", [
    ("    pool_size: 4", "    pool_sise: 4", "unknown key 'pool_sise' (did you mean 'pool_size'?)"),
    ("pool_mode: transaction", "pool_mode: transactoin", "pool_mode"),
    ("  acme: {strategy: database, cluster: main, database: acme}",
     "  acme: {strategy: database, cluster: mian, database: acme}", "there is no cluster 'mian'"),
])
def test_check_reports_file_and_line(good_config, tmp_path, old, new, expected) -> None:
    bad = tmp_path / "bad.yaml"
    line = with_line_changed(good_config, old, new, bad)
    result = cli("check", "--config", str(bad))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"{bad}:{line}: "), (line, result.stderr)
    assert expected in result.stderr


def test_check_missing_file() -> None:
    result = cli("check", "--config", "/nonexistent/tenantgate.yaml")
    assert result.returncode == 1
    assert result.stderr.startswith("/nonexistent/tenantgate.yaml: cannot read the configuration")


def test_check_loads_the_tls_certificate_and_key(pg, sample, tmp_path) -> None:
    files = write_server_cert(make_ca(), tmp_path / "certs")
    other = write_server_cert(make_ca(), tmp_path / "other")

    def config(cert: Path, key: Path) -> Path:
        path = tmp_path / "tls.yaml"
        path.write_text(sample.config_yaml(pg, free_port(), extra=(
            f"tls:\n  cert: {json.dumps(str(cert))}\n  key: {json.dumps(str(key))}\n")))
        return path

    assert cli("check", "--config", str(config(files.cert, files.key))).returncode == 0
    missing = cli("check", "--config", str(config(tmp_path / "nope.crt", files.key)))
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"{tmp_path / 'tls.yaml'}: tls: cannot load the certificate")
    assert "No such file or directory" in missing.stderr
    mismatch = cli("check", "--config", str(config(files.cert, other.key)))
    assert mismatch.returncode == 1
    assert "KEY_VALUES_MISMATCH" in mismatch.stderr or "key values mismatch" in mismatch.stderr


def test_check_loads_the_cluster_ca(good_config, tmp_path) -> None:
    bad = tmp_path / "ca.yaml"
    ca = json.dumps(str(tmp_path / "no-ca.crt"))
    with_line_changed(good_config, "    tls: disable", f"    tls: verify-full\n    tls_ca: {ca}", bad)
    result = cli("check", "--config", str(bad))
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bad}: clusters.main.tls_ca: cannot load"), result.stderr


def test_config_from_the_environment(good_config, tmp_path) -> None:
    result = cli("check", env={"TENANTGATE_CONFIG": str(good_config)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{good_config}: ok")
    bad = tmp_path / "bad.yaml"
    line = with_line_changed(good_config, "    pool_size: 4", "    pool_size: four", bad)
    result = cli("run", env={"TENANTGATE_CONFIG": str(bad)}, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bad}:{line}: ")
    # --config wins over the environment
    result = cli("check", "--config", str(good_config), env={"TENANTGATE_CONFIG": str(bad)})
    assert result.returncode == 0, result.stderr


def test_config_is_required(good_config) -> None:
    result = cli("check")
    assert result.returncode == 2
    assert "--config" in result.stderr


# -- run --------------------------------------------------------------------------------------

def test_run_with_a_bad_config_exits_1(good_config, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    line = with_line_changed(good_config, "unknown_tenant: reject", "unknown_tenant: accept", bad)
    result = cli("run", "--config", str(bad), timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bad}:{line}: unknown_tenant"), result.stderr
    assert "listening" not in result.stdout


def test_run_with_a_tls_key_that_does_not_load_exits_1(pg, sample, tmp_path) -> None:
    files = write_server_cert(make_ca(), tmp_path / "certs")
    files.key.write_text("not a key\n")
    path = tmp_path / "tls.yaml"
    path.write_text(sample.config_yaml(pg, free_port(), extra=(
        f"tls:\n  cert: {json.dumps(str(files.cert))}\n  key: {json.dumps(str(files.key))}\n")))
    result = cli("run", "--config", str(path), timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"{path}: tls: cannot load"), \
        result.stderr
    assert "Traceback" not in result.stderr


# -- passwd -----------------------------------------------------------------------------------

def make_verifier(password: str) -> str:
    result = cli("passwd", "someone", env={"TENANTGATE_PASSWORD": password})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and SCRAM_VERIFIER.match(lines[0]), result.stdout
    return lines[0]


def test_passwd_verifier_is_accepted_by_postgresql(pg) -> None:
    password = "cli pässword 1"
    verifier = make_verifier(password)
    assert make_verifier(password) != verifier  # a fresh salt each time
    pg.run_sql(f"CREATE ROLE cli_user LOGIN PASSWORD '{verifier}'")
    try:
        assert backend_query(pg, "postgres", "SELECT rolpassword FROM pg_authid "
                             "WHERE rolname = 'cli_user'") == [(verifier,)]  # stored as given
        ok = run_psql(pg.dsn("cli_user", password), "SELECT current_user")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip() == "cli_user"
        bad = run_psql(pg.dsn("cli_user", "wrong"), "SELECT 1")
        assert bad.returncode != 0
        assert "password authentication failed" in bad.stderr
    finally:
        pg.run_sql("DROP ROLE cli_user")


def test_passwd_verifier_is_accepted_by_the_proxy(pg, sample, tmp_path) -> None:
    password = "via-the-proxy"
    verifier = make_verifier(password)
    text = sample.config_yaml(pg, 0).replace('"127.0.0.1:0"', '"127.0.0.1:{port}"')
    text = text.replace(f"    password: {json.dumps(APP)}", f"    password: {json.dumps(verifier)}")
    assert verifier in text
    with start_proxy(pg, sample, workdir=tmp_path / "proxy", config_text=text) as proxy:
        with proxy.connect("app.acme", password) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("acme",)
        with pytest.raises(psycopg.OperationalError, match="28P01|password"):
            proxy.connect("app.acme", APP).close()  # the old plain-text password is gone


def test_passwd_reads_stdin(tmp_path) -> None:
    result = cli("passwd", "someone", "--password-stdin", stdin="from-stdin\n")
    assert result.returncode == 0, result.stderr
    assert SCRAM_VERIFIER.match(result.stdout.strip())


def test_passwd_refuses_an_empty_password() -> None:
    result = cli("passwd", "someone", env={"TENANTGATE_PASSWORD": ""})
    assert result.returncode == 1
    assert result.stdout == ""
    assert "empty password" in result.stderr


# -- check --connect --------------------------------------------------------------------------

def test_check_connect_on_the_sample(good_config) -> None:
    result = cli("check", "--connect", "--config", str(good_config))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"{good_config}: ok (4 tenants, 4 logins, 1 clusters; "
                             "backends checked)\n")


def test_check_connect_finds_backend_problems(pg, sample, tmp_path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(sample.config_yaml(pg, free_port(), extra_tenants=(
        "ghost: {strategy: schema, cluster: main, database: shared, schema: ghost, role: nobody}\n"
        "nodb: {strategy: database, cluster: main, database: nodb}\n"
        "alien: {strategy: schema, cluster: main, database: shared, schema: common, "
        "role: outsider}\n")).replace("shared_schemas: [common]", "shared_schemas: []"))
    pg.run_sql("CREATE ROLE outsider NOLOGIN")
    try:
        result = cli("check", "--connect", "--config", str(path))
    finally:
        pg.run_sql("DROP ROLE outsider")
    assert result.returncode == 1
    assert result.stdout == ""
    errors = result.stderr.splitlines()
    assert errors[:2] == [f"{path}: tenants.ghost: schema 'ghost' does not exist in database "
                          "'shared'", f"{path}: tenants.ghost: role 'nobody' does not exist"]
    assert errors[2].startswith(f"{path}: tenants.nodb: could not connect to cluster 'main'")
    assert 'database "nodb" does not exist' in errors[2]
    assert errors[3:] == [f"{path}: tenants.alien: the backend user may not SET ROLE 'outsider' "
                          "(not a member)"]


def test_check_connect_refuses_a_superuser_backend(pg, sample, tmp_path) -> None:
    path = tmp_path / "super.yaml"
    text = sample.config_yaml(pg, free_port())
    text = text.replace(f"    user: {sample.backend_user}\n", f"    user: {pg.superuser}\n")
    text = text.replace(f"    password: {json.dumps(sample.backend_password)}\n",
                        f"    password: {json.dumps(pg.superuser_password)}\n")
    path.write_text(text)
    result = cli("check", "--connect", "--config", str(path))
    assert result.returncode == 1
    assert f"{path}: clusters.main: backend user 'postgres' is a superuser" in result.stderr


# -- demo -------------------------------------------------------------------------------------

def test_demo_serves_the_sample_and_cleans_up(tmp_path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANTGATE_", "PG"))}
    env.update(TENANTGATE_DEMO_PORT=str(port), PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "demo"], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=REPO_ROOT)
    try:
        text = wait_for_text(proc, log, f"tenantgate: listening on 127.0.0.1:{port}", 60)
        datadir = re.search(r"\(data in (\S+)\)", text).group(1)
        assert os.path.isdir(datadir)
        pasted = re.search(rf'psql "(postgresql://app\.acme:[^"]+@127\.0\.0\.1:{port}/app)"',
                           text).group(1)
        with psycopg.connect(pasted, autocommit=True, connect_timeout=10) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("acme",)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not os.path.exists(datadir)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def wait_for_text(proc: subprocess.Popen, log: Path, needle: str, timeout: float) -> str:
    """The log once it contains `needle` (waiting on the process between looks)."""
    deadline = time.monotonic() + timeout
    while needle not in (text := log.read_text(errors="replace")):
        assert proc.poll() is None, f"demo exited with {proc.returncode}:\n{text}"
        assert time.monotonic() < deadline, f"no {needle!r} after {timeout}s:\n{text}"
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            pass
    return text
