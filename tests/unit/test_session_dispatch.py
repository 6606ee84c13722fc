"""The session's dispatch of client messages, without sockets or a server.

What is checked here needs no server connection: unexpected message types are 08P01
whatever the session is doing, and text that is not UTF-8 is refused (22021) and
answered in order with what the proxy already answered alone.
"""

from __future__ import annotations

import struct
import types

import pytest

from proxy.errors import ProtocolViolation
from proxy.protocol import messages as m
from proxy.session import ClientSession


def msg(kind: str, body: bytes) -> bytes:
    return kind.encode() + struct.pack("!i", len(body) + 4) + body


class StubApp:
    def __init__(self) -> None:
        self.config = types.SimpleNamespace(max_message_size=1 << 20)
        self.log = None
        self.refusals: list[str] = []

    def refused(self, session, error, sql=None) -> None:
        self.refusals.append(error.sqlstate)


def session() -> ClientSession:
    return ClientSession(StubApp())


def replies(s: ClientSession) -> list[tuple[str, str | None]]:
    """What the session queued for the client: (type, SQLSTATE of an error)."""
    out, data = [], b"".join(s._client_out)
    while data:
        length = struct.unpack("!i", data[1:5])[0]
        raw, data = data[:1 + length], data[1 + length:]
        code = m.decode_error_fields(raw)["C"] if raw[:1] == b"E" else None
        out.append((raw[:1].decode(), code))
    return out


BAD_TEXT = b"SELECT '\xd6\xd0\\' ; DELETE FROM items; --'"


@pytest.mark.parametrize("raw", [msg("F", b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"),
                                 msg("p", b"secret\x00"), msg("\x01", b"")])
@pytest.mark.parametrize("skipping", [False, True])
def test_unexpected_types_are_protocol_violations(raw, skipping):
    s = session()
    s.skip_to_sync = skipping
    with pytest.raises(ProtocolViolation) as err:
        s._handle(raw[0], raw)
    assert err.value.sqlstate == "08P01" and err.value.fatal


def test_handlers_are_not_built_per_session():
    """An idle client costs memory: the dispatch table is shared by all sessions."""
    s = session()
    values = [getattr(s, name) for name in ClientSession.__slots__]
    assert not any(isinstance(v, dict) and m.QUERY in v for v in values)


def test_sessions_have_no_instance_dict():
    """Every attribute a session sets is a slot (a dict would be a large unshared table)."""
    assert not hasattr(session(), "__dict__")


def test_invalid_utf8_query_is_refused_with_ready_for_query():
    s = session()
    s._handle(m.QUERY, msg("Q", BAD_TEXT + b"\x00"))
    assert replies(s) == [("E", "22021"), ("Z", None)]
    assert s.app.refusals == ["22021"] and not s.skip_to_sync


def test_invalid_utf8_parse_is_refused_up_to_sync():
    s = session()
    for raw in (msg("P", b"\x00" + BAD_TEXT + b"\x00\x00\x00"), msg("B", b"\x00" * 8),
                msg("E", b"\x00" * 5), m.sync()):
        s._handle(raw[0], raw)
    assert replies(s) == [("E", "22021"), ("Z", None)]
    assert not s.skip_to_sync and not s.unsynced


@pytest.mark.parametrize("refused", [msg("Q", BAD_TEXT + b"\x00"),
                                     msg("P", b"\x00" + BAD_TEXT + b"\x00\x00\x00")])
def test_refusal_after_an_unsynced_close_is_answered_in_order(refused):
    """The proxy answers a Close of a statement alone; a refusal before the Sync must
    still be answered (no server is attached to raise it) after the CloseComplete."""
    s = session()
    for raw in (m.close_statement("never_prepared"), refused, m.sync()):
        s._handle(raw[0], raw)
    expected = [("3", None), ("E", "22021"), ("Z", None)]
    if refused[:1] == b"Q":  # the Sync after a Query gets its own ReadyForQuery
        expected.append(("Z", None))
    assert replies(s) == expected
    assert not s.unsynced


# -- the tenant column's bound values (row strategy, rewrite/both) -------------------------

from proxy.extended import certainly_not_key  # noqa: E402


@pytest.mark.parametrize("fmt, value, key, refused", [
    (0, None, "acme", True),  # NULL is never the key
    (1, None, "7", True),
    (0, b"acme", "acme", False),
    (0, b"globex", "acme", True),
    (0, b"07", "7", True),  # text format: the key as the configuration writes it
    (1, b"acme", "acme", False),  # binary text is the text's bytes
    (1, b"globex", "acme", True),
    (1, (7).to_bytes(4, "big"), "7", False),  # int4
    (1, (7).to_bytes(8, "big"), "7", False),  # int8
    (1, (-3).to_bytes(2, "big", signed=True), "-3", False),  # int2
    (1, (8).to_bytes(4, "big"), "7", True),
    (1, b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x07", "7", False),  # numeric: the server decides
    (1, bytes.fromhex("12345678123456781234567812345678"),
     "12345678-1234-5678-1234-567812345678", False),  # uuid
    (1, bytes(16), "12345678-1234-5678-1234-567812345678", True),
])
def test_certainly_not_key(fmt, value, key, refused):
    assert certainly_not_key(fmt, value, key) is refused
