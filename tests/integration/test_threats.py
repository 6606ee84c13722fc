"""THREATS.md through the running proxy: shared attack machinery and the coverage check.

The attacks themselves live in one file per THREATS.md section:
  test_threats_context.py    3.1 tenant context and parser differentials (1-15), 65
  test_threats_namespace.py  3.2 namespace escapes (16-27), 31, 32, 39-42, 77, 78
  test_threats_session.py    3.4 session state and protocol (46-60), 61, 73
Every test is named `test_tNN_…` after the THREATS.md id it attacks;
`test_every_threat_id_has_a_test` fails when an id loses its last test.

`expect_refused` is the one way an attack is checked. It runs the attack as the
attacker tenant (globex against hooli in the shared database, acme against umbrella
in separate databases) through a real client, and asserts:
  - the SQLSTATE (the README's refusal table) and the proxy's `tenantgate:` prefix;
  - that nothing of the victim (canary, row names) is in the error, its detail or
    hint, the notices, or — when the attack was not refused — the rows;
  - that the connection still works and is still pinned to the attacker (user,
    database, search_path, lexing settings, reserved settings unset, own 3 rows);
  - the same inside BEGIN, and that the transaction is then aborted (25P02);
  - that the victim's and the attacker's tables (and any `extra` ones) are
    unchanged, by checksums read directly on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import struct
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.sample import canary, sample_items
from tests.helpers import (backend_query, error_fields, message, raw_connect, read_message,
                           startup_packet, table_checksum)

APP = "app-secret"
VIAS = ("simple", "extended", "prepared", "client", "asyncpg", "psql")

# Every THREATS.md id that applies to the database and schema strategies and that the
# proxy (not only the database) must stop. 76 (firewall) does not apply; 45 and the
# RLS/rewrite ids (28-30, 33-38, 43-44) belong to the row strategy or the database.
REQUIRED_IDS = frozenset({*range(1, 28), 31, 32, 39, 40, 41, 42, 46, 47, 51, 52, 53, 54,
                          55, 56, 57, 58, 59, 60, 61, 65, 73, 77, 78})
SECTION_MODULES = ("tests.integration.test_threats_context",
                   "tests.integration.test_threats_namespace",
                   "tests.integration.test_threats_session")


@dataclass(frozen=True)
class Side:
    """An attacker tenant, its victim, and what the attacker's session must look like."""

    tenant: str
    victim: str
    db: str
    victim_db: str
    table: str  # the attacker's items table, qualified, in `db`
    victim_table: str  # the victim's items table, qualified, in `victim_db`
    current_user: str
    search_path: str

    @property
    def user(self) -> str:
        return f"app.{self.tenant}"


GLOBEX = Side("globex", "hooli", "shared", "shared", "globex.items", "hooli.items",
              "globex", "globex, common")
ACME = Side("acme", "umbrella", "acme", "umbrella", "public.items", "public.items",
            "tenantgate", '"$user", public')
HOOLI = Side("hooli", "globex", "shared", "shared", "hooli.items", "globex.items",
             "hooli", "hooli, common")
SIDES = {"globex": GLOBEX, "acme": ACME, "hooli": HOOLI}


def victim_markers(side: Side) -> list[str]:
    """Strings that only the victim's rows contain."""
    out = [canary(side.victim)]
    for _, name, secret in sample_items(side.victim):
        out += [name] + ([secret] if secret else [])
    return sorted(set(out))


def own_names(side: Side) -> str:
    return ",".join(name for _, name, _ in sample_items(side.tenant))


# What the attacker's session looks like; checked after every refusal.
STATE_SQL = ("SELECT current_user, current_database(), current_setting('search_path'), "
             "current_setting('standard_conforming_strings'), "
             "current_setting('client_encoding'), "
             "coalesce(current_setting('app.tenant_id', true), ''), "
             "coalesce(current_setting('tenantgate.tenant', true), ''), "
             "(SELECT string_agg(name, ',' ORDER BY id) FROM items)")


def expected_state(side: Side) -> tuple[str, ...]:
    return (side.current_user, side.db, side.search_path, "on", "UTF8", "", "",
            own_names(side))


def A(sql: str, via: str = "simple", params: Any = None, *, id: str | None = None,
      **extra: Any) -> Any:
    """One spelling of an attack as a pytest.param: SQL, the client path, its params.

    via: simple (psycopg, Query message), extended (psycopg, Parse/Bind/Execute, unnamed),
    prepared (psycopg, named statement), client (psycopg.ClientCursor: params inlined,
    simple protocol), asyncpg (extended, named statements), psql (simple, one -c each).
    """
    assert via in VIAS, via
    return pytest.param(Attack(sql, via, params, extra), id=id or f"{via}:{sql[:60]}")


