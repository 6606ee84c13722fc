"""The extended query protocol of a session: Parse/Bind/Describe/Execute/Close/Sync.

In transaction pooling a client's named statements outlive the server connection they
were prepared on: the session keeps them (`proxy.statements`) and prepares them again,
under a server-side name derived from their text, wherever the client lands. Replies
the proxy adds or removes are ordered by the session's `ReplyTracker`. Mixed into
`ClientSession`; it uses the session's server, tracker and output buffers.
"""

from __future__ import annotations

from proxy.errors import ProxyError
from proxy.protocol import messages as m
from proxy.refusals import raise_sql
from proxy.replies import BOUND, CLOSED, DESCRIBED, EXECUTED, PARSED, READY
from proxy.statements import make_statement


class ExtendedQuery:
    def _on_parse(self, raw: bytes) -> None:
        parse = m.decode_parse(raw)
        decision = self._analyze(parse.query)
        if decision.action == "deny":
            self._refuse_extended(decision.error, parse.query)
            return
        query = parse.query if decision.action == "allow" else decision.sql
        if parse.name and self._can_defer_parse(decision):
            # Prepared lazily where it is used: a Parse+Sync (libpq's PQprepare) then
            # needs no server connection, so clients waiting for one cannot deadlock.
            self._register_named(parse.name, make_statement(query, parse.param_oids))
            return
        if not self._ensure_server(m.PARSE, raw):
            return
        if self.app.observer.audit is not None:
            self.app.observer.statement(self, parse.query)
        self.unsynced_settings.extend(decision.settings)
        if decision.session_state:
            self.server.dirty = True
        if self.session_pooling:
            self._send_extended(raw if decision.action == "allow" else
                                m.parse(parse.name, query, parse.param_oids), PARSED)
        elif parse.name:
            self._parse_named(parse.name, make_statement(query, parse.param_oids))
        else:
            self.unnamed = make_statement(query, parse.param_oids)
            self.unnamed.parse_message = m.parse("", query, parse.param_oids)
            self._send_extended(self.unnamed.parse_message, PARSED)
            self.server.unnamed_owner = self.unnamed

    def _can_defer_parse(self, decision) -> bool:
        return (not self.session_pooling and self.server is None and self.leasing is None
                and not decision.settings and not decision.session_state)

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
        if self.server.statements.has(statement.server_name):
            self._answer(m.parse_complete())
        else:
            self._prepare_on_server(statement, swallow=False)

    def _prepare_on_server(self, statement, swallow: bool) -> None:
        self._send(statement.parse_message)
        self.tracker.expect(PARSED, swallow=swallow)
        evicted = self.server.statements.add(statement.server_name)
        if evicted is not None:
            self._send(m.close_statement(evicted))
            self.tracker.expect(CLOSED, swallow=True)

    def _statement_for(self, name: str):
        """The server-side name for a client statement, preparing it here if needed."""
        if not name:
            if self.unnamed is not None and self.server.unnamed_owner is not self.unnamed:
                self._send(self.unnamed.parse_message)
                self.tracker.expect(PARSED, swallow=True)
                self.server.unnamed_owner = self.unnamed
            return ""
        statement = self.statements.get(name)
        if statement is None:
            return None  # the server reports the unknown name
        if not self.server.statements.has(statement.server_name):
            self._prepare_on_server(statement, swallow=True)
        return statement.server_name

    def _on_bind(self, raw: bytes) -> None:
        if not self._ensure_server(m.BIND, raw):
            return
        if not self.session_pooling:
            bind = m.decode_bind(raw)
            server_name = self._statement_for(bind.statement)
            if server_name:
                raw = m.rename_bind(raw, bind.portal, server_name)
        self._send_extended(raw, BOUND)

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
        if self._ensure_server(m.EXECUTE, raw):
            self._send_extended(raw, EXECUTED)

    def _on_close(self, raw: bytes) -> None:
        kind, name = m.decode_close(raw)
        if kind == "S" and not self.session_pooling:
            # Statements stay prepared on the server (others may share them); the
            # client's name is forgotten and the proxy answers for the server.
            if name:
                self.statements.pop(name, None)
            else:
                self.unnamed = None
            self.unsynced = True
            self._answer(m.close_complete())
        elif self._ensure_server(m.CLOSE, raw):
            self._send_extended(raw, CLOSED)

    def _on_sync(self, raw: bytes) -> None:
        if self.server is None and self.tracker.idle:
            self.unsynced = False
            self._client_out.append(m.ready_for_query(bytes([self.tx_status])))
            return
        if self._ensure_server(m.SYNC, raw):
            self._forward_sync()

    def _forward_sync(self) -> None:
        self._send(m.sync())
        self.tracker.expect(READY, settings=tuple(self.unsynced_settings))
        self.unsynced_settings.clear()
        self.unsynced = False

    def _send_extended(self, raw: bytes, replies: tuple[int, ...]) -> None:
        self._send(raw)
        self.tracker.expect(replies)
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
