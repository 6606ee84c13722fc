"""The start of a client connection: TLS, startup packet, authentication, tenant.

Runs as one coroutine per client. It ends by sending AuthenticationOk, the server's
parameters, a proxy-generated cancel key and ReadyForQuery, then hands the client to
the session's relay. Every refusal is a FATAL error with the SQLSTATE DESIGN.md gives,
and the log line says why.
"""

from __future__ import annotations

import asyncio
import secrets

from proxy.console import Console, open_console, wants_console
from proxy.errors import FatalError, ProtocolViolation, ProxyError, TenantRefused
from proxy.pool.lease import checkout
from proxy.protocol import messages as m
from proxy.protocol.auth import dummy_server_auth, server_auth
from proxy.protocol.startup import (CancelRequest, SSLRequest, StartupMessage,
                                    negotiate_protocol_version, parse_startup)
from proxy.tenancy.resolve import filter_startup_params, resolve_tenant, split_user
from proxy.tenancy.strategy import plan_session

HANDSHAKE_TIMEOUT = 30.0  # seconds from connect to ReadyForQuery, as PostgreSQL's authentication_timeout
# ParameterStatus values reported to clients but never taken from the server as they are.
CLIENT_VISIBLE_OVERRIDES = ("session_authorization", "is_superuser")


async def run_handshake(session) -> None:
    console = None
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            if session.refuse_at_connect is not None:
                raise session.refuse_at_connect
            startup = await read_startup(session)
            if startup is None:
                return
            console = await start_session(session, startup)
    except TimeoutError:
        session.fail(ProtocolViolation("authentication timed out", rule="handshake-timeout"))
    except ProxyError as exc:
        session.app.observer.login_refused(session, exc)
        session.fail(exc)
    except (ConnectionError, OSError) as exc:
        session.fail(FatalError(f"connection error: {exc}", sqlstate="08006"))
    except Exception:  # a bug must not leave the client hanging on an open socket
        session.log.exception("handshake failed")
        session.fail(FatalError("internal error during connection startup", sqlstate="XX000"))
    if console is not None:  # served by this task, outside the handshake's time limit
        await console.serve()


async def read_startup(session) -> StartupMessage | None:
    """The StartupMessage, after any SSL/GSS negotiation; None for a CancelRequest."""
    negotiated: set[type] = set()
    while True:
        request = parse_startup(await session.next_startup_packet())
        if isinstance(request, StartupMessage):
            if session.startup_reader.pending():
                raise ProtocolViolation("unexpected data after the startup packet")
            return request
        if isinstance(request, CancelRequest):
            session.app.cancel(request.pid, request.key)
            session.closed = True
            session.transport.close()
            return None
        if session.startup_reader.pending():
            # Bytes after SSLRequest before the TLS handshake (CVE-2021-3935).
            raise ProtocolViolation(f"unexpected data after {type(request).__name__}",
                                    rule="ssl-request")
        await negotiate_encryption(session, request, negotiated)


async def negotiate_encryption(session, request, negotiated: set[type]) -> None:
    """Answer SSLRequest ('S' and TLS when configured) or GSSENCRequest ('N'); each may come
    once, and neither after TLS, as PostgreSQL allows (else the nested TLS never ends)."""
    if session.tls or type(request) in negotiated:
        raise ProtocolViolation(f"unexpected {type(request).__name__} during startup",
                                rule="ssl-request")
    negotiated.add(type(request))
    if isinstance(request, SSLRequest) and session.app.ssl_context is not None:
        await start_tls(session)
    else:  # no TLS configured, or GSSENCRequest: answer N and wait for the next packet
        session.write(b"N")


async def start_tls(session) -> None:
    """'S', then the server side of the TLS handshake on the client's transport.

    After a failed handshake nothing can be said to the client (it expects TLS records),
    so the connection is dropped and the failure only logged.
    """
    session.write(b"S")
    loop = asyncio.get_running_loop()
    try:
        session.transport = await loop.start_tls(session.transport, session,
                                                 session.app.ssl_context, server_side=True)
    except OSError as exc:  # ssl.SSLError, ConnectionResetError, ...
        session.log.info("client TLS handshake failed", error=str(exc) or type(exc).__name__)
        session.closed = True  # no plaintext ErrorResponse on a connection that expects TLS
        session.transport.abort()
        raise FatalError("TLS handshake failed", sqlstate="08P01", rule="tls-handshake") from None
    session.tls = True


