"""WriteBatch: held answers go out at the end of the loop pass, every session's once, and
one session's failure does not keep the others' answers back."""

from __future__ import annotations

import asyncio

from proxy.errors import FatalError
from proxy.writebatch import WriteBatch


class Session:
    def __init__(self, log: list, broken: bool = False) -> None:
        self.events = log
        self.broken = broken
        self.failed: list[FatalError] = []
        self.log = self  # the batch logs a bug through `session.log.exception`

    def _flush(self) -> None:
        self.events.append(("flush", self))
        if self.broken:
            raise RuntimeError("bug")

    def exception(self, message: str) -> None:
        self.events.append(("logged", self))

    def fail(self, error: FatalError) -> None:
        self.failed.append(error)


async def after_this_pass() -> None:
    """Resolves from a callback queued after the batch's: the batch has run by then."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


async def test_held_sessions_are_flushed_at_the_end_of_the_pass_in_order():
    events: list = []
    batch = WriteBatch()
    first, second = Session(events), Session(events)
    batch.hold(first)
    batch.hold(second)
    batch.hold(first)  # held again in the same pass: its buffer is written by the first flush
    assert events == []  # nothing written while the pass goes on
    await after_this_pass()
    assert events == [("flush", first), ("flush", second), ("flush", first)]
    batch.hold(second)  # a new pass schedules a new flush
    await after_this_pass()
    assert events[3:] == [("flush", second)]


async def test_a_session_whose_flush_fails_is_failed_and_the_others_are_still_flushed():
    events: list = []
    batch = WriteBatch()
    broken, fine = Session(events, broken=True), Session(events)
    batch.hold(broken)
    batch.hold(fine)
    await after_this_pass()
    assert events == [("flush", broken), ("logged", broken), ("flush", fine)]
    assert len(broken.failed) == 1 and "internal error: RuntimeError" in str(broken.failed[0])
    assert fine.failed == []
