"""TLS through the running proxy: client-facing TLS (`tls:` allow/require), SSLRequest and
GSSENCRequest negotiation, SNI as a tenant source, and TLS to the backend (`clusters.*.tls`).

Certificates are made at test time (tests/tlsutil.py); the backend with TLS is a second
LocalPostgres started with `ssl=True` and the sample installed.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.localpg import LocalPostgres
from proxy.sample import SampleInfo, canary, install_sample
from tests.helpers import (SSL_REQUEST, backend_query, error_fields, message, parse_messages,
                           raw_connect, read_message, recv_until_closed, run_psql, start_proxy,
                           startup_packet)
from tests.tlsutil import ServerFiles, client_context, make_ca, write_server_cert

APP = "app-secret"
GSSENC_REQUEST = 80877104
SNI_DOMAIN = "db.example.com"
q = json.dumps  # a JSON string is a valid YAML double-quoted scalar


# -- certificates and proxies -----------------------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ServerFiles:
    """A throwaway CA and a proxy certificate for localhost, 127.0.0.1 and *.db.example.com."""
    return write_server_cert(make_ca(), tmp_path_factory.mktemp("certs"),
                             dns_names=("localhost", f"*.{SNI_DOMAIN}"))


def tls_section(certs: ServerFiles, mode: str) -> str:
    return f"tls:\n  cert: {q(str(certs.cert))}\n  key: {q(str(certs.key))}\n  mode: {mode}\n"


def config_text(pg: LocalPostgres, sample: SampleInfo, *, extra: str = "",
                resolve: str | None = None, cluster_tls: str | None = None) -> str:
    """The sample config with a `{port}` placeholder; `resolve` and the cluster's `tls:`
    lines (e.g. 'verify-full\\n    tls_ca: …') replaced when given."""
    text = sample.config_yaml(pg, 0, extra=extra).replace('"127.0.0.1:0"', '"127.0.0.1:{port}"')
    if resolve is not None:
        text = text.replace("resolve: [user_suffix, login, database, options]",
                            f"resolve: [{resolve}]")
    if cluster_tls is not None:
        text = text.replace("    tls: disable\n", f"    tls: {cluster_tls}\n")
    return text


@pytest.fixture(scope="module")
def tls_proxy(pg, sample, certs, tmp_path_factory):
    """TLS allowed (plaintext too), SNI a tenant source after the usual ones."""
    text = config_text(pg, sample, extra=tls_section(certs, "allow"),
                       resolve="user_suffix, login, database, options, sni")
    running = start_proxy(pg, sample, workdir=tmp_path_factory.mktemp("tls-allow"),
                          config_text=text)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def require_proxy(pg, sample, certs, tmp_path_factory):
    """`tls.mode: require`: plaintext clients are refused; SNI is not a tenant source."""
    running = start_proxy(pg, sample, workdir=tmp_path_factory.mktemp("tls-require"),
                          config_text=config_text(pg, sample, extra=tls_section(certs, "require")))
    yield running
    running.stop()


# -- raw protocol over a plain or TLS socket --------------------------------------------------

def ssl_request() -> bytes:
    return struct.pack("!II", 8, SSL_REQUEST)


def gssenc_request() -> bytes:
    return struct.pack("!II", 8, GSSENC_REQUEST)


def negotiate_tls(proxy, certs: ServerFiles, server_hostname: str | None) -> ssl.SSLSocket:
    """SSLRequest, expect 'S', then a verified TLS handshake sending `server_hostname` as SNI."""
    sock = raw_connect(proxy.host, proxy.port)
    sock.sendall(ssl_request())
    assert sock.recv(1) == b"S"
    context = client_context(certs.ca)
    if server_hostname is None:
        context.check_hostname = False  # the certificate is still verified against the CA
    return context.wrap_socket(sock, server_hostname=server_hostname)


def login(sock: socket.socket, user: str, password: str, database: str = "app") -> dict | None:
    """Startup + SCRAM on an already negotiated socket; None at ReadyForQuery, else the
    fields of the ErrorResponse that refused the login."""
    import scramp

    sock.sendall(startup_packet({"user": user, "database": database}))
    scram = None
    while (msg := read_message(sock)) is not None:
        kind, body = msg
        if kind == "E":
            return error_fields(body)
        if kind == "Z":
            return None
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
        elif code != 0:
            raise AssertionError(f"unexpected authentication request {code}")
    raise AssertionError("the proxy closed the connection during login")


def query_values(sock: socket.socket, sql: str) -> list[str | None]:
    """A simple Query; the first column of every row (an ErrorResponse fails the test)."""
    sock.sendall(message(b"Q", sql.encode() + b"\0"))
    values: list[str | None] = []
    while (msg := read_message(sock)) is not None:
        kind, body = msg
        assert kind != "E", error_fields(body)
        if kind == "D":
            (length,) = struct.unpack("!i", body[2:6])
            values.append(None if length < 0 else body[6:6 + length].decode())
        elif kind == "Z":
            return values
    raise AssertionError("the proxy closed the connection during a query")


def sni_login(proxy, certs, server_name: str | None, user: str, password: str = APP
              ) -> tuple[ssl.SSLSocket, dict | None]:
    sock = negotiate_tls(proxy, certs, server_name)
    return sock, login(sock, user, password)


def assert_still_serving(proxy) -> None:
    with proxy.connect("app.umbrella", APP) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("umbrella",)
    assert proxy.returncode is None


# -- client TLS with real clients -------------------------------------------------------------

def test_psql_sslmode_require_runs_queries_as_acme(tls_proxy) -> None:
    result = run_psql(tls_proxy.dsn("app.acme", APP, sslmode="require"),
                      "SELECT current_database() || ':' || count(*) FROM items")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "acme:3"


def test_psql_verify_full_checks_the_proxy_certificate(tls_proxy, certs, tmp_path) -> None:
    ok = run_psql(tls_proxy.dsn("app.acme", APP, sslmode="verify-full", sslrootcert=str(certs.ca)),
                  "SELECT secret FROM items WHERE id = 3")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == canary("acme")
    other = make_ca("some other CA").write_cert(tmp_path / "other-ca.crt")
    bad = run_psql(tls_proxy.dsn("app.acme", APP, sslmode="verify-full", sslrootcert=str(other)),
                   "SELECT 1")
    assert bad.returncode != 0
    assert "certificate verify failed" in bad.stderr


def test_psycopg_over_tls(tls_proxy, certs) -> None:
    with tls_proxy.connect("app.acme", APP, sslmode="verify-full",
                           sslrootcert=str(certs.ca)) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_database()").fetchone() == ("acme",)
        assert conn.execute("SELECT name FROM items WHERE id = %s", (2,)).fetchone() == \
            ("acme-beta",)


def test_psycopg_plaintext_is_accepted_in_allow_mode(tls_proxy) -> None:
    with tls_proxy.connect("app.acme", APP, sslmode="disable") as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (3,)


async def test_asyncpg_over_tls(tls_proxy, certs) -> None:
    # With an SSLContext asyncpg insists on TLS and verifies the certificate against the CA.
    conn = await tls_proxy.aconnect("app.acme", APP, ssl=client_context(certs.ca))
    try:
        assert await conn.fetchval("SELECT current_database()") == "acme"
        rows = await conn.fetch("SELECT id, name FROM items WHERE id <= $1 ORDER BY id", 2)
        assert [tuple(r) for r in rows] == [(1, "acme-alpha"), (2, "acme-beta")]
    finally:
        await conn.close()


async def test_asyncpg_refuses_an_untrusted_proxy_certificate(tls_proxy, tmp_path) -> None:
    other = make_ca("some other CA").write_cert(tmp_path / "other-ca.crt")
    with pytest.raises(ssl.SSLCertVerificationError):
        await tls_proxy.aconnect("app.acme", APP, ssl=client_context(other))


# -- tls.mode: require ------------------------------------------------------------------------

def test_require_mode_refuses_plaintext_psql(require_proxy) -> None:
    result = run_psql(require_proxy.dsn("app.acme", APP, sslmode="disable"), "SELECT 1")
    assert result.returncode != 0
    assert "FATAL:  tenantgate: TLS is required" in result.stderr  # the SQLSTATE: next test
    assert "HINT:  connect with sslmode=require" in result.stderr


def test_require_mode_refusal_before_the_password(require_proxy) -> None:
    """The refusal comes right after the startup packet: no password is asked for."""
    with raw_connect(require_proxy.host, require_proxy.port) as sock:
        sock.sendall(startup_packet({"user": "app.acme", "database": "app"}))
        messages = parse_messages(recv_until_closed(sock))
    assert [kind for kind, _ in messages] == ["E"]
    fields = error_fields(messages[0][1])
    assert (fields["S"], fields["C"]) == ("FATAL", "28000")
    assert fields["M"].startswith("tenantgate: TLS is required")
    assert "sslmode=require" in fields["H"]


def test_require_mode_accepts_tls_clients(require_proxy, certs) -> None:
    result = run_psql(require_proxy.dsn("app.globex", APP, sslmode="require"),
                      "SELECT name FROM items WHERE id = 1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "globex-alpha"
    with require_proxy.connect("app.acme", APP, sslmode="require") as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_database()").fetchone() == ("acme",)


def test_require_mode_refuses_plaintext_after_an_answered_gssenc_request(require_proxy) -> None:
    with raw_connect(require_proxy.host, require_proxy.port) as sock:
        sock.sendall(gssenc_request())
        assert sock.recv(1) == b"N"
        assert login(sock, "app.acme", APP)["C"] == "28000"


# -- SSLRequest / GSSENCRequest negotiation on raw sockets ------------------------------------

def test_junk_after_ssl_request_is_refused_before_tls(tls_proxy) -> None:
    """Bytes pipelined after the SSLRequest (CVE-2021-3935): no 'S', a plaintext 08P01."""
    with raw_connect(tls_proxy.host, tls_proxy.port) as sock:
        sock.sendall(ssl_request() + startup_packet({"user": "app.acme", "database": "app"}))
        data = recv_until_closed(sock)
    messages = parse_messages(data)
    assert [kind for kind, _ in messages] == ["E"], data[:80]
    fields = error_fields(messages[0][1])
    assert (fields["S"], fields["C"]) == ("FATAL", "08P01")
    assert "after SSLRequest" in fields["M"]
    assert_still_serving(tls_proxy)


def test_gssenc_request_is_answered_n_and_startup_continues(tls_proxy) -> None:
    with raw_connect(tls_proxy.host, tls_proxy.port) as sock:
        sock.sendall(gssenc_request())
        assert sock.recv(1) == b"N"
        assert login(sock, "app.globex", APP) is None
        assert query_values(sock, "SELECT name FROM items ORDER BY id") == \
            ["globex-alpha", "globex-beta", "globex-vault"]


def test_gssenc_then_ssl_request_then_tls(tls_proxy, certs) -> None:
    """libpq's gssencmode=prefer order: GSSENCRequest ('N'), then SSLRequest ('S'), then TLS."""
    with raw_connect(tls_proxy.host, tls_proxy.port) as sock:
        sock.sendall(gssenc_request())
        assert sock.recv(1) == b"N"
        sock.sendall(ssl_request())
        assert sock.recv(1) == b"S"
        context = client_context(certs.ca)
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            assert login(tls, "app.acme", APP) is None
            assert query_values(tls, "SELECT current_database()") == ["acme"]


