"""Metrics and the audit trail of a running proxy (the observability issue's acceptance):
a scripted workload shows up with exact counts under the right tenant labels, every
refusal is in the audit trail without literal values, and the trail verifies."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

import psycopg
import pytest

from proxy.localpg import free_port

APP = "app-secret"
AUDIT_KEY = "k" * 32


@pytest.fixture
def observed(proxy_factory, tmp_path):
    metrics_port = free_port()
    audit_path = tmp_path / "audit.jsonl"
    extra = (f'metrics: "127.0.0.1:{metrics_port}"\n'
             f'audit: {{path: "{audit_path}", hmac_key: "{AUDIT_KEY}"}}\n')
    proxy = proxy_factory(extra=extra)
    return proxy, metrics_port, audit_path


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{([^}]*)\} (\S+)", line)
        if match and match[1] == name:
            got = ",".join(sorted(match[2].split(",")))
            if got == wanted:
                return float(match[3])
    return 0.0


def test_workload_counts_per_tenant_and_refusals(observed) -> None:
    proxy, port, audit_path = observed
    n_acme, n_hooli, k_refused = 7, 5, 3
    with proxy.connect("app.acme", APP) as acme, proxy.connect("app.hooli", APP) as hooli:
        for i in range(n_acme):
            assert acme.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        for _ in range(n_hooli):
            assert hooli.execute("SELECT count(*) FROM items").fetchone() == (3,)
        for i in range(k_refused):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                acme.execute(f"SELECT set_config('app.tenant_id', 'secret-literal-{i}', false)")
    status, text = scrape(port)
    assert status == 200
    assert sample_value(text, "tenantgate_query_duration_seconds_count", tenant="acme") == n_acme
    assert sample_value(text, "tenantgate_query_duration_seconds_count", tenant="hooli") == n_hooli
    assert sample_value(text, "tenantgate_refusals_total", tenant="acme",
                        rule="reserved-setting") == k_refused
    assert sample_value(text, "tenantgate_refusals_total", tenant="hooli",
                        rule="reserved-setting") == 0
    assert scrape(port, "/healthz")[0] == 200
    assert scrape(port, "/readyz")[0] == 200

    proxy.stop()  # closing writes the final signed checkpoint
    trail = audit_path.read_text()
    refusals = [line for line in trail.splitlines() if '"event":"refusal"' in line]
    assert len(refusals) == k_refused
    assert all('"tenant":"acme"' in line and '"rule":"reserved-setting"' in line
               for line in refusals)
    assert "secret-literal" not in trail
    verify = subprocess.run([sys.executable, "-m", "proxy", "audit", "verify", str(audit_path)],
                            env={"TENANTGATE_AUDIT_KEY": AUDIT_KEY, "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_readyz_fails_while_draining(observed) -> None:
    proxy, port, _ = observed
    client = proxy.connect("app.acme", APP)
    client.execute("BEGIN")
    proxy.send_signal(15)
    proxy.wait_until(lambda: scrape(port, "/readyz")[0] == 503, 10, "/readyz to fail")
    client.execute("COMMIT")
    client.close()
    assert proxy.wait(20) == 0


@pytest.fixture
def globex_may_create(pg):
    from tests.helpers import backend_query
    backend_query(pg, "shared", "GRANT CREATE ON SCHEMA globex TO globex")
    yield
    backend_query(pg, "shared", "REVOKE CREATE ON SCHEMA globex FROM globex")


def test_ddl_and_bypass_statements_are_audited(proxy_factory, tmp_path, sample,
                                               globex_may_create) -> None:
    """A tenant's DDL (isolation_level standard) is a `ddl` entry with its kind; every
    statement of a bypass login is a `bypass_statement` entry, prepared ones too; shapes
    only, never literals."""
    import json

    audit_path = tmp_path / "audit.jsonl"
    proxy = proxy_factory(extra=f'audit: {{path: "{audit_path}", hmac_key: "{AUDIT_KEY}"}}\n',
                          isolation_level="standard")
    table = f"ddl_audit_{tmp_path.name[-8:].replace('-', '_')}"
    with proxy.connect("app.globex", APP) as globex:
        globex.execute(f"CREATE TABLE {table} (id int)")
        globex.execute(f"INSERT INTO {table} VALUES (424242)")
        globex.execute(f"DROP TABLE {table}")
    with proxy.connect("migrator", sample.password("migrator"), dbname="acme") as migrator:
        migrator.execute("SELECT count(*) FROM items WHERE name = %s", ("bypass-literal",),
                         prepare=True)
        migrator.execute("SELECT 777")
    proxy.stop()
    entries = [json.loads(line) for line in audit_path.read_text().splitlines()]
    ddl = [(e["tenant"], e["kind"], e["shape"]) for e in entries if e["event"] == "ddl"]
    assert ddl == [("globex", "CreateStmt", f"CREATE TABLE {table} (id int)"),
                   ("globex", "DropStmt", f"DROP TABLE {table}")]
    bypass = [e["shape"] for e in entries if e["event"] == "bypass_statement"]
    assert bypass == ["SELECT count(*) FROM items WHERE name = $1", "SELECT $1"]
    shapes = " ".join(str(e.get("shape")) for e in entries)
    assert "424242" not in shapes and "777" not in shapes  # (digits may occur in the MACs)
    assert "bypass-literal" not in audit_path.read_text()
