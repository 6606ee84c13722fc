"""`tenantgate demo`: a throwaway PostgreSQL with the sample tenants, and the proxy in front of it.

Listens on 127.0.0.1:6432 (or $TENANTGATE_DEMO_PORT) until Ctrl-C / SIGTERM; then PostgreSQL is
stopped and every temp file is removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile

from proxy.localpg import LocalPostgres
from proxy.sample import SampleInfo, install_row_sample, install_sample

DEFAULT_PORT = 6432


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # run the `finally` blocks while still setting up


def banner(info: SampleInfo, pg: LocalPostgres, port: int, config_path: str) -> str:
    """What the demo prints before serving: one ready-to-paste psql line per tenant."""
    app = info.password("app")
    lines = [
        f"tenantgate demo: PostgreSQL {pg.bindir} on {pg.host}:{pg.port} (data in {pg.datadir})",
        f"config: {config_path}",
        "",
        "Connect as a tenant (login 'app', tenant after the dot):",
    ]
    for tenant in info.database_tenants:
        lines.append(f'  psql "postgresql://app.{tenant}:{app}@127.0.0.1:{port}/app"'
                     f"   # {tenant}: database strategy (database {tenant})")
    for tenant in info.schema_tenants:
        lines.append(f'  psql "postgresql://app.{tenant}:{app}@127.0.0.1:{port}/app"'
                     f"   # {tenant}: schema strategy ({info.shared_database}.{tenant})")
    for tenant in info.row_tenant_names:
        lines.append(f'  psql "postgresql://app.{tenant}:{app}@127.0.0.1:{port}/app"'
                     f"   # {tenant}: row strategy ({info.row_database}, tenant_id = '{tenant}')")
    lines += [
        "Bypass login (no isolation):",
        f'  psql "postgresql://migrator:{info.password("migrator")}@127.0.0.1:{port}/'
        f'{info.shared_database}"',
        "",
        "Ctrl-C stops the proxy and removes the demo database.",
    ]
    return "\n".join(lines)


def run_demo() -> int:
    """Start PostgreSQL and the sample, serve the proxy until a signal, clean up; exit code."""
    port = int(os.environ.get("TENANTGATE_DEMO_PORT", DEFAULT_PORT))
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    pg = LocalPostgres()
    confdir = tempfile.mkdtemp(prefix="tenantgate-demo-")
    try:
        print("tenantgate demo: starting a local PostgreSQL …", flush=True)
        pg.start()
        info = install_row_sample(pg, install_sample(pg))
        config_path = os.path.join(confdir, "tenantgate.yaml")
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(info.config_yaml(pg, port, row_tenants=True))
        print(banner(info, pg, port, config_path), flush=True)
        from proxy import app  # the proxy installs its own SIGINT/SIGTERM handling

        return app.run(config_path)
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        print("tenantgate demo: stopping PostgreSQL and removing temp files", file=sys.stderr)
        pg.stop()
        shutil.rmtree(confdir, ignore_errors=True)
