"""Prepared-statement bookkeeping: the per-connection cache, the reply tracker's undo of
skipped messages, and the extended-protocol code that ties them together.

A statement is recorded as prepared when its Parse is sent; if the server fails or skips
that Parse (an aborted transaction, an earlier error in the pipeline), the record must be
taken back, or a later use meets `26000 prepared statement "tg_…" does not exist`.
"""

from __future__ import annotations

import pytest

from proxy import statements as statements_module
from proxy.extended import ExtendedQuery
from proxy.protocol import messages as m
from proxy.replies import BOUND, DESCRIBED, EXECUTED, PARSED, READY, ReplyTracker
from proxy.statements import ServerStatements, make_statement

# -- ServerStatements ------------------------------------------------------------------------


def test_add_evicts_the_least_recently_used_when_full(monkeypatch) -> None:
    monkeypatch.setattr(statements_module, "SERVER_CACHE_SIZE", 2)
    cache = ServerStatements()
    assert cache.add("a") == [] and cache.add("b") == []
    assert cache.has("a")  # now "b" is the least recently used
    assert cache.add("c") == ["b"]
    assert list(cache.names) == ["a", "c"]


def test_forget_and_restore(monkeypatch) -> None:
    monkeypatch.setattr(statements_module, "SERVER_CACHE_SIZE", 2)
    cache = ServerStatements()
    cache.add("a")
    cache.add("b")
    cache.forget("a")
    cache.forget("never-added")
    assert list(cache.names) == ["b"]
    cache.add("c")
    cache.restore("a")  # a skipped Close: still prepared, first to be closed again
    assert list(cache.names) == ["a", "b", "c"]
    assert cache.add("d") == ["a", "b"]  # back within bounds


# -- ReplyTracker undo -----------------------------------------------------------------------

def test_error_undoes_skipped_entries_latest_first_and_not_completed_ones() -> None:
    tracker = ReplyTracker()
    undone = []
    tracker.expect(PARSED, undo=lambda: undone.append("parse 1"))
    tracker.expect(BOUND, undo=lambda: undone.append("bind"))
    tracker.expect(PARSED, undo=lambda: undone.append("parse 2"))
    assert tracker.answer(b"synthetic", undo=lambda: undone.append("answer")) == b""
    tracker.expect(READY)
    tracker.expect(PARSED, undo=lambda: undone.append("next segment"))
    tracker.expect(READY)

    assert tracker.on_completion(m.PARSE_COMPLETE) is False  # parse 1 done
    tracker.on_error()  # the Bind failed: the rest up to Sync is skipped
    assert undone == ["answer", "parse 2", "bind"]
    assert tracker.take_synthetic() == b""  # the skipped answer is never sent
    assert tracker.on_ready().failed


def test_ready_undoes_entries_left_without_an_answer() -> None:
    tracker = ReplyTracker()
    undone = []
    tracker.expect(PARSED, undo=lambda: undone.append("parse"))
    tracker.expect(READY)
    tracker.on_ready()
    assert undone == ["parse"] and tracker.idle


def test_a_query_sent_prepared_swallows_only_its_bind_complete_and_then_may_not_retry() -> None:
    tracker = ReplyTracker()
    tracker.expect(READY, executes=("statement", b"messages"), retry=True)
    entry = tracker.queue[0]
    assert tracker.on_completion(m.BIND_COMPLETE) is True
    assert entry.retry is False  # its answer has begun: never asked for twice
    for reply in (m.ROW_DESCRIPTION, m.COMMAND_COMPLETE, m.PARSE_COMPLETE):
        assert tracker.on_completion(reply) is False
    tracker.expect(READY)  # a plain Query behind it: its completions are all the client's
    assert tracker.on_ready() is entry
    assert tracker.on_completion(m.BIND_COMPLETE) is False


def test_a_whole_extended_answer_drops_only_entries_that_are_all_the_clients() -> None:
    tracker = ReplyTracker()
    for replies in (BOUND, DESCRIBED, EXECUTED, READY):
        tracker.expect(replies)
    assert tracker.relayed_only() is True
    tracker.drop_to_ready()
    assert [entry.replies for entry in tracker.queue] == [READY]
    assert tracker.on_ready() is not None and tracker.idle and tracker.pending_syncs == 0


@pytest.mark.parametrize("unlike", ["swallowed", "synthetic", "settings", "executes",
                                    "second sync"])
def test_a_whole_extended_answer_with_the_proxys_own_parts_takes_the_slow_path(unlike) -> None:
    tracker = ReplyTracker()
    if unlike == "synthetic":
        tracker.expect(PARSED)
        tracker.answer(b"synthetic")
    tracker.expect(PARSED, swallow=unlike == "swallowed")
    tracker.expect(EXECUTED, settings=("a change",) if unlike == "settings" else ())
    tracker.expect(READY, executes=("statement", b"") if unlike == "executes" else None)
    if unlike == "second sync":
        tracker.expect(BOUND)
        tracker.expect(READY)
    before = list(tracker.queue)
    assert tracker.relayed_only() is False
    assert list(tracker.queue) == before


def test_answer_with_nothing_pending_is_sent_at_once_and_never_undone() -> None:
    tracker = ReplyTracker()
    undone = []
    assert tracker.answer(b"x", undo=lambda: undone.append("x")) == b"x"
    tracker.expect(READY)
    tracker.on_error()
    assert undone == []


# -- ExtendedQuery wiring ----------------------------------------------------------------------

class FakeConnection:
    def __init__(self) -> None:
        self.statements = ServerStatements()
        self.unnamed_owner = None


