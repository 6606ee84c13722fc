"""Message codec: builders against hand-written bytes, decoders, round trips, fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import InvalidEncoding, PolicyDenied, ProtocolViolation, ProxyError
from proxy.protocol import messages as m

FAST = settings(max_examples=200, deadline=None)


def msg(kind: str, body: bytes) -> bytes:
    return kind.encode() + struct.pack("!i", len(body) + 4) + body


# --- builders: bytes written by hand from the protocol spec ---------------------

TO_CLIENT = {
    "ready I": (m.ready_for_query(b"I"), b"Z\x00\x00\x00\x05I"),
    "ready E": (m.ready_for_query(b"E"), b"Z\x00\x00\x00\x05E"),
    "auth ok": (m.auth_ok(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
    "cleartext": (m.auth_cleartext(), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
    "md5": (m.auth_md5(b"abcd"), b"R\x00\x00\x00\x0c\x00\x00\x00\x05abcd"),
    "sasl": (m.auth_sasl(["SCRAM-SHA-256"]),
             b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"),
    "sasl continue": (m.auth_sasl_continue(b"r=x"), b"R\x00\x00\x00\x0b\x00\x00\x00\x0br=x"),
    "sasl final": (m.auth_sasl_final(b"v=y"), b"R\x00\x00\x00\x0b\x00\x00\x00\x0cv=y"),
    "param": (m.parameter_status("a", "b"), b"S\x00\x00\x00\x08a\x00b\x00"),
    "key": (m.backend_key_data(7, b"\x01\x02\x03\x04"),
            b"K\x00\x00\x00\x0c\x00\x00\x00\x07\x01\x02\x03\x04"),
    "complete": (m.command_complete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00"),
    "empty": (m.empty_query_response(), b"I\x00\x00\x00\x04"),
    "parse complete": (m.parse_complete(), b"1\x00\x00\x00\x04"),
    "bind complete": (m.bind_complete(), b"2\x00\x00\x00\x04"),
    "close complete": (m.close_complete(), b"3\x00\x00\x00\x04"),
    "no data": (m.no_data(), b"n\x00\x00\x00\x04"),
    "error": (m.error_response({"S": "ERROR", "C": "42501", "M": "no"}),
              b"E\x00\x00\x00\x17SERROR\x00C42501\x00Mno\x00\x00"),
    "notice": (m.notice_response({"M": "hi"}), b"N\x00\x00\x00\x09Mhi\x00\x00"),
    # name "a", table oid 0, attnum 0, type oid 25, typlen -1, typmod -1, format 0
    "row description": (m.row_description(["a"]),
                        b"T\x00\x00\x00\x1a\x00\x01a\x00\x00\x00\x00\x00\x00\x00"
                        b"\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00"),
    "data row": (m.data_row(["x", None, ""]),
                 b"D\x00\x00\x00\x13\x00\x03\x00\x00\x00\x01x\xff\xff\xff\xff"
                 b"\x00\x00\x00\x00"),
}

TO_SERVER = {
    "query": (m.query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00"),
    "parse": (m.parse("s1", "SELECT $1", (23,)),
              b"P\x00\x00\x00\x17s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17"),
    "parse unnamed": (m.parse("", "x"), b"P\x00\x00\x00\x09\x00x\x00\x00\x00"),
    "bind": (m.bind("p", "s", [b"42", None]),
             b"B\x00\x00\x00\x18p\x00s\x00\x00\x00\x00\x02\x00\x00\x00\x0242"
             b"\xff\xff\xff\xff\x00\x00"),
    "describe": (m.describe("S", "s1"), b"D\x00\x00\x00\x08Ss1\x00"),
    "close": (m.close("P", ""), b"C\x00\x00\x00\x06P\x00"),
    "execute": (m.execute("", 10), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x0a"),
    "sync": (m.sync(), b"S\x00\x00\x00\x04"),
    "flush": (m.flush(), b"H\x00\x00\x00\x04"),
    "terminate": (m.terminate(), b"X\x00\x00\x00\x04"),
    "password": (m.password_message(b"pw"), b"p\x00\x00\x00\x07pw\x00"),
    "sasl initial": (m.sasl_initial_response("SCRAM-SHA-256", b"n,,"),
                     b"p\x00\x00\x00\x19SCRAM-SHA-256\x00\x00\x00\x00\x03n,,"),
    "sasl response": (m.sasl_response(b"c=x"), b"p\x00\x00\x00\x07c=x"),
}


@pytest.mark.parametrize("built,expected", [*TO_CLIENT.values(), *TO_SERVER.values()],
                         ids=[*TO_CLIENT, *TO_SERVER])
def test_builder_bytes(built, expected):
    assert built == expected


def test_builders_refuse_what_cannot_be_framed():
    with pytest.raises(ValueError):
        m.query("a\x00b")
    with pytest.raises(ValueError):
        m.ready_for_query(b"X")
    with pytest.raises(ValueError):
        m.describe("X", "s")
    with pytest.raises(ValueError):
        m.password_message(b"a\x00")


def test_error_text_drops_nul_and_error_from():
    assert m.error_response({"M": "a\x00b"}) == b"E\x00\x00\x00\x09Mab\x00\x00"
    exc = PolicyDenied("function dblink is not allowed", rule="functions")
    assert m.decode_error_fields(m.error_from(exc)) == {
        "S": "ERROR", "V": "ERROR", "C": "42501",
        "M": "tenantgate: function dblink is not allowed (rule functions)"}


# --- decoders ---------------------------------------------------------------------

def test_decode_client_messages():
    assert m.decode_query(TO_SERVER["query"][1]) == "SELECT 1"
    assert m.decode_parse(TO_SERVER["parse"][1]) == m.Parse("s1", "SELECT $1", (23,))
    assert m.decode_bind(TO_SERVER["bind"][1]) == m.Bind("p", "s")
    assert m.decode_describe(TO_SERVER["describe"][1]) == ("S", "s1")
    assert m.decode_close(TO_SERVER["close"][1]) == ("P", "")
    assert m.decode_execute(TO_SERVER["execute"][1]) == ("", 10)
    assert m.decode_password(TO_SERVER["password"][1]) == b"pw"
    assert m.decode_sasl_initial(TO_SERVER["sasl initial"][1]) == ("SCRAM-SHA-256", b"n,,")
    assert m.decode_sasl_initial(b"p\x00\x00\x00\x0eSCRAM\x00\xff\xff\xff\xff") == ("SCRAM", b"")
    assert m.decode_sasl_response(TO_SERVER["sasl response"][1]) == b"c=x"


def test_decode_server_messages():
    assert m.decode_parameter_status(TO_CLIENT["param"][1]) == ("a", "b")
    assert m.decode_backend_key_data(TO_CLIENT["key"][1]) == (7, b"\x01\x02\x03\x04")
    assert m.decode_authentication(TO_CLIENT["md5"][1]) == (5, b"abcd")
    assert m.decode_ready_for_query(TO_CLIENT["ready E"][1]) == b"E"
    assert m.decode_command_complete(TO_CLIENT["complete"][1]) == "SELECT 1"
    assert m.decode_row_description(TO_CLIENT["row description"][1]) == ["a"]
    assert m.decode_data_row(TO_CLIENT["data row"][1]) == [b"x", None, b""]
    assert m.decode_error_fields(TO_CLIENT["error"][1]) == {"S": "ERROR", "C": "42501",
                                                            "M": "no"}


def test_rename_bind_keeps_parameters():
    renamed = m.rename_bind(TO_SERVER["bind"][1], "", "tg_7")
    assert renamed == m.bind("", "tg_7", [b"42", None])


MALFORMED = {
    "query NUL inside": (m.decode_query, msg("Q", b"SELECT 1\x00; DROP\x00")),
    "query no NUL": (m.decode_query, msg("Q", b"SELECT 1")),
    "query empty body": (m.decode_query, msg("Q", b"")),
    "query wrong type": (m.decode_query, b"P" + TO_SERVER["query"][1][1:]),
    "query length lies": (m.decode_query, b"Q\x00\x00\x00\x0eSELECT 1\x00"),
    "query short": (m.decode_query, b"Q\x00\x00"),
    "parse NUL in query": (m.decode_parse, msg("P", b"s\x00x\x00y\x00\x00\x00")),
    "parse missing count": (m.decode_parse, msg("P", b"s\x00x\x00")),
    "parse oid count lies": (m.decode_parse, msg("P", b"s\x00x\x00\x00\x02\x00\x00\x00\x17")),
    "parse no NUL": (m.decode_parse, msg("P", b"s\x00x")),
    "bind one name": (m.decode_bind, msg("B", b"portal\x00")),
    "bind no format count": (m.decode_bind, msg("B", b"p\x00s\x00")),
    "bind format codes cut": (m.decode_bind, msg("B", b"\x00\x00\x00\x02\x00\x01")),
    "bind no value count": (m.decode_bind, msg("B", b"\x00\x00\x00\x00")),
    "bind value count lies": (m.decode_bind, msg("B", b"\x00\x00\x00\x00\x00\x05")),
    "bind value cut": (m.decode_bind, msg("B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x10ab")),
    "bind value length -2": (m.decode_bind, msg("B", b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe"
                                                    b"\x00\x00")),
    "bind length cut": (m.decode_bind, msg("B", b"\x00\x00\x00\x00\x00\x01\x00\x00")),
    "bind no result formats": (m.decode_bind, msg("B", b"\x00\x00\x00\x00\x00\x00")),
    "bind result formats cut": (m.decode_bind, msg("B", b"\x00\x00\x00\x00\x00\x00\x00\x02"
                                                       b"\x00\x00")),
    "bind trailing junk": (m.decode_bind, TO_SERVER["bind"][1][:1]
                           + struct.pack("!i", len(TO_SERVER["bind"][1]))
                           + TO_SERVER["bind"][1][5:] + b"x"),
    "describe bad kind": (m.decode_describe, msg("D", b"Xs\x00")),
    "describe junk": (m.decode_describe, msg("D", b"Ss\x00x\x00")),
    "close empty": (m.decode_close, msg("C", b"")),
    "execute short": (m.decode_execute, msg("E", b"\x00\x00\x00")),
    "execute no max_rows": (m.decode_execute, msg("E", b"\x00")),
    "execute portal no NUL": (m.decode_execute, msg("E", b"portal\x00\x00\x00")),
    "execute NUL in portal": (m.decode_execute, msg("E", b"a\x00b\x00\x00\x00\x00\x00")),
    "execute trailing junk": (m.decode_execute, msg("E", b"\x00\x00\x00\x00\x00x")),
    "password NUL inside": (m.decode_password, msg("p", b"a\x00b\x00")),
    "password no NUL": (m.decode_password, msg("p", b"ab")),
    "sasl length lies": (m.decode_sasl_initial, msg("p", b"M\x00\x00\x00\x00\x05abc")),
    "sasl no length": (m.decode_sasl_initial, msg("p", b"M\x00\x00")),
    "param one string": (m.decode_parameter_status, msg("S", b"a\x00")),
    "param junk": (m.decode_parameter_status, msg("S", b"a\x00b\x00c\x00")),
    "key short": (m.decode_backend_key_data, msg("K", b"\x00\x00\x00\x01ab")),
    "auth short": (m.decode_authentication, msg("R", b"\x00\x00")),
    "ready bad status": (m.decode_ready_for_query, msg("Z", b"X")),
    "ready long": (m.decode_ready_for_query, msg("Z", b"II")),
    "complete NUL inside": (m.decode_command_complete, msg("C", b"A\x00B\x00")),
    "rowdesc truncated": (m.decode_row_description, TO_CLIENT["row description"][1][:-3]),
    "rowdesc count lies": (m.decode_row_description, msg("T", b"\x00\x02a\x00" + b"\x00" * 18)),
    "datarow truncated": (m.decode_data_row, msg("D", b"\x00\x01\x00\x00\x00\x05ab")),
    "datarow negative": (m.decode_data_row, msg("D", b"\x00\x01\xff\xff\xff\xfe")),
    "datarow junk": (m.decode_data_row, msg("D", b"\x00\x00x")),
    "error not E/N": (m.decode_error_fields, b"Z\x00\x00\x00\x05I"),
}


@pytest.mark.parametrize("decoder,raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_decoders_reject_malformed(decoder, raw):
    with pytest.raises(ProtocolViolation) as err:
        decoder(raw)
    assert err.value.sqlstate == "08P01"


@pytest.mark.parametrize("decoder,raw", [
    (m.decode_query, msg("Q", b"SELECT '\xff'\x00")),
    (m.decode_parse, msg("P", b"\xc3\x28\x00x\x00\x00\x00")),
    (m.decode_parse, msg("P", b"s\x00\xed\xa0\x80\x00\x00\x00")),  # UTF-16 surrogate
    (m.decode_bind, msg("B", b"p\x00\xff\x00\x00\x00\x00\x00\x00\x00")),
    (m.decode_execute, msg("E", b"\xd6\xd0\x00\x00\x00\x00\x00")),
])
def test_decoders_reject_invalid_utf8(decoder, raw):
    with pytest.raises(InvalidEncoding) as err:
        decoder(raw)
    assert err.value.sqlstate == "22021"


@pytest.mark.parametrize("body,fields", [
    (b"SERROR\x00Mboom\x00\x00", {"S": "ERROR", "M": "boom", "C": "XX000"}),  # no SQLSTATE
    (b"SFATAL\x00C28P01\x00", {"S": "FATAL", "C": "28P01"}),  # no final terminator
    (b"SFATAL\x00Mtrunc", {"S": "FATAL", "M": "trunc", "C": "XX000"}),  # cut mid-field
    (b"M\xff\xfe\x00\x00", {"M": "\ufffd\ufffd", "C": "XX000"}),
    (b"", {"C": "XX000"}),
])
def test_decode_error_fields_tolerates_odd_servers(body, fields):
    assert m.decode_error_fields(msg("E", body)) == fields
    assert m.decode_error_fields(msg("N", body)) == fields


@pytest.mark.parametrize("raw", [msg("B", b"\xff\x00\x00\x00\x00\x00\x01\x00\x00\x00\x10ab"),
                                 msg("E", b"\xff\x00\x00\x00")])
def test_structure_is_checked_before_the_encoding(raw):
    """A malformed message is 08P01 (FATAL) even when its names are also not UTF-8."""
    with pytest.raises(ProtocolViolation):
        (m.decode_bind if raw[:1] == b"B" else m.decode_execute)(raw)


def test_decode_bind_accepts_what_postgres_accepts():
    nulls_and_binary = msg("B", b"p\x00s\x00" + struct.pack("!HhH", 1, 1, 2)
                           + struct.pack("!i", -1) + struct.pack("!i", 0)
                           + struct.pack("!Hhh", 2, 0, 1))
    assert m.decode_bind(nulls_and_binary) == m.Bind("p", "s")
    assert m.decode_bind(msg("B", b"\x00\x00" + b"\x00" * 6)) == m.Bind("", "")


@pytest.mark.parametrize("body,ok", [(b"", True), (b"x", False)])
def test_check_empty(body, ok):
    if ok:
        m.check_empty(msg("H", body), m.FLUSH, "Flush")
    else:
        with pytest.raises(ProtocolViolation):
            m.check_empty(msg("H", body), m.FLUSH, "Flush")


# --- round trips and fuzzing ------------------------------------------------------

text = st.text(st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=40)


@FAST
@given(text, text, st.lists(st.integers(0, 2**32 - 1), max_size=5))
def test_round_trips(name, sql, oids):
    assert m.decode_query(m.query(sql)) == sql
    assert m.decode_parse(m.parse(name, sql, tuple(oids))) == m.Parse(name, sql, tuple(oids))
    assert m.decode_bind(m.bind(name, sql, [b"1"])) == m.Bind(name, sql)
    assert m.decode_describe(m.describe("P", name)) == ("P", name)
    assert m.decode_execute(m.execute(name, 5)) == (name, 5)
    assert m.decode_parameter_status(m.parameter_status(name, sql)) == (name, sql)
    assert m.decode_command_complete(m.command_complete(sql)) == sql


def any_bind(portal: str, statement: str, formats: list[int], values: list[bytes | None],
             results: list[int]) -> bytes:
    """A Bind as any client may send it: format codes, binary or NULL values."""
    body = [portal.encode() + b"\x00", statement.encode() + b"\x00",
            struct.pack(f"!H{len(formats)}h", len(formats), *formats),
            struct.pack("!H", len(values))]
    body += [b"\xff\xff\xff\xff" if v is None else struct.pack("!i", len(v)) + v
             for v in values]
    body.append(struct.pack(f"!H{len(results)}h", len(results), *results))
    return msg("B", b"".join(body))


binds = st.builds(any_bind, text, text, st.lists(st.sampled_from([0, 1]), max_size=4),
                  st.lists(st.one_of(st.none(), st.binary(max_size=12)), max_size=6),
                  st.lists(st.sampled_from([0, 1]), max_size=4))


@FAST
@given(binds, text)
def test_bind_round_trip_and_rename_keep_the_values(raw, new_name):
    portal, statement = m.decode_bind(raw)
    renamed = m.rename_bind(raw, portal, new_name)
    assert m.decode_bind(renamed) == m.Bind(portal, new_name)
    assert renamed[m.bind_names_end(renamed):] == raw[m.bind_names_end(raw):]


@FAST
@given(binds, st.data())
def test_bind_cut_or_extended_is_malformed(raw, data):
    """Whatever the framing says, a Bind whose parts do not fill it exactly is 08P01,
    so the server never reads other values, names or messages than the proxy did."""
    cut = data.draw(st.integers(5, len(raw) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=6))
    for body in (raw[5:cut], raw[5:] + junk):
        with pytest.raises(ProtocolViolation):
            m.decode_bind(msg("B", body))


@FAST
@given(text, st.integers(-2**31, 2**31 - 1), st.binary(max_size=6))
def test_execute_round_trip_and_junk(portal, max_rows, junk):
    raw = m.execute(portal, max_rows)
    assert m.decode_execute(raw) == (portal, max_rows)
    if junk:
        with pytest.raises(ProtocolViolation):
            m.decode_execute(msg("E", raw[5:] + junk))


@FAST
@given(st.lists(text, max_size=5), st.lists(st.one_of(st.none(), text), max_size=5))
def test_row_round_trips(names, values):
    assert m.decode_row_description(m.row_description(names)) == names
    encoded = [None if v is None else v.encode() for v in values]
    assert m.decode_data_row(m.data_row(values)) == encoded


@FAST
@given(st.dictionaries(st.sampled_from("SVCMDHPWF"), text, max_size=6))
def test_error_fields_round_trip(fields):
    assert m.decode_error_fields(m.error_response(fields)) == {"C": "XX000", **fields}


DECODERS = [
    (m.decode_query, "Q"), (m.decode_parse, "P"), (m.decode_bind, "B"),
    (m.decode_describe, "D"), (m.decode_close, "C"), (m.decode_execute, "E"),
    (m.decode_password, "p"), (m.decode_sasl_initial, "p"), (m.decode_sasl_response, "p"),
    (m.decode_error_fields, "E"), (m.decode_parameter_status, "S"),
    (m.decode_backend_key_data, "K"), (m.decode_authentication, "R"),
    (m.decode_ready_for_query, "Z"), (m.decode_command_complete, "C"),
    (m.decode_row_description, "T"), (m.decode_data_row, "D"),
]


@FAST
@given(st.binary(max_size=80))
def test_decoders_on_random_bytes_raise_only_proxy_errors(body):
    for decoder, kind in DECODERS:
        for raw in (body, msg(kind, body), msg(kind, body)[:-1] if body else body):
            try:
                decoder(raw)
            except ProxyError as exc:
                assert exc.sqlstate in ("08P01", "22021")


@FAST
@given(st.binary(max_size=80))
def test_decode_error_fields_never_raises_on_content(body):
    fields = m.decode_error_fields(msg("E", body))
    assert "C" in fields


def _bind_with_formats(formats: list[int], values: list[bytes | None]) -> bytes:
    body = [b"portal\x00stmt\x00", struct.pack("!H", len(formats)),
            *(struct.pack("!h", f) for f in formats), struct.pack("!H", len(values))]
    for value in values:
        body.append(b"\xff\xff\xff\xff" if value is None
                    else struct.pack("!i", len(value)) + value)
    body.append(b"\x00\x01\x00\x01")  # one result format code: binary
    payload = b"".join(body)
    return b"B" + struct.pack("!i", len(payload) + 4) + payload


@given(st.lists(st.one_of(st.none(), st.binary(max_size=20)), max_size=6), st.data())
def test_bind_parameters_reads_every_value_with_its_format(values, data):
    """No format codes: all text; one: all that format; else one per parameter."""
    kind = data.draw(st.sampled_from(["none", "one", "each"]))
    if kind == "none" or not values:
        formats, expected = [], [0] * len(values)
    elif kind == "one":
        formats = [data.draw(st.sampled_from([0, 1]))]
        expected = formats * len(values)
    else:
        formats = data.draw(st.lists(st.sampled_from([0, 1]), min_size=len(values),
                                     max_size=len(values)))
        expected = formats
    raw = _bind_with_formats(formats, values)
    assert m.decode_bind(raw) == ("portal", "stmt")  # well formed, as the session checks first
    assert m.bind_parameters(raw) == list(zip(expected, values))
