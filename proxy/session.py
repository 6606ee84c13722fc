"""One client connection: the only place that waits on both sockets.

The handshake (TLS, startup, authentication, tenant resolution) runs as a coroutine
in `proxy.handshake`. After it, the session works from transport callbacks: client
messages are analysed and forwarded as they arrive, server replies are relayed by
length, and only the replies that end a request (ReadyForQuery, errors, completions)
are looked at. A server connection is leased when a request needs one and given back
at ReadyForQuery outside a transaction (transaction pooling), or held until the
client leaves (session pooling).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from proxy.errors import (AdminShutdown, FatalError, InvalidEncoding, NotSupported,
                          ProtocolViolation, ProxyError)
from proxy.extended import ExtendedQuery
from proxy.pool.lease import checkout, is_ready_for
from proxy.protocol import messages as m
from proxy.protocol.framing import MessageReader, StartupReader
from proxy.refusals import raise_sql
from proxy.relay import IDLE, ReplyRelay
from proxy.replies import CLOSED, READY, ReplyTracker
from proxy.tenancy.strategy import interned
from proxy.txsettings import TransactionSettings

FAILED = ord("E")  # ReadyForQuery: inside a failed transaction block
HELD_BYTES = 1 << 16  # client bytes kept while it waits for a server, before reading pauses


class ClientSession(ExtendedQuery, ReplyRelay, asyncio.Protocol):
    # Slots, not an instance dict: with this many attributes the dict would be a large
    # unshared table, and a request reads ~30 of them in sessions that have gone cold in the
    # CPU cache (500 clients take turns). Listed hot first; __init__ sets every one.
    __slots__ = (
        "relaying", "closed", "leasing", "reader", "tracker", "server", "pool", "app", "tm",
        "tx_status", "request_started", "tx_settings", "_client_out", "_server_out", "held",
        "held_analysis", "plan", "params", "skip_to_sync", "unsynced", "session_pooling",
        "retiring", "transport", "_on_handed_over", "_on_lease_failed", "reading_paused",
        "portal_settings", "peer", "log", "startup_reader", "handshake_task",
        "message_waiter", "bytes_waiter", "tls", "connect_time", "console", "login",
        "tenant", "startup_params", "cancel_key", "counted_connect", "refuse_at_connect",
        "counted_tenant", "refused_directly", "statements", "bind_checks", "unnamed",
    )

    def __init__(self, app) -> None:
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.log = app.log
        self.startup_reader = StartupReader()
        self.reader = MessageReader(app.config.max_message_size)
        self.relaying = False
        self.closed = False
        self.handshake_task: asyncio.Task | None = None
        self.message_waiter: asyncio.Future | None = None
        self.bytes_waiter: asyncio.Future | None = None
        self.tls = False
        self.connect_time = time.time()  # wall clock at accept, for the admin console
        self.console = None  # the admin console serving this client (proxy.console), if any
        # Set by the handshake:
        self.login = ""
        self.tenant: str | None = None
        self.plan = None
        self.pool = None
        self.params: dict[str, str] = {}  # the client's settings, restored on each lease
        self.startup_params: dict[str, str] = {}
        self.cancel_key: tuple[int, bytes] | None = None
        self.session_pooling = False
        self.retiring = False  # closed at its next idle point (config reload)
        self.tm = None  # this tenant's metrics handle, set by the handshake
        self.counted_connect = False  # the connect was reported: report the disconnect
        self.request_started = 0.0  # perf_counter when the current request began
        self.refuse_at_connect: ProxyError | None = None  # set by the listener when full
        self.counted_tenant: str | None = None  # the tenant whose quota this client uses
        # Relay state:
        self.server = None
        self.tracker = ReplyTracker()
        self.tx_status = IDLE
        self.skip_to_sync = False
        self.refused_directly = False  # the pending refusal was answered without the server
        self.unsynced = False  # extended-protocol messages forwarded since the last Sync
        self.portal_settings: dict[str, tuple] = {}  # events an Execute of the portal applies
        self.tx_settings = TransactionSettings(self._apply_settings, self._statements_deallocated)
        # The message that asked for a server connection, handled once it is attached;
        # the messages after it wait in the reader (reading pauses past HELD_BYTES).
        self.held: tuple[int, bytes] | None = None
        self.held_analysis: tuple | None = None  # (sql, scope, decision) of the held message
        self.leasing = None  # while a lease is under way: its Task or pool Waiter (cancel())
        self.reading_paused = False  # stopped reading a client that sent on while waiting
        self.statements: dict = {}
        self.bind_checks: dict = {}  # statement name → extended.BindCheck
        self.unnamed = None
        self._server_out: list[bytes] = []
        self._client_out: list[bytes] = []
        # The callbacks of a wait for a server connection (`Pool.wait`), bound once.
        self._on_handed_over = self._handed_over
        self._on_lease_failed = self._lease_failed

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.log = self.app.log.bind(client=self.peer)
        from proxy.handshake import run_handshake  # the handshake needs this module too
        self.handshake_task = asyncio.get_running_loop().create_task(run_handshake(self))

    def data_received(self, data: bytes) -> None:
        try:
            if self.relaying:
                self.tm.bytes_in(len(data))
                if self.leasing is None:
                    self._process_client_messages(self.reader.feed_whole(data))
                    return
                self.reader.feed(data)
                if self.reader.pending() > HELD_BYTES and not self.reading_paused:
                    # Waiting for a server: what the client sends on stays in the reader,
                    # up to a bound (reading is not paused for each wait: two syscalls).
                    self.reading_paused = True
                    self.transport.pause_reading()
            elif self.message_waiter is not None:
                self.reader.feed(data)
                _wake(self.message_waiter)
            else:
                self.startup_reader.feed(data)
                _wake(self.bytes_waiter)
        except ProxyError as exc:
            self.fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.handshake_task is not None and not self.handshake_task.done():
            self.handshake_task.cancel()
        if self.leasing is not None:
            self.leasing.cancel()
        self._give_back_server(clean=False)
        if self.counted_connect:
            self.app.observer.disconnected(self)
        self.app.forget_session(self)

    def pause_writing(self) -> None:
        # The client reads slower than the server answers: stop reading the server.
        if self.server is not None and self.server.transport is not None:
            self.server.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.server is not None and self.server.transport is not None:
            self.server.transport.resume_reading()

    # -- handshake support ------------------------------------------------------------

    async def next_startup_packet(self) -> bytes:
        while (raw := self.startup_reader.next()) is None:
            self.bytes_waiter = asyncio.get_running_loop().create_future()
            await self.bytes_waiter
        return raw

    async def next_message(self) -> tuple[int, bytes]:
        while (message := self.reader.next()) is None:
            self.message_waiter = asyncio.get_running_loop().create_future()
            await self.message_waiter
        return message

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def start_relay(self) -> None:
        """The handshake is over: from now on client bytes are handled as they come."""
        self.message_waiter = None
        self.relaying = True
        try:
            self._process_client_messages()
        except ProxyError as exc:
            self.fail(exc)

    def fail(self, error: ProxyError) -> None:
        """Send a fatal error and close, freeing the server connection."""
        if not self.closed:
            self.log.info("client closed", sqlstate=error.sqlstate, reason=error.message)
            self._flush()
            self.write(m.error_response(error.fields()))
            self.transport.close()
        self.closed = True
        self._give_back_server(clean=False)

    # -- client messages --------------------------------------------------------------

    def _process_client_messages(self, message: tuple[int, bytes] | None = None) -> None:
        """Handle the client's messages in order: `message` first, if given (a chunk that
        was just that one message: `MessageReader.feed_whole`), then those in the reader."""
        reader = self.reader
        if not self.tracker.queue:  # idle: a new request starts
            self.request_started = time.perf_counter()
        # While a lease is being taken the messages after the one that asked for it stay
        # in the reader: `_lease` comes back here once the server connection is attached.
        while not self.closed and self.leasing is None \
                and (message is not None or (message := reader.next()) is not None):
            mtype, raw = message
            message = None
            if mtype == m.QUERY and not self.skip_to_sync:  # the most common, without the table
                try:
                    self._on_query(raw)
                except InvalidEncoding as exc:
                    self._refuse_invalid_text(mtype, exc)
            else:
                self._handle(mtype, raw)
        self._flush()

    def _handle(self, mtype: int, raw: bytes) -> None:
        """One client message, through the one table of what each type does."""
        handler = _HANDLERS.get(mtype)
        if handler is None:
            raise _unexpected(mtype)  # even while skipping to Sync: fail closed (THREATS 55)
        if self.skip_to_sync:
            self._skip(mtype, raw)
            return
        try:
            handler(self, raw)
        except InvalidEncoding as exc:
            self._refuse_invalid_text(mtype, exc)

    def _skip(self, mtype: int, raw: bytes) -> None:
        """After a refusal in the extended protocol, drop messages up to Sync (as the server)."""
        if mtype == m.SYNC:
            self.skip_to_sync = False
            if self.refused_directly:
                self.refused_directly = False
                self.unsynced = False  # nothing went to a server since the refusal
                self._client_out.append(m.ready_for_query(bytes([self.tx_status])))
            else:
                self._forward_sync()
        elif mtype == m.TERMINATE:
            self._on_terminate(raw)

    def _analyze(self, sql: str):
        scope = self._scope_now()
        held, self.held_analysis = self.held_analysis, None
        if held is not None and held[0] == sql and held[1] is scope:
            return held[2]  # analysed before the wait for a server, in the same scope
        return self.app.analyzer.analyze(sql, scope)

    def _scope_now(self):
        scope = self.plan.scope
        if scope.shared_catalog is not None:  # a schema tenant: the newest catalog applies
            scope = self._current_shared_scope(scope)
        return scope

    def _current_shared_scope(self, scope):
        """The session's scope with the newest shared-schema catalog the proxy loaded
        (a view a DBA added since the login is then refused: THREATS 31)."""
        plan = self.plan
        latest = self.app.shared_catalogs.latest(plan.cluster, plan.database)
        if latest is None or latest is scope.shared_catalog:
            return scope
        self.plan = interned(dataclasses.replace(
            plan, scope=dataclasses.replace(scope, shared_catalog=latest)))
        return self.plan.scope

    def _on_query(self, raw: bytes) -> None:
        sql = m.decode_query(raw)
        scope = self.plan.scope  # `_analyze` written out: this runs for every Query
        if scope.shared_catalog is not None or self.held_analysis is not None:
            decision = self._analyze(sql)
        else:
            decision = self.app.analyzer.analyze(sql, scope)
        if decision.action == "deny":
            self._refuse_simple(decision.error, sql)
            return
        if decision.action == "local":
            self._answer_locally(decision.local, sql)
            return
        if self._ensure_server(m.QUERY, raw, (sql, decision)):
            self._forward_query(raw, sql, decision)

    def _forward_query(self, raw: bytes, sql: str, decision) -> None:
        """An allowed Query to the attached server connection."""
        if self.app.observer.audit is not None:
            self.app.observer.statement(self, sql, decision.ddl)
        bound = decision.bound
        if bound is None:
            self._server_out.append(raw if decision.action == "allow" else m.query(decision.sql))
            self.tracker.expect(READY, settings=decision.settings)
        else:
            self._execute_prepared(bound)
        self.server.unnamed_owner = None  # a simple Query replaces the unnamed statement
        if decision.session_state:
            self.server.dirty = True

    def _execute_prepared(self, bound: tuple, retry: bool = True) -> None:
        """A rewritten Query as Bind/Execute/Sync of its shape's statement, prepared on
        this server connection first if it is not (proxy.sql.prepared). A Close goes
        before that Parse: an error unprepares the statement here (`_on_ready`) while
        the server may still hold it. `retry`: a stale plan may be retried once."""
        statement, messages = bound
        known = self.server.statements.has(statement.server_name)
        if not known:
            self._send(m.close_statement(statement.server_name))
            self.tracker.expect(CLOSED, swallow=True)
            self._prepare_on_server(statement, swallow=True)
        self._server_out.append(messages)
        self.tracker.expect(READY, executes=bound, retry=known and retry)

    def _on_flush(self, raw: bytes) -> None:
        m.check_empty(raw, m.FLUSH, "Flush")  # forwarded as it is: nothing may follow
        if self.server is not None:
            self._send(raw)

    def _on_copy(self, raw: bytes) -> None:
        if self.server is not None:  # outside COPY the server ignores these too
            self._send(raw)

    def _on_terminate(self, raw: bytes) -> None:
        self._flush()
        self.closed = True
        self._give_back_server(clean=True)
        self.transport.close()

    def _send(self, raw: bytes) -> None:
        self._server_out.append(raw)

    def _answer(self, data: bytes) -> None:
        """A reply the proxy gives itself, placed after the server replies still due."""
        self._client_out.append(self.tracker.answer(data))

    def _flush(self) -> None:
        out = self._server_out
        if out:
            if self.server is not None:
                self.server.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        out = self._client_out
        if out:
            self.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    # -- refusals ---------------------------------------------------------------------

    def _can_answer_directly(self) -> bool:
        """True if no server has anything of this client pending: none is attached (what
        the proxy answered alone since the last Sync, like a Close of a statement, left
        nothing on a server), or the attached one is idle, synced and outside a transaction."""
        if not self.tracker.idle:
            return False
        return self.server is None or (self.tx_status == IDLE and not self.unsynced)

    def _refuse_simple(self, error: ProxyError, sql: str | None = None) -> None:
        self.app.refused(self, error, sql)
        if self._can_answer_directly():
            self.unsynced = False  # the client gets ReadyForQuery: nothing is left pending
            self._client_out.append(m.error_response(error.fields()))
            self._client_out.append(m.ready_for_query(b"I"))
            return
        # Inside a transaction: let the server raise the same error, so that its
        # transaction is aborted too and a later COMMIT cannot commit partial work.
        self._send(m.query(raise_sql(error)))
        self.tracker.expect(READY)

    def _answer_locally(self, command: tuple, sql: str) -> None:
        """DEALLOCATE name / DISCARD ALL in transaction pooling: what they would reset lives
        in this session (its statement names, its settings), not on a server connection,
        so the session does it and answers as PostgreSQL would. Errors go the refusal way,
        so that inside a transaction the server's transaction is aborted too."""
        if not self.tracker.idle or self.unsynced:
            self._refuse_simple(NotSupported(
                f"{sql.strip()[:40]} cannot follow unanswered requests in transaction pooling",
                rule="session-feature"), sql)
            return
        if self.tx_status == FAILED:
            self._refuse_simple(ProxyError("current transaction is aborted, commands ignored "
                                           "until end of transaction block", sqlstate="25P02"))
            return
        if command[0] == "deallocate":
            if self.statements.pop(command[1], None) is None:
                self._refuse_simple(ProxyError(f'prepared statement "{command[1]}" does not '
                                               "exist", sqlstate="26000"))
                return
            tag = "DEALLOCATE"
        else:
            if self.tx_status != IDLE:
                self._refuse_simple(ProxyError("DISCARD ALL cannot run inside a transaction "
                                               "block", sqlstate="25001"))
                return
            self._discard_all()
            tag = "DISCARD ALL"
        self._client_out.append(m.command_complete(tag))
        self._client_out.append(m.ready_for_query(bytes([self.tx_status])))

    def _discard_all(self) -> None:
        """What DISCARD ALL resets of this client: its prepared statements and portals'
        settings, and its settings back to those of its startup packet."""
        self.statements.clear()
        self.bind_checks.clear()
        self.unnamed = None
        self.portal_settings.clear()
        self.params = dict(self.startup_params)

    def _refuse_invalid_text(self, mtype: int, error: InvalidEncoding) -> None:
        """Text that is not UTF-8 never reaches the server (THREATS 13). PostgreSQL
        answers it with an ERROR, not FATAL, so this is a refusal like any other: a
        Query gets its ReadyForQuery, an extended-protocol message skips to Sync."""
        if mtype == m.QUERY:
            self._refuse_simple(error)
        else:
            self._refuse_extended(error)

    # -- leasing ----------------------------------------------------------------------

    def _ensure_server(self, mtype: int, raw: bytes, analysed: tuple | None = None) -> bool:
        """True if a server connection is attached; else hold the message and lease one.
        `analysed`: (sql, decision) of a Query or Parse, kept for when it is handled again."""
        if self.server is not None:
            return True
        pool = self.pool
        paused = self.app.pauses.holds(self.tenant)  # PAUSE: take nothing, wait in _lease
        conn = None if paused else pool.take_idle(self.plan.context_key)
        if conn is not None and is_ready_for(conn, self.plan, self.params):
            self._attach(conn)
            return True
        self.held = (mtype, raw)
        if analysed is not None:  # (sql, scope analysed in, decision): not analysed twice
            self.held_analysis = (analysed[0], self.plan.scope, analysed[1])
        if conn is None and not paused and pool.full:
            # The common wait under load: `release` hands the next free connection to
            # `_handed_over` directly, no task and no future in between.
            self.leasing = pool.wait(self._on_handed_over, self._on_lease_failed)
        else:  # open a connection, reset one, or wait out a PAUSE: a coroutine's work
            self.leasing = asyncio.get_running_loop().create_task(self._lease(conn))
        return False

    def _handed_over(self, conn) -> None:
        """The pool gives this waiting session a connection (from another's release)."""
        self.leasing = None
        if self.closed:
            self.pool.release(conn)
        elif is_ready_for(conn, self.plan, self.params):
            self._attach(conn)
            self._resume_after_lease()
        else:
            self.leasing = asyncio.get_running_loop().create_task(self._lease(conn))

    def _lease_failed(self, error: Exception) -> None:
        self.leasing = None
        if isinstance(error, ProxyError):
            self.fail(error if error.fatal else _as_fatal(error))
        else:
            self.fail(FatalError(f"could not lease a server connection: {error}"))

    async def _lease(self, conn) -> None:
        try:
            if self.app.pauses.holds(self.tenant):
                await self.app.pauses.wait(self, conn)  # gives `conn` back while it waits
                conn = None
            conn = await checkout(self.pool, self.plan, self.params, conn)
        except ProxyError as exc:
            self._lease_failed(exc)
            return
        self.leasing = None
        if self.closed:
            self.pool.release(conn)
            return
        self._attach(conn)
        self._resume_after_lease()

    def _resume_after_lease(self) -> None:
        """Handle the message that asked for the lease, then what arrived meanwhile, through
        the same dispatch as ever; whatever fails, the session fails and the server
        connection goes back to the pool or is discarded with it."""
        held, self.held = self.held, None
        try:
            analysed = self.held_analysis
            if held[0] == m.QUERY and analysed is not None and analysed[1] is self._scope_now():
                # Analysed and allowed before the wait, in the scope that still holds.
                self.held_analysis = None
                self._forward_query(held[1], analysed[0], analysed[2])
            else:
                self._handle(*held)
            if self.reading_paused:
                self.reading_paused = False
                self.transport.resume_reading()
            if self.reader.pending():
                self._process_client_messages()
            else:  # the usual case: nothing came while it waited
                self._flush()
        except ProxyError as exc:
            self.fail(exc)
        except Exception as exc:  # a bug; in this task nothing else would close the client
            self.log.exception("client message failed after a lease")
            self.fail(FatalError(f"internal error: {exc.__class__.__name__}"))

    def _attach(self, conn) -> None:
        self.server = conn
        conn.attach(self)

    def lease_for_session(self, conn) -> None:
        """Session pooling: hold `conn` until the client leaves."""
        self.session_pooling = True
        self._attach(conn)

    def _give_back_server(self, clean: bool) -> None:
        conn, self.server = self.server, None
        if conn is None:
            return
        if clean and self.tracker.idle and self.tx_status == IDLE and not conn.closed:
            self.pool.release(conn)
        else:
            # Mid-request or mid-transaction: the connection's state is unknown.
            self.pool.discard(conn)
        self.tracker = ReplyTracker()

    def fail_shutdown(self) -> None:
        self.fail(AdminShutdown(self._shutdown_reason()))

    def retire(self) -> None:
        """The client's configuration changed: close it now if idle, else after this transaction."""
        self.retiring = True
        if self.idle():
            self.fail_shutdown()

    def _shutdown_reason(self) -> str:
        if self.retiring and not self.app.draining:
            return "the configuration of this login or tenant changed; reconnect"
        return "terminating connection due to administrator command"

    def idle(self) -> bool:
        """No request in flight and no transaction open (the drain may close it)."""
        return (self.relaying and self.leasing is None and self.tracker.idle
                and self.tx_status == IDLE and (self.server is None or self.session_pooling))

    @property
    def active_server(self):
        return self.server


# What each client message type does after the handshake; any other type is 08P01.
_HANDLERS = {
    m.QUERY: ClientSession._on_query, m.PARSE: ClientSession._on_parse,
    m.BIND: ClientSession._on_bind, m.DESCRIBE: ClientSession._on_describe,
    m.EXECUTE: ClientSession._on_execute, m.CLOSE: ClientSession._on_close,
    m.SYNC: ClientSession._on_sync, m.FLUSH: ClientSession._on_flush,
    m.TERMINATE: ClientSession._on_terminate, m.COPY_DATA: ClientSession._on_copy,
    m.COPY_DONE: ClientSession._on_copy, m.COPY_FAIL: ClientSession._on_copy,
}


def _as_fatal(error: ProxyError) -> ProxyError:
    return FatalError(error.message, sqlstate=error.sqlstate)


def _unexpected(mtype: int) -> ProxyError:
    if mtype == m.FUNCTION_CALL:
        return ProtocolViolation("the FunctionCall message is not supported", rule="function-call")
    if mtype == m.PASSWORD_MESSAGE:
        return ProtocolViolation("unexpected password message")
    return ProtocolViolation(f"unexpected message type {chr(mtype)!r}")


def _wake(waiter: asyncio.Future | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
