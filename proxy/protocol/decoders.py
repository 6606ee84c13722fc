"""Decoders: whole raw messages (5-byte header included) to Python values.

Each decoder checks the type byte and the length word, reads strings up to
their NUL the way the server does, and demands that nothing is left over, so
the proxy never reads a message differently from PostgreSQL (THREATS 60).
Malformed input is `ProtocolViolation` (08P01); invalid UTF-8 in text is
`InvalidEncoding` (22021). Only `decode_error_fields` is lenient: it reads
what odd servers send and never raises on content. `proxy.protocol.messages`
re-exports all of these.
"""

from __future__ import annotations

import functools
import struct
from typing import NamedTuple

from proxy.errors import InvalidEncoding, ProtocolViolation
from proxy.protocol import codes as c

_I32 = struct.Struct("!i")
_U16 = struct.Struct("!H")
_unpack_i32 = _I32.unpack_from
_unpack_u16 = _U16.unpack_from
_unpack_i16 = struct.Struct("!h").unpack_from
_ROW_FIELD_TAIL = 18  # table oid, attnum, type oid, typlen, typmod, format


class Parse(NamedTuple):
    """Parse's statement name, SQL text and parameter type OIDs (0: unspecified).

    A NamedTuple, not a dataclass: it is built for every Parse a client sends,
    and a tuple is built three times faster than a frozen dataclass."""

    name: str
    query: str
    param_oids: tuple[int, ...]


class Bind(NamedTuple):
    """Bind's portal and statement names; the parameters stay opaque bytes."""

    portal: str
    statement: str


_new_parse = functools.partial(tuple.__new__, Parse)
_new_bind = functools.partial(tuple.__new__, Bind)


def _bad(what: str) -> ProtocolViolation:
    return ProtocolViolation(f"malformed {what} message", rule="framing")


def _frame(raw: bytes, kind: int, what: str) -> int:
    """Check type and length word; return the message's total length."""
    n = len(raw)
    if n < 5 or raw[0] != kind or _unpack_i32(raw, 1)[0] != n - 1:
        raise _bad(what)
    return n


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEncoding("invalid byte sequence for encoding \"UTF8\"",
                              rule="encoding") from None


def _cstring(raw: bytes, pos: int, what: str) -> tuple[str, int]:
    """The NUL-terminated string at `pos` and the position after its NUL."""
    nul = raw.find(b"\x00", pos)
    if nul < 0:
        raise _bad(what)
    return _utf8(raw[pos:nul]), nul + 1


def _only_string(raw: bytes, kind: int, what: str) -> str:
    """Body is one string whose NUL is exactly the last byte."""
    n = _frame(raw, kind, what)
    if n < 6 or raw.find(b"\x00", 5) != n - 1:
        raise _bad(what)
    return _utf8(raw[5:-1])


# --- client -> proxy ----------------------------------------------------------

def decode_query(raw: bytes) -> str:
    """Query ('Q'): the SQL text. A NUL anywhere but the last byte is 08P01.
    (`_only_string` written out: this runs for every simple-protocol statement.)"""
    n = len(raw)
    if n < 6 or raw[0] != c.QUERY or _unpack_i32(raw, 1)[0] != n - 1 \
            or raw.find(b"\x00", 5) != n - 1:
        raise _bad("Query")
    try:
        return raw[5:-1].decode("utf-8")
    except UnicodeDecodeError:
        return _utf8(raw[5:-1])  # raises InvalidEncoding


def decode_parse(raw: bytes) -> Parse:
    """Parse ('P'): statement name, SQL text and parameter type OIDs."""
    n = _frame(raw, c.PARSE, "Parse")
    name_end = raw.find(b"\x00", 5)
    query_end = raw.find(b"\x00", name_end + 1) if name_end >= 0 else -1
    if query_end < 0 or n - query_end < 3:
        raise _bad("Parse")
    count = _unpack_u16(raw, query_end + 1)[0]
    if n - query_end - 3 != 4 * count:
        raise _bad("Parse")  # also catches a NUL inside the SQL text
    oids = _oid_struct(count).unpack_from(raw, query_end + 3) if count else ()
    return _new_parse((_utf8(raw[5:name_end]), _utf8(raw[name_end + 1:query_end]), oids))


@functools.lru_cache(maxsize=64)
def _oid_struct(count: int) -> struct.Struct:
    return struct.Struct(f"!{count}I")


def decode_bind(raw: bytes) -> Bind:
    """Bind ('B'): the portal and statement names, once the whole message is checked.

    The parameter values are walked by their lengths, never copied: the proxy
    forwards them as they are, so it only has to be sure that the server will
    read the same message boundaries, names and value count as the proxy did.
    """
    n = _frame(raw, c.BIND, "Bind")
    portal_end = raw.find(b"\x00", 5)
    statement_end = raw.find(b"\x00", portal_end + 1) if portal_end >= 0 else -1
    if statement_end < 0 or _bind_values_end(raw, statement_end + 1, n) != n:
        raise _bad("Bind")
    return _new_bind((_utf8(raw[5:portal_end]), _utf8(raw[portal_end + 1:statement_end])))


