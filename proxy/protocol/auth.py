"""Authentication on both sides, sans I/O: the proxy as server and as client.

`server_auth` builds the exchange that checks a client's password against the
configured `User` (SCRAM-SHA-256, md5, cleartext, trust); `BackendAuth` answers
a PostgreSQL server's Authentication requests. SCRAM comes from `scramp` on
both sides; only md5, which is a plain hash, is computed here. Every secret
comparison is constant-time, and every failure is `AuthenticationFailed`
(28P01) with the same text, so a client cannot tell which check failed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Callable

from scramp import ScramClient, ScramException, ScramMechanism

from proxy.config import User
from proxy.errors import AuthenticationFailed, ProxyError
from proxy.protocol import codes as c
from proxy.protocol import messages as m

SCRAM_PREFIX = "SCRAM-SHA-256$"
DEFAULT_ITERATIONS = 4096  # PostgreSQL's scram_iterations default; scramp's minimum
_MD5_HASH = re.compile(r"md5[0-9a-fA-F]{32}")
_VERIFIER = re.compile(r"SCRAM-SHA-256\$(\d+):([^$:]+)\$([^$:]+):([^$:]+)")
_MOCK_KEY = secrets.token_bytes(32)  # per process: fake salts for unknown users


@dataclass(frozen=True, slots=True)
class ScramSecret:
    """What a SCRAM server stores: never the password, only derived keys."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def auth_info(self) -> tuple[bytes, bytes, bytes, int]:
        """The tuple scramp's `auth_fn` returns."""
        return self.salt, self.stored_key, self.server_key, self.iterations


def make_scram_verifier(password: str, iterations: int = DEFAULT_ITERATIONS) -> str:
    """A PostgreSQL SCRAM-SHA-256 verifier for `password` (what `tenantgate passwd`
    prints; accepted by `ALTER ROLE ... PASSWORD '<verifier>'`). A 16-byte salt,
    as PostgreSQL makes. ValueError for iterations < 4096 or a password SASLprep
    rejects."""
    try:
        salt, stored, server, i = ScramMechanism().make_auth_info(
            password, iteration_count=iterations, salt=secrets.token_bytes(16))
    except ScramException as exc:
        raise ValueError(f"cannot make a SCRAM verifier: {exc}") from None
    b64 = _b64
    return f"{SCRAM_PREFIX}{i}:{b64(salt)}${b64(stored)}:{b64(server)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def parse_scram_verifier(verifier: str) -> ScramSecret:
    """Split a `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` verifier."""
    match = _VERIFIER.fullmatch(verifier)
    if not match:
        raise ValueError("not a SCRAM-SHA-256 verifier")
    try:
        salt, stored, server = (base64.b64decode(g, validate=True) for g in match.groups()[1:])
    except binascii.Error:
        raise ValueError("SCRAM verifier has bad base64") from None
    if len(stored) != 32 or len(server) != 32:
        raise ValueError("SCRAM verifier keys must be 32 bytes")
    return ScramSecret(int(match[1]), salt, stored, server)


def password_kind(stored: str) -> str:
    """'scram', 'md5' or 'plain': how a configured password is stored."""
    if stored.startswith(SCRAM_PREFIX):
        return "scram"
    if _MD5_HASH.fullmatch(stored):
        return "md5"
    return "plain"


def md5_hash(password: str, user: str) -> str:
    """PostgreSQL's stored md5 form: 'md5' + hex(md5(password + user))."""
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def md5_response(stored_md5: str, salt: bytes) -> bytes:
    """The md5 answer to a salt: 'md5' + hex(md5(hex part of the stored hash + salt))."""
    inner = stored_md5[3:].lower().encode("ascii")
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode("ascii")


@functools.lru_cache(maxsize=512)
def _derived_secret(password: str) -> ScramSecret:
    """SCRAM keys for a plaintext configured password, derived once per process
    because PBKDF2 is deliberately slow."""
    return parse_scram_verifier(make_scram_verifier(password))


def _failed(login_name: str) -> AuthenticationFailed:
    # One text for every failure: which check failed is not the client's business.
    return AuthenticationFailed(f'password authentication failed for user "{login_name}"')


# --- the proxy as server: checking a client -----------------------------------

class ServerAuth:
    """One client's authentication exchange. `start()` gives the first request to
    send, `step(raw)` takes each 'p' message and gives the reply; once `done`,
    the caller sends AuthenticationOk itself."""

    def __init__(self, login_name: str) -> None:
        self.login_name = login_name
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def start(self) -> bytes:
        raise NotImplementedError

    def step(self, raw_client_message: bytes) -> bytes:
        raise NotImplementedError

    def _fail(self) -> AuthenticationFailed:
        return _failed(self.login_name)


class _TrustAuth(ServerAuth):
    def __init__(self, login_name: str) -> None:
        super().__init__(login_name)
        self._done = True

    def start(self) -> bytes:
        return b""

    def step(self, raw_client_message: bytes) -> bytes:
        raise self._fail()  # nothing was asked for


