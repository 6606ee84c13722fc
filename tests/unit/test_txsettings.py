"""TransactionSettings: which SET/RESET last, as PostgreSQL decides it (proxy/txsettings.py).

Each case feeds what the relay would: the events of each request (from the analysis of its
SQL), the command tag of every statement the server completed, errors, and the status of
ReadyForQuery; the expected outcome is what PostgreSQL 15 shows afterwards.
"""

from __future__ import annotations

import pytest

from proxy.sql import Scope, analyze_uncached
from proxy.txsettings import TransactionSettings

SCOPE = Scope("database")
TAGS = {"BEGIN": b"BEGIN", "START": b"START TRANSACTION", "COMMIT": b"COMMIT", "END": b"COMMIT",
        "ROLLBACK": b"ROLLBACK", "ABORT": b"ROLLBACK", "SAVEPOINT": b"SAVEPOINT",
        "RELEASE": b"RELEASE", "SET": b"SET", "RESET": b"RESET", "SELECT": b"SELECT 1"}


class Session:
    """The committed settings, as the session tracks them (name → value)."""

    def __init__(self) -> None:
        self.params: dict[str, str | None] = {}
        self.tx = TransactionSettings(self.commit)
        self.in_block = False

    def commit(self, changes) -> None:
        for change in changes:
            self.params[change.name] = change.value

    def query(self, sql: str) -> None:
        """A simple Query; a statement `SELECT 1/0` fails, as on the server."""
        events = analyze_uncached(sql, SCOPE).settings
        failed = False
        for statement in (part.strip() for part in sql.split(";")):
            if statement == "SELECT 1/0" or (self.in_block == "aborted"
                                            and not statement.startswith(("ROLLBACK", "COMMIT"))):
                failed = True
                self.tx.error()
                break
            tag = _tag(statement, self.in_block)
            self._follow(statement, tag)
            events = self.tx.statement_done(events, tag)
        if events and not failed:
            self.tx.apply(events)
        if failed and self.in_block:
            self.in_block = "aborted"
        status = {False: b"I", True: b"T", "aborted": b"E"}[self.in_block][0]
        self.tx.ready(status, failed)

    def execute(self, sql: str) -> None:
        """One statement by the extended protocol: its events apply at its completion."""
        events = analyze_uncached(sql, SCOPE).settings
        if sql == "SELECT 1/0" or self.in_block == "aborted" and not sql.startswith(
                ("ROLLBACK", "COMMIT")):
            self.tx.error()
            failed = True
            if self.in_block:
                self.in_block = "aborted"
        else:
            failed = False
            tag = _tag(sql, self.in_block)
            self._follow(sql, tag)
            self.tx.apply(events, tag)
        status = {False: b"I", True: b"T", "aborted": b"E"}[self.in_block][0]
        self.tx.ready(status, failed)

    def _follow(self, statement: str, tag: bytes) -> None:
        """The server's transaction state after a statement that succeeded."""
        word = statement.split()[0]
        if word in ("BEGIN", "START") or statement.startswith("ROLLBACK TO"):
            self.in_block = True  # ROLLBACK TO also ends the aborted state
        elif word in ("COMMIT", "END", "ROLLBACK", "ABORT") and "TO" not in statement.split():
            self.in_block = "CHAIN" in statement


def _tag(statement: str, in_block) -> bytes:
    word = statement.split()[0]
    if word in ("COMMIT", "END") and in_block == "aborted":
        return b"ROLLBACK"
    return TAGS[word]


NY, TOKYO = "'America/New_York'", "'Asia/Tokyo'"

