"""The accept loop, client-facing TLS, and forwarding of cancel requests to servers."""

from __future__ import annotations

import asyncio
import ssl

from proxy.config import ClientTls
from proxy.errors import TooManyConnections
from proxy.protocol.startup import encode_cancel_request


class Listener:
    def __init__(self, app) -> None:
        self.app = app
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        host, port = self.app.config.listen
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._new_session, host, port,
                                               reuse_address=True, backlog=2048)

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


def build_ssl_context(tls: ClientTls | None) -> ssl.SSLContext | None:
    """The server-side TLS context for clients, or None when TLS is off."""
    if tls is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    return context


async def send_cancel(host: str, port: int, pid: int, key: bytes) -> None:
    """Open a fresh connection to the server and send it a CancelRequest."""
    try:
        async with asyncio.timeout(5):
            _, writer = await asyncio.open_connection(host, port)
            writer.write(encode_cancel_request(pid, key))
            await writer.drain()
            writer.close()
    except (OSError, TimeoutError):
        pass  # the query may finish anyway; a lost cancel is what PostgreSQL clients expect too
