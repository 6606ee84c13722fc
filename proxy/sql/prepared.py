"""A row rewrite sent as a statement PostgreSQL prepares once per server connection.

A rewritten simple Query is new text to the server every time (its literals differ),
so PostgreSQL parses and plans each one; with row-level security that is a large part
of its work (pgbench -S with the row rewrite and RLS, directly on PostgreSQL on the
2-core build machine: ~42k TPS as simple Queries, ~62k prepared). The rewrite's
template already has a `$n` where each literal goes: that text is prepared on the
server connection the first time, and every statement of the shape is then a Bind of
its literals, an Execute and a Sync (`ServerForm.bind`). The client still gets what a
simple Query answers: the relay drops the BindComplete (and the ParseComplete of a
first use), Describe asks for the RowDescription a simple Query sends.

Only where the answer is exactly that of the simple Query (`server_form` checks):

* one SELECT (not SELECT INTO), INSERT, UPDATE or DELETE that the rewrite changed,
  with no parameters of its own and no SET or transaction control;
* every placeholder stands for a number constant, bound with the type PostgreSQL gives
  that constant (int4, int8 or numeric by its value: `make_const` in parse_node.c), so
  operators and functions resolve alike. String literals stay in the text: an
  unknown-typed parameter can fail where an unknown literal does not (`SELECT '1'`);
* no placeholder where a constant means a column position (ORDER BY 1, GROUP BY 1,
  DISTINCT ON (1)): there a parameter is a value;
* no `*` in the result columns: a prepared statement whose result row changes (ALTER
  TABLE … ADD COLUMN) fails with 0A000 "cached plan must not change result type".

A statement whose literals are not plain decimal numbers goes as text (`bind` → None).
PostgreSQL may still plan a prepared statement for its values (plan_cache_mode auto).
"""

from __future__ import annotations

import re
import struct
from typing import Any, Iterator

from proxy.protocol import messages as m
from proxy.sql import nodes
from proxy.statements import Statement, make_statement

INT4, INT8, NUMERIC = 23, 20, 1700  # pg_type OIDs of the types a number constant gets
_INT4_RANGE = range(-2**31, 2**31)
_INT8_RANGE = range(-2**63, 2**63)
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_KINDS = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt"})
_I32 = struct.Struct("!I")
_NO_RESULT_FORMATS = b"\x00\x00"  # Bind: every column in text, as a simple Query sends it

Bound = tuple[Statement, bytes]  # the statement to have prepared, then Bind…Sync to send


class ServerForm:
    """The parameterised text of one template and how to bind a statement of its shape."""

    __slots__ = ("sql", "sources", "tail", "_prepared")

    def __init__(self, sql: str, sources: tuple[tuple[int, int], ...], returns_rows: bool):
        self.sql = sql
        self.sources = sources  # per $n in order: (masked token, chars of a folded `-`)
        # A simple Query's answer starts with a RowDescription when it returns rows.
        self.tail = m.DESCRIBE_EXECUTE_SYNC if returns_rows else m.EXECUTE_SYNC
        # parameter types → (Statement, the Bind message up to its parameter values)
        self._prepared: dict[tuple[int, ...], tuple[Statement, bytes]] = {}

    def bind(self, text: str, spans: tuple[tuple[int, int], ...]) -> Bound | None:
        """The statement and the messages that run `text` (a statement of this shape, its
        constant tokens at `spans`); None when a literal is not a plain decimal number."""
        values: list[bytes] = []
        types: list[int] = []
        for index, folded in self.sources:
            start, end = spans[index]
            value = "-" + text[start:end] if folded else text[start:end]
            oid = number_type(value)
            if oid is None:
                return None
            types.append(oid)
            encoded = value.encode()
            values += (_I32.pack(len(encoded)), encoded)
        key = tuple(types)
        known = self._prepared.get(key)
        if known is None:
            known = self._prepared[key] = _statement_and_head(self.sql, key)
        statement, head = known
        body = b"".join(values)
        bind = b"B" + _I32.pack(len(head) + len(body) + 6) + head + body + _NO_RESULT_FORMATS
        return statement, bind + self.tail


