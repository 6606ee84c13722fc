"""Startup phase: decode and encode the untyped messages a connection opens with.

`parse_startup` turns one raw message from `StartupReader` into a frozen
dataclass (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage). It is
strict: anything PostgreSQL 3.0 would not accept, or that a lenient parser
might read differently from the server, is `ProtocolViolation` (08P01).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from proxy.errors import ProtocolViolation
from proxy.protocol.codes import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    NEGOTIATE_PROTOCOL_VERSION,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
)

_HEAD = struct.Struct("!ii")
_CANCEL = struct.Struct("!iii")
PROTOCOL_OPTION_PREFIX = "_pq_."
MIN_CANCEL_KEY = 4  # protocol 3.0 keys are exactly 4 bytes
MAX_CANCEL_KEY = 256  # protocol 3.2 allows up to 256


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks for TLS; answer one byte, b'S' or b'N'."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption; the proxy answers b'N'."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancel the query of the session identified by (pid, key)."""

    pid: int
    key: bytes


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """Protocol version and the key/value parameters (user, database, options...)."""

    major: int
    minor: int
    params: dict[str, str] = field(hash=False)

    @property
    def protocol_options(self) -> list[str]:
        """The `_pq_.` protocol extension options asked for (we know none)."""
        return [k for k in self.params if k.startswith(PROTOCOL_OPTION_PREFIX)]


StartupRequest = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def _violation(message: str) -> ProtocolViolation:
    return ProtocolViolation(f"invalid startup packet: {message}", rule="startup")


def parse_startup(raw: bytes) -> StartupRequest:
    """Decode one whole startup-phase message (length word included)."""
    if len(raw) < 8:
        raise _violation("too short")
    length, code = _HEAD.unpack_from(raw)
    if length != len(raw):
        raise _violation("length does not match")
    if code == SSL_REQUEST_CODE or code == GSSENC_REQUEST_CODE:
        if length != 8:
            raise _violation("encryption request with a body")
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        return _parse_cancel(raw)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise _violation(f"unsupported frontend protocol {major}.{minor}")
    params = _parse_params(raw)
    if not params.get("user"):
        raise _violation("no user name specified")
    return StartupMessage(major, minor, params)


def _parse_cancel(raw: bytes) -> CancelRequest:
    key_len = len(raw) - 12
    if not MIN_CANCEL_KEY <= key_len <= MAX_CANCEL_KEY:
        raise _violation(f"cancel key of {key_len} bytes")
    pid = _CANCEL.unpack_from(raw)[2]
    return CancelRequest(pid, bytes(raw[12:]))


def _parse_params(raw: bytes) -> dict[str, str]:
    """Parse `key\\0value\\0 ... \\0`; the final NUL must be the last byte."""
    if raw[-1] != 0:
        raise _violation("parameters not terminated")
    parts = bytes(raw[8:-1]).split(b"\x00")
    # A well-formed list is key,value,...,key,value,"" (each pair NUL-ended).
    if parts[-1] != b"" or len(parts) % 2 != 1:
        raise _violation("parameter without a value")
    params: dict[str, str] = {}
    for i in range(0, len(parts) - 1, 2):
        key, value = _text(parts[i]), _text(parts[i + 1])
        if not key:
            raise _violation("empty parameter name")
        if key in params:
            raise _violation(f"duplicate parameter {key!r}")
        params[key] = value
    return params


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _violation("parameter is not valid UTF-8") from None


def encode_startup(params: dict[str, str]) -> bytes:
    """A protocol 3.0 StartupMessage carrying `params` (in order)."""
    body = bytearray()
    for key, value in params.items():
        if not key or "\x00" in key or "\x00" in value:
            raise ValueError(f"startup parameter {key!r} cannot be encoded")
        body += key.encode() + b"\x00" + value.encode() + b"\x00"
    body += b"\x00"
    return _HEAD.pack(len(body) + 8, PROTOCOL_3_0) + bytes(body)


def encode_ssl_request() -> bytes:
    return _HEAD.pack(8, SSL_REQUEST_CODE)


def encode_gssenc_request() -> bytes:
    return _HEAD.pack(8, GSSENC_REQUEST_CODE)


def encode_cancel_request(pid: int, key: bytes) -> bytes:
    """A CancelRequest; `key` is the 4-byte secret of protocol 3.0."""
    if not MIN_CANCEL_KEY <= len(key) <= MAX_CANCEL_KEY:
        raise ValueError(f"cancel key of {len(key)} bytes")
    return _CANCEL.pack(12 + len(key), CANCEL_REQUEST_CODE, pid) + key


def negotiate_protocol_version(minor: int, unsupported: list[str]) -> bytes:
    """NegotiateProtocolVersion ('v'): the newest minor version of protocol 3 we
    support (0: we speak 3.0 only) and the `_pq_.` options we do not know."""
    body = bytearray(struct.pack("!ii", minor, len(unsupported)))
    for name in unsupported:
        body += name.encode() + b"\x00"
    return bytes([NEGOTIATE_PROTOCOL_VERSION]) + struct.pack("!i", len(body) + 4) + body
