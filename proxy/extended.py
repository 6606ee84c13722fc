"""The extended query protocol of a session: Parse/Bind/Describe/Execute/Close/Sync.

In transaction pooling a client's named statements outlive the server connection they
were prepared on: the session keeps them (`proxy.statements`) and prepares them again,
under a server-side name derived from their text, wherever the client lands. Replies
the proxy adds or removes are ordered by the session's `ReplyTracker`. Mixed into
`ClientSession`; it uses the session's server, tracker and output buffers.
"""

from __future__ import annotations

import functools
import uuid

from proxy.errors import NotSupported, PolicyDenied, ProxyError
from proxy.protocol import messages as m
from proxy.refusals import raise_sql
from proxy.replies import BOUND, CLOSED, DESCRIBED, EXECUTED, PARSED, READY
from proxy.statements import make_statement


# What may follow a Bind of the unnamed portal to be sent with it as one request
# (`_sent_to_sync`): byte for byte, so nothing in them needs reading. libpq's
# PQexecPrepared and psycopg send the first; asyncpg the second (fetch, execute) and the
# third (fetchrow, fetchval: one row).
BATCH_TAILS = (m.DESCRIBE_EXECUTE_SYNC, m.EXECUTE_SYNC, m.execute("", 1) + m.sync())


class BindCheck:
    """What each Bind of one client statement checks (ExtendedQuery._bind_allowed)."""

    __slots__ = ("sql", "catalog", "key_params")

    def __init__(self, sql: str, catalog: object | None, key_params: frozenset[int]) -> None:
        self.sql = sql  # the client's text, analysed again when the catalog is newer
        self.catalog = catalog  # schema tenants: the shared catalog it was last allowed in
        self.key_params = key_params  # numbers of the parameters that must hold the key


