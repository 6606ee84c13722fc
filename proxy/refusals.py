"""Refusals inside a transaction: make the server raise the proxy's error itself.

Answering a refused statement only to the client would leave the server's transaction
alive, and a later COMMIT would commit the work before the refusal (THREATS.md 50).
The server raising the same SQLSTATE and message aborts it, and its ErrorResponse and
ReadyForQuery reach the client in order with everything else it sent.
"""

from __future__ import annotations

from proxy.errors import ProxyError


def raise_sql(error: ProxyError) -> str:
    """A statement that makes the server raise `error` (aborting its transaction)."""
    message = error.message.replace("$tenantgate$", "")
    return (f"DO $tenantgate$BEGIN RAISE EXCEPTION USING ERRCODE = '{error.sqlstate}', "
            f"MESSAGE = {_literal(message)}; END$tenantgate$")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
