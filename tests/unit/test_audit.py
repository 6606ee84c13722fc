"""The audit trail: one line per entry, the chain, tampering, rotation, a full queue, the CLI."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import shutil
import stat
from pathlib import Path

import pytest
import pytest_asyncio

from proxy.observability.audit import (GENESIS, NO_CHECKPOINT, AuditLog, canonical, entry_mac,
                                       line_of, read_entries, shape_of, verify, verify_files)
from proxy.observability.audit_cli import add_audit_commands, build_report

pytestmark = pytest.mark.timeout(30)

KEY = b"unit-test-audit-key-0123456789abcdef"
NASTY = 'evil\n{"seq":1,"event":"connect"}\r\x00\x1b[31m\u2028\ttab "quoted" \\ back'


class FakeLog:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict]] = []

    def _add(self, level: str, message: str, **fields) -> None:
        self.records.append((level, message, fields))

    def warning(self, message: str, **fields) -> None:
        self._add("warning", message, **fields)

    def error(self, message: str, **fields) -> None:
        self._add("error", message, **fields)

    def info(self, message: str, **fields) -> None:
        self._add("info", message, **fields)


class Clock:
    def __init__(self, when: str = "2024-03-01T10:00:00+00:00") -> None:
        self.now = datetime.datetime.fromisoformat(when).timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, when: str) -> None:
        self.now = datetime.datetime.fromisoformat(when).timestamp()


async def write_trail(path: Path, entries: int = 100, **options) -> AuditLog:
    audit = AuditLog(path, KEY, checkpoint_interval=None, **options)
    await audit.start()
    for index in range(entries):
        audit.record("connect", tenant=f"acme{NASTY}", login="app", client=f"10.0.0.{index}:5432",
                     application_name=NASTY, index=index)
        if index % 7 == 0:
            await asyncio.sleep(0)  # let the writer take several batches
    await audit.close()
    return audit


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


@pytest_asyncio.fixture(loop_scope="function")  # the test's own loop
async def trail(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    await write_trail(path)
    return path


# --- format ----------------------------------------------------------------------------------

async def test_hundred_entries_with_control_characters_one_line_each(trail: Path):
    lines = read_lines(trail)
    assert len(lines) == 102  # rotate header + 100 entries + final checkpoint
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == list(range(1, 103))
    assert entries[0]["event"] == "rotate" and entries[0]["reason"] == "new"
    assert entries[0]["prev"] == GENESIS
    assert entries[-1]["event"] == "checkpoint" and entries[-1]["final"] is True
    assert entries[-1]["count"] == 101 and entries[-1]["last_mac"] == entries[-2]["mac"]
    for index, entry in enumerate(entries[1:-1]):
        assert entry["application_name"] == NASTY  # stored exactly, escaped in the file
        assert entry["tenant"] == f"acme{NASTY}" and entry["index"] == index
        assert entry["ts"].endswith("Z") and entry["client"] == f"10.0.0.{index}:5432"
    for line, entry in zip(lines, entries):
        assert line.isascii() and b"\r" not in line and b"\x00" not in line
        body = {name: value for name, value in entry.items() if name != "mac"}
        assert line == line_of(canonical(body), entry["mac"])  # sorted keys, then the mac
        assert line.endswith(b',"mac":"' + entry["mac"].encode() + b'"}')
        assert entry["mac"] == entry_mac(KEY, entry)
    for before, after in zip(entries, entries[1:]):
        assert after["prev"] == before["mac"]
    result = verify(trail, KEY)
    assert result.ok and result.entries == 102 and result.closed
    assert (result.first_seq, result.last_seq) == (1, 102)
    assert stat.S_IMODE(os.stat(trail).st_mode) == 0o600


def test_shape_of_keeps_no_literal_and_no_comment():
    assert shape_of("SELECT * FROM t WHERE a = 'secret' AND b = 42 /* pw=hunter2 */ -- x\n"
                    "AND c = $1") == "SELECT * FROM t WHERE a = $2 AND b = $3 AND c = $1"
    assert shape_of('SELECT "we ird"  ,\n 1') == 'SELECT "we ird" , $1'
    assert shape_of("INSERT INTO t VALUES (E'\\x41', $$dollar$$, 1e9)") == \
        "INSERT INTO t VALUES ($1, $2, $3)"
    # normalize() leaves literals of utility statements alone; shape_of() does not
    assert shape_of("CREATE TABLE t (a int DEFAULT 31337, b text CHECK (b <> 'x'))") == \
        "CREATE TABLE t (a int DEFAULT $1, b text CHECK (b <> $2))"
    assert shape_of("COMMENT ON TABLE t IS 'secret'") == "COMMENT ON TABLE t IS $1"
    assert shape_of("CREATE VIEW v AS SELECT 1, 'a'") == "CREATE VIEW v AS SELECT $1, $2"
    assert shape_of("SELEC 'secret") is None
    assert shape_of("SELECT 1\x00; SELECT 'x'") is None
    assert shape_of(None) is None and shape_of(42) is None


async def test_statements_are_stored_only_as_shapes(tmp_path: Path):
    path = tmp_path / "audit.log"
    audit = AuditLog(path, KEY, every_statement=True, checkpoint_interval=None)
    await audit.start()
    audit.record("refusal", tenant="acme", rule="forbidden-function", sqlstate="42501",
                 shape="SELECT set_config('app.tenant', 'secret-literal', false) /* hunter2 */")
    audit.record("ddl", tenant="acme", sql="CREATE TABLE t (a int DEFAULT 31337)")
    audit.record("statement", tenant="acme", shape="SELEC 'broken-literal")
    audit.record("connect", tenant="acme", seq=999, mac="forged", prev="forged", sig="x")
    await audit.close()
    text = path.read_text()
    for secret in ("secret-literal", "hunter2", "31337", "broken-literal", "forged"):
        assert secret not in text
    entries = list(read_entries(path))
    assert entries[1]["shape"] == "SELECT set_config($1, $2, $3)"
    assert entries[2]["shape"] == "CREATE TABLE t (a int DEFAULT $1)" and "sql" not in entries[2]
    assert entries[3]["shape"] is None
    assert entries[4]["seq"] == 5 and "sig" not in entries[4]
    assert verify(path, KEY).ok


async def test_statement_events_only_with_every_statement(tmp_path: Path):
    audit = AuditLog(tmp_path / "a.log", KEY)
    assert not audit.wants_statements
    assert audit.record("statement", shape="SELECT 1") is False
    assert audit.queue_depth == 0 and audit.dropped == 0
    with pytest.raises(ValueError):
        audit.record("no_such_event")
    with pytest.raises(ValueError):
        audit.record("checkpoint")  # written by the log itself only


# --- tampering -------------------------------------------------------------------------------

def tampered(trail: Path, change) -> Path:
    copy = trail.with_name("copy.log")
    shutil.copy(trail, copy)
    lines = read_lines(copy)
    change(lines)
    write_lines(copy, lines)
    return copy


def edit(lines: list[bytes], number: int, old: bytes, new: bytes) -> None:
    assert old in lines[number - 1]
    lines[number - 1] = lines[number - 1].replace(old, new, 1)


def forged_line(lines: list[bytes], after: int, key: bytes, **changes) -> bytes:
    entry = json.loads(lines[after - 1])
    entry.update(seq=entry["seq"] + 1, prev=entry["mac"], **changes)
    return sealed(entry, key)


def sealed(entry: dict, key: bytes) -> bytes:
    """A line as the writer would make it with `key`."""
    body = {name: value for name, value in entry.items() if name != "mac"}
    return line_of(canonical(body), entry_mac(key, body))


TAMPERING = {
    "one character of a value": (lambda ls: edit(ls, 50, b'"login":"app"', b'"login":"apq"'),
                                 50, "bad mac"),
    "one digit of seq": (lambda ls: edit(ls, 50, b'"seq":50', b'"seq":51'), 50, "bad mac"),
    "one character of the mac": (lambda ls: edit(ls, 50, b'"mac":"', b'"mac":"0'), 50, "bad mac"),
    "a space (not canonical)": (lambda ls: edit(ls, 50, b',"login"', b', "login"'), 50,
                                "canonical"),
    "keys reordered, content kept": (
        lambda ls: ls.__setitem__(49, json.dumps(json.loads(ls[49]), separators=(",", ":"),
                                                 sort_keys=True).encode()), 50, "canonical"),
    "a non-ASCII byte": (lambda ls: edit(ls, 50, b"evil", b"\xc3\xa9vil"), 50, "ASCII"),
    "deleted middle line": (lambda ls: ls.pop(49), 50, "seq 51 where 50"),
    "swapped pair": (lambda ls: ls.__setitem__(slice(49, 51), [ls[50], ls[49]]), 50,
                     "seq 51 where 50"),
    "inserted unsigned line": (
        lambda ls: ls.insert(49, b'{"event":"connect","seq":50,"tenant":"acme"}'), 50,
        "unsigned"),
    "inserted line with a mac from another key": (
        lambda ls: ls.insert(49, forged_line(ls, 49, b"not-the-key")), 50, "bad mac"),
    "inserted replay of a valid line": (lambda ls: ls.insert(49, ls[48]), 50, "seq 49 where 50"),
    "foreign text line": (lambda ls: ls.insert(10, b"hello"), 11, "not valid JSON"),
    "head cut": (lambda ls: ls.pop(0), 1, "rotate"),
    "final checkpoint cut": (lambda ls: ls.pop(), 102, NO_CHECKPOINT),
    "ten lines cut from the tail": (lambda ls: ls.__delitem__(slice(-10, None)), 93,
                                    NO_CHECKPOINT),
    "checkpoint count forged with the key": (
        lambda ls: ls.__setitem__(-1, forged_line(ls, 101, KEY, event="checkpoint", count=50,
                                                  last_mac=json.loads(ls[100])["mac"],
                                                  final=True)), 102, "checkpoint count 50"),
    "entry after the final checkpoint": (lambda ls: ls.append(forged_line(ls, 102, KEY)), 103,
                                         "after the final checkpoint"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
async def test_tampering_is_detected_at_the_exact_line(trail: Path, kind: str):
    change, line, reason = TAMPERING[kind]
    result = verify(tampered(trail, change), KEY)
    assert not result.ok
    assert result.first_bad_line == line, result
    assert reason in result.reason


async def test_wrong_key_fails_at_line_one(trail: Path):
    result = verify(trail, b"some-other-key-0123456789")
    assert (result.ok, result.first_bad_line) == (False, 1)
    assert "wrong key" in result.reason


def test_empty_and_missing_files(tmp_path: Path):
    (tmp_path / "empty.log").write_bytes(b"")
    result = verify(tmp_path / "empty.log", KEY)
    assert (result.ok, result.first_bad_line) == (False, 1)
    missing = verify(tmp_path / "missing.log", KEY)
    assert not missing.ok and "cannot read" in missing.reason


async def test_open_file_fails_unless_open_ok(trail: Path):
    still_open = tampered(trail, lambda ls: ls.pop())
    assert verify(still_open, KEY).reason == NO_CHECKPOINT
    result = verify(still_open, KEY, open_ok=True)
    assert result.ok and not result.closed and result.entries == 101
    with open(still_open, "ab") as handle:
        handle.write(b'{"client":null,"eve')  # a reader racing the writer
    assert "incomplete last line" in verify(still_open, KEY).reason
    assert verify(still_open, KEY, open_ok=True).ok


# --- checkpoints -----------------------------------------------------------------------------

async def test_periodic_checkpoints_do_not_hide_a_cut_tail(tmp_path: Path):
    path = tmp_path / "audit.log"
    audit = AuditLog(path, KEY, checkpoint_interval=0.05)
    audit.log = audit._writer.log = FakeLog()
    await audit.start()
    audit.record("connect", tenant="acme")
    for _ in range(100):
        await asyncio.sleep(0.02)
        if any(e["event"] == "checkpoint" for e in read_entries(path)):
            break
    audit.record("disconnect", tenant="acme")
    await audit.close()
    entries = list(read_entries(path))
    events = [(e["event"], e.get("final")) for e in entries]
    assert events == [("rotate", None), ("connect", None), ("checkpoint", False),
                      ("disconnect", None), ("checkpoint", True)]
    assert verify(path, KEY).ok
    anchors = [fields for level, message, fields in audit._writer.log.records
               if message == "audit checkpoint"]
    assert [a["seq"] for a in anchors] == [3, 5] and anchors[-1]["mac"] == entries[-1]["mac"]
    cut = tampered(path, lambda ls: ls.__delitem__(slice(3, None)))  # right after checkpoint 1
    result = verify(cut, KEY)
    assert (result.ok, result.first_bad_line, result.reason) == (False, 4, NO_CHECKPOINT)


async def test_checkpoints_signed_with_ed25519(tmp_path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    private = Ed25519PrivateKey.generate()
    pem = tmp_path / "checkpoint.pem"
    pem.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    path = tmp_path / "audit.log"
    await write_trail(path, entries=3, checkpoint_key=str(pem))
    last = list(read_entries(path))[-1]
    assert last["event"] == "checkpoint" and len(last["sig"]) == 128
    assert verify(path, KEY, public_key=private.public_key()).ok
    other = Ed25519PrivateKey.generate().public_key()
    result = verify(path, KEY, public_key=other)
    assert (result.ok, result.first_bad_line) == (False, 5) and "signature" in result.reason
    unsigned = tmp_path / "unsigned.log"
    await write_trail(unsigned, entries=3)
    assert verify(unsigned, KEY).ok
    assert "signature" in verify(unsigned, KEY, public_key=private.public_key()).reason


# --- rotation and restarts -------------------------------------------------------------------

async def test_rotation_keeps_the_chain_across_files(tmp_path: Path):
    path = tmp_path / "audit.log"
    await write_trail(path, entries=60, max_bytes=6000)
    files = sorted(tmp_path.glob("audit.log*"))
    assert len(files) >= 3
    for file in files:
        result = verify(file, KEY)
        assert result.ok, (file, result)
    first_lines = [json.loads(read_lines(file)[0]) for file in files]
    assert all(entry["event"] == "rotate" for entry in first_lines)
    assert sorted(entry["reason"] for entry in first_lines).count("size") == len(files) - 1
    shuffled = [str(file) for file in files]
    random.Random(7).shuffle(shuffled)
    assert all(result.ok for result in verify_files(shuffled, KEY))
    seqs = [e["seq"] for f in sorted(files, key=lambda f: verify(f, KEY).first_seq)
            for e in read_entries(f)]
    assert seqs == list(range(1, len(seqs) + 1))
    connects = [e for f in files for e in read_entries(f) if e["event"] == "connect"]
    assert sorted(e["index"] for e in connects) == list(range(60))
    # a file missing from the middle of the trail breaks the link
    middle = f"{path}.{len(files) - 2}"  # neither the oldest nor the newest
    results = verify_files([str(f) for f in files if str(f) != middle], KEY)
    broken = [r for r in results if not r.ok]
    assert len(broken) == 1 and broken[0].first_bad_line == 1
    assert "does not continue" in broken[0].reason


async def test_restart_rotates_and_chains_to_the_previous_file(tmp_path: Path):
    path = tmp_path / "audit.log"
    await write_trail(path, entries=3)
    await write_trail(path, entries=2)
    old, new = Path(f"{path}.1"), path
    head = json.loads(read_lines(new)[0])
    old_last = json.loads(read_lines(old)[-1])
    assert head["event"] == "rotate" and head["reason"] == "restart"
    assert head["previous_clean"] is True
    assert (head["seq"], head["prev"]) == (old_last["seq"] + 1, old_last["mac"])
    assert all(r.ok for r in verify_files([str(new), str(old)], KEY))


async def test_restart_after_a_crash_is_flagged(tmp_path: Path):
    path = tmp_path / "audit.log"
    crashed = AuditLog(path, KEY, checkpoint_interval=None)
    await crashed.start()
    crashed.record("connect", tenant="acme")
    while crashed.written < 1:
        await asyncio.sleep(0.01)
    crashed._task.cancel()  # the process dies: no final checkpoint
    crashed._writer.file.close()
    await write_trail(path, entries=1)
    head = json.loads(read_lines(path)[0])
    assert head["reason"] == "restart" and head["previous_clean"] is False
    old = verify(f"{path}.1", KEY)
    assert not old.ok and old.reason == NO_CHECKPOINT and old.first_bad_line == 3
    results = verify_files([str(path), f"{path}.1"], KEY)
    assert [r.ok for r in results] == [True, False]


# --- a full queue ----------------------------------------------------------------------------

async def test_full_queue_drops_are_counted_logged_and_chained(tmp_path: Path):
    path = tmp_path / "audit.log"
    audit = AuditLog(path, KEY, queue_size=5, checkpoint_interval=None)
    audit.log = FakeLog()
    kept = [audit.record("connect", tenant="acme", index=i) for i in range(20)]
    assert kept == [True] * 5 + [False] * 15
    assert audit.dropped == 15 and audit.queue_depth == 6  # 5 entries + one gap marker
    warnings = [r for r in audit.log.records if r[0] == "warning"]
    assert len(warnings) == 1 and warnings[0][2]["dropped"] == 1  # once per second, not 15
    await audit.start()
    await audit.close()
    assert audit.written == 5
    entries = list(read_entries(path))
    assert [e["event"] for e in entries] == ["rotate"] + ["connect"] * 5 + ["gap", "checkpoint"]
    assert entries[6]["count"] == 15
    assert verify(path, KEY).ok
    assert audit.record("connect") is False  # after close: dropped, counted
    assert audit.dropped == 16


async def test_record_wait_waits_for_space_instead_of_dropping(tmp_path: Path):
    path = tmp_path / "audit.log"
    audit = AuditLog(path, KEY, queue_size=2, checkpoint_interval=None)
    await audit.start()
    assert audit.record("connect") and audit.record("connect")  # full: the writer has not run
    assert await audit.record_wait("bypass_statement", login="migrator", shape="DROP TABLE t")
    assert (audit.blocked, audit.dropped) == (1, 0)
    await audit.close()
    assert [e["event"] for e in read_entries(path)][-2] == "bypass_statement"


async def test_write_errors_are_counted(tmp_path: Path):
    audit = AuditLog(tmp_path / "audit.log", KEY, checkpoint_interval=None)
    audit.log = FakeLog()
    await audit.start()

    def disk_full(items):
        raise OSError(28, "No space left on device")
    audit._writer.write_batch = disk_full
    audit.record("connect")
    audit.record("connect")
    while audit.write_errors < 2:
        await asyncio.sleep(0.01)
    assert [r[1] for r in audit.log.records if r[0] == "error"] == [
        "audit write failed; entries lost"]
    await audit.close()
    assert verify(tmp_path / "audit.log", KEY).ok  # what was written still verifies


# --- the CLI ---------------------------------------------------------------------------------

def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tenantgate")
    add_audit_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANTGATE_AUDIT_KEY", KEY.decode())


async def test_cli_verify_ok(trail: Path, key_env, capsys):
    assert cli("audit", "verify", str(trail)) == 0
    assert capsys.readouterr().out == f"{trail}: ok (102 entries, seq 1-102)\n"


async def test_cli_verify_names_file_and_line(trail: Path, key_env, capsys):
    bad = tampered(trail, lambda ls: ls.pop(49))
    assert cli("audit", "verify", str(bad)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}:50: seq 51 where 50 was expected")
    cut = tampered(trail, lambda ls: ls.pop())
    assert cli("audit", "verify", str(cut)) == 1
    assert capsys.readouterr().err == f"{cut}:102: {NO_CHECKPOINT}\n"
    assert cli("audit", "verify", "--open-ok", str(cut)) == 0
    assert "not closed" in capsys.readouterr().out


async def test_cli_verify_key_from_env(trail: Path, monkeypatch, capsys):
    monkeypatch.delenv("TENANTGATE_AUDIT_KEY", raising=False)
    assert cli("audit", "verify", str(trail)) == 2
    assert "TENANTGATE_AUDIT_KEY is not set" in capsys.readouterr().err
    monkeypatch.setenv("OTHER_KEY", KEY.decode())
    assert cli("audit", "verify", "--key-env", "OTHER_KEY", str(trail)) == 0
    monkeypatch.setenv("OTHER_KEY", "wrong-key-wrong-key")
    assert cli("audit", "verify", "--key-env", "OTHER_KEY", str(trail)) == 1
    assert capsys.readouterr().err.startswith(f"{trail}:1: bad mac")


async def test_cli_verify_several_files(tmp_path: Path, key_env, capsys):
    path = tmp_path / "audit.log"
    await write_trail(path, entries=40, max_bytes=6000)
    files = sorted(str(f) for f in tmp_path.glob("audit.log*"))
    assert cli("audit", "verify", *files) == 0
    assert capsys.readouterr().out.count(": ok (") == len(files)
    assert cli("audit", "verify", *files[:1], *files[2:]) == 1  # a file missing


async def fixture_trail(path: Path) -> None:
    """A known trail: what the report must count exactly."""
    clock = Clock("2024-03-01T10:00:00+00:00")
    audit = AuditLog(path, KEY, every_statement=True, checkpoint_interval=None, wall=clock)
    await audit.start()
    record = audit.record
    record("connect", tenant="acme", login="app", client="10.0.0.1:5000")
    record("connect", tenant="acme", login="app", client="10.0.0.1:5001")
    record("connect", tenant="acme", login="reporting", client="10.0.0.2:6000")
    record("connect", tenant="globex", login="app", client="10.0.0.3:1")
    record("login_refused", tenant="acme", login="app", client="10.0.0.1:5002",
           reason="bad-password", sqlstate="28P01")
    record("login_refused", tenant=None, login="app", reason="unknown-tenant", sqlstate="28000")
    for _ in range(3):
        record("statement", tenant="acme", kind="select", shape="SELECT * FROM orders WHERE id = 7")
    record("statement", tenant="acme", shape="UPDATE orders SET total = 10 WHERE id = 7")
    record("ddl", tenant="acme", kind="create", shape="CREATE TABLE t (id int)")
    record("statement", tenant="globex", kind="select", shape="SELECT 1")
    for name in ("bob", "alice"):
        record("refusal", tenant="acme", login="app", rule="cross-tenant-schema",
               sqlstate="42P01", shape=f"SELECT * FROM globex.users WHERE name = '{name}'")
    record("refusal", tenant="acme", login="app", rule="forbidden-function", sqlstate="42501",
           shape="SELECT set_config('app.tenant', 'globex', false)")
    record("refusal", tenant="globex", rule="forbidden-function", sqlstate="42501",
           shape="SELECT pg_sleep(1)")
    record("bypass_statement", login="migrator", client="10.0.0.9:1", kind="alter",
           shape="ALTER TABLE orders ADD COLUMN note text DEFAULT 'x'")
    record("config_reload", ok=True, path="cfg.yaml", tenants=3)
    record("config_reload", ok=False, path="cfg.yaml", error="cfg.yaml:3: unknown key 'x'")
    record("disconnect", tenant="acme", login="app", client="10.0.0.1:5000")
    record("disconnect", tenant="acme", login="app", client="10.0.0.1:5001")
    await asyncio.sleep(0.05)
    while audit.queue_depth:
        await asyncio.sleep(0.01)
    clock.set("2024-03-02T09:00:00+00:00")
    record("connect", tenant="acme", login="app", client="10.0.0.7:1")
    record("refusal", tenant="acme", login="app", rule="cross-tenant-schema", sqlstate="42P01",
           shape="SELECT * FROM globex.users WHERE name = 'carol'")
    await audit.close()


async def test_cli_report_json_exact_counts(tmp_path: Path, key_env, capsys):
    path = tmp_path / "audit.log"
    await fixture_trail(path)
    capsys.readouterr()  # the writer's checkpoint log lines
    assert cli("audit", "report", "--tenant", "acme", "--format", "json", str(path)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chain"] == {"verified": True, "problems": []}
    assert report["connections"] == {
        "connects": 4, "disconnects": 2, "logins": {"app": 3, "reporting": 1},
        "distinct_clients": 3, "login_refused": 1,
        "login_refused_by_reason": {"bad-password": 1}}
    assert report["statements"] == {"SELECT": 3, "CREATE": 1, "UPDATE": 1}
    assert report["refusals"] == {"total": 4, "by_rule": [
        {"rule": "cross-tenant-schema", "count": 3, "sqlstates": ["42P01"],
         "shapes": [{"shape": "SELECT * FROM globex.users WHERE name = $1", "count": 3}]},
        {"rule": "forbidden-function", "count": 1, "sqlstates": ["42501"],
         "shapes": [{"shape": "SELECT set_config($1, $2, $3)", "count": 1}]}]}
    assert report["bypass"] == {
        "statements": 1, "by_login": {"migrator": 1}, "kinds": {"ALTER": 1},
        "shapes": [{"shape": "ALTER TABLE orders ADD COLUMN note text DEFAULT $1", "count": 1}]}
    assert [(c["ok"], c.get("error")) for c in report["config_changes"]] == [
        (True, None), (False, "cfg.yaml:3: unknown key 'x'")]
    assert report["entries_lost"] == 0
    for literal in ("bob", "alice", "carol", "'globex'"):
        assert literal not in json.dumps(report)


async def test_cli_report_time_window(tmp_path: Path, key_env, capsys):
    path = tmp_path / "audit.log"
    await fixture_trail(path)
    capsys.readouterr()
    assert cli("audit", "report", "--tenant", "acme", "--format", "json",
               "--since", "2024-03-02", str(path)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["connections"]["connects"] == 1
    assert report["refusals"]["total"] == 1 and report["config_changes"] == []
    assert report["since"] == "2024-03-02T00:00:00+00:00"
    assert cli("audit", "report", "--tenant", "acme", "--format", "json",
               "--until", "2024-03-02T00:00:00Z", str(path)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["connections"]["connects"] == 3 and report["refusals"]["total"] == 3


async def test_cli_report_markdown(tmp_path: Path, key_env, capsys):
    path = tmp_path / "audit.log"
    await fixture_trail(path)
    capsys.readouterr()
    assert cli("audit", "report", "--tenant", "acme", str(path)) == 0
    text = capsys.readouterr().out
    assert "- Chain: verified" in text
    assert "- Connects: 4" in text and "- Logins refused: 1" in text
    assert "| ` SELECT ` | 3 |" in text
    assert ("| ` cross-tenant-schema ` | 3 | 42P01 | "
            "3× ` SELECT * FROM globex.users WHERE name = $1 ` |") in text
    assert "## Refusals (4)" in text and "## Bypass activity (1 statements" in text
    assert "## Configuration changes (2)" in text
    assert "bob" not in text


async def test_cli_report_html_escapes_and_flags_a_broken_chain(tmp_path: Path, monkeypatch,
                                                                 capsys):
    path = tmp_path / "audit.log"
    monkeypatch.setenv("TENANTGATE_AUDIT_KEY", KEY.decode())
    audit = AuditLog(path, KEY, checkpoint_interval=None)
    await audit.start()
    audit.record("refusal", tenant="<b>x</b>", rule="<script>", shape='SELECT "<img src=x>"')
    await audit.close()
    bad = tampered(path, lambda ls: ls.pop())
    capsys.readouterr()
    assert cli("audit", "report", "--tenant", "<b>x</b>", "--format", "html", str(bad)) == 0
    page = capsys.readouterr().out
    assert "<script>" not in page and "<img" not in page and "<b>x" not in page
    assert "&lt;script&gt;" in page and "FAILED" in page and NO_CHECKPOINT in page
    monkeypatch.delenv("TENANTGATE_AUDIT_KEY")
    report = build_report([str(path)], "*")
    assert report["chain"]["verified"] is None