@dataclass(frozen=True)
class Attack:
    sql: str
    via: str = "simple"
    params: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What one attempt produced: an error (sqlstate, texts) or rows."""

    sqlstate: str | None = None
    message: str = ""
    texts: list[str] = field(default_factory=list)  # detail, hint, notices, rows …
    rows: Any = None

    @property
    def refused(self) -> bool:
        return self.sqlstate is not None


# -- checksums on the backend -------------------------------------------------------------

def checksum(pg, db: str, relation: str):
    """table_checksum, or a sequence's state (a sequence has no composite type)."""
    if relation.endswith("_seq"):
        return backend_query(pg, db, f"SELECT last_value, is_called FROM {relation}")
    return table_checksum(pg, db, relation)


def snapshot(pg, side: Side, extra: Iterable[tuple[str, str]] = ()) -> dict:
    tables = {(side.victim_db, side.victim_table), (side.db, side.table), *extra}
    return {t: checksum(pg, *t) for t in sorted(tables)}


def assert_unchanged(pg, before: dict) -> None:
    after = {t: checksum(pg, *t) for t in before}
    changed = [t for t in before if before[t] != after[t]]
    assert not changed, f"rows changed behind the proxy in {changed}: {before} -> {after}"


# -- the check ------------------------------------------------------------------------------

def check_outcome(out: Outcome, attack: Attack, side: Side, codes: set[str],
                  prefix: bool) -> None:
    everything = " ".join([out.message, *out.texts, repr(out.rows)])
    leaked = [m for m in victim_markers(side) if m in everything]
    if not out.refused:
        pytest.fail(f"NOT REFUSED: {attack.sql!r} via {attack.via} params={attack.params!r} "
                    f"as {side.user} returned {out.rows!r}"
                    + (f" — VICTIM DATA LEAKED: {leaked}" if leaked else ""))
    assert not leaked, f"{attack.sql!r}: the refusal shows victim data {leaked}: {everything}"
    assert out.sqlstate in codes, (
        f"{attack.sql!r} via {attack.via}: SQLSTATE {out.sqlstate} ({out.message!r}), "
        f"README says {sorted(codes)}")
    if prefix:
        assert out.message.startswith("tenantgate:"), (
            f"{attack.sql!r}: refused by the server, not by the proxy: {out.message!r}")


def expect_refused(proxy, pg, side: Side, attack: Attack, codes: str | Iterable[str], *,
                   in_transaction: bool = True, prefix: bool = True,
                   setup: Iterable[str] = (), settings: dict[str, str] | None = None,
                   extra: Iterable[tuple[str, str]] = (),
                   during_transaction: Callable[[], None] | None = None) -> None:
    """Run `attack` as `side`; assert it is refused with one of `codes` (see module doc).

    setup: statements run first on the same connection; settings: current_setting()
    values the session must still show afterwards; extra: more (db, table) to checksum;
    during_transaction: called after the refusal inside BEGIN, before ROLLBACK.
    """
    codes = {codes} if isinstance(codes, str) else set(codes)
    before = snapshot(pg, side, extra)
    runner = {"asyncpg": _run_asyncpg, "psql": _run_psql}.get(attack.via, _run_psycopg)
    runner(proxy, pg, side, attack, codes, in_transaction=in_transaction, prefix=prefix,
           setup=list(setup), settings=dict(settings or {}),
           during_transaction=during_transaction)
    assert_unchanged(pg, before)


# psycopg: simple, extended, prepared, client

def psycopg_attempt(conn: psycopg.Connection, attack: Attack) -> Outcome:
    notices: list[str] = []

    def handler(diag) -> None:
        notices.append(f"{diag.message_primary} {diag.message_detail}")

    conn.add_notice_handler(handler)
    try:
        try:
            if attack.via == "simple":
                assert attack.params is None
                cur = conn.execute(attack.sql)
            elif attack.via == "extended":
                cur = conn.execute(attack.sql, attack.params, binary=attack.params is None)
            elif attack.via == "prepared":
                cur = conn.execute(attack.sql, attack.params, prepare=True)
            else:
                cur = psycopg.ClientCursor(conn)
                cur.execute(attack.sql, attack.params)
        except psycopg.Error as exc:
            diag = exc.diag
            return Outcome(exc.sqlstate, diag.message_primary or str(exc),
                           [str(diag.message_detail), str(diag.message_hint), *notices])
        rows = []
        while True:
            rows.append(cur.fetchall() if cur.description else cur.statusmessage)
            if not cur.nextset():
                break
        return Outcome(rows=rows, texts=notices)
    finally:
        conn.remove_notice_handler(handler)