def bind_parameters(raw: bytes) -> list[tuple[int, bytes | None]]:
    """Bind's parameters as (format code, value or None for NULL), 0 = text, 1 = binary.

    For a Bind that `decode_bind` accepted; copies the values, so only the few statements
    whose parameters the proxy must see (the tenant column's) are decoded this way."""
    pos = raw.find(b"\x00", raw.find(b"\x00", 5) + 1) + 1
    format_count = _unpack_u16(raw, pos)[0]
    formats = [_unpack_i16(raw, pos + 2 + 2 * i)[0] for i in range(format_count)]
    pos += 2 + 2 * format_count
    count = _unpack_u16(raw, pos)[0]
    pos += 2
    params = []
    for index in range(count):
        size = _unpack_i32(raw, pos)[0]
        pos += 4
        value = None if size < 0 else raw[pos:pos + size]
        pos += max(size, 0)
        fmt = formats[0] if format_count == 1 else formats[index] if format_count else 0
        params.append((fmt, value))
    return params


def _bind_values_end(raw: bytes, pos: int, n: int) -> int:
    """Walk Bind's format codes, parameter values and result format codes from `pos`;
    return where they end (the message is well formed if that is `n`)."""
    pos = _int16_array_end(raw, pos, n)  # parameter format codes
    if n - pos < 2:
        raise _bad("Bind")
    count = _unpack_u16(raw, pos)[0]
    pos += 2
    for _ in range(count):  # each value takes at least 4 bytes: bounded by the length
        if n - pos < 4:
            raise _bad("Bind")
        size = _unpack_i32(raw, pos)[0]
        pos += 4
        if size > 0:
            if size > n - pos:
                raise _bad("Bind")
            pos += size
        elif size < -1:  # -1 is NULL; any other negative length is malformed
            raise _bad("Bind")
    return _int16_array_end(raw, pos, n)  # result format codes


def _int16_array_end(raw: bytes, pos: int, n: int) -> int:
    """The end of a uint16 count followed by that many int16 values (Bind's format codes)."""
    if n - pos < 2:
        raise _bad("Bind")
    end = pos + 2 + 2 * _unpack_u16(raw, pos)[0]
    if end > n:
        raise _bad("Bind")
    return end


def bind_names_end(raw: bytes) -> int:
    """Offset just after Bind's statement name: `raw[end:]` is the opaque rest.

    Only finds the names: `raw` must be a Bind that `decode_bind` accepted."""
    return raw.find(b"\x00", raw.find(b"\x00", 5) + 1) + 1


def _kind_and_name(raw: bytes, kind: int, what: str) -> tuple[str, str]:
    n = _frame(raw, kind, what)
    if n < 7 or raw[5] not in (0x53, 0x50) or raw.find(b"\x00", 6) != n - 1:
        raise _bad(what)  # kind must be 'S' or 'P'; one name, NUL last
    return chr(raw[5]), _utf8(raw[6:-1])


def decode_describe(raw: bytes) -> tuple[str, str]:
    """Describe ('D'): ('S' statement | 'P' portal, name)."""
    return _kind_and_name(raw, c.DESCRIBE, "Describe")


def decode_close(raw: bytes) -> tuple[str, str]:
    """Close ('C'): ('S' statement | 'P' portal, name)."""
    return _kind_and_name(raw, c.CLOSE, "Close")


def decode_execute(raw: bytes) -> tuple[str, int]:
    """Execute ('E'): (portal, max_rows); max_rows 0 means no limit."""
    n = _frame(raw, c.EXECUTE, "Execute")
    if n < 10 or raw.find(b"\x00", 5) != n - 5:
        raise _bad("Execute")  # the portal name's NUL must come just before max_rows
    return _utf8(raw[5:n - 5]), _unpack_i32(raw, n - 4)[0]


def check_empty(raw: bytes, kind: int, what: str) -> None:
    """A message that is only a header (Flush, Sync): anything after it is 08P01."""
    if _frame(raw, kind, what) != 5:
        raise _bad(what)


def decode_password(raw: bytes) -> bytes:
    """PasswordMessage ('p'): the secret without its trailing NUL."""
    n = _frame(raw, c.PASSWORD, "password")
    if n < 6 or raw.find(b"\x00", 5) != n - 1:
        raise _bad("password")
    return raw[5:-1]


