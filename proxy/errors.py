"""The exception tree: every error a client can see carries its SQLSTATE.

Errors become ErrorResponse bytes in one place (`proxy.protocol.messages.error_response`
via `ProxyError.fields()`); nothing else formats client-visible errors.
"""

from __future__ import annotations


class ProxyError(Exception):
    """An error the proxy reports to a client as an ErrorResponse."""

    sqlstate = "XX000"
    severity = "ERROR"
    fatal = False  # True: the connection is closed after the error is sent

    def __init__(self, message: str, *, rule: str | None = None,
                 detail: str | None = None, hint: str | None = None,
                 sqlstate: str | None = None) -> None:
        self.rule = rule
        self.detail = detail
        self.hint = hint
        if sqlstate is not None:
            self.sqlstate = sqlstate
        text = message if message.startswith("tenantgate:") else f"tenantgate: {message}"
        if rule and f"(rule {rule})" not in text:
            text = f"{text} (rule {rule})"
        self.message = text
        super().__init__(text)

    def fields(self) -> dict[str, str]:
        """The ErrorResponse fields, keyed by their one-letter protocol codes."""
        fields = {"S": self.severity, "V": self.severity, "C": self.sqlstate, "M": self.message}
        if self.detail:
            fields["D"] = self.detail
        if self.hint:
            fields["H"] = self.hint
        return fields


class FatalError(ProxyError):
    """An error after which the client connection is closed."""

    severity = "FATAL"
    fatal = True


class ProtocolViolation(FatalError):
    sqlstate = "08P01"


class AuthenticationFailed(FatalError):
    sqlstate = "28P01"


class TenantRefused(FatalError):
    sqlstate = "28000"


class TooManyConnections(FatalError):
    sqlstate = "53300"


class AdminShutdown(FatalError):
    sqlstate = "57P01"


class ConnectionUnavailable(FatalError):
    """No backend could be reached for this client."""

    sqlstate = "08006"


class PolicyDenied(ProxyError):
    """Forbidden statement, function, setting, role change or catalog."""

    sqlstate = "42501"


class RelationHidden(ProxyError):
    """A relation outside the tenant's reach; the same text whether or not it exists."""

    sqlstate = "42P01"


class NotSupported(ProxyError):
    sqlstate = "0A000"


class SqlSyntaxError(ProxyError):
    sqlstate = "42601"


class InvalidEncoding(ProxyError):
    sqlstate = "22021"


class StatementTooComplex(ProxyError):
    sqlstate = "54001"


class PoolTimeout(ProxyError):
    """No server connection became free within the pool's wait timeout."""

    sqlstate = "53300"


class ConfigError(Exception):
    """A configuration problem, reported as `FILE:LINE: message`."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.text = message
        super().__init__(self.location() + message)

    def location(self) -> str:
        if self.path and self.line:
            return f"{self.path}:{self.line}: "
        if self.path:
            return f"{self.path}: "
        return ""