async def start_session(session, startup: StartupMessage) -> Console | None:
    """Authenticate, resolve the tenant, and tell the client it may send queries.

    An admin console connection is only authenticated and greeted here; the console it
    returns serves it (`run_handshake`)."""
    app, config = session.app, session.app.config
    if startup.minor > 0:
        unsupported = [name for name in startup.params if name.startswith("_pq_.")]
        session.write(negotiate_protocol_version(startup.minor, unsupported))
    params = {k: v for k, v in startup.params.items() if not k.startswith("_pq_.")}
    if app.draining:
        raise FatalError("the proxy is shutting down", sqlstate="57P01")
    if config.tls is not None and config.tls.mode == "require" and not session.tls:
        raise TenantRefused("TLS is required: this proxy refuses plaintext connections",
                            rule="tls-required",
                            hint="connect with sslmode=require (or verify-ca/verify-full)")
    login_name, suffix = split_user(params["user"], config)
    user = config.users.get(login_name)
    session.log = session.log.bind(login=login_name)
    # md5 salts with the user name exactly as the client sent it ("app.acme").
    await authenticate(session, user, params["user"])
    # PostgreSQL's default database is the user name, also for an empty `database`.
    database = params.get("database") or params["user"]
    if wants_console(user, database):
        return await open_console(session, user, login_name, params, database)
    sni = _server_name(session) if session.tls else None
    tenant = resolve_tenant(config, user, suffix, params, sni)
    session.tenant = tenant.name if tenant is not None else None
    session.tm = app.metrics.for_tenant(session.tenant)
    session.log = session.log.bind(tenant=session.tenant)
    session.startup_params = filter_startup_params(params)
    session.params = dict(session.startup_params)
    session.login = login_name
    row_catalog = shared_catalog = None
    if tenant is not None and tenant.strategy == "row" and not user.bypass:
        row_catalog = await app.row_catalogs.get(tenant.cluster, tenant.database)
    if tenant is not None and tenant.strategy == "schema" and not user.bypass \
            and config.shared_schemas:  # else nothing is shared: no catalog to check
        shared_catalog = await app.shared_catalogs.get(tenant.cluster, tenant.database)
    plan = plan_session(config, user, tenant, database,
                        row_catalog=row_catalog, shared_catalog=shared_catalog)
    session.plan = plan
    session.pool = app.pool_for(plan)
    app.admit(session, tenant)
    await finish_startup(session)
    return None


async def authenticate(session, user, login_name: str) -> None:
    auth = server_auth(user, login_name) if user is not None else dummy_server_auth(login_name)
    first = auth.start()
    if first:
        session.write(first)
    while not auth.done:
        mtype, raw = await session.next_message()
        if mtype != m.PASSWORD_MESSAGE:
            raise ProtocolViolation("expected a password message")
        reply = auth.step(raw)
        if reply:
            session.write(reply)


async def finish_startup(session) -> None:
    """Server parameters, a cancel key, ReadyForQuery; session pooling leases now."""
    pool, plan = session.pool, session.plan
    conn = None
    if pool.server_params is None or session.app.config.pool_mode == "session":
        if session.app.pauses.holds(session.tenant):  # PAUSE: this lease waits too
            await session.app.pauses.wait(session)
        conn = await checkout(pool, plan, session.params)
        if session.closed:
            pool.release(conn)
            return
    out = [m.auth_ok()]
    for name, value in client_parameters(session).items():
        out.append(m.parameter_status(name, value))
    session.cancel_key = session.app.register_cancel(session)
    out.append(m.backend_key_data(*session.cancel_key))
    out.append(m.ready_for_query(b"I"))
    session.write(b"".join(out))
    session.log.info("client connected")
    session.app.observer.connected(session)
    session.counted_connect = True
    if conn is not None:
        if session.app.config.pool_mode == "session":
            session.lease_for_session(conn)
        else:
            pool.release(conn)
    session.start_relay()


def client_parameters(session) -> dict[str, str]:
    """What the client is told about the server: its values, the client's own settings."""
    reported = dict(session.pool.server_params or {})
    reported.update({name: value for name, value in session.params.items()
                     if name in reported or name in ("application_name", "DateStyle", "TimeZone",
                                                     "IntervalStyle", "client_encoding")})
    reported["session_authorization"] = session.login
    reported["is_superuser"] = "off"
    return reported


def _server_name(session) -> str | None:
    """The SNI server name the client sent in its TLS handshake (see listener.ClientSSLObject)."""
    ssl_object = session.transport.get_extra_info("ssl_object")
    return getattr(ssl_object, "requested_server_name", None)


def new_cancel_key() -> tuple[int, bytes]:
    """A random (pid, key) pair: 62 bits of secret across the two (30 in the pid, a positive
    31-bit number kept odd, and 32 in the key; THREATS.md 59)."""
    return secrets.randbits(31) | 1, secrets.token_bytes(4)