@pytest.mark.parametrize("second", ["ssl", "gssenc"])
def test_negotiation_after_tls_is_a_protocol_violation(tls_proxy, certs, second) -> None:
    with negotiate_tls(tls_proxy, certs, "localhost") as tls:
        tls.sendall(ssl_request() if second == "ssl" else gssenc_request())
        messages = parse_messages(recv_until_closed(tls))
    assert [kind for kind, _ in messages] == ["E"]
    assert error_fields(messages[0][1])["C"] == "08P01"


def test_repeated_gssenc_request_is_a_protocol_violation(tls_proxy) -> None:
    with raw_connect(tls_proxy.host, tls_proxy.port) as sock:
        sock.sendall(gssenc_request())
        assert sock.recv(1) == b"N"
        sock.sendall(gssenc_request())
        messages = parse_messages(recv_until_closed(sock))
    assert [kind for kind, _ in messages] == ["E"]
    assert error_fields(messages[0][1])["C"] == "08P01"


def test_failed_tls_handshake_is_dropped_and_the_proxy_serves_on(tls_proxy) -> None:
    """After 'S' the client sends no ClientHello but a startup packet: the handshake fails,
    the connection is closed without a plaintext reply, and other clients are unaffected."""
    mark = tls_proxy.log_mark()
    with raw_connect(tls_proxy.host, tls_proxy.port) as sock:
        sock.sendall(ssl_request())
        assert sock.recv(1) == b"S"
        sock.sendall(startup_packet({"user": "app.acme", "database": "app"}))
        data = recv_until_closed(sock)
    assert not data.startswith(b"E")  # at most a TLS alert record, never an ErrorResponse
    tls_proxy.wait_for_log("client TLS handshake failed", since=mark)
    assert_still_serving(tls_proxy)


