"""Leasing: get a server connection from a pool and put it in the client's state.

A connection already in the tenant's state with the client's settings is used as it
is; any other is reset with `DISCARD ALL` (which also drops temp objects, prepared
statements, cursors, LISTENs, advisory locks and `SET ROLE`: THREATS.md 7, 20, 52–54)
and set up again for this tenant, then checked. The lease ends at ReadyForQuery
outside a transaction, which the session sees in its reply callback (`Pool.release`).
"""

from __future__ import annotations

import asyncio

from proxy.errors import ConnectionUnavailable
from proxy.pool.pool import Pool
from proxy.pool.server import ServerConnection, ServerError
from proxy.protocol import messages as m
from proxy.tenancy.strategy import SessionPlan, quote_literal


def is_ready_for(conn: ServerConnection, plan: SessionPlan, params: dict[str, str]) -> bool:
    """True if `conn` needs no reset or setup for this client."""
    return (conn.context_key == plan.context_key and not conn.dirty
            and conn.applied_params == params)


async def checkout(pool: Pool, plan: SessionPlan, params: dict[str, str],
                   conn: ServerConnection | None = None) -> ServerConnection:
    """A connection ready for this client; on any failure or cancellation nothing leaks."""
    if conn is None:
        conn = await pool.acquire(plan.context_key)
    try:
        if not is_ready_for(conn, plan, params):
            await prepare(conn, plan, params)
    except asyncio.CancelledError:
        pool.discard(conn)
        raise
    except (ServerError, ConnectionUnavailable) as exc:
        pool.discard(conn)
        raise ConnectionUnavailable(
            f"could not prepare a server connection for this session: {exc}") from None
    if plan.scope.pool_mode == "session":
        # The client holds it until it leaves and may leave anything behind (its named
        # prepared statements, settings, SQL PREPAREs): reset it before the next client.
        conn.dirty = True
    return conn


async def prepare(conn: ServerConnection, plan: SessionPlan, params: dict[str, str]) -> None:
    """Reset `conn` if it was used, then apply the tenant's setup and the client's settings."""
    if conn.context_key is not None or conn.dirty:
        conn.write(m.query("DISCARD ALL"))
        conn.statements.clear()
        conn.unnamed_owner = None
        conn.context_key = None
        await conn.collect_until_ready()
    statements = list(plan.setup_sql)
    statements += [f"SET {name} TO {quote_literal(value)}" for name, value in params.items()]
    if statements:
        await conn.query("; ".join(statements))
    await verify(conn, plan)
    conn.context_key = plan.context_key
    conn.applied_params = dict(params)
    conn.dirty = False


async def verify(conn: ServerConnection, plan: SessionPlan) -> None:
    """Check that the role the tenant needs is the one in force (THREATS.md 7)."""
    role = dict(plan.scope.pinned_settings).get("role")
    if role is None:
        return
    rows = await conn.query("SELECT current_user")
    if not rows or rows[0][0] != role.encode():
        raise ConnectionUnavailable(f"server connection is not in role {role!r} after setup")

