"""Scenario (g): the memory a pooler spends on authenticated idle clients.

Opens N raw connections, each logged in with SCRAM-SHA-256 up to its first ReadyForQuery and
then left idle, and reads the pooler's VmRSS before and after: (after - before) / N is the cost
of one idle client. The SCRAM client is a minimal one written here (no driver objects in the
way); its PBKDF2 result is cached per (salt, iterations) and computed in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import struct
import time
from dataclasses import asdict, dataclass, field

from benchmarks.services import Target, rss_bytes

CONCURRENT_LOGINS = 64
LOGIN_TIMEOUT = 30.0  # seconds for one login
SETTLE_SECONDS = 2.0  # after the last login, before reading RSS


@dataclass
class IdleResult:
    target: str
    clients_wanted: int
    clients_ok: int = 0
    rss_before: int | None = None
    rss_after: int | None = None
    login_seconds: float = 0.0
    errors: int = 0
    first_error: str | None = None
    error_samples: list[str] = field(default_factory=list)

    @property
    def bytes_per_client(self) -> float | None:
        if self.rss_before is None or self.rss_after is None or not self.clients_ok:
            return None
        return (self.rss_after - self.rss_before) / self.clients_ok

    def to_json(self) -> dict:
        return {**asdict(self), "bytes_per_client": self.bytes_per_client}


class LoginRefused(Exception):
    pass


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _startup(user: str, database: str) -> bytes:
    params = b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                      for k, v in (("user", user), ("database", database),
                                   ("application_name", "tenantgate-bench-idle")))
    body = struct.pack("!I", 196608) + params + b"\0"
    return struct.pack("!I", len(body) + 4) + body


async def _read(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    (length,) = struct.unpack("!I", header[1:])
    return header[:1], await reader.readexactly(length - 4)


class ScramClient:
    """SCRAM-SHA-256 (RFC 5802/7677, no channel binding), PBKDF2 cached across logins."""

    def __init__(self, password: str) -> None:
        self.password = password.encode()
        self.salted: dict[tuple[bytes, int], bytes] = {}

    async def salted_password(self, salt: bytes, iterations: int) -> bytes:
        key = (salt, iterations)
        if key not in self.salted:
            self.salted[key] = await asyncio.to_thread(
                hashlib.pbkdf2_hmac, "sha256", self.password, salt, iterations)
        return self.salted[key]

    async def login(self, reader, writer) -> None:
        """Drive the SASL exchange from AuthenticationSASL to AuthenticationSASLFinal."""
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        first_bare = f"n=,r={nonce}"
        first = ("n,," + first_bare).encode()
        writer.write(_message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
        server_first = (await self._expect_auth(reader, 11)).decode()
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        if not attrs["r"].startswith(nonce):
            raise LoginRefused("server nonce does not extend ours")
        salted = await self.salted_password(base64.b64decode(attrs["s"]), int(attrs["i"]))
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{first_bare},{server_first},{without_proof}".encode()
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        writer.write(_message(b"p", f"{without_proof},p={base64.b64encode(proof).decode()}"
                              .encode()))
        server_final = (await self._expect_auth(reader, 12)).decode()
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        expected = base64.b64encode(hmac.digest(server_key, auth_message, "sha256")).decode()
        if server_final.strip() != f"v={expected}":
            raise LoginRefused("wrong server signature")

    @staticmethod
    async def _expect_auth(reader, code: int) -> bytes:
        kind, body = await _read(reader)
        if kind == b"E":
            raise LoginRefused(_error_text(body))
        if kind != b"R" or struct.unpack("!I", body[:4])[0] != code:
            raise LoginRefused(f"expected authentication {code}, got {kind!r}")
        return body[4:]


def _error_text(body: bytes) -> str:
    fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
    return f"{fields.get(b'C', '?')}: {fields.get(b'M', '?')}"


async def _open_idle(target: Target, scram: ScramClient):
    """One client logged in and past ReadyForQuery: its (reader, writer)."""
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(_startup(target.user, target.dbname))
        while True:
            kind, body = await _read(reader)
            if kind == b"E":
                raise LoginRefused(_error_text(body))
            if kind == b"Z":
                return reader, writer
            if kind == b"R" and struct.unpack("!I", body[:4])[0] == 10:
                await scram.login(reader, writer)
            elif kind == b"R" and struct.unpack("!I", body[:4])[0] not in (0, 10):
                raise LoginRefused(f"unsupported authentication request {body[:4]!r}")
    except BaseException:
        writer.close()
        raise


async def _measure(target: Target, clients: int) -> IdleResult:
    result = IdleResult(target.name, clients, rss_before=rss_bytes(target.pid))
    scram = ScramClient(target.password)
    limit = asyncio.Semaphore(CONCURRENT_LOGINS)
    held: list = []

    async def one() -> None:
        async with limit:
            try:
                held.append(await asyncio.wait_for(_open_idle(target, scram), LOGIN_TIMEOUT))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                    LoginRefused, ValueError, KeyError) as exc:
                result.errors += 1
                text = f"{type(exc).__name__}: {exc}"
                result.first_error = result.first_error or text
                if len(result.error_samples) < 5 and text not in result.error_samples:
                    result.error_samples.append(text)

    started = time.monotonic()
    try:
        await asyncio.gather(*(one() for _ in range(clients)))
        result.login_seconds = round(time.monotonic() - started, 2)
        await asyncio.sleep(SETTLE_SECONDS)
        result.clients_ok = sum(1 for reader, _ in held if not reader.at_eof())
        result.rss_after = rss_bytes(target.pid)
    finally:
        for _, writer in held:
            writer.write(_message(b"X", b""))  # Terminate, as a polite client does
            writer.close()
        await asyncio.sleep(0.5)
    return result


def measure_idle(target: Target, clients: int) -> IdleResult:
    """Open `clients` authenticated idle connections to `target`, read its RSS, close them."""
    if target.pid is None:
        raise ValueError(f"{target.name}: no process to measure")
    return asyncio.run(_measure(target, clients))