class _PasswordAuth(ServerAuth):
    """Cleartext or md5: one request, one PasswordMessage, one check."""

    def __init__(self, login_name: str, request: bytes,
                 check: Callable[[bytes], bool]) -> None:
        super().__init__(login_name)
        self._request = request
        self._check = check
        self._answered = False

    def start(self) -> bytes:
        return self._request

    def step(self, raw_client_message: bytes) -> bytes:
        if self._answered:
            raise self._fail()
        self._answered = True
        try:
            secret = m.decode_password(raw_client_message)
        except ProxyError:
            raise self._fail() from None
        if not secret or not self._check(secret):
            raise self._fail()  # empty passwords never match, as in PostgreSQL
        self._done = True
        return b""


class _ScramAuth(ServerAuth):
    """SCRAM-SHA-256 through scramp's server; channel binding is not offered,
    so a client's 'y' flag (supports it, sees we do not) is accepted."""

    def __init__(self, login_name: str, secret: ScramSecret, always_fail: bool = False) -> None:
        super().__init__(login_name)
        self._server = ScramMechanism().make_server(lambda _user: secret.auth_info())
        self._stage = 0
        self._always_fail = always_fail

    def start(self) -> bytes:
        return m.auth_sasl([c.SCRAM_SHA_256])

    def step(self, raw_client_message: bytes) -> bytes:
        stage, self._stage = self._stage, self._stage + 1
        try:
            if stage == 0:
                return self._client_first(raw_client_message)
            if stage == 1:
                return self._client_final(raw_client_message)
        except (ScramException, ProxyError, UnicodeDecodeError):
            pass
        raise self._fail()

    def _client_first(self, raw: bytes) -> bytes:
        mechanism, data = m.decode_sasl_initial(raw)
        if mechanism != c.SCRAM_SHA_256:
            raise self._fail()
        message, bare = _substitute_user(data.decode("utf-8"))
        self._server.set_client_first(message)
        # The client signed its own first message; the proof is checked against it.
        self._server.client_first_bare = bare
        return m.auth_sasl_continue(self._server.get_server_first().encode())

    def _client_final(self, raw: bytes) -> bytes:
        self._server.set_client_final(m.decode_sasl_response(raw).decode("utf-8"))
        if self._always_fail:
            raise self._fail()
        final = self._server.get_server_final()
        self._done = True
        return m.auth_sasl_final(final.encode())


def _substitute_user(client_first: str) -> tuple[str, str]:
    """Client-first with a placeholder user name, and the client's own bare part.

    PostgreSQL ignores the SCRAM user name (the startup packet's counts) and
    libpq sends it empty ("n=,r=..."), which scramp refuses; so scramp sees a
    placeholder while the proof is still checked against what the client sent.
    """
    first = client_first.find(",")
    second = client_first.find(",", first + 1) if first >= 0 else -1
    bare = client_first[second + 1:] if second >= 0 else ""
    end = bare.find(",")
    if not bare.startswith("n=") or end < 0:
        return client_first, bare  # malformed: let scramp reject it
    return client_first[:second + 1] + "n=tenantgate" + bare[end:], bare


def server_auth(user: User, login_name: str) -> ServerAuth:
    """The exchange for `user`; `login_name` is the user name exactly as the
    client sent it in the startup packet (md5 salts with it)."""
    if user.auth == "trust":
        return _TrustAuth(login_name)
    if user.password is None:
        raise AuthenticationFailed(f'no password is configured for user "{user.name}"')
    if user.auth == "scram":
        return _ScramAuth(login_name, _scram_secret(user))
    if user.auth == "md5":
        return _md5_auth(user, login_name)
    if user.auth == "plain":
        return _PasswordAuth(login_name, m.auth_cleartext(), _plain_check(user))
    raise AuthenticationFailed(f'unknown authentication method "{user.auth}"')


def dummy_server_auth(login_name: str) -> ServerAuth:
    """A SCRAM exchange for an unknown user: it looks like a real one (same
    messages, a salt stable per name) and always fails at the end."""
    salt = hmac.digest(_MOCK_KEY, login_name.encode(), "sha256")[:16]
    secret = ScramSecret(DEFAULT_ITERATIONS, salt, secrets.token_bytes(32),
                         secrets.token_bytes(32))
    return _ScramAuth(login_name, secret, always_fail=True)


def _scram_secret(user: User) -> ScramSecret:
    stored = user.password or ""
    kind = password_kind(stored)
    if kind == "md5":
        raise AuthenticationFailed(
            f'SCRAM authentication is impossible for user "{user.name}": '
            "an md5 hash is stored; store a SCRAM verifier or the password")
    if kind == "plain":
        return _derived_secret(stored)
    try:
        return parse_scram_verifier(stored)
    except ValueError as exc:
        raise AuthenticationFailed(f'stored SCRAM verifier of user "{user.name}": {exc}') from None