def _psycopg_state(conn: psycopg.Connection, side: Side, settings: dict[str, str]) -> None:
    state = conn.execute(STATE_SQL).fetchone()
    assert tuple("" if v is None else str(v) for v in state) == expected_state(side), \
        f"the session is no longer pinned to {side.tenant}: {state}"
    for name, value in settings.items():
        assert conn.execute("SELECT current_setting(%s)", (name,)).fetchone() == (value,), name


def _run_psycopg(proxy, pg, side, attack, codes, *, in_transaction, prefix, setup,
                 settings, during_transaction) -> None:
    with proxy.connect(side.user, APP) as conn:
        for sql in setup:
            conn.execute(sql)
        check_outcome(psycopg_attempt(conn, attack), attack, side, codes, prefix)
        _psycopg_state(conn, side, settings)
        if not in_transaction:
            return
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        check_outcome(psycopg_attempt(conn, attack), attack, side, codes, prefix)
        if during_transaction:
            during_transaction()
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT count(*) FROM items")
        conn.execute("ROLLBACK")
        _psycopg_state(conn, side, settings)


# asyncpg: Parse/Bind/Execute with named statements (its statement cache)

def _run_asyncpg(proxy, pg, side, attack, codes, *, in_transaction, prefix, setup,
                 settings, during_transaction) -> None:
    params = tuple(attack.params or ())

    async def attempt(conn, notices) -> Outcome:
        try:
            rows = await conn.fetch(attack.sql, *params)
        except asyncpg.PostgresError as exc:
            return Outcome(exc.sqlstate, exc.args[0] if exc.args else str(exc),
                           [str(getattr(exc, "detail", "")), str(getattr(exc, "hint", "")),
                            *notices])
        return Outcome(rows=[tuple(r) for r in rows], texts=notices)

    async def state(conn) -> None:
        row = tuple("" if v is None else str(v) for v in await conn.fetchrow(STATE_SQL))
        assert row == expected_state(side), f"the session is no longer pinned: {row}"
        for name, value in settings.items():
            assert await conn.fetchval("SELECT current_setting($1)", name) == value, name

    async def go() -> None:
        conn = await proxy.aconnect(side.user, APP)
        notices: list[str] = []
        conn.add_log_listener(lambda _c, msg: notices.append(str(msg)))
        try:
            for sql in setup:
                await conn.execute(sql)
            check_outcome(await attempt(conn, notices), attack, side, codes, prefix)
            await state(conn)
            if not in_transaction:
                return
            await conn.execute("BEGIN")
            await conn.execute("SELECT 1")
            check_outcome(await attempt(conn, notices), attack, side, codes, prefix)
            if during_transaction:
                during_transaction()
            with pytest.raises(asyncpg.InFailedSQLTransactionError):
                await conn.fetchval("SELECT count(*) FROM items")
            await conn.execute("ROLLBACK")
            await state(conn)
        finally:
            await conn.close()

    asyncio.run(go())


# psql: every -c is one Query message, sent as written

_PSQL_ERROR = re.compile(r"^(?:psql:\S*\s+)?(ERROR|FATAL):\s+([0-9A-Z]{5}): (.*)$", re.M)


def _run_psql(proxy, pg, side, attack, codes, *, in_transaction, prefix, setup, settings,
              during_transaction) -> None:
    assert attack.params is None and during_transaction is None and not settings
    commands = [*setup, attack.sql, STATE_SQL]
    if in_transaction:
        commands += ["BEGIN", attack.sql, "SELECT count(*) FROM items", "ROLLBACK", STATE_SQL]
    args = [pg.bin("psql"), "-X", "-q", "-At", "-v", "VERBOSITY=verbose",
            "-d", proxy.dsn(side.user, APP)]
    for command in commands:
        args += ["-c", command]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env={"PGCONNECT_TIMEOUT": "10"})
    errors = [(m.group(2), m.group(3)) for m in _PSQL_ERROR.finditer(done.stderr)]
    everything = done.stdout + done.stderr
    leaked = [m for m in victim_markers(side) if m in everything]
    assert not leaked, f"{attack.sql!r} via psql: victim data {leaked} in {everything!r}"
    expected_count = 3 if in_transaction else 1
    if len(errors) < expected_count:
        pytest.fail(f"NOT REFUSED: {attack.sql!r} via psql as {side.user}: errors {errors}, "
                    f"output {done.stdout!r}")
    attempts = [errors[0]] + ([errors[1]] if in_transaction else [])
    for state, text in attempts:
        assert state in codes, f"{attack.sql!r} via psql: {state} {text!r}, README: {codes}"
        if prefix:
            assert text.startswith("tenantgate:"), text
    if in_transaction:
        assert errors[2][0] == "25P02", errors
    states = [line for line in done.stdout.splitlines() if line.count("|") == 7]
    assert states and all(tuple(s.split("|")) == expected_state(side) for s in states), \
        f"the session is no longer pinned: {done.stdout!r}"


