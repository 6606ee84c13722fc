"""The audit trail: HMAC-chained JSON lines, written off the query path, verifiable offline.

One entry per line, serialised canonically (sorted keys, compact separators,
`ensure_ascii=True`, so newlines and control characters in names or statements are
escaped and can never start a line of their own: THREATS.md 73). Each entry has `seq`
(continuing across files), `ts` (UTC ISO), `event`, `tenant`, `login`, `client`, its own
fields, `prev` (the mac of the entry before it) and `mac` = HMAC-SHA256(key, canonical
bytes of the entry without `mac`). A line is exactly those canonical bytes with
`,"mac":"<hex>"` added before the closing brace (`line_of`), and nothing else verifies.
Statements appear only as shapes: `shape_of()` turns any text into its normalised form
(literals → `$n`, comments removed) or drops it (THREATS.md 72).

Every file starts with a `rotate` entry (reason `new`, `size` or `restart`) chained to the
last entry of the previous file, and a cleanly closed file ends with a final `checkpoint`
entry (`count` = entries before it in the file, `last_mac`), so `verify()` detects edits,
deletions, reordering, inserted lines and a cut tail (THREATS.md 74). With a
`checkpoint_key` (Ed25519), checkpoints also carry `sig`, which anyone with the public key
can check without holding the HMAC key; each checkpoint is also logged (an anchor outside
the file). Checkpoints are written every `checkpoint_interval` seconds too (`final: false`).

Trade-off when the disk cannot keep up: `record()` never blocks the query path. Entries go
to a bounded in-memory queue (10,000 by default); when it is full an entry is dropped, but
never silently: it is counted in `dropped` (exported as a metric), a warning is logged at
most once a second, and a `gap` entry with the number lost is chained into the trail at
the place where they were lost, so the trail itself shows it is incomplete. Events that
must not be lost (statements of bypass logins) can use `await record_wait()`, which waits
for queue space (counted in `blocked`), slowing only the session that records them.

Events callers record, with their usual fields (every entry also has tenant, login, client):
connect (application_name, database), disconnect (seconds, statements), login_refused
(reason, sqlstate), refusal (rule, sqlstate, shape), ddl and bypass_statement (kind,
shape), statement (kind, shape; kept only with every_statement), config_reload (ok, path,
error, tenants). `sql=` is accepted in place of `shape=` and stored only as its shape.
One proxy process per audit path: a second one would rotate the first one's file away. With
`workers: N` that process is the supervisor; workers send it their entries (proxy.workerlink).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import hashlib
import hmac
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from pglast import parser

from proxy.observability.logging import get_logger

CALLER_EVENTS = frozenset({"connect", "login_refused", "disconnect", "refusal",
                           "bypass_statement", "ddl", "statement", "config_reload",
                           "admin_command"})
EVENTS = CALLER_EVENTS | {"checkpoint", "rotate", "gap"}  # the last three: written by the log
GENESIS = "0" * 64  # `prev` of the first entry of a new trail
DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_CHECKPOINT_INTERVAL = 300.0  # seconds between periodic (non-final) checkpoints
MAX_TEXT = 4096  # characters kept of any one string field
BATCH = 512  # entries written per trip to the writer thread
WARN_INTERVAL = 1.0  # seconds between two "entries dropped" warnings
NO_CHECKPOINT = "no checkpoint (file still open or tail cut)"
_TAIL_READ = 1 << 20  # bytes read from the end of an existing file at start
_OWN_KEYS = frozenset({"seq", "ts", "event", "prev", "mac", "sig"})
_LITERALS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
SHAPE_CACHE = 2048  # distinct statement texts whose shape is remembered
SHAPE_CACHE_KEY = 2048  # longer texts are normalised every time, not remembered
_UNKNOWN: Any = object()
_shapes: dict[str, Any] = {}


# --- canonical form, macs, shapes ------------------------------------------------------------

def canonical(entry: dict[str, Any]) -> bytes:
    """The one byte form of an entry: sorted keys, no spaces, ASCII only."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def line_of(body: bytes, mac: str) -> bytes:
    """The file line of an entry: its canonical bytes without `mac`, then the mac, last."""
    return body[:-1] + b',"mac":"' + mac.encode("ascii") + b'"}'