def number_type(value: str) -> int | None:
    """The type PostgreSQL gives a number constant of this text (a `-` folded in front):
    int4 if it is an integer that fits, else int8 if it fits, else numeric; None for
    anything but a plain decimal number."""
    digits = value[1:] if value[:1] == "-" else value
    if digits.isdigit() and digits.isascii():
        if len(digits) < 10:
            return INT4
        number = int(value)
        return INT4 if number in _INT4_RANGE else INT8 if number in _INT8_RANGE else NUMERIC
    return NUMERIC if _DECIMAL.fullmatch(digits) else None


def _statement_and_head(sql: str, types: tuple[int, ...]) -> tuple[Statement, bytes]:
    """The statement for these parameter types and its Bind message's body up to the values."""
    statement = make_statement(sql, types)
    head = (b"\x00" + statement.server_name.encode() + b"\x00"  # unnamed portal, statement
            + b"\x00\x00" + struct.pack("!H", len(types)))  # all parameters in text
    return statement, head


def server_form(text: str, sources: tuple[tuple[int, int], ...] | None) -> ServerForm | None:
    """The ServerForm of a rewritten statement's parameterised `text` (its placeholders'
    `sources` from `Templater.parameters`), or None where it would not answer exactly as
    the simple Query does (see the module docstring)."""
    if sources is None:
        return None
    try:
        statements = nodes.parse(text)
    except Exception:
        return None
    if len(statements) != 1 or statements[0].kind not in _KINDS:
        return None
    kind, fields = statements[0].kind, statements[0].fields
    if kind == "SelectStmt" and _into(fields):
        return None
    results = list(_result_columns(kind, fields))
    if _has_key(results, "A_Star") or _positional_parameter(fields):
        return None
    return ServerForm(text, sources, returns_rows=bool(results) or kind == "SelectStmt")


def _into(select: dict[str, Any]) -> bool:
    """SELECT … INTO (creates a table: a utility statement, not preparable)."""
    if select.get("intoClause"):
        return True
    return any(_into(select[side]) for side in ("larg", "rarg") if select.get(side))


def _result_columns(kind: str, fields: dict[str, Any]) -> Iterator[Any]:
    """The expressions of the result row: a SELECT's target list (each side of a set
    operation), a data-modifying statement's RETURNING list."""
    if kind != "SelectStmt":
        yield from (fields.get("returningClause") or {}).get("exprs") or ()
        return
    if fields.get("op", "SETOP_NONE") != "SETOP_NONE":
        for side in ("larg", "rarg"):
            yield from _result_columns(kind, fields.get(side) or {})
        return
    yield from fields.get("targetList") or ()


def _positional_parameter(node: Any) -> bool:
    """A placeholder as a column position: the item of ORDER BY (any SortBy, window
    orderings too, to be safe), GROUP BY (grouping sets included) or DISTINCT ON."""
    if isinstance(node, list):
        return any(_positional_parameter(item) for item in node)
    if not isinstance(node, dict):
        return False
    for key, value in node.items():
        if key == "SortBy" and _is_parameter(value.get("node")):
            return True
        if key in ("groupClause", "distinctClause", "content") \
                and any(_is_parameter(item) for item in value or ()):
            return True
        if _positional_parameter(value):
            return True
    return False


def _is_parameter(node: Any) -> bool:
    wrapped = nodes.unwrap(node)
    return wrapped is not None and wrapped[0] == "ParamRef"


def _has_key(node: Any, key: str) -> bool:
    if isinstance(node, list):
        return any(_has_key(item, key) for item in node)
    if isinstance(node, dict):
        return key in node or any(_has_key(value, key) for value in node.values())
    return False