CASES = [
    # (statements, one string?, TimeZone tracked afterwards; None = never set)
    ([f"SET TimeZone TO {NY}"], False, NY),
    (["BEGIN", f"SET TimeZone TO {NY}", "COMMIT"], False, NY),
    (["BEGIN", f"SET TimeZone TO {NY}", "ROLLBACK"], False, None),
    (["BEGIN", f"SET TimeZone TO {NY}", "SELECT 1/0", "ROLLBACK"], False, None),
    (["BEGIN", f"SET TimeZone TO {NY}", "SELECT 1/0", "COMMIT"], False, None),
    (["BEGIN", "SAVEPOINT a", f"SET TimeZone TO {NY}", "ROLLBACK TO SAVEPOINT a", "COMMIT"],
     False, None),
    (["BEGIN", "SAVEPOINT a", f"SET TimeZone TO {NY}", "RELEASE a", "COMMIT"], False, NY),
    (["BEGIN", f"SET TimeZone TO {NY}", "SAVEPOINT a", f"SET TimeZone TO {TOKYO}",
      "ROLLBACK TO a", "COMMIT"], False, NY),
    (["BEGIN", "SAVEPOINT a", f"SET TimeZone TO {NY}", "SAVEPOINT b",
      f"SET TimeZone TO {TOKYO}", "ROLLBACK TO a", "COMMIT"], False, None),
    (["BEGIN", "SAVEPOINT a", f"SET TimeZone TO {NY}", "SAVEPOINT b",
      f"SET TimeZone TO {TOKYO}", "RELEASE a", "COMMIT"], False, TOKYO),
    (["BEGIN", f"SET TimeZone TO {NY}", "SAVEPOINT a", "SELECT 1/0", "ROLLBACK TO a",
      "COMMIT"], False, NY),
    (["BEGIN", f"SET TimeZone TO {TOKYO}", f"SET LOCAL TimeZone TO {NY}", "COMMIT"],
     False, TOKYO),
    (["BEGIN", f"SET TimeZone TO {NY}", "COMMIT AND CHAIN", f"SET TimeZone TO {TOKYO}",
      "ROLLBACK"], False, NY),
    (["START TRANSACTION", f"SET TimeZone TO {NY}", "END"], False, NY),
    (["BEGIN", "SELECT set_config('TimeZone', 'UTC', false)", "ABORT"], False, None),
    # One simple Query holding several statements.
    ([f"BEGIN; SET TimeZone TO {NY}; COMMIT"], True, NY),
    ([f"BEGIN; SET TimeZone TO {NY}; ROLLBACK"], True, None),
    ([f"SET TimeZone TO {NY}; SELECT 1/0"], True, None),
    ([f"SET TimeZone TO {NY}; COMMIT; SELECT 1/0"], True, NY),
    ([f"BEGIN; SAVEPOINT a; SET TimeZone TO {NY}; ROLLBACK TO a; COMMIT"], True, None),
    ([f"SELECT 1; SET TimeZone TO {NY}; BEGIN; SELECT 1/0", "ROLLBACK"], True, None),
]


@pytest.mark.parametrize("statements,one_string,expected", CASES)
def test_settings_follow_transactions(statements, one_string, expected) -> None:
    session = Session()
    for sql in statements:
        if one_string:
            session.query(sql)
        else:
            session.execute(sql)
    assert session.params.get("timezone") == (expected.strip("'") if expected else None)


@pytest.mark.parametrize("statements,one_string,expected",
                         [case for case in CASES if not case[1]])
def test_separate_simple_queries_agree_with_the_extended_protocol(statements, one_string,
                                                                 expected) -> None:
    simple, extended = Session(), Session()
    for sql in statements:
        simple.query(sql)
        extended.execute(sql)
    assert simple.params == extended.params


def test_a_plain_statement_before_a_set_that_fails_leaves_nothing() -> None:
    """The tags cannot tell `SELECT 1` from `SELECT set_config(…)`: the change may apply
    early, and the error after it takes it away again."""
    session = Session()
    session.query("BEGIN")
    session.query("SAVEPOINT a")
    session.query("SELECT 1; SELECT 1/0; SELECT set_config('TimeZone', 'UTC', false)")
    session.query("ROLLBACK TO a")
    session.query("COMMIT")
    assert session.params == {}


@pytest.mark.parametrize("end", ["COMMIT", "ROLLBACK"])
def test_a_finished_transaction_leaves_no_savepoint_level_behind(end):
    """The next transaction starts from the empty state, whatever the last one made."""
    session = Session()
    session.query("BEGIN")
    session.query("SAVEPOINT a")
    session.query("SAVEPOINT b")
    session.query(end)
    assert session.tx.levels == [(None, [])] and not session.tx.recorded