def _md5_auth(user: User, login_name: str) -> ServerAuth:
    stored = user.password or ""
    kind = password_kind(stored)
    if kind == "scram":
        raise AuthenticationFailed(
            f'md5 authentication is impossible for user "{user.name}": '
            "a SCRAM verifier is stored; use auth: scram")
    if kind == "md5" and login_name != user.name:
        # The stored hash is salted with the login; the client salts with its startup name.
        raise AuthenticationFailed(
            f'md5 authentication of "{login_name}" is impossible with the md5 hash stored '
            f'for "{user.name}"; store the password or a SCRAM verifier')
    hashed = stored if kind == "md5" else md5_hash(stored, login_name)
    salt = secrets.token_bytes(4)
    expected = md5_response(hashed, salt)
    return _PasswordAuth(login_name, m.auth_md5(salt),
                         lambda answer: hmac.compare_digest(answer, expected))


def _plain_check(user: User) -> Callable[[bytes], bool]:
    """Checks a cleartext password against whatever form is stored."""
    stored = user.password or ""
    kind = password_kind(stored)
    if kind == "plain":
        return lambda answer: hmac.compare_digest(answer, stored.encode())
    if kind == "md5":
        # The stored hash is md5(password + configured login name).
        expected = stored.lower().encode("ascii")
        return lambda answer: _text_check(
            answer, lambda pw: md5_hash(pw, user.name).encode(), expected)
    secret = _scram_secret(user)
    keys = secret.stored_key + secret.server_key
    return lambda answer: _text_check(answer, lambda pw: _scram_keys(pw, secret), keys)


def _text_check(answer: bytes, derive: Callable[[str], bytes], expected: bytes) -> bool:
    try:
        return hmac.compare_digest(derive(answer.decode("utf-8")), expected)
    except (UnicodeDecodeError, ScramException):
        return False


def _scram_keys(password: str, secret: ScramSecret) -> bytes:
    _salt, stored, server, _i = ScramMechanism().make_auth_info(
        password, iteration_count=secret.iterations, salt=secret.salt)
    return stored + server


# --- the proxy as client: authenticating to a PostgreSQL server ---------------

class BackendAuth:
    """Answers a server's Authentication requests for one backend login."""

    def __init__(self, user: str, password: str | None) -> None:
        self.user = user
        self._password = password
        self._scram: ScramClient | None = None
        self._scram_verified = False
        self.done = False

    def respond(self, code: int, data: bytes) -> bytes | None:
        """Reply to one decoded Authentication message (None: nothing to send)."""
        try:
            return self._respond(code, data)
        except (ScramException, UnicodeDecodeError, ValueError) as exc:
            raise self._error(f"SCRAM exchange failed: {exc}") from None

    def _respond(self, code: int, data: bytes) -> bytes | None:
        if code == c.AUTH_OK:
            if self._scram is not None and not self._scram_verified:
                raise self._error("server skipped the SCRAM server signature")
            self.done = True
            return None
        if code == c.AUTH_CLEARTEXT:
            return m.password_message(self._need_password().encode())
        if code == c.AUTH_MD5:
            if len(data) != 4:
                raise self._error("md5 request without a 4-byte salt")
            hashed = md5_hash(self._need_password(), self.user)
            return m.password_message(md5_response(hashed, data))
        if code == c.AUTH_SASL:
            return self._scram_first(data)
        if code == c.AUTH_SASL_CONTINUE:
            client = self._client()
            client.set_server_first(data.decode("utf-8"))
            return m.sasl_response(client.get_client_final().encode())
        if code == c.AUTH_SASL_FINAL:
            self._client().set_server_final(data.decode("utf-8"))
            self._scram_verified = True
            return None
        method = c.AUTH_NAMES.get(code, f"code {code}")
        raise self._error(f"server asks for {method} authentication, which is not supported")

    def _scram_first(self, data: bytes) -> bytes:
        offered = [name.decode("utf-8", "replace") for name in data.split(b"\x00") if name]
        # Never -PLUS: channel binding to the server's certificate is not wired up.
        if c.SCRAM_SHA_256 not in offered or self._scram is not None:
            raise self._error(f"server offers SASL mechanisms {offered}, not SCRAM-SHA-256")
        self._scram = ScramClient([c.SCRAM_SHA_256], self.user, self._need_password())
        first = self._scram.get_client_first().encode()
        return m.sasl_initial_response(c.SCRAM_SHA_256, first)

    def _client(self) -> ScramClient:
        if self._scram is None:
            raise self._error("SASL message before AuthenticationSASL")
        return self._scram

    def _need_password(self) -> str:
        if self._password is None:
            raise self._error("server asks for a password and none is configured")
        return self._password

    def _error(self, why: str) -> AuthenticationFailed:
        return AuthenticationFailed(f'backend authentication of "{self.user}" failed: {why}')
