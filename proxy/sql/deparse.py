"""Turn a JSON statement tree back into SQL text with pglast's own deparser.

The analysis reads and rewrites the dicts of `pglast.parser.parse_sql_json`; pglast's
deparser (`pglast.stream.RawStream`) prints its AST objects. `to_ast` builds those
objects from the dicts: a wrapped node `{"Type": {fields}}` becomes `ast.Type`, a field
whose slot declares a concrete struct type holds that struct's bare fields, lists become
tuples, enum names become enum members, and A_Const's value field (`ival`, `sval`, …)
becomes the `val` node pglast expects. Only cache misses pay for this (a few hundred µs);
the output is always parsed and checked again before anything is sent.
"""

from __future__ import annotations

from typing import Any

from pglast import ast, enums, parser
from pglast.stream import RawStream

from proxy.sql.nodes import FIELD_TYPES

_CONST_VALUES = {"ival": ast.Integer, "fval": ast.Float, "sval": ast.String,
                 "boolval": ast.Boolean, "bsval": ast.BitString}
_DEFAULTS = {"ival": 0, "fval": "0", "sval": "", "boolval": False, "bsval": ""}


def deparse(kind: str, fields: dict[str, Any]) -> str:
    """The SQL text of one statement tree."""
    text = RawStream()(to_ast(kind, fields))
    return _plain_not_matched(text) if kind == "MergeStmt" else text


def _plain_not_matched(text: str) -> str:
    """`WHEN NOT MATCHED BY TARGET` → `WHEN NOT MATCHED`: the same clause, but PostgreSQL
    before 17 only knows the short form. Done on tokens (the four keywords in a row),
    and the result is parsed and checked again like any rewrite."""
    tokens = parser.scan(text)  # positions are character indexes, end inclusive
    cuts = [(tokens[i + 1].end + 1, tokens[i + 3].end + 1) for i in range(len(tokens) - 3)
            if [t.name for t in tokens[i:i + 4]] == ["NOT", "MATCHED", "BY", "TARGET"]]
    for start, end in reversed(cuts):
        text = text[:start] + text[end:]
    return text


def to_ast(kind: str, fields: dict[str, Any]) -> ast.Node:
    """The pglast AST object of a node given by its type and JSON fields."""
    if kind == "A_Const":
        return _const(fields)
    cls = getattr(ast, kind, None)
    if not isinstance(cls, type) or not issubclass(cls, ast.Node):
        raise ValueError(f"unknown node type {kind!r}")
    node = cls()
    typed = FIELD_TYPES.get(kind, {})
    for name, info in cls.__slots__.items():
        value = fields.get(name.rstrip("_"))  # `def` is the slot `def_`
        if value is None:
            value = _default(info.c_type)
        elif name in typed and isinstance(value, dict):
            value = to_ast(typed[name], value)
        else:
            value = _value(value, info.c_type)
        setattr(node, name, value)
    return node


def _const(fields: dict[str, Any]) -> ast.A_Const:
    node = ast.A_Const()
    node.isnull = bool(fields.get("isnull", False))
    node.val = None
    for key, cls in _CONST_VALUES.items():
        if key in fields:
            node.val = cls(fields[key].get(key, _DEFAULTS[key]))
            break
    return node


def _value(value: Any, c_type: str) -> Any:
    if isinstance(value, list):
        return tuple(_wrapped(item) for item in value)
    if isinstance(value, dict):
        return _wrapped(value)
    enum = getattr(enums, c_type, None)
    if enum is not None and isinstance(value, str):
        return enum[value]
    return value


def _wrapped(item: Any) -> Any:
    if item == {}:  # an empty slot inside a list (a function without column definitions)
        return None
    if isinstance(item, list):  # a List of Lists (VALUES rows, GROUPING SETS)
        return tuple(_wrapped(sub) for sub in item)
    if isinstance(item, dict) and len(item) == 1:
        (kind, fields), = item.items()
        if isinstance(fields, dict) and kind[:1].isupper():
            if kind == "List":
                return tuple(_wrapped(sub) for sub in fields.get("items") or ())
            return to_ast(kind, fields)
    raise ValueError(f"unexpected tree item {item!r}")


def _default(c_type: str) -> Any:
    if c_type == "bool":
        return False
    if c_type in ("int", "int16", "int32", "long", "uint32", "Index", "AttrNumber",
                  "ParseLoc", "Oid", "int64", "uint64", "bits32", "Cardinality"):
        return 0
    enum = getattr(enums, c_type, None)
    if enum is not None:
        return enum(0) if any(member.value == 0 for member in enum) else None
    return None
