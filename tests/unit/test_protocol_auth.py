"""Authentication: verifiers, the proxy as server (ServerAuth) and as client (BackendAuth).

Independent oracles: SCRAM keys recomputed with hashlib from RFC 5802, a
verifier and an md5 hash produced by PostgreSQL 15 itself, scramp's client,
and a hand-written libpq-style client (empty SCRAM user name).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

import pytest
from scramp import ScramClient, ScramMechanism

from proxy.config import User
from proxy.errors import AuthenticationFailed
from proxy.protocol import auth as a
from proxy.protocol import codes as c
from proxy.protocol import messages as m

# Made by PostgreSQL 15: CREATE ROLE kat PASSWORD 'tenantgate-kat' (scram-sha-256),
# and with password_encryption=md5: role md5user, password 'm5pw'.
PG_VERIFIER = ("SCRAM-SHA-256$4096:Vd1bwNQqobqZ5pRbYRO7DA==$RXJhlfHgGw2HDSoyxBDdyiD+lgxKgaEI"
               "Thu5KnCGsDk=:iJn1YkLz6zTkGtokv3gyAn3RfNlTDame0r88PiPkmc0=")
PG_MD5 = "md5e2f7e1df7eee2457ee5ff95168dcd50c"
VERIFIER = a.make_scram_verifier("s3cret")  # made once: PBKDF2 is slow on purpose


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def rfc5802_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return hashlib.sha256(client_key).digest(), hmac.digest(salted, b"Server Key", "sha256")


def auth_request(raw: bytes) -> tuple[int, bytes]:
    return m.decode_authentication(raw)


def exchange(server: a.ServerAuth, client: a.BackendAuth) -> bytes:
    """Run ServerAuth against the proxy's own client side; return the last server message."""
    out = server.start()
    while not server.done:
        out = server.step(client.respond(*auth_request(out)))
    return out


def user(password: str | None, auth: str = "scram", name: str = "app") -> User:
    return User(name, password=password, auth=auth)


# --- verifiers ------------------------------------------------------------------

def test_make_scram_verifier_matches_rfc5802_and_scramp():
    match = re.fullmatch(r"SCRAM-SHA-256\$4096:([^$]+)\$([^:]+):(.+)", VERIFIER)
    assert match
    salt, stored, server = (base64.b64decode(g) for g in match.groups())
    assert len(salt) == 16
    assert (stored, server) == rfc5802_keys("s3cret", salt, 4096)
    _, s_stored, s_server, _ = ScramMechanism().make_auth_info("s3cret", 4096, salt)
    assert (stored, server) == (s_stored, s_server)


def test_make_scram_verifier_iterations_and_fresh_salt():
    verifier = a.make_scram_verifier("x", iterations=5000)
    secret = a.parse_scram_verifier(verifier)
    assert secret.iterations == 5000
    assert (secret.stored_key, secret.server_key) == rfc5802_keys("x", secret.salt, 5000)
    assert a.parse_scram_verifier(a.make_scram_verifier("x", 5000)).salt != secret.salt
    with pytest.raises(ValueError):
        a.make_scram_verifier("x", iterations=100)


def test_postgres_verifier_known_answer():
    secret = a.parse_scram_verifier(PG_VERIFIER)
    assert secret.iterations == 4096
    assert (secret.stored_key, secret.server_key) == rfc5802_keys(
        "tenantgate-kat", secret.salt, 4096)


def test_postgres_md5_known_answer():
    assert a.md5_hash("m5pw", "md5user") == PG_MD5


@pytest.mark.parametrize("bad", [
    "SCRAM-SHA-256$4096:c2FsdA==$!!!:AAAA", "SCRAM-SHA-1$4096:a$b:c", "plain",
    "SCRAM-SHA-256$4096:c2FsdA==$c2hvcnQ=:c2hvcnQ=",  # keys not 32 bytes
])
def test_parse_scram_verifier_rejects(bad):
    with pytest.raises(ValueError):
        a.parse_scram_verifier(bad)


def test_password_kind():
    assert a.password_kind(VERIFIER) == "scram"
    assert a.password_kind(PG_MD5) == "md5"
    assert a.password_kind("md5nothex") == "plain"
    assert a.password_kind("hunter2") == "plain"


# --- SCRAM: ServerAuth ------------------------------------------------------------