def entry_mac(key: bytes, entry: dict[str, Any]) -> str:
    """HMAC-SHA256 over the canonical bytes of `entry` without its `mac`."""
    body = {name: value for name, value in entry.items() if name != "mac"}
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def shape_of(sql: Any) -> str | None:
    """`sql` with every literal replaced by `$n` and comments removed; None if unparseable.

    `pglast.parser.normalize` leaves the literals of utility statements (DDL, COMMENT ON,
    CREATE VIEW …) in place, so every literal token still there is replaced here too.
    Results are cached by input text: shapes repeat, and the writer sees each many times."""
    if not isinstance(sql, str) or "\x00" in sql:
        return None
    shape = _shapes.get(sql, _UNKNOWN)  # one dict operation: the writer thread shares it
    if shape is _UNKNOWN:
        shape = _shape(sql)
        if len(sql) <= SHAPE_CACHE_KEY:
            if len(_shapes) >= SHAPE_CACHE:
                _shapes.clear()
            _shapes[sql] = shape
    return shape


def _shape(sql: str) -> str | None:
    try:
        text = parser.normalize(sql)
        tokens = parser.scan(text)
    except Exception:  # not SQL pglast can read: keep nothing of it
        return None
    number = max((int(text[t.start + 1:t.end + 1]) for t in tokens
                  if t.name == "PARAM" and text[t.start + 1:t.end + 1].isdigit()), default=0)
    pieces: list[str] = []
    end = -1
    for token in tokens:
        if token.name in ("C_COMMENT", "SQL_COMMENT"):
            continue  # comments can carry anything, values included
        if pieces and token.start > end + 1:
            pieces.append(" ")
        if token.name in _LITERALS:
            number += 1
            pieces.append(f"${number}")
        else:
            pieces.append(text[token.start:token.end + 1])
        end = token.end
    shape = "".join(pieces)
    return shape if len(shape) <= MAX_TEXT else shape[:MAX_TEXT] + "...[truncated]"


def _clean(value: Any, depth: int = 0) -> Any:
    """A JSON-safe, bounded copy of a field value."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)) and depth < 3:
        return [_clean(item, depth + 1) for item in value[:100]]
    if isinstance(value, dict) and depth < 3:
        return {str(k)[:200]: _clean(v, depth + 1) for k, v in list(value.items())[:100]}
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "...[truncated]"


def prepare_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The caller's fields as stored: bounded, JSON-safe, statements only as shapes."""
    out = {"tenant": None, "login": None, "client": None}
    for name, value in fields.items():
        if name in _OWN_KEYS:
            continue  # the log's own keys cannot be set by a caller
        out[str(name)[:200]] = _clean(value)
    if "sql" in out or "shape" in out:  # statements only as shapes; raw text never
        out.pop("sql", None)
        raw = fields["shape"] if "shape" in fields else fields["sql"]
        out["shape"] = None if raw is None else shape_of(raw)
    return out


