"""The accept loop and client-facing TLS.

With `workers: N` every worker binds the listen address with SO_REUSEPORT and the kernel
spreads new connections over them; the supervisor first checks with a plain bind that no
one else listens there (`check_address_free`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from proxy.config import ClientTls
from proxy.errors import ConfigError, TooManyConnections


class Listener:
    def __init__(self, app) -> None:
        self.app = app
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        host, port = self.app.config.listen
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._new_session, host, port,
                                               reuse_address=True, backlog=2048,
                                               reuse_port=self.app.worker is not None)

    def _new_session(self):
        from proxy.session import ClientSession  # the session imports the handshake lazily too
        session = ClientSession(self.app)
        if len(self.app.sessions) >= self.app.config.max_client_connections:
            session.refuse_at_connect = TooManyConnections(
                "too many client connections", rule="max-client-connections")
        self.app.sessions.add(session)
        return session

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def check_address_free(host: str, port: int) -> None:
    """Raise OSError (EADDRINUSE) when a socket listens on (host, port) already.

    SO_REUSEPORT would let a second tenantgate of the same OS user share the port without
    an error and take half of the clients; a bind without it fails when anything listens."""
    for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no user
            probe.bind(address)


class ClientSSLObject(ssl.SSLObject):
    """The server side of one client's TLS; `requested_server_name` is the SNI it sent."""

    requested_server_name: str | None = None


def _remember_server_name(ssl_object: ssl.SSLObject, server_name: str | None,
                          context: ssl.SSLContext) -> None:
    """SNI callback: keep the name on the SSLObject the transport exposes as `ssl_object`.

    Server-side `SSLObject.server_hostname` is always None, so without this the name the
    client asked for (a tenant source, `resolve: [sni]`) would be lost.
    """
    if isinstance(ssl_object, ClientSSLObject) and server_name:
        ssl_object.requested_server_name = server_name.lower()


def build_ssl_context(tls: ClientTls | None, config_path: str | None = None
                      ) -> ssl.SSLContext | None:
    """The server-side TLS context for clients, or None when TLS is off.

    A certificate or key that cannot be loaded is a ConfigError naming the file.
    """
    if tls is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except OSError as exc:  # also ssl.SSLError: not PEM, or the key does not match the cert
        reason = exc.strerror or str(exc)
        raise ConfigError(f"tls: cannot load the certificate {tls.cert!r} with the key "
                          f"{tls.key!r}: {reason}", path=config_path) from None
    context.sslobject_class = ClientSSLObject
    context.sni_callback = _remember_server_name
    return context
