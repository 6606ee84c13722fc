"""A client's SET and RESET as PostgreSQL keeps them: with the transaction they were made in.

PostgreSQL undoes a SET when its transaction rolls back (COMMIT of a failed transaction
rolls back too), or when a savepoint made before it is rolled back to; RELEASE keeps it,
and SET LOCAL never outlasts its transaction. The session restores a client's settings
on every server connection it leases, so it must only track the changes that lasted:
`TransactionSettings` holds the changes of the open transaction per savepoint level and
hands them over (`commit`) when the transaction commits.

Events come in statement order (`Decision.settings`: SettingChange and
TransactionControl) and are applied as the server completes their statements: an
extended-protocol Execute runs one statement, so its CommandComplete applies all of
its events; the statements of a simple Query are told apart by their command tags. A
plain statement (`SELECT 1`) before a SET may apply the SET early; that is harmless:
the early change is only wrong if an error comes before the SET runs, and an error
either rolls back the implicit transaction at once, or aborts the explicit one, which
then only ends by rolling back to a savepoint made before the error, or entirely.
"""

from __future__ import annotations

from typing import Callable

from proxy.sql.scope import SettingChange, TransactionControl

# The command tags each transaction statement completes with. COMMIT of a transaction
# that failed answers ROLLBACK, and ROLLBACK TO SAVEPOINT answers ROLLBACK as well.
TAGS = {"begin": (b"BEGIN", b"START TRANSACTION"), "commit": (b"COMMIT", b"ROLLBACK"),
        "rollback": (b"ROLLBACK",), "savepoint": (b"SAVEPOINT",), "release": (b"RELEASE",),
        "rollback_to": (b"ROLLBACK",), "deallocate_all": (b"DEALLOCATE ALL",)}
IDLE, FAILED = ord("I"), ord("E")


class TransactionSettings:
    """The setting changes of the open transaction, until it commits or rolls back."""

    __slots__ = ("commit", "deallocated", "levels", "recorded", "in_block", "status")

    def __init__(self, commit: Callable[[list[SettingChange]], None],
                 deallocated: Callable[[], None] = lambda: None) -> None:
        self.commit = commit  # receives the changes that lasted, in order
        self.deallocated = deallocated  # a DEALLOCATE ALL completed
        # (savepoint name, changes made at that level); level 0 is the transaction itself
        self.levels: list[tuple[str | None, list[SettingChange]]] = [(None, [])]
        # False while `levels` is as above: the check on every ReadyForQuery then reads
        # this object only, not the lists of a session that has gone cold in the cache.
        self.recorded = False
        self.in_block = False  # inside BEGIN … COMMIT (else in an implicit transaction)
        self.status = IDLE  # the transaction status of the last ReadyForQuery

    # -- what the server reported ---------------------------------------------------------

    def statement_done(self, events: tuple, tag: bytes) -> tuple:
        """One statement of a simple Query completed with `tag`: apply the events it
        accounts for (the setting changes before it, and its own transaction control);
        return those still to come."""
        done = 0
        while done < len(events) and isinstance(events[done], SettingChange):
            self._change(events[done])
            done += 1
        if done < len(events) and tag in TAGS[events[done].kind]:
            self._control(events[done], tag)
            done += 1
        return events[done:]

    def apply(self, events: tuple, tag: bytes | None = None) -> None:
        """Statements that completed (an Execute; what a successful Query left over)."""
        for event in events:
            if isinstance(event, SettingChange):
                self._change(event)
            else:
                self._control(event, tag)

    def error(self) -> None:
        """An ErrorResponse: an implicit transaction is rolled back at once; an explicit
        one is only aborted, and its changes go when it rolls back."""
        if not self.in_block:
            self._rollback()

    def ready(self, status: int, failed: bool) -> None:
        """ReadyForQuery: outside a transaction, what is still pending committed, unless
        the request failed or the transaction before was aborted (it rolled back)."""
        if status == IDLE and self.status == IDLE and not self.recorded:
            self.in_block = False  # the common case on every query: nothing pending
            return
        if status == IDLE:
            if failed or self.status == FAILED:
                self._rollback()
            else:
                self._commit()
        self.in_block = status != IDLE
        self.status = status

    # -- the transaction model ------------------------------------------------------------

    def _change(self, change: SettingChange) -> None:
        if not change.local:  # SET LOCAL ends with its transaction: nothing to keep
            self.levels[-1][1].append(change)
            self.recorded = True

    def _control(self, event: TransactionControl, tag: bytes | None) -> None:
        kind = event.kind
        if kind == "begin":
            self.in_block = True
        elif kind == "commit" and tag != b"ROLLBACK":
            self._commit()
            self.in_block = event.chain
        elif kind in ("commit", "rollback"):
            self._rollback()
            self.in_block = event.chain
        elif kind == "savepoint":
            self.levels.append((event.savepoint, []))
            self.recorded = True
        elif kind == "release":
            self._release(event.savepoint)
        elif kind == "rollback_to":
            self._rollback_to(event.savepoint)
        elif kind == "deallocate_all":
            self.deallocated()

    def _find(self, savepoint: str | None) -> int | None:
        """The level of the newest savepoint of that name (as PostgreSQL picks it)."""
        for level in range(len(self.levels) - 1, 0, -1):
            if self.levels[level][0] == savepoint:
                return level
        return None  # made where the proxy could not see it: leave the levels alone

    def _release(self, savepoint: str | None) -> None:
        level = self._find(savepoint)
        if level is not None:
            kept = [change for _, changes in self.levels[level:] for change in changes]
            del self.levels[level:]
            self.levels[-1][1].extend(kept)

    def _rollback_to(self, savepoint: str | None) -> None:
        level = self._find(savepoint)
        if level is not None:
            del self.levels[level + 1:]
            self.levels[level][1].clear()  # the savepoint itself stays

    def _commit(self) -> None:
        changes = [change for _, level in self.levels for change in level]
        self._rollback()
        if changes:
            self.commit(changes)

    def _rollback(self) -> None:
        if self.recorded:
            self.levels = [(None, [])]
            self.recorded = False
