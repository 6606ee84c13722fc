"""Parse SQL into pglast's JSON tree and read that tree.

The analysis works on the dicts of `pglast.parser.parse_sql_json` (the C parser, ~3 µs,
plus `json.loads`) instead of `pglast.parse_sql` objects (~120 µs): a node is
`{"NodeType": {fields}}`, except that fields declared with a concrete struct type
(`RangeVar *relation`, `TypeName *typeName`, …) hold the bare fields without the
wrapper. `FIELD_TYPES` recovers those types from pglast's own slot declarations, so
the walker always knows what it is looking at and can refuse what it does not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pglast import ast, parser

from proxy.errors import InvalidEncoding, SqlSyntaxError, StatementTooComplex

MAX_STATEMENT_BYTES = 1 << 20  # larger messages are refused before parsing (54001)
MAX_DEPTH = 200  # node nesting; ordinary queries stay below 30

# Slot C types that hold a wrapped node or a list of wrapped nodes.
_GENERIC = {"Node*", "List*", "Expr*"}


def _field_types() -> dict[str, dict[str, str]]:
    """{node type: {field: struct type}} for fields that hold an unwrapped struct."""
    table: dict[str, dict[str, str]] = {}
    for name in dir(ast):
        cls = getattr(ast, name)
        slots = getattr(cls, "__slots__", None)
        if not isinstance(cls, type) or not isinstance(slots, dict):
            continue
        typed = {field: info.c_type[:-1] for field, info in slots.items()
                 if getattr(info, "c_type", "").endswith("*")
                 and info.c_type not in _GENERIC and info.c_type[:-1] in _NODE_NAMES}
        if typed:
            table[name] = typed
    return table


_NODE_NAMES = {name for name in dir(ast)
               if isinstance(getattr(ast, name), type) and issubclass(getattr(ast, name), ast.Node)}
FIELD_TYPES = _field_types()


@dataclass(frozen=True)
class Statement:
    """One statement of a (possibly multi-statement) query string."""

    kind: str  # the top node type, e.g. "SelectStmt"
    fields: dict[str, Any]
    start: int  # byte offsets into the UTF-8 query text
    end: int


def parse(sql: str) -> list[Statement]:
    """Parse `sql` into statements; raise 42601 on a syntax error, 54001 when too big."""
    try:
        raw = sql.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEncoding("statement is not valid UTF-8", rule="encoding") from None
    if "\x00" in sql:
        # The C parser would stop at the NUL and check only the text before it.
        raise SqlSyntaxError("statement contains a NUL byte", rule="parse")
    if len(raw) > MAX_STATEMENT_BYTES:
        raise StatementTooComplex(f"statement of {len(raw)} bytes exceeds the limit of "
                                  f"{MAX_STATEMENT_BYTES} bytes", rule="too-complex")
    try:
        tree = json.loads(parser.parse_sql_json(sql))
    except parser.ParseError as exc:
        raise _parse_error(exc) from None
    except RecursionError:
        raise _too_deep() from None
    return [_statement(item, len(raw)) for item in tree.get("stmts", ())]


def _statement(item: dict[str, Any], total: int) -> Statement:
    (kind, fields), = item["stmt"].items()
    start = item.get("stmt_location", 0)
    length = item.get("stmt_len", 0)
    return Statement(kind, fields, start, start + length if length else total)


def _parse_error(exc: Exception) -> Exception:
    text = str(exc)
    # The grammar's own stack limit ("memory exhausted", "stack depth limit exceeded")
    # means the statement is too deep, not that it is wrong.
    if "memory exhausted" in text or "stack depth" in text:
        return _too_deep()
    message = text if text.startswith("syntax error") else f"syntax error: {text}"
    return SqlSyntaxError(message, rule="parse")


def _too_deep() -> StatementTooComplex:
    return StatementTooComplex(f"statement nesting exceeds the limit of {MAX_DEPTH}",
                               rule="too-complex")


def unwrap(node: Any) -> tuple[str, dict[str, Any]] | None:
    """("Type", fields) for a wrapped node, None for empty slots."""
    if isinstance(node, dict) and len(node) == 1:
        (kind, fields), = node.items()
        if isinstance(fields, dict) and kind[:1].isupper():
            return kind, fields
    return None


def strings(items: list[Any] | None) -> list[str]:
    """The values of a list of String nodes (qualified names, operator names)."""
    out = []
    for item in items or ():
        node = unwrap(item)
        if node is None or node[0] != "String":
            raise NotAName()
        out.append(node[1].get("sval", ""))
    return out


class NotAName(Exception):
    """A name list held something other than String nodes."""


def const_value(fields: dict[str, Any]) -> Any:
    """The Python value of an A_Const's fields (None for NULL)."""
    if fields.get("isnull"):
        return None
    for key, inner in (("sval", "sval"), ("ival", "ival"), ("fval", "fval"),
                       ("boolval", "boolval"), ("bsval", "bsval")):
        if key in fields:
            # Zero, false and "" are left out of the JSON: the default applies.
            default = {"ival": 0, "boolval": False}.get(key, "")
            return fields[key].get(inner, default)
    return None


def slice_text(sql: str, statement: Statement) -> str:
    """The original text of one statement (offsets are in UTF-8 bytes)."""
    return sql.encode("utf-8")[statement.start:statement.end].decode("utf-8").strip()


def strip_locations(node: Any) -> Any:
    """A copy of a JSON tree without positions, to compare two parses."""
    if isinstance(node, dict):
        return {k: strip_locations(v) for k, v in node.items()
                if k not in ("location", "stmt_location", "stmt_len")}
    if isinstance(node, list):
        return [strip_locations(v) for v in node]
    return node
