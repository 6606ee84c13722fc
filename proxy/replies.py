"""The order of replies a session expects from its server connection.

The proxy sometimes adds messages of its own to what a client sent (a Parse to
re-prepare a statement on another server connection, a statement that aborts the
server transaction after a refusal) and sometimes answers for the server (a
ParseComplete for a statement that is already prepared). The server answers in
order, so one queue tells, for each reply, whether it belongs to the client, and
where the proxy's own answers go in the stream.
"""

from __future__ import annotations

import collections

from proxy.protocol import messages as m


# What ends the answer to each kind of message.
READY = (m.READY_FOR_QUERY,)  # Query, Sync
PARSED = (m.PARSE_COMPLETE,)
BOUND = (m.BIND_COMPLETE,)
CLOSED = (m.CLOSE_COMPLETE,)
EXECUTED = (m.COMMAND_COMPLETE, m.EMPTY_QUERY_RESPONSE, m.PORTAL_SUSPENDED)
DESCRIBED = (m.ROW_DESCRIPTION, m.NO_DATA)
# Messages whose type the relay must look at to follow the queue.
TRACKED_REPLIES = frozenset(
    READY + PARSED + BOUND + CLOSED + EXECUTED + DESCRIBED
    + (m.ERROR_RESPONSE, m.PARAMETER_STATUS, m.COPY_IN_RESPONSE, m.COPY_OUT_RESPONSE,
       m.COPY_BOTH_RESPONSE))


class Expect:
    """One entry: a reply the server will send, or bytes the proxy will send itself."""

    __slots__ = ("replies", "swallow", "synthetic", "settings", "failed", "undo", "executes",
                 "retry", "batch")

    def __init__(self, replies: tuple[int, ...], swallow: bool = False,
                 synthetic: bytes | None = None, settings: tuple = (), undo=None,
                 executes: tuple | None = None, retry: bool = False,
                 batch: bool = False) -> None:
        self.replies = replies  # the message types that end this entry's answer; () if synthetic
        self.swallow = swallow  # the proxy asked for it: do not relay it
        self.synthetic = synthetic  # bytes for the client, sent when this entry is reached
        # SET/transaction events (Decision.settings) that apply as this entry's statement
        # completes (an Execute) or its statements do (a simple Query): proxy.txsettings
        self.settings = settings
        self.failed = False  # an ErrorResponse came before this ReadyForQuery
        # Called if the server skips or fails this message (no completion came): takes
        # back what the proxy recorded when sending it, e.g. a statement as prepared.
        self.undo = undo
        # A simple Query the proxy sent as Bind/Execute/Sync of a statement it prepared
        # (proxy.sql.prepared.Bound: the statement, the messages): its BindComplete is
        # not relayed, an error unprepares the statement. `retry`: the statement was
        # prepared by an earlier request and not bound yet, so an error may be a stale
        # plan that is sent again (relay.py `_retried_stale_plan`).
        self.executes = executes
        self.retry = retry
        # A Sync's ReadyForQuery that also ends the Bind, Describe and Execute before it
        # (ExtendedQuery._sent_to_sync): like a simple Query's, the completions inside it end
        # nothing, but a COPY it starts ignores its Sync (relay.py `_on_copy_in`).
        self.batch = batch


class ReplyTracker:
    """Expected replies up to each ReadyForQuery; see the module docstring."""

    __slots__ = ("queue", "pending_syncs")

    def __init__(self) -> None:
        self.queue: collections.deque[Expect] = collections.deque()
        self.pending_syncs = 0  # Query/Sync messages whose ReadyForQuery has not come

    def expect(self, replies: tuple[int, ...], *, swallow: bool = False,
               settings: tuple = (), undo=None, executes: tuple | None = None,
               retry: bool = False, batch: bool = False) -> None:
        self.queue.append(Expect(replies, swallow, None, settings, undo, executes, retry, batch))
        if replies is READY:
            self.pending_syncs += 1

    def answer(self, data: bytes, undo=None) -> bytes:
        """Queue bytes the proxy answers itself; returns what can be sent right now.

        `undo` is called if an error before it makes the server skip to Sync, which
        drops the answer too (sent right now, nothing can come before it).
        """
        if not self.queue:
            return data
        self.queue.append(Expect((), synthetic=data, undo=undo))
        return b""

    def on_completion(self, reply: int) -> bool:
        """A reply that may end an entry arrived: True if the proxy swallows it.

        Replies inside a simple Query's answer meet the Query's ReadyForQuery entry at
        the front and end nothing; the BindComplete of one sent prepared is swallowed.
        """
        queue = self.queue
        if not queue:
            return False
        entry = queue[0]
        if entry.replies is READY:  # only a prepared Query's BindComplete is the proxy's
            if reply == m.BIND_COMPLETE and entry.executes is not None:
                entry.retry = False  # what follows is the answer: never asked for twice
                return True
            return False
        if reply in entry.replies:
            return queue.popleft().swallow
        return False

    def on_error(self) -> None:
        """The server skips to the next Sync after an error: so do the expectations."""
        self._skip_to_ready()
        if self.queue:
            self.queue[0].failed = True

    def on_ready(self) -> Expect | None:
        """A ReadyForQuery arrived: the entry it answers (None if unexpected)."""
        queue = self.queue
        if queue and queue[0].replies is not READY:
            self._skip_to_ready()
        if not queue:
            return None
        self.pending_syncs -= 1
        return queue.popleft()

    def _skip_to_ready(self) -> None:
        """Drop the entries the server did not answer, undoing what the proxy recorded
        for them; latest first, so each undo sees the state its message was sent in."""
        queue = self.queue
        skipped = None
        while queue and queue[0].replies is not READY:
            entry = queue.popleft()
            if entry.undo is not None:
                if skipped is None:
                    skipped = []
                skipped.append(entry.undo)
        if skipped is not None:
            for undo in reversed(skipped):
                undo()

    def relayed_only(self) -> bool:
        """Is everything pending up to one ReadyForQuery, which ends the queue, the
        client's own (nothing the proxy swallows or answers itself, no settings, no
        prepared Query)? Then an answer that holds the whole reply to it, with no error
        in it, can be relayed as it is (`drop_to_ready`). Changes nothing."""
        queue = self.queue
        if self.pending_syncs != 1 or queue[-1].replies is not READY:
            return False
        for entry in queue:
            if entry.swallow or entry.synthetic is not None or entry.settings \
                    or entry.executes is not None:
                return False
        return True

    def drop_to_ready(self) -> None:
        """After `relayed_only`: the completions were relayed as they are; drop their
        entries, leaving the ReadyForQuery's for `on_ready`."""
        queue = self.queue
        last = queue[-1]
        queue.clear()
        queue.append(last)

    def take_synthetic(self) -> bytes:
        """Proxy answers that are now at the front of the queue."""
        queue = self.queue
        if not queue or queue[0].synthetic is None:  # the common case, once per reply
            return b""
        out = []
        while queue and queue[0].synthetic is not None:
            out.append(queue.popleft().synthetic)
        return b"".join(out)

    @property
    def idle(self) -> bool:
        return not self.queue