def iso_time(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def load_signing_key(path: str):
    """An Ed25519 private key from a PEM file (for `checkpoint_key`)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    with open(path, "rb") as handle:
        key = load_pem_private_key(handle.read(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str):
    """An Ed25519 public key from a PEM file (to check checkpoint signatures)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    with open(path, "rb") as handle:
        key = load_pem_public_key(handle.read())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def _same(mac: Any, expected: str) -> bool:
    """Constant-time comparison that is simply False for a mac that is not an ASCII string."""
    return isinstance(mac, str) and mac.isascii() and hmac.compare_digest(mac, expected)


def _signed_body(entry: dict[str, Any]) -> bytes:
    return canonical({name: value for name, value in entry.items() if name not in ("mac", "sig")})


# --- the file writer (synchronous; runs in a worker thread, one call at a time) ---------------

class _Writer:
    def __init__(self, path: str, key: bytes, max_bytes: int, signer: Any, keep: int | None,
                 fsync: bool, interval: float | None, wall: Callable[[], float]) -> None:
        self.path, self.key, self.max_bytes = path, key, max_bytes
        self.signer, self.keep, self.fsync, self.interval = signer, keep, fsync, interval
        self.wall = wall
        self.log = get_logger(component="audit")
        self.file = None
        self.seq, self.prev = 0, GENESIS
        self.count = self.size = self.since_checkpoint = 0
        self.last_checkpoint = time.monotonic()
        self.pending: list[bytes] = []

    def open(self) -> None:
        """Start a new file; an existing one is rotated out and the chain continues from it."""
        fields: dict[str, Any] = {"reason": "new"}
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            self.seq, self.prev, clean = _tail(self.path, self.key)
            self._shift()
            fields = {"reason": "restart", "previous_clean": clean}
        self._open_file()
        self._add(self.wall(), "rotate", prepare_fields(fields))
        self._flush()

    def write_batch(self, items: list[tuple[float, str, dict[str, Any]]]) -> None:
        saved = (self.seq, self.prev, self.count, self.size, self.since_checkpoint)
        try:
            for ts, event, fields in items:
                self._add(ts, event, prepare_fields(fields), rotate=True)
            self._flush()
        except BaseException:
            self.pending.clear()
            (self.seq, self.prev, self.count, self.size, self.since_checkpoint) = saved
            raise
        self.maybe_checkpoint()

    def maybe_checkpoint(self) -> None:
        due = self.interval is not None and time.monotonic() - self.last_checkpoint >= self.interval
        if due and self.since_checkpoint:
            self.checkpoint(final=False, reason="periodic")

    def checkpoint(self, final: bool, reason: str) -> None:
        fields = prepare_fields({"count": self.count, "last_mac": self.prev, "final": final,
                                 "reason": reason})
        entry = self._add(self.wall(), "checkpoint", fields, sign=True)
        self._flush(sync=True)
        self.since_checkpoint = 0
        self.last_checkpoint = time.monotonic()
        self.log.info("audit checkpoint", file=self.path, seq=entry["seq"], mac=entry["mac"],
                      final=final)

    def close(self) -> None:
        if self.file is None:
            return
        self.checkpoint(final=True, reason="close")
        self.file.close()
        self.file = None

    def _add(self, ts: float, event: str, fields: dict[str, Any], *, rotate: bool = False,
             sign: bool = False) -> dict[str, Any]:
        entry, line = self._build(ts, event, fields, sign)
        if rotate and self.count > 1 and self.size + len(line) + 1024 > self.max_bytes:
            self._rotate(ts)
            entry, line = self._build(ts, event, fields, sign)
        self.pending.append(line)
        self.seq, self.prev = entry["seq"], entry["mac"]
        self.count += 1
        self.since_checkpoint += 1
        self.size += len(line)
        return entry

    def _build(self, ts: float, event: str, fields: dict[str, Any],
               sign: bool) -> tuple[dict[str, Any], bytes]:
        entry = {**fields, "seq": self.seq + 1, "ts": iso_time(ts), "event": event,
                 "prev": self.prev}
        if sign and self.signer is not None:
            entry["sig"] = self.signer.sign(_signed_body(entry)).hex()
        body = canonical(entry)
        entry["mac"] = hmac.new(self.key, body, hashlib.sha256).hexdigest()
        return entry, line_of(body, entry["mac"]) + b"\n"

    def _rotate(self, ts: float) -> None:
        """Close this file with a final checkpoint and go on in a fresh one."""
        self.checkpoint(final=True, reason="rotate")
        self.file.close()
        self._shift()
        self._open_file()
        self._add(ts, "rotate", prepare_fields({"reason": "size"}))

    def _open_file(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.file = os.fdopen(fd, "ab")
        self.count = self.size = 0

    def _flush(self, sync: bool = False) -> None:
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            self.file.write(data)
            self.file.flush()
        if sync or self.fsync:
            os.fsync(self.file.fileno())

    def _shift(self) -> None:
        """FILE → FILE.1, FILE.1 → FILE.2, …; beyond `keep` old files are removed."""
        top = 1
        while os.path.exists(f"{self.path}.{top}"):
            top += 1
        for index in range(top - 1, 0, -1):
            os.replace(f"{self.path}.{index}", f"{self.path}.{index + 1}")
        os.replace(self.path, f"{self.path}.1")
        if self.keep is not None:
            for index in range(self.keep + 1, top + 1):
                if os.path.exists(f"{self.path}.{index}"):
                    os.remove(f"{self.path}.{index}")


def _tail(path: str, key: bytes) -> tuple[int, str, bool]:
    """(seq, mac, cleanly closed) of the last entry of an existing file."""
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - _TAIL_READ))
        last = handle.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        entry = json.loads(last)
        seq, mac = entry["seq"], entry["mac"]
        valid = isinstance(seq, int) and _same(mac, entry_mac(key, entry))
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        return 0, GENESIS, False  # unreadable: a new chain, and the rotate entry says so
    return seq, mac, entry.get("event") == "checkpoint" and entry.get("final") is True


# --- the asynchronous front ------------------------------------------------------------------

