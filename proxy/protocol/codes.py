"""Named constants of the PostgreSQL 3.0 wire protocol: message type bytes and codes.

Type bytes are ints (what indexing a `bytes` object yields), so `raw[0] == QUERY`
needs no conversion. The two directions reuse letters ('E' is Execute from a
client and ErrorResponse from a server), hence the separate groups.
`proxy.protocol.messages` re-exports every name here, so one import serves.
"""

from __future__ import annotations

# --- frontend (client -> server) message types --------------------------------
BIND = ord("B")
CLOSE = ord("C")
COPY_DATA = ord("d")  # both directions
COPY_DONE = ord("c")  # both directions
COPY_FAIL = ord("f")
DESCRIBE = ord("D")
EXECUTE = ord("E")
FLUSH = ord("H")
FUNCTION_CALL = ord("F")
PARSE = ord("P")
PASSWORD = ord("p")  # PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse
PASSWORD_MESSAGE = PASSWORD
QUERY = ord("Q")
SYNC = ord("S")
TERMINATE = ord("X")

FRONTEND_TYPES = frozenset({
    BIND, CLOSE, COPY_DATA, COPY_DONE, COPY_FAIL, DESCRIBE, EXECUTE, FLUSH,
    FUNCTION_CALL, PARSE, PASSWORD, QUERY, SYNC, TERMINATE,
})

# --- backend (server -> client) message types ---------------------------------
AUTHENTICATION = ord("R")
BACKEND_KEY_DATA = ord("K")
BIND_COMPLETE = ord("2")
CLOSE_COMPLETE = ord("3")
COMMAND_COMPLETE = ord("C")
COPY_BOTH_RESPONSE = ord("W")
COPY_IN_RESPONSE = ord("G")
COPY_OUT_RESPONSE = ord("H")
DATA_ROW = ord("D")
EMPTY_QUERY_RESPONSE = ord("I")
ERROR_RESPONSE = ord("E")
FUNCTION_CALL_RESPONSE = ord("V")
NEGOTIATE_PROTOCOL_VERSION = ord("v")
NO_DATA = ord("n")
NOTICE_RESPONSE = ord("N")
NOTIFICATION_RESPONSE = ord("A")
PARAMETER_DESCRIPTION = ord("t")
PARAMETER_STATUS = ord("S")
PARSE_COMPLETE = ord("1")
PORTAL_SUSPENDED = ord("s")
READY_FOR_QUERY = ord("Z")
ROW_DESCRIPTION = ord("T")

# --- Authentication request codes (the int32 after the 'R' header) ------------
AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SCM_CREDENTIAL = 6
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

AUTH_NAMES = {
    AUTH_OK: "ok", AUTH_KERBEROS_V5: "Kerberos V5", AUTH_CLEARTEXT: "password",
    AUTH_MD5: "md5", AUTH_SCM_CREDENTIAL: "SCM credential", AUTH_GSS: "GSSAPI",
    AUTH_GSS_CONTINUE: "GSSAPI", AUTH_SSPI: "SSPI", AUTH_SASL: "SASL",
    AUTH_SASL_CONTINUE: "SASL", AUTH_SASL_FINAL: "SASL",
}

# --- startup-phase request codes (the int32 after the length) -----------------
PROTOCOL_3_0 = 3 << 16  # 196608
SSL_REQUEST_CODE = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104  # 1234 << 16 | 5680
CANCEL_REQUEST_CODE = 80877102  # 1234 << 16 | 5678

SCRAM_SHA_256 = "SCRAM-SHA-256"

# Transaction status bytes of ReadyForQuery.
IDLE = b"I"
IN_TRANSACTION = b"T"
IN_FAILED_TRANSACTION = b"E"
TRANSACTION_STATUSES = frozenset({IDLE, IN_TRANSACTION, IN_FAILED_TRANSACTION})

__all__ = [name for name in dir() if name.isupper()]