class FakeSession(ExtendedQuery):
    """Just what `_parse_named`, `_statement_for` and `_on_close` use of a session."""

    def __init__(self) -> None:
        self.server = FakeConnection()
        self.tracker = ReplyTracker()
        self.statements: dict = {}
        self.unnamed = None
        self.unsynced = False
        self.session_pooling = False
        self.sent: list[bytes] = []
        self._client_out: list[bytes] = []

    def _send(self, raw: bytes) -> None:
        self.sent.append(raw)

    def _refuse_extended(self, error, sql=None) -> None:
        raise AssertionError(f"refused: {error.message}")


def in_transaction_pipeline(session: FakeSession) -> None:
    """Something before the Parse that may fail and skip it."""
    session.tracker.expect(EXECUTED)


def test_failed_named_parse_is_neither_prepared_nor_claimed() -> None:
    session = FakeSession()
    statement = make_statement("SELECT nosuchcol", ())
    session._parse_named("s", statement)
    assert session.server.statements.has(statement.server_name)  # usable later in the pipeline
    session.tracker.expect(READY)
    session.tracker.on_error()  # the Parse itself failed (42703, 25P02)
    assert not session.server.statements.has(statement.server_name)
    assert "s" not in session.statements


def test_completed_named_parse_stays_prepared() -> None:
    session = FakeSession()
    statement = make_statement("SELECT 1", ())
    session._parse_named("s", statement)
    session.tracker.expect(READY)
    session.tracker.on_completion(m.PARSE_COMPLETE)
    session.tracker.on_ready()
    assert session.server.statements.has(statement.server_name)
    assert session.statements["s"] is statement


def test_already_prepared_text_answered_by_the_proxy_is_unclaimed_when_skipped() -> None:
    session = FakeSession()
    statement = make_statement("SELECT 1", ())
    session.server.statements.add(statement.server_name)
    in_transaction_pipeline(session)
    session._parse_named("s", statement)
    assert session.sent == []  # answered by the proxy
    session.tracker.expect(READY)
    session.tracker.on_error()
    assert "s" not in session.statements
    assert session.server.statements.has(statement.server_name)  # prepared before: still is


def test_lazy_prepare_skipped_keeps_the_client_name() -> None:
    """A deferred statement prepared for a Bind after an error: the server skips the Parse,
    but the client's statement exists (PostgreSQL would have prepared it at its Parse)."""
    session = FakeSession()
    statement = make_statement("SELECT 1", ())
    session.statements["s"] = statement
    in_transaction_pipeline(session)
    assert session._statement_for("s") == statement.server_name
    session.tracker.expect(READY)
    session.tracker.on_error()
    assert session.statements["s"] is statement
    assert not session.server.statements.has(statement.server_name)


def test_skipped_parse_that_evicted_a_statement_restores_it(monkeypatch) -> None:
    monkeypatch.setattr(statements_module, "SERVER_CACHE_SIZE", 1)
    session = FakeSession()
    old = make_statement("SELECT 'old'", ())
    new = make_statement("SELECT 'new'", ())
    session.server.statements.add(old.server_name)
    in_transaction_pipeline(session)
    session._parse_named("s", new)
    assert session.sent == [new.parse_message, m.close_statement(old.server_name)]
    assert list(session.server.statements.names) == [new.server_name]
    session.tracker.expect(READY)
    session.tracker.on_error()  # the Close was skipped too: `old` is still prepared
    assert list(session.server.statements.names) == [old.server_name]


def test_skipped_reprepare_of_an_evicted_statement_keeps_it_known(monkeypatch) -> None:
    """Parse A evicts B (Close B), then B is prepared again: all skipped. Undone latest
    first, B ends as it began, prepared; undone in order it would be forgotten."""
    monkeypatch.setattr(statements_module, "SERVER_CACHE_SIZE", 1)
    session = FakeSession()
    a = make_statement("SELECT 'a'", ())
    b = make_statement("SELECT 'b'", ())
    session.server.statements.add(b.server_name)
    in_transaction_pipeline(session)
    session.statements.update(a=a, b=b)
    session._statement_for("a")
    session._statement_for("b")
    assert session.sent == [a.parse_message, m.close_statement(b.server_name),
                            b.parse_message, m.close_statement(a.server_name)]
    session.tracker.expect(READY)
    session.tracker.on_error()
    assert list(session.server.statements.names) == [b.server_name]


def test_failed_unnamed_reprepare_frees_the_unnamed_slot() -> None:
    session = FakeSession()
    session.unnamed = make_statement("SELECT 1", ())
    in_transaction_pipeline(session)
    assert session._statement_for("") == ""
    assert session.server.unnamed_owner is session.unnamed
    session.tracker.expect(READY)
    session.tracker.on_error()
    assert session.server.unnamed_owner is None


@pytest.mark.parametrize("name", ["s", ""])
def test_skipped_close_keeps_the_statement(name) -> None:
    session = FakeSession()
    statement = make_statement("SELECT 1", ())
    if name:
        session.statements[name] = statement
    else:
        session.unnamed = statement
    in_transaction_pipeline(session)
    session._on_close(m.close_statement(name))
    assert (session.statements.get(name) if name else session.unnamed) is None
    session.tracker.expect(READY)
    session.tracker.on_error()
    assert (session.statements.get(name) if name else session.unnamed) is statement


def test_close_answered_at_once_is_final() -> None:
    session = FakeSession()
    session.statements["s"] = make_statement("SELECT 1", ())
    session._on_close(m.close_statement("s"))
    assert session._client_out == [m.close_complete()]
    assert "s" not in session.statements
