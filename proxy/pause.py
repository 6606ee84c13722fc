"""PAUSE and RESUME of the admin console: whose new transactions wait, and who is waiting.

A paused tenant (or everyone, after a PAUSE without a tenant) keeps the transactions it
has open; only a client that needs a new server connection lease waits here until
RESUME. Sessions ask `holds(tenant)` when they lease, a cheap test while nothing is
paused, and only then `await wait(...)`, so pausing costs the hot path nothing.
"""

from __future__ import annotations

import asyncio


class Pauses:
    def __init__(self) -> None:
        self.everyone = False  # PAUSE without a tenant
        self.tenants: set[str] = set()  # PAUSE tenant
        self.waiting: set = set()  # sessions held at the gate now
        self._changed = asyncio.Event()  # set (then replaced) by every RESUME

    def holds(self, tenant: str | None) -> bool:
        """Whether a client of `tenant` (None: a bypass login) must wait before leasing."""
        return self.everyone or tenant in self.tenants

    def pause(self, tenant: str | None) -> None:
        if tenant is None:
            self.everyone = True
        else:
            self.tenants.add(tenant)

    def resume(self, tenant: str | None) -> bool:
        """Lift the pause of `tenant` (None: every pause); False if it was not paused."""
        if tenant is None:
            was_paused = self.everyone or bool(self.tenants)
            self.everyone = False
            self.tenants.clear()
        else:
            was_paused = tenant in self.tenants
            self.tenants.discard(tenant)
        if was_paused:
            # Wake every waiter; each checks again whether its own tenant is still paused.
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
        return was_paused

    def paused_names(self) -> list[str]:
        """For SHOW output: '*' for everyone, then the paused tenants."""
        return (["*"] if self.everyone else []) + sorted(self.tenants)

    async def wait(self, session, conn=None) -> None:
        """Hold `session` until its tenant is resumed. A connection it already took from the
        pool goes back first, so that a paused client holds no server connection."""
        if conn is not None:
            session.pool.release(conn)
        self.waiting.add(session)
        try:
            while self.holds(session.tenant):
                await self._changed.wait()
        finally:
            self.waiting.discard(session)