def test_client_closing_during_the_tls_handshake(tls_proxy) -> None:
    with raw_connect(tls_proxy.host, tls_proxy.port) as sock:
        sock.sendall(ssl_request())
        assert sock.recv(1) == b"S"
    assert_still_serving(tls_proxy)


# -- SNI as a tenant source -------------------------------------------------------------------

def test_sni_names_the_tenant(tls_proxy, certs) -> None:
    """Login `app` with no suffix, database `app` (no tenant), SNI acme.db.example.com → acme."""
    sock, refused = sni_login(tls_proxy, certs, f"acme.{SNI_DOMAIN}", "app")
    with sock:
        assert refused is None
        assert query_values(sock, "SELECT current_database()") == ["acme"]
        assert query_values(sock, "SELECT secret FROM items WHERE id = 3") == [canary("acme")]


def test_sni_names_a_schema_tenant(tls_proxy, certs) -> None:
    sock, refused = sni_login(tls_proxy, certs, f"HOOLI.{SNI_DOMAIN}", "app")
    with sock:
        assert refused is None
        assert query_values(sock, "SELECT name FROM items WHERE id = 1") == ["hooli-alpha"]


def test_libpq_sends_sni_for_a_host_name(tls_proxy, certs) -> None:
    """psql with host=globex.db.example.com (hostaddr=127.0.0.1, so no DNS): libpq sends
    the host name as SNI (sslsni=1) and verifies the certificate against it."""
    dsn = (f"host=globex.{SNI_DOMAIN} hostaddr=127.0.0.1 port={tls_proxy.port} user=app "
           f"password={APP} dbname=app sslmode=verify-full sslrootcert={certs.ca}")
    result = run_psql(dsn, "SELECT name FROM items WHERE id = 2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "globex-beta"


def test_sni_tenant_the_login_may_not_act_for(tls_proxy, certs) -> None:
    sock, refused = sni_login(tls_proxy, certs, f"umbrella.{SNI_DOMAIN}", "limited",
                              "limited-secret")
    sock.close()
    assert refused["C"] == "28000"
    assert 'may not act for tenant "umbrella"' in refused["M"]


def test_sni_conflicting_with_the_user_suffix(tls_proxy, certs) -> None:
    sock, refused = sni_login(tls_proxy, certs, f"acme.{SNI_DOMAIN}", "app.globex")
    sock.close()
    assert refused["C"] == "28000"
    assert "conflicting tenants" in refused["M"]


def test_sni_agreeing_with_the_user_suffix(tls_proxy, certs) -> None:
    sock, refused = sni_login(tls_proxy, certs, f"globex.{SNI_DOMAIN}", "app.globex")
    with sock:
        assert refused is None
        assert query_values(sock, "SELECT name FROM items WHERE id = 1") == ["globex-alpha"]


def test_no_sni_no_tenant(tls_proxy, certs) -> None:
    """Without a server name (clients send none for an IP address) there is no tenant."""
    sock, refused = sni_login(tls_proxy, certs, None, "app")
    sock.close()
    assert refused["C"] == "28000"
    assert "no tenant given" in refused["M"]


def test_sni_is_ignored_when_not_a_resolve_source(require_proxy, certs) -> None:
    sock, refused = sni_login(require_proxy, certs, f"acme.{SNI_DOMAIN}", "app")
    sock.close()
    assert refused["C"] == "28000"
    assert "no tenant given" in refused["M"]


# -- TLS to the backend -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ssl_pg() -> Iterator[LocalPostgres]:
    """A second PostgreSQL with `ssl = on` (self-signed certificate) and the sample."""
    server = LocalPostgres()
    server.start(ssl=True)
    try:
        install_sample(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def backend_ca(ssl_pg, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("backend-ca") / "root.crt"
    path.write_bytes(ssl_pg.ssl_cert_pem)
    return path


def backend_proxy(server, sample, tmp_path, cluster_tls: str):
    return start_proxy(server, sample, workdir=tmp_path / "proxy",
                       config_text=config_text(server, sample, cluster_tls=cluster_tls))


def backend_uses_tls(proxy, database: str = "acme") -> bool:
    """Whether the server connection a bypass login's query ran on is TLS (asked the server)."""
    with proxy.connect("migrator", "migrator-secret", database) as conn:
        (value,) = conn.execute(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    return value


def tenant_backend_uses_tls(proxy, server: LocalPostgres) -> bool:
    """The same for a tenant's server connection, checked directly as the superuser."""
    with proxy.connect("app.acme", APP) as conn:
        (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
        rows = backend_query(server, "postgres",
                             "SELECT s.ssl, a.usename, a.datname FROM pg_stat_ssl s "
                             "JOIN pg_stat_activity a USING (pid) WHERE pid = %s", (pid,))
    assert rows and rows[0][1:] == ("tenantgate", "acme"), rows
    return rows[0][0]


def failed_login(proxy, user: str = "app.acme") -> dict[str, str]:
    """The ErrorResponse fields a client gets when the proxy cannot open a server connection."""
    with raw_connect(proxy.host, proxy.port) as sock:
        fields = login(sock, user, APP)
    assert fields is not None, "the login succeeded"
    assert (fields["S"], fields["C"]) == ("FATAL", "08006"), fields
    assert "could not connect to cluster 'main'" in fields["M"], fields
    return fields


def test_backend_require_uses_tls(ssl_pg, sample, tmp_path) -> None:
    with backend_proxy(ssl_pg, sample, tmp_path, "require") as proxy:
        assert backend_uses_tls(proxy) is True
        assert tenant_backend_uses_tls(proxy, ssl_pg) is True
        with proxy.connect("app.acme", APP) as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone() == (3,)


def test_backend_prefer_uses_tls_when_offered(ssl_pg, sample, tmp_path) -> None:
    with backend_proxy(ssl_pg, sample, tmp_path, "prefer") as proxy:
        assert backend_uses_tls(proxy) is True
        assert tenant_backend_uses_tls(proxy, ssl_pg) is True


def test_backend_prefer_falls_back_to_plaintext(pg, sample, tmp_path) -> None:
    with backend_proxy(pg, sample, tmp_path, "prefer") as proxy:
        assert backend_uses_tls(proxy) is False
        with proxy.connect("app.acme", APP) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("acme",)


def test_backend_disable_stays_plaintext_on_a_tls_server(ssl_pg, sample, tmp_path) -> None:
    with backend_proxy(ssl_pg, sample, tmp_path, "disable") as proxy:
        assert backend_uses_tls(proxy) is False


def test_backend_require_without_server_tls_fails_clearly(pg, sample, tmp_path) -> None:
    with backend_proxy(pg, sample, tmp_path, "require") as proxy:
        fields = failed_login(proxy)
        assert f"server 127.0.0.1:{pg.port} does not support TLS (the cluster has tls: require)" \
            in fields["M"]
        with pytest.raises(psycopg.OperationalError, match="cluster 'main'"):  # what psql users see
            proxy.connect("app.acme", APP).close()
        assert proxy.returncode is None


def test_backend_verify_full_with_the_right_ca(ssl_pg, sample, tmp_path, backend_ca) -> None:
    with backend_proxy(ssl_pg, sample, tmp_path,
                       f"verify-full\n    tls_ca: {q(str(backend_ca))}") as proxy:
        assert backend_uses_tls(proxy) is True
        with proxy.connect("app.hooli", APP) as conn:
            assert conn.execute("SELECT name FROM items WHERE id = 3").fetchone() == \
                ("hooli-vault",)


def test_backend_verify_full_with_a_wrong_ca(ssl_pg, sample, tmp_path) -> None:
    wrong = make_ca("not the backend's CA").write_cert(tmp_path / "wrong-ca.crt")
    with backend_proxy(ssl_pg, sample, tmp_path,
                       f"verify-full\n    tls_ca: {q(str(wrong))}") as proxy:
        assert "certificate verify failed" in failed_login(proxy)["M"]
        assert proxy.returncode is None


def test_backend_verify_full_by_host_name(ssl_pg, sample, tmp_path, backend_ca) -> None:
    text = config_text(ssl_pg, sample, cluster_tls=f"verify-full\n    tls_ca: {q(str(backend_ca))}")
    text = text.replace(f'"{ssl_pg.host}:{ssl_pg.port}"', f'"localhost:{ssl_pg.port}"')
    with start_proxy(ssl_pg, sample, workdir=tmp_path / "proxy", config_text=text) as proxy:
        assert backend_uses_tls(proxy) is True


def served_certificate(server: LocalPostgres) -> bytes:
    """The DER certificate the server presents to a new connection now."""
    with raw_connect(server.host, server.port) as sock:
        sock.sendall(ssl_request())
        assert sock.recv(1) == b"S"
        with client_context(None).wrap_socket(sock) as tls:
            return tls.getpeercert(binary_form=True)


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    """Poll a real condition until it holds (fail after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.05)


def test_backend_verify_full_checks_the_host_name(ssl_pg, sample, tmp_path) -> None:
    """A certificate from the trusted CA that names another host is refused."""
    ca = make_ca("backend CA")
    original = served_certificate(ssl_pg)
    ssl_pg.set_ssl_certificate(*ca.issue("elsewhere", dns_names=("db.elsewhere.test",), ips=()))
    try:
        wait_for(lambda: served_certificate(ssl_pg) != original, "the new backend certificate")
        ca_file = ca.write_cert(tmp_path / "ca.crt")
        with backend_proxy(ssl_pg, sample, tmp_path,
                           f"verify-full\n    tls_ca: {q(str(ca_file))}") as proxy:
            message_text = failed_login(proxy)["M"]
            assert "certificate verify failed" in message_text
            assert "certificate is not valid for '127.0.0.1'" in message_text
    finally:
        ssl_pg.set_ssl_certificate(ssl_pg.ssl_cert_pem, ssl_pg.ssl_key_pem)
        wait_for(lambda: served_certificate(ssl_pg) == original, "the original certificate")
