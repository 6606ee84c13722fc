"""Framing: cut byte streams into protocol messages, sans I/O.

`MessageReader` frames typed client messages (type byte + int32 length that
counts itself), `StartupReader` the untyped startup-phase messages, and
`ReplyScanner` walks server replies by length so that pass-through messages are
never copied and only the few types the proxy must look at are handed back.
Every framing error is `ProtocolViolation` (08P01): the caller closes.
"""

from __future__ import annotations

import functools
import struct
from typing import NamedTuple

from proxy.errors import ProtocolViolation

_INT32 = struct.Struct("!i")
_unpack_int32 = _INT32.unpack_from
HEADER = 5  # type byte + int32 length
MAX_BUFFERED_REPLY = 1 << 30  # 1 GiB: PostgreSQL's own MaxAllocSize
_READY = ord("Z")
_READY_LENGTH = b"\x00\x00\x00\x05"


class MessageReader:
    """Frames typed messages; each is returned whole, header included.

    The common case (a chunk holding exactly whole messages, often just one)
    keeps the fed `bytes` object and slices it, and a slice covering all of it
    is the same object: no copy at all. Only a partial message left over at the
    end of a chunk moves into a bytearray, which later chunks extend.
    """

    __slots__ = ("max_size", "_data", "_pos")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._data: bytes | bytearray = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        """Add bytes received from the peer."""
        if not data:
            return
        buf = self._data
        if self._pos >= len(buf):  # nothing pending: keep the chunk as it is
            self._data = data if type(data) is bytes else bytes(data)
            self._pos = 0
        elif type(buf) is bytearray:
            # Dropping the consumed prefix of a bytearray is cheap in CPython
            # (it advances the start pointer); only the partial tail remains.
            del buf[:self._pos]
            buf += data
            self._pos = 0
        else:
            tail = bytearray(memoryview(buf)[self._pos:])
            tail += data
            self._data, self._pos = tail, 0

    def feed_whole(self, data: bytes) -> tuple[int, bytes] | None:
        """`feed` that hands back the common chunk at once: with nothing pending, a chunk
        that is exactly one whole message within the size limit comes back as (type, raw),
        `data` itself, and nothing is kept. Any other chunk is kept as `feed` keeps it and
        None returned: `next` frames it, and raises on what is wrong."""
        if self._pos < len(self._data) or type(data) is not bytes:
            self.feed(data)
            return None
        size = len(data)
        if size >= HEADER:
            length = _unpack_int32(data, 1)[0]
            if length + 1 == size and length >= 4 and size <= self.max_size:
                return data[0], data
        self._data, self._pos = data, 0  # `feed` with nothing pending: the chunk as it is
        return None

    def next(self) -> tuple[int, bytes] | None:
        """The next whole message as (type, raw), or None until more data arrives."""
        buf, pos = self._data, self._pos
        if len(buf) - pos < HEADER:
            return None
        length = _unpack_int32(buf, pos + 1)[0]
        if length < 4:
            raise ProtocolViolation(f"invalid message length {length}", rule="framing")
        if length + 1 > self.max_size:
            raise ProtocolViolation(
                f"message of {length + 1} bytes exceeds the limit of {self.max_size}",
                rule="max_message_size")
        end = pos + 1 + length
        if end > len(buf):
            return None
        if type(buf) is bytes:
            if end == len(buf):  # the chunk is used up: let go of it now, while it is
                self._data, self._pos = b"", 0  # in the cache, not at the next feed
            else:
                self._pos = end
            return buf[pos], buf[pos:end]
        self._pos = end
        return buf[pos], bytes(memoryview(buf)[pos:end])

    def pending(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._data) - self._pos

    def take_exactly(self, expected: bytes) -> bool:
        """Consume `expected` (whole messages the caller knows byte for byte) if the
        pending bytes begin with it; False, consuming nothing, if they do not."""
        if self._data.startswith(expected, self._pos):
            self._pos += len(expected)
            return True
        return False


class StartupReader:
    """Frames untyped startup-phase messages (int32 length incl. itself + body).

    Startup happens once per connection, so a plain bytearray is enough here.
    """

    __slots__ = ("max_size", "_buf")

    def __init__(self, max_size: int = 10000) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> bytes | None:
        """The next whole startup-phase message, or None until more data arrives."""
        buf = self._buf
        if len(buf) < 4:
            return None
        length = _unpack_int32(buf, 0)[0]
        if length < 8 or length > self.max_size:
            raise ProtocolViolation(f"invalid startup packet length {length}",
                                    rule="framing")
        if len(buf) < length:
            return None
        raw = bytes(buf[:length])
        del buf[:length]
        return raw

    def pending(self) -> int:
        """Buffered bytes; after an SSLRequest this must be 0 (CVE-2021-3935)."""
        return len(self._buf)


class Reply(NamedTuple):
    """One interesting server message found by `ReplyScanner.scan`.

    `start`/`end` are offsets in the chunk just scanned: `data[start:end]` is the
    message when it lies wholly in that chunk. `start` is -1 when the message
    began in an earlier chunk (its head was in that chunk's bytes).
    """

    type: int
    raw: bytes
    start: int
    end: int


_new_reply = functools.partial(tuple.__new__, Reply)  # skips NamedTuple's slower __new__


