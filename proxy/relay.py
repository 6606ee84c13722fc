"""Relaying a server's replies to the client: by length, looking only at what ends a request.

ReadyForQuery tells when the lease may end, errors and completions advance the
session's `ReplyTracker` (which also cuts the replies the proxy asked for itself and
places its own answers) and its `TransactionSettings` (which SET/RESET lasted), and
ParameterStatus is checked for drift of the settings that change how SQL is lexed.
Mixed into `ClientSession`.
"""

from __future__ import annotations

from time import perf_counter

from proxy.errors import AdminShutdown, ConnectionUnavailable, ProtocolViolation, ProxyError
from proxy.protocol import messages as m
from proxy.replies import PARSED, BOUND, CLOSED, EXECUTED, DESCRIBED, READY

# Settings whose drift (ParameterStatus) means the proxy and server no longer lex SQL alike.
PINNED_REPORTED = {"client_encoding": "UTF8", "standard_conforming_strings": "on"}
COMPLETIONS = frozenset(PARSED + BOUND + CLOSED + EXECUTED + DESCRIBED)
IDLE = ord("I")
BIND_COMPLETE = m.bind_complete()


class ReplyRelay:
    __slots__ = ()  # a mixin of ClientSession, which lists the slots

    def _server_data(self, data: bytes) -> None:
        queue = self.tracker.queue
        if len(queue) == 1:
            if queue[0].replies is READY and not queue[0].settings \
                    and self.server.scanner.whole_reply(data, COMPLETIONS):
                if queue[0].executes is None:
                    self._whole_reply(data)
                    return
                if data.startswith(BIND_COMPLETE):  # a Query sent prepared: then its answer
                    self._whole_reply(data[len(BIND_COMPLETE):])
                    return
        elif queue and self.tracker.relayed_only() \
                and self.server.scanner.whole_reply(data, COMPLETIONS):
            # The whole answer to Bind/Describe/Execute/Sync and the like: relayed as it is,
            # then handled as the answer to one Query.
            self.tracker.drop_to_ready()
            self._whole_reply(data)
            return
        self._replies(data)

    def _whole_reply(self, data: bytes) -> None:
        """The whole answer to the one pending simple Query, with no error, setting
        report or COPY in it: the completions it holds end no entry (the Query's
        ReadyForQuery does), so it is relayed as it is and only its last byte, the
        transaction status, is read. `_on_ready` for this one case, the most common of
        all, written out; the client gets the answer first (the bookkeeping is off the
        latency path). While others wait for a server connection, the answer is held to
        the end of this loop pass and written with the pass's others (`WriteBatch`)."""
        out = self._client_out
        if self.pool.waiters:
            out.append(data)
            self.app.write_batch.hold(self)
        elif out:
            out.append(data)
            self._flush()
        else:
            self.write(data)
        status = data[-1]
        self.tx_status = status
        self.tracker.on_ready()
        now = perf_counter()
        self.tm.answered(now - self.request_started, len(data), status == IDLE)
        self.request_started = now
        self.tx_settings.ready(status, False)
        self._after_replies()  # the release rule lives there, once

    def _replies(self, data: bytes) -> None:
        """Any server bytes: walked by `ReplyScanner.scan`, each tracked reply handled."""
        try:
            self.tm.bytes_out(len(data))
            scanner = self.server.scanner
            replies = scanner.scan(data)
        except ProxyError as exc:
            self.fail(exc)
            return
        out = self._client_out
        position = 0
        rewrite = False
        for reply in replies:
            mtype = reply.type
            swallow = False
            if mtype in COMPLETIONS:
                queue = self.tracker.queue
                entry = queue[0] if queue else None
                swallow = self.tracker.on_completion(mtype)
                if entry is not None and entry.settings and mtype == m.COMMAND_COMPLETE:
                    self._statement_done(entry, reply.raw)
            elif mtype == m.READY_FOR_QUERY:
                swallow = self._on_ready(reply.raw)
            elif mtype == m.ERROR_RESPONSE:
                swallow = self._retried_stale_plan(reply.raw)
                if not swallow:
                    self.tracker.on_error()
                    self.tx_settings.error()
                    self.tm.error()
            elif mtype == m.COPY_IN_RESPONSE:
                self._on_copy_in()
            elif mtype == m.PARAMETER_STATUS and not self._parameter_ok(reply.raw):
                return
            synthetic = self.tracker.take_synthetic() if self.tracker.queue else b""
            if swallow or synthetic or reply.start < 0 or rewrite:
                rewrite = True
                if reply.start >= 0:
                    out.append(data[position:reply.start])
                if not swallow:
                    out.append(reply.raw)
                out.append(synthetic)
                position = reply.end
        held = scanner.pending_start
        end = held if held >= 0 else len(data)
        if not rewrite and end == len(data):
            out.append(data)
        else:
            out.append(data[position:end])
        self._flush()
        self._after_replies()

    def _after_replies(self) -> None:
        """The lease ends at ReadyForQuery outside a transaction, with nothing pending
        (transaction pooling; in session pooling the client keeps its connection); a
        draining or retiring client is closed once idle. Once per request: the checks
        are written out here, not in helpers."""
        conn = self.server
        if conn is not None and not self.session_pooling and self.tx_status == IDLE \
                and not self.tracker.queue and not self.unsynced:
            self.server = None
            self.pool.release(conn)
            if self.app.draining or self.retiring:
                self.fail(AdminShutdown(self._shutdown_reason()))
        elif (self.app.draining or self.retiring) and self.idle():
            self.fail(AdminShutdown(self._shutdown_reason()))

    def _on_ready(self, raw: bytes) -> bool:
        """A ReadyForQuery: True if the proxy swallows it (that of a retried Query)."""
        self.tx_status = raw[5]
        entry = self.tracker.on_ready()
        if entry is not None and entry.swallow:
            return True  # `_retried_stale_plan`: the answer of the Query sent again follows
        now = perf_counter()
        self.tm.query(now - self.request_started)
        self.request_started = now  # a pipelined next request is timed from here
        if self.tx_status == IDLE:
            self.tm.transaction()
        failed = entry is not None and entry.failed
        if failed and entry.executes is not None:
            # Prepared by the proxy for a Query: after an error (0A000 "cached plan must
            # not change result type" would come every time) it is prepared afresh.
            self.server.statements.forget(entry.executes[0].server_name)
        if entry is not None and entry.settings and not failed:
            self.tx_settings.apply(entry.settings)  # statements whose tags told nothing
        self.tx_settings.ready(self.tx_status, failed)
        return False

    def _retried_stale_plan(self, raw: bytes) -> bool:
        """An error at the Bind of a statement the proxy had prepared on this server
        connection for an earlier Query: with SQLSTATE 0A000 this is most likely "cached
        plan must not change result type" (a result column changed type since), which
        the client's simple Query would never meet. When the Query began outside a
        transaction block with nothing pipelined behind it, its implicit transaction
        rolled back whole and nothing of its answer was sent: the error and its
        ReadyForQuery are swallowed and the Query is sent again, its statement closed
        and prepared afresh (once; the second answer, whatever it is, goes to the
        client). True if so."""
        queue = self.tracker.queue
        if len(queue) != 1 or self.tx_status != IDLE:
            return False
        entry = queue[0]
        if not entry.retry:
            return False
        fields = m.decode_error_fields(raw)
        if fields.get("C") != "0A000":
            return False
        entry.swallow = True  # its ReadyForQuery: see `_on_ready`
        name = entry.executes[0].server_name
        self.log.info("prepared statement stale, sent again", statement=name,
                      reason=fields.get("M", ""))
        self.server.statements.forget(name)
        self._execute_prepared(entry.executes, retry=False)
        return True

    def _statement_done(self, entry, raw: bytes) -> None:
        """A statement with setting or transaction events completed (CommandComplete)."""
        tag = raw[5:-1]
        if entry.replies is READY:  # one statement of a simple Query: the tag tells which
            entry.settings = self.tx_settings.statement_done(entry.settings, tag)
        else:  # an Execute: its one statement
            self.tx_settings.apply(entry.settings, tag)
            entry.settings = ()

    def _on_copy_in(self) -> None:
        """COPY FROM STDIN started. Started by an Execute, the server ignores every Sync
        until the copy ends: those the client sent before it saw CopyInResponse (libpq
        sends Execute and Sync together) get no ReadyForQuery. A Bind…Sync tracked as
        one entry (`Expect.batch`) becomes its Execute's, which the copy's end answers."""
        queue = self.tracker.queue
        if not queue or (queue[0].replies is READY and not queue[0].batch):
            return  # a simple Query's COPY
        if queue[0].batch:  # a Bind…Sync sent as one: its Execute's answer ends the copy
            queue[0].replies, queue[0].batch = EXECUTED, False
            self.tracker.pending_syncs -= 1
        ignored = [entry for entry in queue if entry.replies is READY]
        for entry in ignored:
            queue.remove(entry)
        self.tracker.pending_syncs -= len(ignored)

    def _apply_settings(self, changes) -> None:
        """Track the client's SET/RESET that lasted so they are restored on its next lease."""
        for change in changes:
            if change.name == "*":
                self.params = dict(self.startup_params)
                self.server.dirty = True
            elif change.value is None:
                self.params.pop(change.name, None)
                if change.name in self.startup_params:
                    self.params[change.name] = self.startup_params[change.name]
                self.server.dirty = True
            else:
                self.params[change.name] = change.value
                self.server.applied_params[change.name] = change.value

    def _parameter_ok(self, raw: bytes) -> bool:
        name, value = m.decode_parameter_status(raw)
        pinned = PINNED_REPORTED.get(name)
        if pinned is not None and value != pinned:
            self.fail(ProtocolViolation(f"server setting {name} changed to {value!r}",
                                        rule="pinned-setting"))
            return False
        return True

    def _server_lost(self) -> None:
        """The attached server connection closed (the backend ended, PostgreSQL went down):
        the client ends with it, and `fail` discards the connection, which frees its slot
        in the pool (setting `server` to None first had kept the slot taken for good)."""
        self.fail(ConnectionUnavailable("server closed the connection unexpectedly"))
