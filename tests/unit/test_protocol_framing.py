"""Framing: MessageReader, StartupReader and ReplyScanner on hand-built byte streams."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import ProtocolViolation, ProxyError
from proxy.protocol.framing import MessageReader, Reply, ReplyScanner, StartupReader

FAST = settings(max_examples=200, deadline=None)

# Written by hand from the protocol spec: type, int32 length counting itself, body.
QUERY = b"Q\x00\x00\x00\x0dSELECT 1\x00"
SYNC = b"S\x00\x00\x00\x04"
PARSE = b"P\x00\x00\x00\x0bs1\x00x\x00\x00\x00"  # name "s1", query "x", no oids
SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
STREAM = QUERY + SYNC + PARSE + SYNC


def drain(reader: MessageReader) -> list[tuple[int, bytes]]:
    out = []
    while (msg := reader.next()) is not None:
        out.append(msg)
    return out


def read_in_pieces(data: bytes, cuts: list[int], max_size: int = 1 << 20):
    reader, out, last = MessageReader(max_size), [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        reader.feed(data[last:cut])
        out += drain(reader)
        last = cut
    return out, reader


# --- MessageReader ---------------------------------------------------------------

def test_reader_whole_chunk():
    reader = MessageReader(1000)
    reader.feed(STREAM)
    assert drain(reader) == [(ord("Q"), QUERY), (ord("S"), SYNC), (ord("P"), PARSE),
                             (ord("S"), SYNC)]
    assert reader.pending() == 0


def test_reader_one_byte_at_a_time_gives_same_messages():
    reader, got = MessageReader(1000), []
    for i in range(len(STREAM)):
        reader.feed(STREAM[i:i + 1])
        got += drain(reader)
    whole = MessageReader(1000)
    whole.feed(STREAM)
    assert got == drain(whole)
    assert all(type(raw) is bytes for _, raw in got)


def test_reader_incomplete_then_complete():
    reader = MessageReader(1000)
    reader.feed(QUERY[:7])
    assert reader.next() is None
    assert reader.pending() == 7
    reader.feed(QUERY[7:] + SYNC[:2])
    assert reader.next() == (ord("Q"), QUERY)
    assert reader.next() is None
    assert reader.pending() == 2
    reader.feed(SYNC[2:])
    assert reader.next() == (ord("S"), SYNC)
    assert reader.pending() == 0


def test_reader_single_message_chunk_is_not_copied():
    reader = MessageReader(1000)
    chunk = bytes(QUERY)
    reader.feed(chunk)
    assert reader.next()[1] is chunk


def test_reader_many_small_messages_in_one_chunk():
    reader = MessageReader(1000)
    reader.feed(SYNC * 20000 + QUERY[:3])
    assert len(drain(reader)) == 20000
    assert reader.pending() == 3


def test_reader_take_exactly_consumes_only_a_whole_match():
    reader = MessageReader(1000)
    reader.feed(QUERY + SYNC + PARSE)
    assert reader.next() == (ord("Q"), QUERY)
    assert not reader.take_exactly(SYNC + SYNC)  # the bytes after the Sync differ
    assert not reader.take_exactly(PARSE)
    assert reader.take_exactly(SYNC)
    assert reader.next() == (ord("P"), PARSE)
    assert reader.pending() == 0


@pytest.mark.parametrize("cut", range(1, len(SYNC + QUERY)))
def test_reader_take_exactly_waits_for_the_whole_of_it(cut):
    """Not all there yet, or kept in the bytearray of a partial message: nothing is taken
    before the last byte has come, then all of it is."""
    reader = MessageReader(1000)
    reader.feed(PARSE[:3])
    reader.feed(PARSE[3:] + (SYNC + QUERY)[:cut])
    assert reader.next() == (ord("P"), PARSE)
    assert not reader.take_exactly(SYNC + QUERY)
    assert reader.pending() == cut
    reader.feed((SYNC + QUERY)[cut:])
    assert reader.take_exactly(SYNC + QUERY)
    assert reader.pending() == 0


@pytest.mark.parametrize("length", [0, 3, -1, -(1 << 31)])
def test_reader_rejects_short_length(length):
    reader = MessageReader(1000)
    reader.feed(b"Q" + struct.pack("!i", length))
    with pytest.raises(ProtocolViolation) as err:
        reader.next()
    assert err.value.sqlstate == "08P01"


def test_reader_rejects_oversized_as_soon_as_header_arrives():
    reader = MessageReader(100)
    reader.feed(b"Q" + struct.pack("!i", 100))  # 101 bytes in all: one too many
    with pytest.raises(ProtocolViolation, match="exceeds"):
        reader.next()


def test_reader_accepts_message_of_exactly_max_size():
    body = b"x" * 94 + b"\x00"
    raw = b"Q" + struct.pack("!i", 4 + len(body)) + body
    assert len(raw) == 100
    reader = MessageReader(100)
    reader.feed(raw)
    assert reader.next() == (ord("Q"), raw)


@FAST
@given(st.lists(st.sampled_from([QUERY, SYNC, PARSE]), max_size=12),
       st.lists(st.integers(0, 400), max_size=10))
def test_reader_any_chunking_gives_same_messages(messages, cuts):
    data = b"".join(messages)
    got, reader = read_in_pieces(data, [c for c in cuts if c < len(data)])
    assert [raw for _, raw in got] == messages
    assert reader.pending() == 0


@FAST
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_reader_random_bytes_raise_only_protocol_errors(data, cuts):
    try:
        got, _ = read_in_pieces(data, [c for c in cuts if c < len(data)], max_size=200)
    except ProxyError as exc:
        assert exc.sqlstate == "08P01"
    else:
        assert b"".join(raw for _, raw in got) == data[:sum(len(r) for _, r in got)]


def read_whole_in_pieces(data: bytes, cuts: list[int], max_size: int = 1 << 20):
    """`read_in_pieces` through `feed_whole`, as the session reads a relaying client."""
    reader, out, last = MessageReader(max_size), [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        if (whole := reader.feed_whole(data[last:cut])) is not None:
            out.append(whole)
        out += drain(reader)
        last = cut
    return out, reader


def test_feed_whole_returns_a_lone_message_itself_and_keeps_nothing():
    reader = MessageReader(1 << 20)
    assert reader.feed_whole(QUERY) == (ord("Q"), QUERY)
    assert reader.feed_whole(QUERY)[1] is QUERY
    assert reader.pending() == 0 and reader.next() is None


@pytest.mark.parametrize("chunks, messages", [
    ([QUERY + SYNC], [QUERY, SYNC]),  # two messages
    ([QUERY[:7], QUERY[7:]], [QUERY]),  # a message in two chunks: the second completes it
    ([QUERY[:3], QUERY[3:]], [QUERY]),  # even its header
    ([PARSE[:2], PARSE[2:] + QUERY], [PARSE, QUERY]),  # the end of one, then a whole one
    ([bytearray(QUERY)], [QUERY]),  # not bytes: kept as a copy
])
def test_feed_whole_feeds_any_other_chunk(chunks, messages):
    reader, got = MessageReader(1 << 20), []
    for chunk in chunks:
        if (whole := reader.feed_whole(chunk)) is not None:
            got.append(whole)
        got += drain(reader)
    assert [raw for _, raw in got] == messages
    assert reader.pending() == 0


@pytest.mark.parametrize("raw", [b"Q\x00\x00\x00\x03", b"Q" + struct.pack("!i", 200) + bytes(196)])
def test_feed_whole_leaves_bad_lengths_to_next(raw):
    reader = MessageReader(100)
    assert reader.feed_whole(raw) is None
    with pytest.raises(ProtocolViolation):
        reader.next()


@FAST
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_feed_whole_frames_as_feed_does(data, cuts):
    cuts = [c for c in cuts if c < len(data)]
    outcomes = []
    for read in (read_in_pieces, read_whole_in_pieces):
        try:
            outcomes.append(read(data, cuts, max_size=200)[0])
        except ProxyError as exc:
            outcomes.append(exc.sqlstate)
    assert outcomes[0] == outcomes[1]


# --- StartupReader ---------------------------------------------------------------

def test_startup_reader_frames_and_counts_pending():
    reader = StartupReader()
    reader.feed(SSL_REQUEST + b"junk")
    assert reader.next() == SSL_REQUEST
    assert reader.pending() == 4  # junk before the TLS handshake: caller must refuse


def test_startup_reader_partial():
    reader = StartupReader()
    reader.feed(SSL_REQUEST[:3])
    assert reader.next() is None
    reader.feed(SSL_REQUEST[3:])
    assert reader.next() == SSL_REQUEST
    assert reader.pending() == 0


@pytest.mark.parametrize("length", [0, 4, 7, 10001, -8])
def test_startup_reader_rejects_bad_lengths(length):
    reader = StartupReader()
    reader.feed(struct.pack("!i", length) + b"\x00" * 8)
    with pytest.raises(ProtocolViolation):
        reader.next()


@FAST
@given(st.binary(max_size=64))
def test_startup_reader_random_bytes(data):
    reader = StartupReader(max_size=40)
    reader.feed(data)
    try:
        while (raw := reader.next()) is not None:
            assert 8 <= len(raw) <= 40
    except ProxyError as exc:
        assert exc.sqlstate == "08P01"


# --- ReplyScanner ----------------------------------------------------------------

def backend(kind: str, body: bytes) -> bytes:
    return kind.encode() + struct.pack("!i", len(body) + 4) + body


ROW_DESC = backend("T", b"\x00\x01a\x00" + b"\x00" * 18)
DATA_ROW = backend("D", b"\x00\x01\x00\x00\x00\x03abc")
BIG_ROW = backend("D", b"\x00\x01\x00\x00\x04\x00" + b"z" * 1024)
COMPLETE = backend("C", b"SELECT 1\x00")
PARAM = backend("S", b"TimeZone\x00UTC\x00")
READY = b"Z\x00\x00\x00\x05I"
PARSE_DONE = b"1\x00\x00\x00\x04"
INTERESTING = frozenset(map(ord, "ZESC1"))
REPLIES = [ROW_DESC, DATA_ROW, BIG_ROW, COMPLETE, PARAM, READY, PARSE_DONE]


def test_scanner_one_chunk_offsets():
    data = ROW_DESC + DATA_ROW + COMPLETE + READY
    events = ReplyScanner(INTERESTING).scan(data)
    c_start = len(ROW_DESC) + len(DATA_ROW)
    assert events == [
        Reply(ord("C"), COMPLETE, c_start, c_start + len(COMPLETE)),
        Reply(ord("Z"), READY, c_start + len(COMPLETE), len(data)),
    ]
    for event in events:
        assert data[event.start:event.end] == event.raw


def test_scanner_interesting_message_split_across_chunks():
    scanner = ReplyScanner(INTERESTING)
    assert scanner.scan(DATA_ROW + PARAM[:6]) == []
    assert scanner.pending_start == len(DATA_ROW)
    assert scanner.scan(PARAM[6:] + READY) == [
        Reply(ord("S"), PARAM, -1, len(PARAM) - 6),
        Reply(ord("Z"), READY, len(PARAM) - 6, len(PARAM) - 6 + len(READY)),
    ]
    assert scanner.pending_start == -1


def test_scanner_skips_pass_through_across_chunks():
    scanner = ReplyScanner(INTERESTING)
    assert scanner.scan(BIG_ROW[:3]) == []  # header split inside the length word
    assert scanner.pending_start == -1  # 'D' is not interesting: nothing to hold
    assert scanner.scan(BIG_ROW[3:500]) == []
    assert scanner.scan(BIG_ROW[500:] + READY) == [
        Reply(ord("Z"), READY, len(BIG_ROW) - 500, len(BIG_ROW) - 500 + len(READY))]


def test_scanner_header_only_message_split():
    scanner = ReplyScanner(INTERESTING)
    assert scanner.scan(PARSE_DONE[:2]) == []
    assert scanner.pending_start == 0
    assert scanner.scan(PARSE_DONE[2:]) == [Reply(ord("1"), PARSE_DONE, -1, 3)]


@pytest.mark.parametrize("cut", [0, 2, 5])
def test_scanner_rejects_short_length(cut):
    bad = b"D\x00\x00\x00\x02"
    scanner = ReplyScanner(INTERESTING)
    with pytest.raises(ProtocolViolation):
        scanner.scan(bad[:cut])
        scanner.scan(bad[cut:])


def test_scanner_caps_buffered_interesting_messages():
    scanner = ReplyScanner(INTERESTING, max_buffered=16)
    assert scanner.scan(DATA_ROW * 3) == []  # pass-through has no cap
    with pytest.raises(ProtocolViolation, match="exceeds"):
        scanner.scan(COMPLETE + backend("E", b"M" + b"x" * 20 + b"\x00\x00")[:8])


def scan_absolute(data: bytes, cuts: list[int]):
    """Scan in pieces; return events as (type, raw, absolute start or None, absolute end)."""
    scanner, out, last = ReplyScanner(INTERESTING), [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        chunk = data[last:cut]
        for event in scanner.scan(chunk):
            if event.start >= 0:
                assert chunk[event.start:event.end] == event.raw
            start = None if event.start < 0 else last + event.start
            out.append((event.type, event.raw, start, last + event.end))
        last = cut
    return out


@FAST
@given(st.lists(st.sampled_from(REPLIES), max_size=10),
       st.lists(st.integers(0, 3000), max_size=8))
def test_scanner_same_events_whatever_the_chunking(replies, cuts):
    data = b"".join(replies)
    whole = scan_absolute(data, [])
    pieces = scan_absolute(data, [c for c in cuts if c < len(data)])
    assert [(t, raw, end) for t, raw, _, end in pieces] == [(t, raw, e) for t, raw, _, e in whole]
    expected, pos = [], 0
    for raw in replies:
        if raw[0] in INTERESTING:
            expected.append((raw, pos, pos + len(raw)))
        pos += len(raw)
    assert [(raw, start, end) for _, raw, start, end in whole] == expected
    for (_, _, start, _), (_, _, exp_start, _) in zip(pieces, whole):
        assert start is None or start == exp_start


@FAST
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=5))
def test_scanner_random_bytes_raise_only_protocol_errors(data, cuts):
    try:
        scan_absolute(data, [c for c in cuts if c < len(data)])
    except ProxyError as exc:
        assert exc.sqlstate == "08P01"


def test_pending_start_covers_an_interesting_message_spanning_three_chunks():
    """A caller that holds back `data[pending_start:]` must never forward part of it."""
    from proxy.protocol import messages as m
    from proxy.protocol.framing import ReplyScanner
    error = m.error_response({"S": "ERROR", "C": "42501", "M": "x" * 40})
    stream = m.command_complete("SELECT 1") + error + m.ready_for_query(b"I")
    scanner = ReplyScanner(frozenset({ord("E"), ord("Z")}))
    chunks = [stream[:20], stream[20:40], stream[40:]]
    forwarded = b""
    for chunk in chunks:
        events = scanner.scan(chunk)
        position = 0
        for event in events:
            if event.start >= 0:
                forwarded += chunk[position:event.start]
            forwarded += event.raw
            position = event.end
        held = scanner.pending_start
        forwarded += chunk[position:held if held >= 0 else len(chunk)]
    assert forwarded == stream


# -- ReplyScanner.whole_reply: the relay's shortcut for one simple Query's whole answer --------

def _typed(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


TRACKED = frozenset(b"ZCTInEStGHW12")  # as the relay's scanner: completions, errors, …
PASSABLE = frozenset(b"CTIn12")  # completions: they end no entry while a Query is pending
READY_I = _typed(b"Z", b"I")


@pytest.mark.parametrize("data, whole", [
    (_typed(b"T", b"x" * 20) + _typed(b"D", b"row") + _typed(b"C", b"SELECT 1\0") + READY_I,
     True),
    (_typed(b"N", b"notice") + _typed(b"C", b"SET\0") + READY_I, True),  # a notice passes
    (READY_I, True),
    (_typed(b"C", b"x\0") + _typed(b"E", b"SERROR\0\0") + READY_I, False),  # an error
    (_typed(b"S", b"a\0b\0") + READY_I, False),  # a setting reported
    (_typed(b"G", b"\0\0\0") + READY_I, False),  # COPY FROM STDIN starts
    (READY_I + READY_I, False),  # two answers
    (_typed(b"C", b"x\0") + READY_I[:-1], False),  # cut short
    (_typed(b"D", b"row") + _typed(b"C", b"x\0"), False),  # no ReadyForQuery yet
    (b"D\0\0\0\x09ro" + READY_I, False),  # a length that runs past the end
    (b"D\0\0\0\x02" + READY_I, False),  # a length below 4: scan reports it
])
def test_whole_reply(data, whole):
    assert ReplyScanner(TRACKED).whole_reply(data, PASSABLE) is whole


def test_whole_reply_is_false_while_a_message_is_open():
    scanner = ReplyScanner(TRACKED)
    scanner.scan(_typed(b"D", b"x" * 10)[:7])  # a row cut in two
    assert not scanner.whole_reply(READY_I, PASSABLE)


_PIECES = st.sampled_from([_typed(b"T", b"desc"), _typed(b"D", b"row"), _typed(b"C", b"SELECT\0"),
                           _typed(b"N", b"note"), _typed(b"I"), _typed(b"E", b"SERR\0\0"),
                           _typed(b"S", b"a\0b\0"), READY_I, _typed(b"Z", b"T")])


@given(st.lists(_PIECES, max_size=8), st.integers(min_value=0, max_value=3))
def test_whole_reply_agrees_with_scan(pieces, cut):
    """Whenever the shortcut takes a chunk, the full scan finds only passable messages and
    one final ReadyForQuery whose bytes are the chunk's last six."""
    data = b"".join(pieces)
    data = data[:len(data) - cut] if cut else data
    if ReplyScanner(TRACKED).whole_reply(data, PASSABLE):
        events = ReplyScanner(TRACKED).scan(data)
        assert events and events[-1].type == ord("Z") and events[-1].raw == data[-6:]
        assert all(event.type in PASSABLE for event in events[:-1])
