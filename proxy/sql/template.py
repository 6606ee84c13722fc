"""Rewritten SQL cached by statement shape: a template the literals are put back into.

A rewritten statement contains the client's literals, so it cannot be shared as is
between `… WHERE aid = 1` and `… WHERE aid = 2`. Instead, on a cache miss the rewrite
is deparsed with each templatable literal replaced by a placeholder parameter, and on
every later statement of the same shape the literal texts are put back — on tokens,
never by searching text:

* `shape()` scans the statement (`pglast.parser.scan`, the server's lexer) and masks
  every constant token. Two statements with the same key have the same tokens apart
  from the constants' contents, hence the same parse tree apart from constant values.
  Plain statements take a shortcut of the same guarantee (`fast_shape`, below); its
  key does not tell integer from float constants, which a slot holds alike (as text).
* A literal is templatable when it is an A_Const the grammar made from one constant
  token (or from `-` and a number). Its placeholder is `$n` above the statement's own
  parameters; the template remembers which masked token fills it. Constant tokens that
  are not templated (type modifiers, COPY options, literals the decision compared
  with the tenant key, …) are "fixed": a later statement must spell them identically,
  or it is analysed afresh.
* A literal goes back in parentheses unless the placeholder stands where a bare
  constant cannot change how the text is read (after a space, `(` or `,`, before a
  space, `,`, `)` or `;`, and not before `[` or `.`); `(<constant>)` parses to the same
  tree wherever `$n` could stand.

The analysis checks the filled text of the first statement (parse again + full
validation, DESIGN 6.6); a hit only fills the template: ~20 µs instead of ~1 ms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from pglast import parser

from proxy.sql.nodes import FIELD_TYPES, unwrap

MAX_TEMPLATE_CHARS = 8192
# Constant tokens: their contents are masked in the shape key.
_MASK = {name: f"\x00{name}\x00"
         for name in ("SCONST", "ICONST", "FCONST", "BCONST", "XCONST", "USCONST")}
# Constant tokens a placeholder may stand for (U&'…' may be followed by UESCAPE).
_TEMPLATABLE = frozenset({"SCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_NUMBERS = frozenset({"ICONST", "FCONST"})
# Subtrees where a parameter cannot replace a constant.
_NO_PLACEHOLDERS = frozenset({"TypeName", "CTECycleClause", "JsonTablePathSpec"})

# The shortcut of `shape` (pglast's scan costs ~4 µs a statement, this about half).
# Up to the first comment, quoted identifier, dollar quote, backslash, non-ASCII
# character or string continued over whitespace, the server's lexer is in its initial
# state between tokens, and a quoted string not glued to a word, or a number between
# non-word characters, is exactly one constant token: the same guarantee as scanning.
# The first of those things, if any, lies outside every constant the pattern takes, so
# it shows in the key (strings masked), and the statement goes to the scan instead; so
# do a quote that starts no string and a prefixed string (E'…', U&'…'). Each pattern
# starts with a character class: the regex engine skips ahead to candidates.
_CONTINUED_STRING = re.compile(r"'\s+'")
_PLAIN_CONSTANT = re.compile(  # one group: split() gives text, constant, text, …, text
    r"('[^']*+(?:''[^']*+)*+'(?!')"
    # a number: not inside a word, a number or another number's exponent (2E-3)
    r"|(?:\d(?<![\w.]\d)(?<![\w.][eE][-+]\d)\d*+(?:\.\d*+)?"
    r"|\.(?<![\w.]\.)(?<![\w.][eE][-+]\.)\d++)(?:[eE][-+]?\d++)?(?![\w.]))")
_PREFIX = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_&")
_PLAIN_STRING, _PLAIN_NUMBER = "\x00s\x00", "\x00n\x00"  # unlike a scanned key's marks


class Shape(NamedTuple):
    """A statement text with its constant tokens located and masked (made per statement:
    a tuple, several times cheaper to build than a frozen dataclass)."""

    key: str  # the text with each constant token replaced by a marker of its type
    text: str
    spans: tuple[tuple[int, int], ...]  # (start, end) of each constant token in text
    plain: bool = False  # cut by `fast_shape`: every constant token is a span


def shape(sql: str) -> Shape | None:
    """The shape of `sql`; None when it cannot be scanned (then it is not templated)."""
    return fast_shape(sql) or _scanned_shape(sql)


def fast_shape(sql: str) -> Shape | None:
    """The shape of a plain statement (see _NOT_PLAIN) without the scan; None otherwise."""
    if len(sql) > MAX_TEMPLATE_CHARS or "\x00" in sql:  # NUL: the masks' own character
        return None
    if "'" in sql and _CONTINUED_STRING.search(sql) is not None:
        return None
    parts = _PLAIN_CONSTANT.split(sql)  # text, constant, text, …, text
    spans = []
    done = len(parts[0])
    for index in range(1, len(parts), 2):
        constant = parts[index]
        if constant[0] == "'":
            if parts[index - 1][-1:] in _PREFIX:
                return None  # E'…', B'…', U&'…' and the like
            parts[index] = _PLAIN_STRING
        else:
            parts[index] = _PLAIN_NUMBER
        end = done + len(constant)
        spans.append((done, end))
        done = end + len(parts[index + 1])
    key = "".join(parts)
    if not key.isascii() or "'" in key or '"' in key or "$" in key or "\\" in key \
            or "--" in key or "/*" in key:
        return None  # beyond the plain subset, outside the constants: see above
    return Shape(key, sql, tuple(spans), True)


def _scanned_shape(sql: str) -> Shape | None:
    if len(sql) > MAX_TEMPLATE_CHARS or "\x00" in sql:
        return None
    try:
        tokens = parser.scan(sql)  # positions are character indexes (end inclusive)
    except Exception:
        return None
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    done = 0
    for start, end, name, _kind in tokens:
        mark = _MASK.get(name)
        if mark is not None:
            end += 1
            parts += (sql[done:start], mark)
            spans.append((start, end))
            done = end
    parts.append(sql[done:])
    return Shape("".join(parts), sql, tuple(spans))


@dataclass(frozen=True)
class Template:
    """Rewritten SQL with holes for the literals of a statement of one shape."""

    key: str
    pieces: tuple[str, ...]  # text around the holes: len(slots) + 1 pieces
    slots: tuple[tuple[int, int, bool], ...]  # (masked token, chars of `-` before it, parens)
    fixed: tuple[tuple[int, str], ...]  # masked tokens that must be spelled exactly so

    def fill(self, found: Shape) -> str | None:
        """The rewritten SQL for a statement of this shape; None if a fixed token differs."""
        return self.fill_text(found.text, found.spans)

    def fill_text(self, text: str, spans: tuple[tuple[int, int], ...]) -> str | None:
        """`fill` for a statement `text` whose constant tokens are at `spans`."""
        for index, spelled in self.fixed:
            start, end = spans[index]
            if text[start:end] != spelled:
                return None
        out = [self.pieces[0]]
        for (index, back, parens), piece in zip(self.slots, self.pieces[1:]):
            start, end = spans[index]
            literal = text[start - back:end]
            out += ("(" + literal + ")" if parens else literal, piece)
        return "".join(out)


class Templater:
    """Builds the template of one statement string (cache misses only)."""

    def __init__(self, sql: str, found: Shape, key_literals: set[int]) -> None:
        self.shape = found
        self.keep = key_literals  # literals the decision read: never templated
        tokens = parser.scan(sql)
        starts = {start: i for i, (start, _e) in enumerate(found.spans)}
        byte = _byte_offsets(sql)
        self.params = 0
        # A_Const location (a byte offset) → (masked token, chars from a folded `-`)
        self.sources: dict[int, tuple[int, int]] = {}
        self.number_tokens: set[int] = set()  # masked tokens that are numbers (ICONST, FCONST)
        previous = None
        for start, end, name, _kind in tokens:
            if name == "PARAM":
                self.params = max(self.params, int(sql[start + 1:end + 1]))
            index = starts.get(start)
            # A constant the shape did not mask as this very token stays in its key, so
            # it is spelled the same in every statement of the shape: never templated.
            if name in _TEMPLATABLE and index is not None \
                    and found.spans[index][1] == end + 1:
                self.sources[byte(start)] = (index, 0)
                if name in _NUMBERS:
                    self.number_tokens.add(index)
                    if previous is not None and previous[1] == "ASCII_45":
                        self.sources[byte(previous[0])] = (index, start - previous[0])
            previous = (start, name)
        self.numbers: dict[int, int] = {}  # location → placeholder number
        self.by_number: dict[int, tuple[int, int]] = {}  # placeholder number → source

    def placeholders(self, kind: str, fields: dict[str, Any]) -> None:
        """Replace the templatable literals under a (rewritten) node by parameters."""
        if kind in _NO_PLACEHOLDERS:
            return
        typed = FIELD_TYPES.get(kind, {})
        for key, value in fields.items():
            if key in typed:
                if isinstance(value, dict) and value:
                    self.placeholders(typed[key], value)
            elif isinstance(value, (list, dict)):
                fields[key] = self._replace(value)

    def _replace(self, node: Any) -> Any:
        if isinstance(node, list):
            node[:] = [self._replace(item) for item in node]
            return node
        item = unwrap(node)
        if item is None:
            return node
        if item[0] != "A_Const":
            self.placeholders(*item)
            return node
        location = item[1].get("location", -1)
        source = self.sources.get(location)
        if source is None or location in self.keep:
            return node
        number = self.numbers.get(location)
        if number is None:
            number = self.params + len(self.numbers) + 1
            self.numbers[location] = number
            self.by_number[number] = source
        return {"ParamRef": {"number": number, "location": location}}

    def finish(self, text: str) -> Template:
        """The template of the rewritten text (placeholders as `$n`)."""
        pieces: list[str] = []
        slots: list[tuple[int, int, bool]] = []
        done = 0
        for start, end, name, _kind in parser.scan(text):
            number = int(text[start + 1:end + 1]) if name == "PARAM" else 0
            source = self.by_number.get(number)
            if source is None:
                continue
            pieces.append(text[done:start])
            slots.append((*source, source[1] > 0 or not _bare(text, start, end + 1)))
            done = end + 1
        pieces.append(text[done:])
        used = {index for index, _back, _parens in slots}
        fixed = tuple((i, self.shape.text[s:e]) for i, (s, e) in enumerate(self.shape.spans)
                      if i not in used)
        return Template(self.shape.key, tuple(pieces), tuple(slots), fixed)

    def parameters(self) -> tuple[tuple[int, int], ...] | None:
        """The source of each placeholder, `$1` first, when the rewritten text may be sent
        as a parameterised statement: the statement has no parameters of its own and every
        literal it templated is a number (see proxy.sql.prepared); else None."""
        sources = tuple(self.by_number[number] for number in sorted(self.by_number))
        if self.params or any(index not in self.number_tokens for index, _back in sources):
            return None
        return sources


def _bare(text: str, start: int, end: int) -> bool:
    """Can a single constant token stand at text[start:end] without parentheses?"""
    before = text[start - 1] if start else " "
    after = text[end:end + 1] or " "
    following = text[end:].lstrip()[:1]
    return before in " \n\t(,[" and after in " \n\t,)];" \
        and following not in ("[", ".", "'", '"', "$") and not following.isdigit()


def _byte_offsets(text: str):
    """char index → UTF-8 byte offset (the parser's locations are byte offsets)."""
    if text.isascii():
        return lambda index: index
    ends = [0]
    for char in text:
        ends.append(ends[-1] + len(char.encode("utf-8")))
    return ends.__getitem__
