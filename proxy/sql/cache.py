"""Cache analysis decisions by exact text and by statement shape.

Four bounded maps, all keyed with the tenant's Scope (strategy, schemas, pinned
settings, pool mode, level), so no decision is ever shared between scopes. The key
holds the Scope's `hash_value` (an int: hashing the Scope itself would be a Python call
per lookup) and every entry holds its Scope, which a hit must be (or equal): two scopes
whose hashes collide miss each other's entries, they never share one.

* exact text → Decision: every decision, including those that read a literal and
  rewritten ones (their SQL is specific to the text).
* shape → Decision: `pglast.parser.normalize` replaces every literal by `$n`, so
  statements that differ only in literals share one entry. Only decisions that did
  not read any literal go there (`Decision.shape_cacheable`); a decision that read
  `SET search_path TO a` or `nextval('s')` is never reused for `… b` or `nextval('t')`.
  With the row rewrite, whose template lookup already cut a plain statement's shape
  (proxy.sql.template.fast_shape), the shape is first looked up by that key. The entry
  is stored under it too, but only when normalize replaced exactly the constants the
  plain shape masks: then every statement of that plain shape has the same normalized
  text, and the key is an alias. (Elsewhere normalize alone is as fast.)

* digits only → the decision of a plain statement (proxy.sql.template.fast_shape) that
  was shared by shape (normalize replaced exactly its constants) or by template: the key
  is the text's UTF-8 bytes with every digit made 0 (one C call, ~0.1 µs, where normalize
  takes ~2 µs), and a hit must match that statement's text outside its constants. Then
  every other character is the same and in the same place, the numbers stay numbers of
  the same form and the strings stay strings: the same tokens apart from the constants'
  contents, so the same normalized text or the same template slots, filled in place.
  pgbench -S with a new account number each time is served from here.

* template shape → Template (row strategy with the rewrite): a rewritten statement
  embeds its literals, so what is shared is the rewrite with holes for them
  (proxy.sql.template); a hit scans the statement, fills the holes and returns the
  first statement's decision with that SQL. pgbench -S in simple mode (a new literal
  every time) is served from here.

Entries expire after `ttl` seconds; when a map is full the oldest entry goes first
(dict insertion order, a sixteenth at a time). Very long statements are not cached (their key alone would
cost more memory than re-analysing them costs time).
"""

from __future__ import annotations

import re
import time
from itertools import islice
from typing import Callable

from pglast import parser

from proxy.sql import template
from proxy.sql.analysis import Decision, analyze_uncached
from proxy.sql.rewrite import rewriting
from proxy.sql.scope import Scope

MAX_CACHED_CHARS = 8192
_ZERO_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_PARAMETER = re.compile(r"\$\d+")

_Entry = tuple[float, Decision, Scope]  # (expires at, decision, the scope it was made in)
_Key = tuple[object, int]  # (text, shape or template key, Scope.hash_value)