def decode_sasl_initial(raw: bytes) -> tuple[str, bytes]:
    """SASLInitialResponse ('p'): (mechanism, initial data; b'' when absent)."""
    n = _frame(raw, c.PASSWORD, "SASLInitialResponse")
    mechanism, pos = _cstring(raw, 5, "SASLInitialResponse")
    if n - pos < 4:
        raise _bad("SASLInitialResponse")
    size = _unpack_i32(raw, pos)[0]
    if (size == -1 and n - pos == 4) or (size >= 0 and n - pos - 4 == size):
        return mechanism, raw[pos + 4:]
    raise _bad("SASLInitialResponse")


def decode_sasl_response(raw: bytes) -> bytes:
    """SASLResponse ('p'): the mechanism data."""
    _frame(raw, c.PASSWORD, "SASLResponse")
    return raw[5:]


# --- server -> proxy ----------------------------------------------------------

def decode_error_fields(raw: bytes) -> dict[str, str]:
    """ErrorResponse/NoticeResponse fields by code letter; lenient on content.

    A missing final terminator or a truncated last field is read as far as it
    goes, bad UTF-8 is replaced, and a missing SQLSTATE becomes 'XX000', so an
    odd server (CVE-2026-6666 style) cannot crash the proxy.
    """
    if len(raw) < 5 or raw[0] not in (c.ERROR_RESPONSE, c.NOTICE_RESPONSE):
        raise _bad("ErrorResponse")
    fields: dict[str, str] = {}
    pos, n = 5, len(raw)
    while pos < n and raw[pos] != 0:
        nul = raw.find(b"\x00", pos + 1)
        end = n if nul < 0 else nul
        fields[chr(raw[pos])] = raw[pos + 1:end].decode("utf-8", "replace")
        pos = end + 1
    fields.setdefault("C", "XX000")
    return fields


def decode_parameter_status(raw: bytes) -> tuple[str, str]:
    """ParameterStatus ('S'): (name, value)."""
    n = _frame(raw, c.PARAMETER_STATUS, "ParameterStatus")
    name, pos = _cstring(raw, 5, "ParameterStatus")
    if pos >= n or raw.find(b"\x00", pos) != n - 1:
        raise _bad("ParameterStatus")
    return name, _utf8(raw[pos:-1])


def decode_backend_key_data(raw: bytes) -> tuple[int, bytes]:
    """BackendKeyData ('K'): (pid, secret key; 4 bytes in protocol 3.0)."""
    n = _frame(raw, c.BACKEND_KEY_DATA, "BackendKeyData")
    if not 4 <= n - 9 <= 256:
        raise _bad("BackendKeyData")
    return _unpack_i32(raw, 5)[0], raw[9:]


def decode_authentication(raw: bytes) -> tuple[int, bytes]:
    """Authentication ('R'): (request code, the data that follows it)."""
    n = _frame(raw, c.AUTHENTICATION, "Authentication")
    if n < 9:
        raise _bad("Authentication")
    return _unpack_i32(raw, 5)[0], raw[9:]


def decode_ready_for_query(raw: bytes) -> bytes:
    """ReadyForQuery ('Z'): the transaction status b'I', b'T' or b'E'."""
    n = _frame(raw, c.READY_FOR_QUERY, "ReadyForQuery")
    status = raw[5:6]
    if n != 6 or status not in c.TRANSACTION_STATUSES:
        raise _bad("ReadyForQuery")
    return status


def decode_command_complete(raw: bytes) -> str:
    """CommandComplete ('C'): the command tag, e.g. 'INSERT 0 1'."""
    return _only_string(raw, c.COMMAND_COMPLETE, "CommandComplete")


def decode_row_description(raw: bytes) -> list[str]:
    """RowDescription ('T'): the column names."""
    n = _frame(raw, c.ROW_DESCRIPTION, "RowDescription")
    if n < 7:
        raise _bad("RowDescription")
    names, pos = [], 7
    for _ in range(_unpack_u16(raw, 5)[0]):
        name, pos = _cstring(raw, pos, "RowDescription")
        names.append(name)
        pos += _ROW_FIELD_TAIL
    if pos != n:
        raise _bad("RowDescription")
    return names


def decode_data_row(raw: bytes) -> list[bytes | None]:
    """DataRow ('D'): the column values as bytes, None for SQL NULL."""
    n = _frame(raw, c.DATA_ROW, "DataRow")
    if n < 7:
        raise _bad("DataRow")
    values: list[bytes | None] = []
    pos = 7
    for _ in range(_unpack_u16(raw, 5)[0]):
        if n - pos < 4:
            raise _bad("DataRow")
        size = _unpack_i32(raw, pos)[0]
        pos += 4
        if size < -1 or (size > 0 and n - pos < size):
            raise _bad("DataRow")
        values.append(None if size == -1 else raw[pos:pos + size])
        pos += max(size, 0)
    if pos != n:
        raise _bad("DataRow")
    return values