class ExtendedQuery:
    __slots__ = ()  # a mixin of ClientSession, which lists the slots

    def _on_parse(self, raw: bytes) -> None:
        parse = m.decode_parse(raw)
        decision = self._analyze(parse.query)
        if decision.action == "deny":
            self._refuse_extended(decision.error, parse.query)
            return
        if decision.action == "local":  # answered by the session in a simple Query only
            self._refuse_extended(NotSupported(
                f"{parse.query.strip()[:40]} is served in the simple query protocol only in "
                "transaction pooling", rule="session-feature"), parse.query)
            return
        query = parse.query if decision.action == "allow" else decision.sql
        self._note_bind_check(parse.name, parse.query, decision.key_params)
        if parse.name and self._can_defer_parse(decision):
            # Prepared lazily where it is used: a Parse+Sync (libpq's PQprepare) then
            # needs no server connection, so clients waiting for one cannot deadlock.
            if self.app.observer.audit is not None:
                self.app.observer.statement(self, parse.query, decision.ddl)
            self._register_named(parse.name, make_statement(query, parse.param_oids,
                                                            decision.settings))
            return
        if not self._ensure_server(m.PARSE, raw, (parse.query, decision)):
            return  # handled again, and audited, once a server connection is attached
        if self.app.observer.audit is not None:
            self.app.observer.statement(self, parse.query, decision.ddl)
        if decision.session_state:
            self.server.dirty = True
        if self.session_pooling:
            self._send_extended(raw if decision.action == "allow" else
                                m.parse(parse.name, query, parse.param_oids), PARSED)
        elif parse.name:
            self._parse_named(parse.name, make_statement(query, parse.param_oids,
                                                         decision.settings))
        else:
            self.unnamed = make_statement(query, parse.param_oids, decision.settings)
            self.unnamed.parse_message = m.parse("", query, parse.param_oids)
            self._send_extended(self.unnamed.parse_message, PARSED)
            self.server.unnamed_owner = self.unnamed

    def _note_bind_check(self, name: str, sql: str, key_params: frozenset[int]) -> None:
        """Remember what each Bind of statement `name` must check: the parameters that must
        hold the tenant key, and for a schema tenant the shared catalog it was analysed
        with. Nothing to check: the name's old entry goes."""
        catalog = self.plan.scope.shared_catalog
        if key_params or catalog is not None:
            self.bind_checks[name] = BindCheck(sql, catalog, key_params)
        elif self.bind_checks:
            self.bind_checks.pop(name, None)

    def _statements_deallocated(self) -> None:
        """DEALLOCATE ALL completed: the server dropped every named statement of the
        connection (other clients' `tg_` ones too), and the client's names are gone."""
        self.statements.clear()
        self.bind_checks.clear()
        if self.server is not None:
            self.server.statements.clear()

    def _can_defer_parse(self, decision) -> bool:
        return (not self.session_pooling and self.server is None and self.leasing is None
                and not decision.session_state)

    def _claim_name(self, name: str, statement) -> bool:
        """Record a client's named statement; a name in use is 42P05, as in PostgreSQL."""
        if name in self.statements:
            self._refuse_extended(ProxyError(
                f'prepared statement "{name}" already exists', sqlstate="42P05"))
            return False
        self.statements[name] = statement
        return True

    def _register_named(self, name: str, statement) -> None:
        """A named Parse answered by the proxy; the server sees it when it is used."""
        if self._claim_name(name, statement):
            self._client_out.append(m.parse_complete())

    def _parse_named(self, name: str, statement) -> None:
        if not self._claim_name(name, statement):
            return
        self.unsynced = True
        unclaim = self._unclaim_on_failure(name, statement)
        if self.server.statements.has(statement.server_name):
            self._client_out.append(self.tracker.answer(m.parse_complete(), undo=unclaim))
        else:
            self._prepare_on_server(statement, swallow=False, unclaim=unclaim)

    def _unclaim_on_failure(self, name: str, statement):
        """Undo for a client's named Parse that the server failed or skipped: PostgreSQL
        then creates no statement, so the name is free again (unless already reused)."""
        def unclaim() -> None:
            if self.statements.get(name) is statement:
                del self.statements[name]
        return unclaim

    def _prepare_on_server(self, statement, swallow: bool, unclaim=None) -> None:
        """Send the Parse of `statement` and record it as prepared on this connection.

        It is recorded at once, so the messages that follow in the pipeline use it, and
        taken back if the Parse fails or is skipped after an earlier error; otherwise a
        later use of it would meet `26000 prepared statement "tg_…" does not exist`.
        """
        conn = self.server
        server_name = statement.server_name

        def unprepare() -> None:
            conn.statements.forget(server_name)
            if unclaim is not None:
                unclaim()

        self._send(statement.parse_message)
        self.tracker.expect(PARSED, swallow=swallow, undo=unprepare)
        for evicted in conn.statements.add(server_name):
            self._send(m.close_statement(evicted))
            # A skipped Close leaves the statement prepared: keep it known, or its next
            # Parse would fail with 42P05.
            self.tracker.expect(CLOSED, swallow=True,
                                undo=functools.partial(conn.statements.restore, evicted))

    def _statement_for(self, name: str):
        """The server-side name for a client statement, preparing it here if needed."""
        if not name:
            if self.unnamed is not None and self.server.unnamed_owner is not self.unnamed:
                self._send(self.unnamed.parse_message)
                self.tracker.expect(PARSED, swallow=True,
                                    undo=self._unnamed_unprepared(self.server, self.unnamed))
                self.server.unnamed_owner = self.unnamed
            return ""
        statement = self.statements.get(name)
        if statement is None:
            return None  # the server reports the unknown name
        if not self.server.statements.has(statement.server_name):
            self._prepare_on_server(statement, swallow=True)
        return statement.server_name

    @staticmethod
    def _unnamed_unprepared(conn, statement):
        """Undo for a re-Parse of the unnamed statement that failed or was skipped: the
        server's unnamed slot does not hold it (a failed Parse empties the slot)."""
        def unprepared() -> None:
            if conn.unnamed_owner is statement:
                conn.unnamed_owner = None
        return unprepared

    def _on_bind(self, raw: bytes) -> None:
        bind = m.decode_bind(raw)  # checks the whole message: forwarded only if well formed
        check = self.bind_checks.get(bind.statement) if self.bind_checks else None
        if check is not None and not self._bind_allowed(raw, check):
            return
        if not self._ensure_server(m.BIND, raw):
            return
        if not self.session_pooling:
            server_name = self._statement_for(bind.statement)
            if server_name:
                raw = m.rename_bind(raw, bind.portal, server_name)
            self._bind_settings(bind.portal, bind.statement)
            if not bind.portal and not self.portal_settings and self._sent_to_sync(raw):
                return
        self._send_extended(raw, BOUND)

    def _sent_to_sync(self, bind: bytes) -> bool:
        """The most common extended request, a Bind of the unnamed portal followed by
        exactly Describe of it, Execute and Sync (`BATCH_TAILS`), is sent as one piece with one
        entry for its whole answer, as a simple Query is: the Describe, Execute and Sync
        then cost no dispatch and no entries of their own, and the answer is relayed
        whole (relay.py `_server_data`). True if so; False (nothing consumed) when the
        bytes after the Bind are anything else."""
        for tail in BATCH_TAILS:
            if self.reader.take_exactly(tail):
                self._send(bind)
                self._send(tail)
                self.tracker.expect(READY, batch=True)
                self.unsynced = False
                return True
        return False

    def _bind_allowed(self, raw: bytes, check: BindCheck) -> bool:
        """Refuse a Bind (False) whose statement is no longer allowed or whose tenant-column
        values are certainly not the tenant's key."""
        if check.catalog is not None and not self._still_allowed(check):
            return False
        if check.key_params and not self._key_values_allowed(raw, check.key_params):
            self._refuse_extended(PolicyDenied(
                "the tenant column can only hold the tenant's own key", rule="tenant-column"))
            return False
        return True

    def _still_allowed(self, check: BindCheck) -> bool:
        """A schema tenant's statement prepared before the proxy loaded a newer catalog
        of the shared schemas is analysed again (a view added since is refused at Bind,
        THREATS 31). False when it was refused."""
        scope = self._current_shared_scope(self.plan.scope)
        if scope.shared_catalog is check.catalog:
            return True
        decision = self.app.analyzer.analyze(check.sql, scope)
        if decision.action == "deny":
            self._refuse_extended(decision.error, check.sql)
            return False
        check.catalog = scope.shared_catalog
        return True

    def _key_values_allowed(self, raw: bytes, numbers: frozenset[int]) -> bool:
        """False when a value bound for the tenant column is certainly not the tenant's key
        (refused here, 42501, before any server sees it). What only the server can
        decide — a binary value of a type the proxy does not read — goes on to the guard
        the rewriter put around the parameter (22P02 there)."""
        params = m.bind_parameters(raw)
        key = self.plan.scope.tenant_key or ""
        return not any(number <= len(params) and certainly_not_key(*params[number - 1], key)
                       for number in numbers)

    def _bind_settings(self, portal: str, name: str) -> None:
        """The SET/transaction events of the bound statement apply at each Execute of
        the portal (a prepared SET executed again changes the setting again)."""
        statement = self.statements.get(name) if name else self.unnamed
        if statement is not None and statement.settings:
            self.portal_settings[portal] = statement.settings
        elif self.portal_settings:
            self.portal_settings.pop(portal, None)

    def _on_describe(self, raw: bytes) -> None:
        if not self._ensure_server(m.DESCRIBE, raw):
            return
        kind, name = m.decode_describe(raw)
        if kind == "S" and not self.session_pooling:
            server_name = self._statement_for(name)
            if server_name:
                raw = m.describe("S", server_name)
        self._send_extended(raw, DESCRIBED)

    def _on_execute(self, raw: bytes) -> None:
        portal = m.decode_execute(raw)[0]  # checks the message: forwarded only if well formed
        if self._ensure_server(m.EXECUTE, raw):
            settings = self.portal_settings.get(portal, ()) if self.portal_settings else ()
            self._send_extended(raw, EXECUTED, settings)

    def _on_close(self, raw: bytes) -> None:
        kind, name = m.decode_close(raw)
        if kind == "S" and not self.session_pooling:
            # Statements stay prepared on the server (others may share them); the
            # client's name is forgotten and the proxy answers for the server.
            if name:
                closed = self.statements.pop(name, None)
            else:
                closed, self.unnamed = self.unnamed, None
            self.unsynced = True
            undo = self._reopen_on_skip(name, closed) if closed is not None else None
            self._client_out.append(self.tracker.answer(m.close_complete(), undo=undo))
        elif self._ensure_server(m.CLOSE, raw):
            self._send_extended(raw, CLOSED)

    def _reopen_on_skip(self, name: str, statement):
        """Undo for a Close skipped after an earlier error: PostgreSQL keeps the statement."""
        def reopen() -> None:
            if not name:
                if self.unnamed is None:
                    self.unnamed = statement
            elif name not in self.statements:
                self.statements[name] = statement
        return reopen

    def _on_sync(self, raw: bytes) -> None:
        if self.server is None and self.tracker.idle:
            self.unsynced = False
            self._client_out.append(m.ready_for_query(bytes([self.tx_status])))
            return
        if self._ensure_server(m.SYNC, raw):
            self._forward_sync()

    def _forward_sync(self) -> None:
        self._send(m.sync())
        self.tracker.expect(READY)
        self.unsynced = False

    def _send_extended(self, raw: bytes, replies: tuple[int, ...], settings: tuple = ()) -> None:
        self._send(raw)
        self.tracker.expect(replies, settings=settings)
        self.unsynced = True

    def _refuse_extended(self, error: ProxyError, sql: str | None = None) -> None:
        self.app.refused(self, error, sql)
        self.skip_to_sync = True
        if self._can_answer_directly():
            self.refused_directly = True
            self._client_out.append(m.error_response(error.fields()))
            return
        self._send(m.parse("", raise_sql(error)))
        self.tracker.expect(PARSED, swallow=True)
        self._send(m.bind("", ""))
        self.tracker.expect(BOUND, swallow=True)
        self._send(m.execute("", 0))
        self.tracker.expect(EXECUTED)
        self.server.unnamed_owner = None


def certainly_not_key(fmt: int, value: bytes | None, key: str) -> bool:
    """Whether a bound value (format code, bytes or None for NULL) is certainly not `key`.

    NULL never is. A text-format value is the key only as the configuration writes it
    (`07` for the key `7` is refused, though an integer column would take it). A binary
    value is the key if its bytes are the key's text (text, varchar, name). For a key
    that is an integer, a 2-, 4- or 8-byte value is read as a big-endian integer; any
    other binary form of a number (numeric) is left to the server's guard (False: not
    certain). For a uuid key, the uuid's 16 bytes. Any other key is text, so a value
    that differs from its bytes is not it."""
    if value is None:
        return True
    if value == key.encode():
        return False
    if fmt == 0:
        return True
    if key.isascii() and key.lstrip("-").isdigit():
        if len(value) in (2, 4, 8):
            return int.from_bytes(value, "big", signed=True) != int(key)
        return False
    try:
        return value != uuid.UUID(key).bytes
    except ValueError:
        return True
