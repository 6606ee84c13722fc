"""Protocol abuse on raw sockets (THREATS 55, 56, 60): the abuser gets FATAL 08P01 and is
disconnected, and a well-behaved psycopg client connected at the same time keeps working."""

from __future__ import annotations

import random
import socket
import struct

import psycopg
import pytest

from tests.helpers import (PROTOCOL_3_0, SSL_REQUEST, error_fields, message, parse_messages,
                           raw_connect, raw_login, recv_until_closed, startup_packet)

APP = "app-secret"
CANCEL_REQUEST = 80877102
GSSENC_REQUEST = 80877104
SPECIAL_CODES = {PROTOCOL_3_0, SSL_REQUEST, CANCEL_REQUEST, GSSENC_REQUEST}


@pytest.fixture
def bystander(proxy):
    """A normal client connected through the abuse; it must still work afterwards."""
    conn = proxy.connect("app.acme", APP)
    assert conn.execute("SELECT count(*) FROM items").fetchone() == (3,)
    yield conn
    assert conn.execute("SELECT name FROM items WHERE id = %s", (3,)).fetchone() == \
        ("acme-vault",)
    conn.close()
    with proxy.connect("app.globex", APP) as fresh:  # and the proxy still accepts new clients
        assert fresh.execute("SELECT count(*) FROM items").fetchone() == (3,)
    assert proxy.returncode is None


def assert_fatal_08p01(data: bytes, *, after_ssl_request: bool = False) -> dict[str, str]:
    """The proxy's whole reply: one FATAL ErrorResponse with SQLSTATE 08P01 (after an 'N'
    answer to an SSLRequest, if any), then the connection was closed."""
    messages = parse_messages(data, after_ssl_request)
    if after_ssl_request and messages and messages[0][0] in ("N", "S"):
        messages = messages[1:]
    assert [kind for kind, _ in messages] == ["E"], messages
    fields = error_fields(messages[0][1])
    assert fields.get("C") == "08P01", fields
    assert fields.get("S") == "FATAL", fields
    assert fields.get("M", "").startswith("tenantgate:"), fields
    return fields


def send_and_collect(proxy, data: bytes, *, close_write: bool = False) -> bytes:
    """Send raw bytes; return everything the proxy answers until it closes the connection
    (a proxy that never closes makes this fail with a timeout)."""
    with raw_connect(proxy.host, proxy.port) as sock:
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        return recv_until_closed(sock)


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_in_a_framed_startup_packet(proxy, bystander, seed) -> None:
    rng = random.Random(seed)
    body = rng.randbytes(rng.randrange(4, 300))
    assert struct.unpack("!I", body[:4])[0] not in SPECIAL_CODES
    assert_fatal_08p01(send_and_collect(proxy, struct.pack("!I", len(body) + 4) + body))


@pytest.mark.parametrize("seed", range(8))
def test_unframed_random_bytes(proxy, bystander, seed) -> None:
    """Random bytes, then the client closes its side: an 08P01 error or a silent close,
    never anything else (and never a crash)."""
    data = random.Random(1000 + seed).randbytes(64 + seed * 97)
    reply = send_and_collect(proxy, data, close_write=True)
    if reply:
        assert_fatal_08p01(reply)
    length = struct.unpack("!I", data[:4])[0]
    if length < 8 or length > 16 * 1024 * 1024:  # framing is wrong from the first 4 bytes
        assert reply, "a startup packet with an impossible length must get 08P01"


def test_truncated_startup_packet(proxy, bystander) -> None:
    packet = startup_packet({"user": "app.acme", "database": "app"})
    reply = send_and_collect(proxy, packet[:len(packet) // 2], close_write=True)
    if reply:  # the connection may also just be closed once the client closed its side
        assert_fatal_08p01(reply)


@pytest.mark.parametrize("length", [0, 4, 7, 0x7FFFFFF0, 0xFFFFFFFF, 100 * 1024 * 1024])
def test_impossible_startup_length(proxy, bystander, length) -> None:
    """Answered at once, without waiting for the announced bytes."""
    assert_fatal_08p01(send_and_collect(proxy, struct.pack("!II", length, PROTOCOL_3_0)))


def test_unsupported_protocol_version(proxy, bystander) -> None:
    body = struct.pack("!I", (2 << 16) | 0) + b"user\0app.acme\0\0"
    reply = send_and_collect(proxy, struct.pack("!I", len(body) + 4) + body)
    messages = parse_messages(reply)
    assert [k for k, _ in messages] == ["E"] and \
        error_fields(messages[0][1])["C"] in ("08P01", "0A000"), messages


def test_replication_startup_is_refused(proxy, bystander) -> None:
    """walsender connections would stream every tenant's WAL (THREATS 56)."""
    mark = proxy.log_mark()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn("app.acme", APP), replication="database",
                        connect_timeout=10).close()
    proxy.wait_for_log("replication", since=mark)


def ssl_request() -> bytes:
    return struct.pack("!II", 8, SSL_REQUEST)


@pytest.mark.parametrize("junk", [
    b"junk after the SSL request",
    startup_packet({"user": "app.acme", "database": "app"}),  # plaintext injected before TLS
])
def test_junk_after_ssl_request(proxy, bystander, junk) -> None:
    reply = send_and_collect(proxy, ssl_request() + junk)
    assert_fatal_08p01(reply, after_ssl_request=True)


def test_ssl_request_alone_is_answered(proxy, bystander) -> None:
    """No TLS configured: 'N', then a normal startup on the same connection works."""
    with raw_connect(proxy.host, proxy.port) as sock:
        sock.sendall(ssl_request())
        assert sock.recv(1) == b"N"
        sock.sendall(startup_packet({"user": "app.acme", "database": "app"}))
        reply = sock.recv(5)
    assert reply[:1] == b"R"


# -- after login ---------------------------------------------------------------------------------

def logged_in(proxy):
    return raw_login(proxy.host, proxy.port, "app.acme", APP)


def test_oversized_message_after_login(proxy, bystander) -> None:
    with logged_in(proxy) as sock:
        sock.sendall(b"Q" + struct.pack("!I", 0x7FFFFFF0))
        assert_fatal_08p01(recv_until_closed(sock))


def test_message_length_below_minimum(proxy, bystander) -> None:
    with logged_in(proxy) as sock:
        sock.sendall(b"Q" + struct.pack("!I", 2) + b"SELECT 1\0")
        assert_fatal_08p01(recv_until_closed(sock))


def test_unknown_message_type(proxy, bystander) -> None:
    with logged_in(proxy) as sock:
        sock.sendall(message(b"\x01", b"\0\0\0\0"))
        assert_fatal_08p01(recv_until_closed(sock))


def test_function_call_message_is_refused(proxy, bystander) -> None:
    """FunctionCall ('F') reaches any function by OID without SQL (THREATS 55)."""
    # call set_config(text, text, bool) (OID 2078) with no arguments decoded: refused anyway
    payload = struct.pack("!IhhIh", 2078, 0, 0, 0, 0)
    with logged_in(proxy) as sock:
        sock.sendall(message(b"F", payload))
        assert_fatal_08p01(recv_until_closed(sock))


def test_query_with_embedded_nul(proxy, bystander) -> None:
    """A NUL that is not at the end of the Query string (THREATS 60)."""
    with logged_in(proxy) as sock:
        sock.sendall(message(b"Q", b"SELECT 1\0; DELETE FROM items\0"))
        reply = recv_until_closed(sock)
    assert_fatal_08p01(reply)
    assert bystander.execute("SELECT count(*) FROM items").fetchone() == (3,)
