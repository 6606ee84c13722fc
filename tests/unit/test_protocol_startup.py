"""Startup phase: parse_startup on hand-built packets, encoders, negotiation."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import ProtocolViolation, ProxyError
from proxy.protocol.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    encode_cancel_request,
    encode_gssenc_request,
    encode_ssl_request,
    encode_startup,
    negotiate_protocol_version,
    parse_startup,
)

FAST = settings(max_examples=200, deadline=None)

# By hand from the spec: int32 length (incl. itself), int32 code, body.
SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # 1234 << 16 | 5679
GSSENC_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x30"  # 1234 << 16 | 5680
CANCEL = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef"  # pid 12345
STARTUP = (b"\x00\x00\x00\x22\x00\x03\x00\x00"
           b"user\x00alice\x00database\x00shop\x00\x00")


def startup_bytes(body: bytes, code: int = 3 << 16) -> bytes:
    return struct.pack("!ii", len(body) + 8, code) + body


def test_fixture_lengths_are_right():
    assert len(STARTUP) == 0x22 and len(CANCEL) == 16


def test_parse_encryption_requests():
    assert parse_startup(SSL_REQUEST) == SSLRequest()
    assert parse_startup(GSSENC_REQUEST) == GSSENCRequest()
    assert encode_ssl_request() == SSL_REQUEST
    assert encode_gssenc_request() == GSSENC_REQUEST


def test_parse_cancel_request():
    assert parse_startup(CANCEL) == CancelRequest(12345, b"\xde\xad\xbe\xef")
    assert encode_cancel_request(12345, b"\xde\xad\xbe\xef") == CANCEL


def test_parse_startup_message():
    msg = parse_startup(STARTUP)
    assert msg == StartupMessage(3, 0, {"user": "alice", "database": "shop"})
    assert list(msg.params) == ["user", "database"]
    assert msg.protocol_options == []


def test_encode_startup_matches_fixture():
    assert encode_startup({"user": "alice", "database": "shop"}) == STARTUP


def test_protocol_3_2_with_options():
    raw = startup_bytes(b"user\x00a\x00_pq_.x\x001\x00\x00", code=(3 << 16) | 2)
    msg = parse_startup(raw)
    assert (msg.major, msg.minor) == (3, 2)
    assert msg.protocol_options == ["_pq_.x"]


def test_negotiate_protocol_version_bytes():
    # 'v', length 19, newest minor 0, one unknown option, its name.
    assert negotiate_protocol_version(0, ["_pq_.x"]) == (
        b"v\x00\x00\x00\x13" b"\x00\x00\x00\x00" b"\x00\x00\x00\x01" b"_pq_.x\x00")
    assert negotiate_protocol_version(0, []) == b"v\x00\x00\x00\x0c" + b"\x00" * 8


BAD = {
    "unknown request code": startup_bytes(b"", code=(1234 << 16) | 9999),
    "protocol 2": startup_bytes(b"user\x00a\x00\x00", code=2 << 16),
    "protocol 4": startup_bytes(b"user\x00a\x00\x00", code=4 << 16),
    "missing user": startup_bytes(b"database\x00d\x00\x00"),
    "empty user": startup_bytes(b"user\x00\x00\x00"),
    "no parameters": startup_bytes(b"\x00"),
    "empty body": startup_bytes(b""),
    "no terminator": startup_bytes(b"user\x00a\x00"),
    "value without NUL": startup_bytes(b"user\x00a"),
    "key without value": startup_bytes(b"user\x00a\x00database\x00\x00"),
    "junk after terminator": startup_bytes(b"user\x00a\x00\x00x\x00"),
    "empty key in the middle": startup_bytes(b"user\x00a\x00\x00x\x00\x00"),
    "duplicate key": startup_bytes(b"user\x00a\x00user\x00b\x00\x00"),
    "non-UTF-8 value": startup_bytes(b"user\x00\xff\xfe\x00\x00"),
    "non-UTF-8 key": startup_bytes(b"user\x00a\x00\xc3\x28\x00x\x00\x00"),
    "length word lies": b"\x00\x00\x00\x30" + STARTUP[4:],
    "too short": b"\x00\x00\x00\x08\x00\x03",
    "SSLRequest with body": struct.pack("!ii", 12, 80877103) + b"junk",
    "cancel key too short": struct.pack("!iii", 14, 80877102, 1) + b"ab",
    "cancel key too long": struct.pack("!iii", 12 + 257, 80877102, 1) + b"k" * 257,
}


@pytest.mark.parametrize("raw", BAD.values(), ids=BAD.keys())
def test_parse_startup_rejects(raw):
    with pytest.raises(ProtocolViolation) as err:
        parse_startup(raw)
    assert err.value.sqlstate == "08P01" and err.value.fatal


def test_encoders_refuse_unencodable():
    with pytest.raises(ValueError):
        encode_startup({"user": "a\x00b"})
    with pytest.raises(ValueError):
        encode_cancel_request(1, b"abc")


names = st.text(st.characters(blacklist_characters="\x00", codec="utf-8"), min_size=1,
                max_size=12)
values = st.text(st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=12)


@FAST
@given(st.dictionaries(names, values, max_size=6), st.text(min_size=1, max_size=8).filter(
    lambda s: "\x00" not in s and s.isprintable()))
def test_startup_round_trip(params, user):
    params = {"user": user, **{k: v for k, v in params.items() if k != "user"}}
    msg = parse_startup(encode_startup(params))
    assert msg == StartupMessage(3, 0, params)


@FAST
@given(st.binary(max_size=120))
def test_parse_startup_random_bytes_only_protocol_errors(body):
    for raw in (body, struct.pack("!i", len(body) + 4) + body,
                startup_bytes(body), startup_bytes(body, code=80877102)):
        try:
            parse_startup(raw)
        except ProxyError as exc:
            assert exc.sqlstate == "08P01"


@FAST
@given(st.integers(-(1 << 31), (1 << 31) - 1), st.binary(min_size=4, max_size=256))
def test_cancel_round_trip(pid, key):
    assert parse_startup(encode_cancel_request(pid, key)) == CancelRequest(pid, key)