class QueuedRecorder:
    """What AuditLog and a worker's AuditForwarder (proxy.workerlink) share: `record()`
    queues an entry without blocking; a full queue drops it, never silently (`_drop`).
    Subclasses set every_statement, queue_capacity, _queue, _wakeup, _closing and say how
    an entry is queued (`_entry`)."""

    every_statement: bool
    queue_capacity: int

    @property
    def wants_statements(self) -> bool:
        """Whether `statement` events are kept (`every_statement: true`)."""
        return self.every_statement

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def record(self, event: str, **fields: Any) -> bool:
        """Queue one entry (never blocks); False when it was not kept (see the module doc)."""
        if event not in CALLER_EVENTS:
            raise ValueError(f"unknown audit event {event!r}")
        if event == "statement" and not self.every_statement:
            return False
        if self._closing or len(self._queue) >= self.queue_capacity:
            self._drop()
            return False
        self._queue.append(self._entry(event, fields))
        if not self._wakeup.is_set():
            self._wakeup.set()
        return True

    def _entry(self, event: str, fields: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _drop(self, count: int = 1) -> None:
        raise NotImplementedError

    def _warn_dropped(self, why: str) -> None:
        """Log a drop at most once per WARN_INTERVAL (`dropped` counts every one).
        Subclasses set log, dropped and _last_warning."""
        now = time.monotonic()
        if now - self._last_warning >= WARN_INTERVAL:
            self._last_warning = now
            self.log.warning(f"audit entries dropped: {why}", dropped=self.dropped,
                             queue_capacity=self.queue_capacity)


class AuditLog(QueuedRecorder):
    """`record()` queues an entry without blocking; a writer task drains the queue to the file."""

    def __init__(self, path: str | os.PathLike, hmac_key: bytes | str,
                 max_bytes: int = DEFAULT_MAX_BYTES, every_statement: bool = False, *,
                 queue_size: int = DEFAULT_QUEUE_SIZE, checkpoint_key: Any = None,
                 checkpoint_interval: float | None = DEFAULT_CHECKPOINT_INTERVAL,
                 fsync: bool = False, keep: int | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        key = hmac_key.encode() if isinstance(hmac_key, str) else bytes(hmac_key)
        if not key:
            raise ValueError("the audit HMAC key must not be empty")
        if isinstance(checkpoint_key, (str, os.PathLike)):
            checkpoint_key = load_signing_key(os.fspath(checkpoint_key))
        self.path = os.fspath(path)
        self.every_statement = every_statement
        self.queue_capacity = queue_size
        self.written = self.dropped = self.blocked = self.write_errors = 0
        self.log = get_logger(component="audit")
        self._wall = wall
        self._queue: collections.deque[tuple[float, str, dict[str, Any]]] = collections.deque()
        self._gap: tuple[float, str, dict[str, Any]] | None = None
        self._wakeup = asyncio.Event()
        self._space: list[asyncio.Future] = []
        self._task: asyncio.Task | None = None
        self._closing = False
        self._last_warning = -math.inf
        self._writer = _Writer(self.path, key, max_bytes, checkpoint_key, keep, fsync,
                               checkpoint_interval, wall)

    @classmethod
    def from_settings(cls, settings: Any, **options: Any) -> AuditLog:
        """From the config's AuditSettings (path, hmac_key, max_bytes, every_statement, …)."""
        return cls(settings.path, settings.hmac_key, settings.max_bytes,
                   settings.every_statement, checkpoint_key=settings.checkpoint_key, **options)

    def _entry(self, event: str, fields: dict[str, Any]) -> tuple:
        return (self._wall(), event, fields)

    async def record_wait(self, event: str, **fields: Any) -> bool:
        """Like record(), but wait for queue space instead of dropping (needs a started log)."""
        if len(self._queue) >= self.queue_capacity and not self._closing:
            self.blocked += 1
            while len(self._queue) >= self.queue_capacity and not self._closing:
                space = asyncio.get_running_loop().create_future()
                self._space.append(space)
                await space
        return self.record(event, **fields)

    def lost(self, count: int) -> None:
        """`count` entries lost before they got here (a worker's queue was full, see
        proxy.workerlink): counted and chained into the trail as a gap, like a drop here."""
        if count > 0:
            self._drop(count)

    def _drop(self, count: int = 1) -> None:
        self.dropped += count
        if not self._closing:
            gap = self._gap
            if gap is not None and self._queue and self._queue[-1] is gap:
                gap[2]["count"] += count
            else:  # one marker past capacity, at the place where entries went missing
                self._gap = (self._wall(), "gap", {"count": count})
                self._queue.append(self._gap)
        self._warn_dropped("the audit log is closed" if self._closing
                           else "the audit queue is full")

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the file (rotating out an existing one) and start the writer task."""
        if self._task is not None:
            return
        await asyncio.to_thread(self._writer.open)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        """Write what is queued, then a final signed checkpoint, and close the file."""
        if self._closing:
            return
        self._closing = True
        self._wake_space(everyone=True)
        if self._task is None:
            self.dropped += len(self._queue)  # never started: nothing could be written
            self._queue.clear()
            return
        self._wakeup.set()
        await self._task
        await self._in_thread(self._writer.close, 0)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                if not await self._wait():
                    await self._in_thread(self._writer.maybe_checkpoint, 0)
                    continue
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            self._wake_space()
            if await self._in_thread(lambda: self._writer.write_batch(batch), len(batch)):
                self.written += sum(1 for item in batch if item[1] != "gap")

    async def _wait(self) -> bool:
        """Wait for entries; False when the checkpoint interval passed first."""
        try:
            async with asyncio.timeout(self._writer.interval):
                await self._wakeup.wait()
            return True
        except TimeoutError:
            return False

    async def _in_thread(self, work: Callable[[], None], entries: int) -> bool:
        try:
            await asyncio.to_thread(work)
            return True
        except Exception as exc:  # a full disk must not stop the proxy; it is counted
            self.write_errors += entries
            self.log.error("audit write failed; entries lost", error=repr(exc),
                           entries=entries, file=self.path)
            return False

    def _wake_space(self, everyone: bool = False) -> None:
        if everyone or len(self._queue) < self.queue_capacity:
            waiters, self._space = self._space, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


# --- verification ----------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    first_bad_line: int | None  # 1-based; a cut tail names the line after the last one
    reason: str | None
    entries: int  # entries that verified
    path: str = ""
    first_seq: int | None = None
    last_seq: int | None = None
    first_prev: str | None = None
    last_mac: str | None = None
    closed: bool = False  # ends with a final checkpoint
    open_reason: str | None = None  # why the end is not closed (accepted with open_ok)
    open_line: int | None = None


class _Chain:
    """Checks one file line by line."""

    def __init__(self, key: bytes, public_key: Any) -> None:
        self.key, self.public_key = key, public_key
        self.count = 0
        self.first_seq: int | None = None
        self.first_prev: str | None = None
        self.last_seq: int | None = None
        self.last_mac: str | None = None
        self.closed = False

    def check(self, number: int, raw: bytes) -> str | None:
        entry, problem = self._parse(raw)
        if problem is None:
            problem = self._authentic(number, entry) or self._in_place(entry)
        if problem is None:
            problem = self._checkpoint(entry) if entry["event"] == "checkpoint" else None
        if problem is None:
            self._advance(entry)
        return problem

    def _parse(self, raw: bytes) -> tuple[dict[str, Any], str | None]:
        try:
            entry = json.loads(raw.decode("ascii"))
        except UnicodeDecodeError:
            return {}, "not ASCII: edited (entries escape every non-ASCII character)"
        except ValueError:
            return {}, "not valid JSON: edited, or a foreign line"
        if not isinstance(entry, dict):
            return {}, "not a JSON object: a foreign line"
        if not isinstance(entry.get("mac"), str):
            return entry, "unsigned line (no mac): inserted or edited"
        body = {name: value for name, value in entry.items() if name != "mac"}
        try:
            if line_of(canonical(body), entry["mac"]) != raw:
                return entry, "not in canonical form: edited"
        except (TypeError, ValueError):  # NaN, or a mac that is not ASCII
            return entry, "not in canonical form: edited"
        return entry, None

    def _authentic(self, number: int, entry: dict[str, Any]) -> str | None:
        if not _same(entry["mac"], entry_mac(self.key, entry)):
            hint = ", or the wrong key" if number == 1 else ""
            return f"bad mac: entry edited or inserted without the key{hint}"
        if not isinstance(entry.get("seq"), int) or entry.get("event") not in EVENTS:
            return "malformed entry (seq or event)"
        return None

    def _in_place(self, entry: dict[str, Any]) -> str | None:
        if self.closed:
            return "entry after the final checkpoint"
        if self.last_seq is None:
            if entry["event"] != "rotate":
                return "the file does not start with a rotate entry: head cut or lines moved"
            return None
        if entry["seq"] != self.last_seq + 1:
            return (f"seq {entry['seq']} where {self.last_seq + 1} was expected: "
                    "a line was deleted, moved or inserted")
        if entry.get("prev") != self.last_mac:
            return "prev does not match the mac of the line before: chain broken"
        return None

    def _checkpoint(self, entry: dict[str, Any]) -> str | None:
        if entry.get("count") != self.count:
            return (f"checkpoint count {entry.get('count')} does not match the "
                    f"{self.count} entries before it")
        if entry.get("last_mac") != entry.get("prev"):
            return "checkpoint last_mac does not match the previous entry"
        if self.public_key is not None:
            try:
                self.public_key.verify(bytes.fromhex(entry.get("sig", "")), _signed_body(entry))
            except Exception:
                return "checkpoint signature missing or invalid (Ed25519)"
        return None

    def _advance(self, entry: dict[str, Any]) -> None:
        if self.first_seq is None:
            self.first_seq, self.first_prev = entry["seq"], entry.get("prev")
        self.count += 1
        self.last_seq, self.last_mac = entry["seq"], entry["mac"]
        self.closed = entry["event"] == "checkpoint" and entry.get("final") is True

    def result(self, path: str, line: int | None = None, reason: str | None = None,
               **extra: Any) -> VerifyResult:
        return VerifyResult(ok=reason is None, first_bad_line=line, reason=reason,
                            entries=self.count, path=path, first_seq=self.first_seq,
                            last_seq=self.last_seq, first_prev=self.first_prev,
                            last_mac=self.last_mac, closed=self.closed, **extra)


def _scan(path: str, key: bytes, public_key: Any = None) -> VerifyResult:
    """Check every line; an end without a final checkpoint is reported in open_reason."""
    chain = _Chain(key, public_key)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return chain.result(path, None, f"cannot read the file: {exc.strerror or exc}")
    lines = data.split(b"\n")
    unterminated = lines.pop()  # b"" when the file ends with a newline
    for number, raw in enumerate(lines, 1):
        problem = chain.check(number, raw)
        if problem is not None:
            return chain.result(path, number, problem)
    if not lines and not unterminated:
        return chain.result(path, 1, "empty file: no entries")
    if unterminated:
        return chain.result(path, open_line=len(lines) + 1, open_reason=(
            "incomplete last line (file still being written, or cut mid-line)"))
    if not chain.closed:
        return chain.result(path, open_line=len(lines) + 1, open_reason=NO_CHECKPOINT)
    return chain.result(path)


def verify(path: str | os.PathLike, key: bytes | str, *, open_ok: bool = False,
           public_key: Any = None) -> VerifyResult:
    """Check one file. Without a final checkpoint it fails unless `open_ok` (a live file)."""
    key = key.encode() if isinstance(key, str) else key
    return _close_tail(_scan(os.fspath(path), key, public_key), open_ok)


def _close_tail(result: VerifyResult, open_ok: bool) -> VerifyResult:
    if result.ok and result.open_reason is not None and not open_ok:
        return replace(result, ok=False, first_bad_line=result.open_line,
                       reason=result.open_reason)
    return result


def verify_files(paths: list[str], key: bytes | str, *, open_ok: bool = False,
                 public_key: Any = None) -> list[VerifyResult]:
    """Check several files of one trail (any order): each alone, then the links between them.

    Files are ordered by their first seq; every file but the newest must be closed, and each
    must start where the one before it ended (seq + 1, prev = its last mac)."""
    key = key.encode() if isinstance(key, str) else key
    scanned = [_scan(os.fspath(path), key, public_key) for path in paths]
    order = sorted(range(len(scanned)), key=lambda i: (scanned[i].first_seq is None,
                                                        scanned[i].first_seq or 0, i))
    results: dict[int, VerifyResult] = {}
    before: VerifyResult | None = None
    for position, index in enumerate(order):
        result = _close_tail(scanned[index], open_ok and position == len(order) - 1)
        if result.ok and before is not None and before.ok and not _links(before, result):
            result = replace(result, ok=False, first_bad_line=1, reason=(
                f"does not continue {before.path} (seq {before.last_seq}): "
                "a file between them is missing, or one was replaced"))
        results[index] = result
        before = result
    return [results[index] for index in range(len(scanned))]


def _links(before: VerifyResult, after: VerifyResult) -> bool:
    return (after.first_seq == (before.last_seq or 0) + 1
            and after.first_prev == before.last_mac)


def read_entries(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The entries of a file as dicts (lines that are not JSON objects are skipped)."""
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield entry
