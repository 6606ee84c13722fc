"""Answers to clients held to the end of one event-loop pass while a pool is contended.

When sessions wait for server connections, one pass of the event loop relays many
replies, and each release hands its connection straight to a waiter. Writing each answer
the moment it is relayed wakes a client process that multiplexes many connections (an
application's event loop, pgbench) once per answer; written together at the end of the
pass, such a process finds several at once and spends less of a shared machine per
transaction. Without contention answers are written at once: the latency of one query
counts more than a pass's worth of batching.

A session's held answer sits in its own client buffer (`_client_out`), so anything the
session writes before the pass ends (an error, its own answer, a failure) goes out after
it, in order; the batch only calls the session's `_flush` at the end of the pass.
"""

from __future__ import annotations

import asyncio

from proxy.errors import FatalError


class WriteBatch:
    """Sessions with answers held in their client buffer, flushed once per loop pass."""

    __slots__ = ("_sessions", "_loop")

    def __init__(self) -> None:
        self._sessions: list = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def hold(self, session) -> None:
        """Flush `session` at the end of this pass (a session named twice is flushed
        once with everything; the second `_flush` finds its buffer empty)."""
        if not self._sessions:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            # call_soon runs after the I/O callbacks of this pass, before the next poll
            self._loop.call_soon(self._flush_all)
        self._sessions.append(session)

    def _flush_all(self) -> None:
        sessions, self._sessions = self._sessions, []
        for session in sessions:
            try:
                session._flush()
            except Exception as exc:  # a bug: fail that client, still flush the others
                session.log.exception("held answer could not be written")
                session.fail(FatalError(f"internal error: {exc.__class__.__name__}"))