class Analyzer:
    """Cached front of `analyze_uncached`; one per process, shared by all sessions."""

    def __init__(self, max_entries: int = 20000, ttl: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._exact: dict[_Key, _Entry] = {}
        self._shape: dict[_Key, _Entry] = {}
        self._templates: dict[_Key, _Entry] = {}  # (template key, scope) → row rewrite
        # (text with digits zeroed, scope) → (expires, text around the constants, spans,
        # decision, scope) of a plain statement, or (expires, None, None, None, scope)
        # where statements of these digits cannot be shared: see "digits only" above.
        self._alike: dict[_Key, tuple] = {}
        self.hits = 0
        self.misses = 0

    def analyze(self, sql: str, scope: Scope) -> Decision:
        """The decision for `sql` in `scope`, from the cache when possible."""
        now = self._clock()
        key = (sql, scope.hash_value)
        entry = self._exact.get(key)
        if entry is not None and entry[0] > now and (entry[2] is scope or entry[2] == scope):
            self.hits += 1
            return entry[1]
        zeroed = (sql.encode("utf-8", "surrogatepass").translate(_ZERO_DIGITS), scope.hash_value)
        alike = self._alike.get(zeroed)
        if alike is not None and alike[0] > now and (alike[4] is scope or alike[4] == scope):
            decision = _alike_decision(sql, alike)
            if decision is not None:
                self.hits += 1
                return decision
        found = None
        if rewriting(scope):
            found = template.shape(sql)
            entry = self._templates.get((found.key, scope.hash_value)) \
                if found is not None else None
            decision = _filled(entry[1], sql, found.spans) if entry is not None \
                and entry[0] > now and (entry[2] is scope or entry[2] == scope) else None
            if decision is not None:
                self.hits += 1
                self._remember_alike(zeroed, sql, entry, plain=found)
                return decision
        plain = found if found is not None and found.plain else None
        if plain is not None:
            entry = self._shape.get((plain.key, scope.hash_value))
            if entry is not None and entry[0] > now and (entry[2] is scope or entry[2] == scope):
                self.hits += 1
                return entry[1]
        shape = _shape(sql)
        if shape is not None:
            entry = self._shape.get((shape, scope.hash_value))
            if entry is not None and entry[0] > now and (entry[2] is scope or entry[2] == scope):
                self.hits += 1
                self._remember_alike(zeroed, sql, entry, shape, plain)
                return entry[1]
        self.misses += 1
        return self._analyze(sql, scope, key, zeroed, shape, plain, now)

    def _analyze(self, sql: str, scope: Scope, key: _Key, zeroed: _Key, shape: str | None,
                 plain: template.Shape | None, now: float) -> Decision:
        decision = analyze_uncached(sql, scope)
        if len(sql) > MAX_CACHED_CHARS:
            return decision
        entry = (now + self.ttl, decision, scope)
        self._store(self._exact, key, entry)
        if shape is not None and decision.shape_cacheable:
            self._store(self._shape, (shape, key[1]), entry)
            if plain is not None and _normalized_alike(plain, shape):
                self._store(self._shape, (plain.key, key[1]), entry)
        if decision.template is not None:
            self._store(self._templates, (decision.template.key, key[1]), entry)
        self._remember_alike(zeroed, sql, entry, shape, plain)
        return decision

    def _remember_alike(self, zeroed: _Key, sql: str, entry: _Entry,
                        shape: str | None = None, plain: template.Shape | None = None) -> None:
        """Serve later statements that differ from `sql` in digits only, where they stand
        inside its constants, from `entry`: its template, or its decision when that is
        shared by shape and normalize agrees on the constants (see the docstring). When
        that cannot be, remember so too: every statement of these zeroed digits has the
        same other characters, hence the same answer, and is not cut again."""
        known = self._alike.get(zeroed)
        if known is not None and known[0] > self._clock() and known[4] is entry[2]:
            return
        plain = plain if plain is not None and plain.plain else template.fast_shape(sql)
        if plain is None or not _alike_shares(plain, entry[1], shape):
            self._store(self._alike, zeroed, (entry[0], None, None, None, entry[2]))
            return
        text, gaps, done = plain.text, [], 0
        for start, end in plain.spans:
            gaps.append((done, text[done:start]))
            done = end
        gaps.append((done, text[done:]))
        self._store(self._alike, zeroed, (entry[0], tuple(gaps), plain.spans, entry[1], entry[2]))

    def _store(self, table: dict[_Key, _Entry], key: _Key, entry: _Entry) -> None:
        table.pop(key, None)  # re-inserting moves the key to the young end
        if len(table) >= self.max_entries:
            # Drop the oldest sixteenth at once: deleting one key at a time from the
            # front of a dict makes each next(iter()) skip ever more dead slots.
            for old in list(islice(table, max(1, self.max_entries // 16))):
                del table[old]
        table[key] = entry

    def clear(self) -> None:
        """Forget everything (config reload: scopes and rules may have changed)."""
        self._exact.clear()
        self._alike.clear()
        self._shape.clear()
        self._templates.clear()

    def __len__(self) -> int:
        return len(self._exact) + len(self._shape) + len(self._templates) + len(self._alike)


def _filled(decision: Decision, sql: str, spans: tuple) -> Decision | None:
    """A row rewrite of the same shape, filled with the literals of `sql` at `spans` (and
    bound to them, when the server prepares the shape)."""
    text = decision.template.fill_text(sql, spans) if decision.template is not None else None
    if text is None:
        return None
    form = decision.server_form
    return decision.with_sql(text, form.bind(sql, spans) if form is not None else None)


def _alike_shares(plain: template.Shape, decision: Decision, shape: str | None) -> bool:
    """May statements alike by digits to `plain` share `decision`?"""
    if decision.template is not None:
        return decision.template.key == plain.key
    return decision.shape_cacheable and shape is not None and _normalized_alike(plain, shape)


def _alike_decision(sql: str, alike: tuple) -> Decision | None:
    """The decision of a plain statement that `sql` matches apart from digits, if every
    character outside that statement's constants is the same; None otherwise (and for
    zeroed digits remembered as not alike)."""
    _expires, gaps, spans, decision, _scope = alike
    if gaps is None:
        return None
    for start, text in gaps:
        if not sql.startswith(text, start):
            return None  # a digit changed outside the constants (a name like t1 → t2)
    if decision.template is None:
        return decision
    return _filled(decision, sql, spans)  # its constants are where the other's are


def _normalized_alike(plain: template.Shape, normalized: str) -> bool:
    """Did normalize replace exactly the constants the plain shape masks, by `$n`, and
    change nothing else? (A plain statement has no `$` of its own.)"""
    pieces, done = [], 0
    for start, end in plain.spans:
        pieces += (plain.text[done:start], "$")
        done = end
    pieces.append(plain.text[done:])
    return "".join(pieces) == _PARAMETER.sub("$", normalized)


def _shape(sql: str) -> str | None:
    """The statement with literals replaced by $n; None when it cannot be normalised."""
    if len(sql) > MAX_CACHED_CHARS or "\x00" in sql:
        return None  # normalize() would stop at a NUL and share the prefix's shape
    try:
        return parser.normalize(sql)
    except Exception:  # a syntax error: analysed (and refused) by exact text only
        return None
