"""Message codec: builders of every message the proxy sends, plus the decoders.

Builders return complete wire bytes (type byte, length, body). Strings sent to
a server must not contain NUL (ValueError: a bug in the caller, since decoded
client text never does); text sent to a client in errors and notices has NULs
dropped, since it may quote user input. The decoders live in
`proxy.protocol.decoders` and are re-exported here, so callers import one module.
"""

from __future__ import annotations

import struct

from proxy.errors import ProxyError
from proxy.protocol import codes as c
from proxy.protocol.codes import *  # noqa: F403  (type bytes: callers need one import)
from proxy.protocol.decoders import (  # noqa: F401  (re-exported)
    Bind,
    Parse,
    bind_names_end,
    bind_parameters,
    check_empty,
    decode_authentication,
    decode_backend_key_data,
    decode_bind,
    decode_close,
    decode_command_complete,
    decode_data_row,
    decode_describe,
    decode_error_fields,
    decode_execute,
    decode_parameter_status,
    decode_parse,
    decode_password,
    decode_query,
    decode_ready_for_query,
    decode_row_description,
    decode_sasl_initial,
    decode_sasl_response,
)

_HEADER = struct.Struct("!Bi")
_I32 = struct.Struct("!i")
_U16 = struct.Struct("!H")
_TEXT_COLUMN = struct.Struct("!IhIhih").pack(0, 0, 25, -1, -1, 0)  # type text, format 0


def _msg(kind: int, body: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(body) + 4) + body


def _cstr(text: str) -> bytes:
    """A NUL-terminated string for a server; NUL inside would shift the framing."""
    if "\x00" in text:
        raise ValueError(f"string with NUL cannot be sent: {text[:40]!r}")
    return text.encode() + b"\x00"


def _auth(code: int, data: bytes = b"") -> bytes:
    return _msg(c.AUTHENTICATION, _I32.pack(code) + data)


# --- to clients ---------------------------------------------------------------

def _fields(kind: int, fields: dict[str, str]) -> bytes:
    parts = []
    for code, value in fields.items():
        if "\x00" in value:
            value = value.replace("\x00", "")
        parts.append(code.encode("ascii") + value.encode("utf-8", "replace") + b"\x00")
    parts.append(b"\x00")
    return _msg(kind, b"".join(parts))


def error_response(fields: dict[str, str]) -> bytes:
    """ErrorResponse ('E') from one-letter field codes (S, V, C, M, D, H...)."""
    return _fields(c.ERROR_RESPONSE, fields)


def notice_response(fields: dict[str, str]) -> bytes:
    """NoticeResponse ('N'), fields as for `error_response`."""
    return _fields(c.NOTICE_RESPONSE, fields)


def error_from(exc: ProxyError) -> bytes:
    """The ErrorResponse a client sees for `exc`: the one place errors are encoded."""
    return error_response(exc.fields())


_READY = {status: _msg(c.READY_FOR_QUERY, status) for status in c.TRANSACTION_STATUSES}


def ready_for_query(status: bytes) -> bytes:
    """ReadyForQuery ('Z') with status b'I' (idle), b'T' (in block), b'E' (failed)."""
    try:
        return _READY[status]
    except KeyError:
        raise ValueError(f"bad transaction status {status!r}") from None


def auth_ok() -> bytes:
    return _auth(c.AUTH_OK)


def auth_cleartext() -> bytes:
    return _auth(c.AUTH_CLEARTEXT)


def auth_md5(salt: bytes) -> bytes:
    if len(salt) != 4:
        raise ValueError("md5 salt must be 4 bytes")
    return _auth(c.AUTH_MD5, salt)


def auth_sasl(mechanisms: list[str]) -> bytes:
    """AuthenticationSASL: the mechanism names offered, in order of preference."""
    return _auth(c.AUTH_SASL, b"".join(_cstr(m) for m in mechanisms) + b"\x00")


def auth_sasl_continue(data: bytes) -> bytes:
    return _auth(c.AUTH_SASL_CONTINUE, data)


def auth_sasl_final(data: bytes) -> bytes:
    return _auth(c.AUTH_SASL_FINAL, data)


def parameter_status(name: str, value: str) -> bytes:
    return _msg(c.PARAMETER_STATUS, _cstr(name) + _cstr(value))


def backend_key_data(pid: int, key: bytes) -> bytes:
    """BackendKeyData ('K'): `key` is 4 bytes in protocol 3.0 (3.2 allows up to 256)."""
    if not 4 <= len(key) <= 256:
        raise ValueError(f"cancel key of {len(key)} bytes")
    return _msg(c.BACKEND_KEY_DATA, _I32.pack(pid) + key)


def command_complete(tag: str) -> bytes:
    return _msg(c.COMMAND_COMPLETE, _cstr(tag))


def empty_query_response() -> bytes:
    return _msg(c.EMPTY_QUERY_RESPONSE)


