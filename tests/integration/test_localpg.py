"""LocalPostgres and the sample tenants, checked directly on PostgreSQL (no proxy involved)."""

from __future__ import annotations

import os
import socket

import psycopg
import pytest

from proxy.localpg import LocalPostgres, LocalPostgresError
from proxy.sample import canary, sample_items
from tests.helpers import backend_query


def tg_connect(pg: LocalPostgres, sample, db: str) -> psycopg.Connection:
    """A direct connection as the proxy's backend role."""
    return psycopg.connect(pg.dsn(sample.backend_user, sample.backend_password, db),
                           autocommit=True, connect_timeout=10)


def test_cluster_is_private_and_scram(pg: LocalPostgres) -> None:
    assert pg.host == "127.0.0.1" and pg.port and os.path.isdir(pg.datadir)
    settings = dict(backend_query(pg, "postgres",
                                  "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                                  (["listen_addresses", "max_connections", "fsync",
                                    "unix_socket_directories", "password_encryption"],)))
    assert settings == {"listen_addresses": "127.0.0.1", "max_connections": "400",
                        "fsync": "off", "unix_socket_directories": pg.datadir,
                        "password_encryption": "scram-sha-256"}
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg.dsn(password="wrong"), connect_timeout=10)


def test_run_sql_reports_psql_errors(pg: LocalPostgres) -> None:
    assert pg.run_sql("SELECT 1, 'x'") == "1|x\n"
    with pytest.raises(LocalPostgresError, match='relation "no_such_table" does not exist'):
        pg.run_sql("SELECT * FROM no_such_table")


def test_backend_role_is_unprivileged(pg: LocalPostgres, sample) -> None:
    rows = backend_query(pg, "postgres",
                         "SELECT rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, rolinherit "
                         "FROM pg_roles WHERE rolname = %s", (sample.backend_user,))
    assert rows == [(False, False, False, False, False)]


def test_backend_role_needs_set_role_for_a_tenant_schema(pg: LocalPostgres, sample) -> None:
    with tg_connect(pg, sample, "shared") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM hooli.items")
        conn.execute("SET ROLE hooli")
        rows = conn.execute("SELECT id, name, secret FROM hooli.items ORDER BY id").fetchall()
        assert rows == sample_items("hooli")
        # as hooli, globex's schema stays closed, common is read-only
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM globex.items")
        assert conn.execute("SELECT count(*) FROM common.countries").fetchone() == (4,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO common.countries VALUES ('XX', 'Nowhere')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TEMP TABLE t (a int)")


def test_database_tenants_are_closed_to_public(pg: LocalPostgres, sample) -> None:
    for db in ("acme", "umbrella", "shared"):
        rows = backend_query(pg, "postgres",
                             "SELECT has_database_privilege('public', %s, 'CONNECT'), "
                             "has_database_privilege('public', %s, 'TEMP'), "
                             "has_database_privilege(%s, %s, 'CONNECT')",
                             (db, db, sample.backend_user, db))
        assert rows == [(False, False, True)], db
    with tg_connect(pg, sample, "acme") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.t (a int)")


@pytest.mark.parametrize("tenant,db,table", [("acme", "acme", "public.items"),
                                             ("umbrella", "umbrella", "public.items"),
                                             ("globex", "shared", "globex.items"),
                                             ("hooli", "shared", "hooli.items")])
def test_canaries_are_where_they_belong(pg: LocalPostgres, sample, tenant, db, table) -> None:
    rows = backend_query(pg, db, f"SELECT id, name, secret FROM {table} ORDER BY id")
    assert rows == sample_items(tenant)
    secrets = {r[2] for r in rows}
    assert canary(tenant) in secrets
    assert not secrets & {canary(t) for t in sample.tenants if t != tenant}


def test_port_clash_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    import proxy.localpg as localpg

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        real = localpg.free_port
        monkeypatch.setattr(localpg, "free_port", lambda host="127.0.0.1": next(ports, None)
                            or real(host))
        with LocalPostgres() as other:
            assert other.port != taken.getsockname()[1]
            assert other.run_sql("SELECT current_setting('port')").strip() == str(other.port)
            tempdir = other.tempdir
        assert not os.path.exists(tempdir)