class ReplyScanner:
    """Walks server->client messages across chunk borders without copying them.

    Messages whose type is in `interesting` come back as `Reply` events (copied,
    buffered across chunks when split); all others are skipped by length and
    stay in the caller's chunk, which it forwards as is.
    """

    __slots__ = ("interesting", "max_buffered", "_skip", "_head", "_body", "_need",
                 "_type", "_pending_start")

    def __init__(self, interesting: frozenset[int],
                 max_buffered: int = MAX_BUFFERED_REPLY) -> None:
        self.interesting = interesting
        self.max_buffered = max_buffered
        self._skip = 0  # bytes of a pass-through message still to come
        self._head = bytearray()  # a header split across chunks (1..4 bytes)
        self._body: bytearray | None = None  # an interesting message being collected
        self._need = 0  # bytes still missing from _body
        self._type = 0
        self._pending_start = -1

    @property
    def pending_start(self) -> int:
        """Offset in the last chunk where a still-incomplete interesting message
        began (0 if it began even earlier, -1 if none): a caller that may cut
        it out holds back `data[pending_start:]` instead of forwarding it."""
        return self._pending_start

    def scan(self, data: bytes) -> list[Reply]:
        """Advance over `data`; return the interesting messages completed in it."""
        events: list[Reply] = []
        self._pending_start = -1
        pos = 0
        if self._skip or self._head or self._body is not None:
            pos = self._resume(data, events)
        n = len(data)
        interesting = self.interesting
        while pos < n:
            if n - pos < HEADER:
                self._head += data[pos:]
                self._note_partial(data[pos], pos)
                break
            typ = data[pos]
            length = _unpack_int32(data, pos + 1)[0]
            if length < 4:
                raise ProtocolViolation(f"invalid server message length {length}",
                                        rule="framing")
            end = pos + 1 + length
            if typ not in interesting:
                if end > n:
                    self._skip = end - n
                pos = end
            elif end <= n:
                events.append(_new_reply((typ, data[pos:end], pos, end)))
                pos = end
            else:
                self._begin_body(typ, length, data[pos:], end - n)
                self._pending_start = pos
                pos = n
        if self._pending_start < 0 and self._collecting():
            self._pending_start = 0  # an interesting message began earlier and goes on
        return events

    def whole_reply(self, data: bytes, passable: frozenset[int]) -> bool:
        """Whether `data`, from a message boundary, is whole messages that end with the
        only ReadyForQuery, every other interesting one being in `passable`: then the
        caller may relay it as it is and look at the last six bytes alone (the common
        answer to one simple Query). Changes nothing; False sends it through `scan`."""
        if self._skip or self._head or self._body is not None:
            return False
        last = len(data) - 6  # ReadyForQuery: 'Z', length 5, status
        if last < 0 or data[last] != _READY or data[last + 1:last + 5] != _READY_LENGTH:
            return False
        interesting = self.interesting
        pos = 0
        while pos < last:
            if last - pos < HEADER:
                return False
            typ = data[pos]
            if typ in interesting and typ not in passable:
                return False
            length = _unpack_int32(data, pos + 1)[0]
            if length < 4:
                return False  # `scan` says what is wrong
            pos += 1 + length
        return pos == last

    def _collecting(self) -> bool:
        """An interesting message is still incomplete after this chunk."""
        return self._body is not None or bool(self._head and self._head[0] in self.interesting)

    def _note_partial(self, typ: int, pos: int) -> None:
        if typ in self.interesting:
            self._pending_start = pos

    def _resume(self, data: bytes, events: list[Reply]) -> int:
        """Finish what the previous chunk left open; return the position reached."""
        if self._skip:
            taken = min(self._skip, len(data))
            self._skip -= taken
            return taken
        if self._head:
            return self._finish_head(data, events)
        return self._finish_body(data, events)

    def _finish_head(self, data: bytes, events: list[Reply]) -> int:
        used = min(HEADER - len(self._head), len(data))
        self._head += data[:used]
        if len(self._head) < HEADER:
            return used
        head = bytes(self._head)
        self._head.clear()
        typ = head[0]
        length = _unpack_int32(head, 1)[0]
        if length < 4:
            raise ProtocolViolation(f"invalid server message length {length}",
                                    rule="framing")
        if typ not in self.interesting:
            rest = length - 4
            taken = min(rest, len(data) - used)
            self._skip = rest - taken
            return used + taken
        self._begin_body(typ, length, head, length - 4)
        return self._finish_body_from(data, used, events)

    def _begin_body(self, typ: int, length: int, first: bytes, need: int) -> None:
        if length + 1 > self.max_buffered:
            raise ProtocolViolation(
                f"server message of {length + 1} bytes exceeds {self.max_buffered}",
                rule="max_message_size")
        self._type = typ
        self._body = bytearray(first)
        self._need = need

    def _finish_body(self, data: bytes, events: list[Reply]) -> int:
        return self._finish_body_from(data, 0, events)

    def _finish_body_from(self, data: bytes, pos: int, events: list[Reply]) -> int:
        """Append what `data[pos:]` holds of the collected message; return the end."""
        taken = min(self._need, len(data) - pos)
        body = self._body
        assert body is not None
        body += data[pos:pos + taken]
        self._need -= taken
        end = pos + taken
        if self._need == 0:
            events.append(Reply(self._type, bytes(body), -1, end))
            self._body = None
        return end