def row_description(names: list[str]) -> bytes:
    """RowDescription ('T') for text columns (type oid 25, text format)."""
    body = [_U16.pack(len(names))]
    body += [_cstr(name) + _TEXT_COLUMN for name in names]
    return _msg(c.ROW_DESCRIPTION, b"".join(body))


def data_row(values: list[str | None]) -> bytes:
    """DataRow ('D') of text values; None is SQL NULL."""
    body = [_U16.pack(len(values))]
    for value in values:
        if value is None:
            body.append(b"\xff\xff\xff\xff")
        else:
            data = value.encode()
            body.append(_I32.pack(len(data)) + data)
    return _msg(c.DATA_ROW, b"".join(body))


def parse_complete() -> bytes:
    return _msg(c.PARSE_COMPLETE)


def bind_complete() -> bytes:
    return _msg(c.BIND_COMPLETE)


def close_complete() -> bytes:
    return _msg(c.CLOSE_COMPLETE)


def no_data() -> bytes:
    return _msg(c.NO_DATA)


# --- to servers ---------------------------------------------------------------

def query(sql: str) -> bytes:
    """Query ('Q'); `_msg(c.QUERY, _cstr(sql))` written out: a row rewrite's every statement."""
    if "\x00" in sql:
        raise ValueError(f"string with NUL cannot be sent: {sql[:40]!r}")
    body = sql.encode()
    return _HEADER.pack(c.QUERY, len(body) + 5) + body + b"\x00"


def parse(name: str, sql: str, param_oids: tuple[int, ...] = ()) -> bytes:
    """Parse ('P'); an OID of 0 leaves a parameter's type to the server."""
    oids = struct.pack(f"!H{len(param_oids)}I", len(param_oids), *param_oids)
    return _msg(c.PARSE, _cstr(name) + _cstr(sql) + oids)


def bind(portal: str, statement: str, params: list[bytes | None] = []) -> bytes:  # noqa: B006
    """Bind ('B') with text-format parameters (None is NULL) and text results."""
    body = [_cstr(portal), _cstr(statement), b"\x00\x00", _U16.pack(len(params))]
    for value in params:
        if value is None:
            body.append(b"\xff\xff\xff\xff")
        else:
            body.append(_I32.pack(len(value)) + value)
    body.append(b"\x00\x00")
    return _msg(c.BIND, b"".join(body))


def rename_bind(raw: bytes, portal: str, statement: str) -> bytes:
    """A client's Bind with new portal/statement names, parameters kept as they are
    (for named statements re-prepared under another name on a server connection).
    `raw` must be a Bind that `decode_bind` accepted."""
    names = _cstr(portal) + _cstr(statement)
    rest = memoryview(raw)[bind_names_end(raw):]  # joined below: the values are copied once
    return b"".join((_HEADER.pack(c.BIND, 4 + len(names) + len(rest)), names, rest))


def _kind_name(kind: str, name: str) -> bytes:
    if kind not in ("S", "P"):
        raise ValueError(f"kind must be 'S' or 'P', not {kind!r}")
    return kind.encode() + _cstr(name)


def describe(kind: str, name: str) -> bytes:
    """Describe ('D') of a statement ('S') or a portal ('P')."""
    return _msg(c.DESCRIBE, _kind_name(kind, name))


def close(kind: str, name: str) -> bytes:
    """Close ('C') a statement ('S') or a portal ('P')."""
    return _msg(c.CLOSE, _kind_name(kind, name))


def close_statement(name: str) -> bytes:
    return close("S", name)


def close_portal(name: str) -> bytes:
    return close("P", name)


def execute(portal: str, max_rows: int = 0) -> bytes:
    return _msg(c.EXECUTE, _cstr(portal) + _I32.pack(max_rows))


_SYNC = _msg(c.SYNC)
_FLUSH = _msg(c.FLUSH)
_TERMINATE = _msg(c.TERMINATE)


def sync() -> bytes:
    return _SYNC


def flush() -> bytes:
    return _FLUSH


def terminate() -> bytes:
    return _TERMINATE


# What follows the Bind of the unnamed portal in the most common extended requests: a
# Describe of it (its RowDescription, which a simple Query's answer starts with), an
# Execute of all its rows and a Sync; or the Execute and Sync alone.
DESCRIBE_EXECUTE_SYNC = describe("P", "") + execute("") + sync()
EXECUTE_SYNC = execute("") + sync()


def password_message(secret: bytes) -> bytes:
    """PasswordMessage ('p') for cleartext or md5: pass `secret` WITHOUT a trailing
    NUL; the builder appends it."""
    if b"\x00" in secret:
        raise ValueError("password must not contain NUL")
    return _msg(c.PASSWORD, secret + b"\x00")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return _msg(c.PASSWORD, _cstr(mechanism) + _I32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return _msg(c.PASSWORD, data)