# -- raw protocol ------------------------------------------------------------------------------

@dataclass
class RawSession:
    """A raw socket past login, with the BackendKeyData and ParameterStatus it got."""

    sock: Any
    pid: int
    key: bytes
    parameters: dict[str, str]

    def query(self, sql: str | bytes) -> list[tuple[str, bytes]]:
        data = sql if isinstance(sql, bytes) else sql.encode() + b"\0"
        self.sock.sendall(message(b"Q", data))
        return self.until_ready()

    def until_ready(self) -> list[tuple[str, bytes]]:
        out = []
        while True:
            msg = read_message(self.sock)
            if msg is None:
                out.append(("closed", b""))
                return out
            out.append(msg)
            if msg[0] == "Z":
                return out

    def close(self) -> None:
        self.sock.close()


class LoginFailed(AssertionError):
    def __init__(self, fields: dict[str, str], before: list[str]) -> None:
        self.fields = fields
        self.before = before  # the message types seen before the ErrorResponse
        super().__init__(f"login refused: {fields}")


def raw_session(proxy, user: str, password: str = APP, database: str = "app",
                params: dict[str, str] | None = None) -> RawSession:
    """Like tests.helpers.raw_login (SCRAM/md5/cleartext), keeping the cancel key."""
    import hashlib

    import scramp

    sock = raw_connect(proxy.host, proxy.port)
    sock.sendall(startup_packet({"user": user, "database": database, **(params or {})}))
    scram, pid, key, parameters, seen = None, None, None, {}, []
    while True:
        msg = read_message(sock)
        if msg is None:
            sock.close()
            raise LoginFailed({}, seen)
        kind, body = msg
        seen.append(kind)
        if kind == "E":
            sock.close()
            raise LoginFailed(error_fields(body), seen)
        if kind == "K":
            (pid,) = struct.unpack("!I", body[:4])
            key = body[4:]
        elif kind == "S":
            name, value = body.split(b"\0")[:2]
            parameters[name.decode()] = value.decode("utf-8", "replace")
        elif kind == "Z":
            return RawSession(sock, pid, key, parameters)
        elif kind == "R":
            (code,) = struct.unpack("!I", body[:4])
            if code == 10:
                scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
                first = scram.get_client_first().encode()
                sock.sendall(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first))
                                     + first))
            elif code == 11:
                scram.set_server_first(body[4:].decode())
                sock.sendall(message(b"p", scram.get_client_final().encode()))
            elif code == 12:
                scram.set_server_final(body[4:].decode())
            elif code == 5:
                inner = hashlib.md5((password + user).encode()).hexdigest().encode()
                sock.sendall(message(b"p", b"md5" + hashlib.md5(inner + body[4:8])
                                     .hexdigest().encode() + b"\0"))
            elif code == 3:
                sock.sendall(message(b"p", password.encode() + b"\0"))


def kinds(messages: list[tuple[str, bytes]]) -> list[str]:
    return [k for k, _ in messages]


def errors_in(messages: list[tuple[str, bytes]]) -> list[dict[str, str]]:
    return [error_fields(body) for k, body in messages if k == "E"]


def assert_no_victim_data(side: Side, data: bytes | str) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    leaked = [m for m in victim_markers(side) if m in text]
    assert not leaked, f"victim data {leaked} in {text!r}"


# -- coverage -------------------------------------------------------------------------------

def covered_ids() -> dict[int, list[str]]:
    """THREATS id -> names of the test functions that attack it."""
    found: dict[int, list[str]] = {}
    for name in SECTION_MODULES:
        module = importlib.import_module(name)
        for attr in dir(module):
            match = re.match(r"test_t(\d{2})_", attr)
            if match and callable(getattr(module, attr)):
                found.setdefault(int(match.group(1)), []).append(attr)
    return found


def test_every_threat_id_has_a_test() -> None:
    found = covered_ids()
    missing = sorted(REQUIRED_IDS - set(found))
    unexpected = sorted(set(found) - REQUIRED_IDS)
    assert not missing, f"THREATS ids without a test: {missing}"
    assert not unexpected, f"tests named after ids outside the list: {unexpected}"