@pytest.mark.parametrize("stored", [VERIFIER, "s3cret"], ids=["verifier", "plaintext"])
def test_scram_against_backend_auth(stored):
    server = a.server_auth(user(stored), "app.acme")
    assert auth_request(server.start()) == (c.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")
    client = a.BackendAuth("app.acme", "s3cret")
    final = exchange(server, client)
    assert server.done
    code, data = auth_request(final)
    assert code == c.AUTH_SASL_FINAL and data.startswith(b"v=")
    assert client.respond(code, data) is None  # server signature verified
    assert client.respond(c.AUTH_OK, b"") is None and client.done


@pytest.mark.parametrize("stored", [VERIFIER, "s3cret"], ids=["verifier", "plaintext"])
def test_scram_wrong_password_fails(stored):
    server = a.server_auth(user(stored), "app.acme")
    with pytest.raises(AuthenticationFailed) as err:
        exchange(server, a.BackendAuth("app.acme", "s3creT"))
    assert err.value.sqlstate == "28P01" and err.value.fatal
    assert 'user "app.acme"' in err.value.message
    assert not server.done


def test_scram_plaintext_derives_verifier_once():
    firsts = []
    for _ in range(2):
        server = a.server_auth(user("cached-pw"), "app")
        client = ScramClient(["SCRAM-SHA-256"], "app", "cached-pw")
        server.start()
        sfirst = server.step(m.sasl_initial_response(
            "SCRAM-SHA-256", client.get_client_first().encode()))
        firsts.append(dict(p.split("=", 1) for p in auth_request(sfirst)[1].decode().split(",")))
    assert firsts[0]["s"] == firsts[1]["s"]  # same salt: the derived verifier was cached


def scramp_exchange(server: a.ServerAuth, client: ScramClient) -> bytes:
    server.start()
    sfirst = server.step(m.sasl_initial_response(
        "SCRAM-SHA-256", client.get_client_first().encode()))
    client.set_server_first(auth_request(sfirst)[1].decode())
    final = server.step(m.sasl_response(client.get_client_final().encode()))
    client.set_server_final(auth_request(final)[1].decode())  # raises if the signature is bad
    return final


def test_scram_against_scramp_client():
    server = a.server_auth(user(VERIFIER), "app")
    scramp_exchange(server, ScramClient(["SCRAM-SHA-256"], "app", "s3cret"))
    assert server.done


def test_scram_accepts_channel_binding_flag_y():
    # libpq over TLS when only SCRAM-SHA-256 (no -PLUS) is offered sends "y,,".
    client = ScramClient(["SCRAM-SHA-256"], "app", "s3cret",
                         channel_binding=("tls-server-end-point", b"x" * 32))
    assert client.get_client_first().startswith("y,,")
    client = ScramClient(["SCRAM-SHA-256"], "app", "s3cret",
                         channel_binding=("tls-server-end-point", b"x" * 32))
    server = a.server_auth(user(VERIFIER), "app")
    scramp_exchange(server, client)
    assert server.done


class LibpqClient:
    """SCRAM client side as libpq does it (empty user name), from RFC 5802."""

    def __init__(self, password: str, flag: str = "n,,") -> None:
        self.password, self.flag = password, flag
        self.bare = "n=,r=" + b64(secrets.token_bytes(18))

    def first(self) -> bytes:
        return m.sasl_initial_response("SCRAM-SHA-256", (self.flag + self.bare).encode())

    def final(self, server_first: str) -> bytes:
        attrs = dict(p.split("=", 1) for p in server_first.split(","))
        salt, iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored = hashlib.sha256(client_key).digest()
        without_proof = f"c={b64(self.flag.encode())},r={attrs['r']}"
        auth_message = f"{self.bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(stored, auth_message, "sha256")
        proof = bytes(x ^ y for x, y in zip(client_key, signature))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self.expected_final = "v=" + b64(hmac.digest(server_key, auth_message, "sha256"))
        return m.sasl_response(f"{without_proof},p={b64(proof)}".encode())


def libpq_exchange(server: a.ServerAuth, password: str) -> tuple[LibpqClient, bytes]:
    client = LibpqClient(password)
    server.start()
    sfirst = server.step(client.first())
    return client, server.step(client.final(auth_request(sfirst)[1].decode()))


def test_scram_libpq_style_empty_user_name():
    client, final = libpq_exchange(a.server_auth(user(VERIFIER), "app.acme"), "s3cret")
    assert auth_request(final) == (c.AUTH_SASL_FINAL, client.expected_final.encode())


def test_scram_libpq_style_wrong_password():
    with pytest.raises(AuthenticationFailed):
        libpq_exchange(a.server_auth(user(VERIFIER), "app"), "nope")


@pytest.mark.parametrize("first", [
    m.sasl_initial_response("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc"),
    m.sasl_initial_response("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc"),
    m.sasl_initial_response("SCRAM-SHA-256", b"n,a=admin,n=,r=abc"),  # authzid
    m.sasl_initial_response("SCRAM-SHA-256", b"garbage"),
    m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=\xff"),
    m.sasl_initial_response("MD5", b"n,,n=,r=abc"),
    m.password_message(b"s3cret"),  # a cleartext password where SASL was asked
    m.query("SELECT 1"),
])
def test_scram_rejects_bad_first_messages(first):
    server = a.server_auth(user(VERIFIER), "app")
    server.start()
    with pytest.raises(AuthenticationFailed):
        server.step(first)
    assert not server.done


def test_scram_step_after_done_fails():
    server = a.server_auth(user(VERIFIER), "app")
    exchange(server, a.BackendAuth("app", "s3cret"))
    with pytest.raises(AuthenticationFailed):
        server.step(m.sasl_response(b"again"))


def test_dummy_server_auth_looks_real_and_always_fails():
    dummy = a.dummy_server_auth("ghost")
    assert dummy.start() == a.server_auth(user(VERIFIER), "app").start()
    with pytest.raises(AuthenticationFailed) as err:
        scramp_exchange(dummy, ScramClient(["SCRAM-SHA-256"], "ghost", "anything"))
    assert err.value.message == a._failed("ghost").message
    assert not dummy.done


def test_always_fail_exchange_fails_even_with_the_right_password():
    # What dummy_server_auth relies on, checked with keys a client can match.
    server = a._ScramAuth("app", a.parse_scram_verifier(VERIFIER), always_fail=True)
    with pytest.raises(AuthenticationFailed):
        scramp_exchange(server, ScramClient(["SCRAM-SHA-256"], "app", "s3cret"))
    assert not server.done


def dummy_salt(name: str) -> str:
    dummy = a.dummy_server_auth(name)
    dummy.start()
    sfirst = dummy.step(LibpqClient("x").first())
    return dict(p.split("=", 1) for p in auth_request(sfirst)[1].decode().split(","))["s"]


def test_dummy_salt_is_stable_per_name():
    assert dummy_salt("ghost") == dummy_salt("ghost")
    assert dummy_salt("ghost") != dummy_salt("phantom")


# --- md5, cleartext, trust ----------------------------------------------------------

def md5_answer(password: str, login: str, salt: bytes) -> bytes:
    inner = hashlib.md5((password + login).encode()).hexdigest().encode()
    return m.password_message(b"md5" + hashlib.md5(inner + salt).hexdigest().encode())


@pytest.mark.parametrize("stored,login", [("m5pw", "app.acme"), (PG_MD5, "md5user")])
def test_md5_right_and_wrong(stored, login):
    for password, ok in (("m5pw", True), ("m5pW", False)):
        server = a.server_auth(user(stored, "md5", name=login.split(".")[0]), login)
        code, salt = auth_request(server.start())
        assert code == c.AUTH_MD5 and len(salt) == 4
        if ok:
            assert server.step(md5_answer(password, login, salt)) == b"" and server.done
        else:
            with pytest.raises(AuthenticationFailed):
                server.step(md5_answer(password, login, salt))
            assert not server.done


def test_md5_impossible_configurations():
    with pytest.raises(AuthenticationFailed, match="SCRAM verifier is stored"):
        a.server_auth(user(VERIFIER, "md5"), "app")
    with pytest.raises(AuthenticationFailed, match="md5 hash stored"):
        a.server_auth(user(PG_MD5, "md5", name="md5user"), "md5user.acme")
    with pytest.raises(AuthenticationFailed, match="md5 hash is stored"):
        a.server_auth(user(PG_MD5, "scram", name="md5user"), "md5user")


@pytest.mark.parametrize("stored,name", [
    (VERIFIER, "app"), (PG_VERIFIER, "app"), (PG_MD5, "md5user"), ("s3cret", "app")])
def test_cleartext_against_every_stored_form(stored, name):
    good = "tenantgate-kat" if stored == PG_VERIFIER else "m5pw" if stored == PG_MD5 else "s3cret"
    server = a.server_auth(user(stored, "plain", name=name), name)
    assert server.start() == m.auth_cleartext()
    assert server.step(m.password_message(good.encode())) == b"" and server.done
    for bad in (b"wrong", good.encode() + b"x", b"\xff\xfe"):
        server = a.server_auth(user(stored, "plain", name=name), name)
        server.start()
        with pytest.raises(AuthenticationFailed):
            server.step(m.password_message(bad))


def test_empty_password_never_matches():
    server = a.server_auth(user("", "plain"), "app")
    server.start()
    with pytest.raises(AuthenticationFailed):
        server.step(m.password_message(b""))


def test_trust():
    server = a.server_auth(user(None, "trust"), "app")
    assert server.start() == b"" and server.done
    with pytest.raises(AuthenticationFailed):
        server.step(m.password_message(b"x"))


def test_missing_password_or_unknown_method():
    with pytest.raises(AuthenticationFailed, match="no password"):
        a.server_auth(user(None, "scram"), "app")
    with pytest.raises(AuthenticationFailed, match="unknown authentication method"):
        a.server_auth(user("x", "ldap"), "app")


# --- BackendAuth ------------------------------------------------------------------

def test_backend_cleartext_and_md5():
    client = a.BackendAuth("md5user", "m5pw")
    assert client.respond(c.AUTH_CLEARTEXT, b"") == b"p\x00\x00\x00\x09m5pw\x00"
    assert client.respond(c.AUTH_MD5, b"\x01\x02\x03\x04") == \
        md5_answer("m5pw", "md5user", b"\x01\x02\x03\x04")
    assert client.respond(c.AUTH_OK, b"") is None and client.done


def test_backend_trust():
    client = a.BackendAuth("app", None)
    assert client.respond(c.AUTH_OK, b"") is None and client.done


def test_backend_against_scramp_server():
    salt, stored, server_key, i = ScramMechanism().make_auth_info("pw", 4096)
    server = ScramMechanism().make_server(lambda _u: (salt, stored, server_key, i))
    client = a.BackendAuth("app", "pw")
    first = client.respond(c.AUTH_SASL, b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00")
    mechanism, data = m.decode_sasl_initial(first)
    assert mechanism == "SCRAM-SHA-256" and data.startswith(b"n,,")  # never -PLUS
    server.set_client_first(data.decode())
    final = client.respond(c.AUTH_SASL_CONTINUE, server.get_server_first().encode())
    server.set_client_final(m.decode_sasl_response(final).decode())
    assert client.respond(c.AUTH_SASL_FINAL, server.get_server_final().encode()) is None
    assert client.respond(c.AUTH_OK, b"") is None and client.done


def test_backend_rejects_forged_server_signature():
    # Right StoredKey (the client's proof passes) but a wrong ServerKey: an impostor.
    salt, stored, _server_key, _ = ScramMechanism().make_auth_info("pw", 4096)
    forged = f"SCRAM-SHA-256$4096:{b64(salt)}${b64(stored)}:{b64(secrets.token_bytes(32))}"
    server = a.server_auth(user(forged), "app")
    client = a.BackendAuth("app", "pw")
    final = exchange(server, client)
    assert server.done
    with pytest.raises(AuthenticationFailed, match="signature"):
        client.respond(*auth_request(final))
    with pytest.raises(AuthenticationFailed, match="skipped"):
        client.respond(c.AUTH_OK, b"")


def test_backend_refuses_ok_before_server_signature():
    client = a.BackendAuth("app", "pw")
    client.respond(c.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")
    with pytest.raises(AuthenticationFailed, match="skipped"):
        client.respond(c.AUTH_OK, b"")


@pytest.mark.parametrize("code,data,why", [
    (c.AUTH_GSS, b"", "GSSAPI"), (c.AUTH_SSPI, b"", "SSPI"),
    (c.AUTH_KERBEROS_V5, b"", "Kerberos"), (99, b"", "code 99"),
    (c.AUTH_SASL, b"SCRAM-SHA-256-PLUS\x00\x00", "not SCRAM-SHA-256"),
    (c.AUTH_SASL_CONTINUE, b"r=x,s=eA==,i=4096", "before AuthenticationSASL"),
    (c.AUTH_MD5, b"\x01\x02", "salt"),
])
def test_backend_refusals(code, data, why):
    with pytest.raises(AuthenticationFailed, match=why) as err:
        a.BackendAuth("app", "pw").respond(code, data)
    assert err.value.sqlstate == "28P01"


@pytest.mark.parametrize("code", [c.AUTH_CLEARTEXT, c.AUTH_MD5, c.AUTH_SASL])
def test_backend_needs_a_password(code):
    data = {c.AUTH_MD5: b"salt", c.AUTH_SASL: b"SCRAM-SHA-256\x00\x00"}.get(code, b"")
    with pytest.raises(AuthenticationFailed, match="none is configured"):
        a.BackendAuth("app", None).respond(code, data)


def test_backend_wrong_password_seen_by_server():
    with pytest.raises(AuthenticationFailed):
        exchange(a.server_auth(user(VERIFIER), "app"), a.BackendAuth("app", "bad"))
