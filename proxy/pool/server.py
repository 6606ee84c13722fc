"""One connection to a PostgreSQL server: open and authenticate it, run internal
queries on it, and relay its replies to the client session that leases it.

While nobody leases it the connection is in *internal* mode: incoming bytes are framed
into messages that `recv()` hands to the coroutine talking to the server (startup,
reset, setup). While leased, bytes go straight to the leasing session (its `_server_data`).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time

from proxy.errors import ConnectionUnavailable, ProtocolViolation, ProxyError
from proxy.protocol import messages as m
from proxy.protocol.auth import BackendAuth
from proxy.protocol.framing import MessageReader, ReplyScanner
from proxy.replies import TRACKED_REPLIES
from proxy.protocol.startup import encode_cancel_request, encode_ssl_request, encode_startup
from proxy.statements import ServerStatements

# Settings every server connection is opened with: they change how SQL is lexed,
# so the proxy and the server must agree on them (THREATS.md 12, 13).
PINNED_STARTUP = {"client_encoding": "UTF8", "standard_conforming_strings": "on"}
CANCEL_TIMEOUT = 5.0  # seconds for the server to take a CancelRequest


class ServerError(Exception):
    """The server answered an internal query with an ErrorResponse."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        super().__init__(f"{fields.get('C', 'XX000')}: {fields.get('M', '')}")


class ServerConnection(asyncio.Protocol):
    """A server connection; see the module docstring for its two modes."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.params: dict[str, str] = {}  # ParameterStatus values reported at startup
        self.backend_pid = 0
        self.backend_key = b""
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self.context_key: tuple | None = None  # tenant state applied by setup, None = fresh
        self.applied_params: dict[str, str] = {}  # client settings applied by setup
        self.dirty = False  # session state of unknown shape left behind: reset before reuse
        self.closed = False
        self.cancels = 0  # CancelRequests sent for this backend that the server has not taken yet
        self.held_back = False  # released while a cancel was on its way: not reusable yet
        self.reusable = True  # False once a cancel may still arrive at any time
        self.statements = ServerStatements()  # protocol-level statements prepared here
        self.unnamed_owner: object | None = None  # the client Statement in the unnamed slot
        self.scanner = ReplyScanner(TRACKED_REPLIES)  # reply boundaries while relaying
        # The session leasing it, which gets its replies (`_server_data`) and its loss
        # (`_server_lost`); None in internal mode. The session itself, not two bound
        # methods of it: attaching then writes nothing of a session gone cold in the cache.
        self.owner = None
        self._reader = MessageReader(1 << 30)
        self._inbox: collections.deque[tuple[int, bytes]] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._ssl_reply: asyncio.Future | None = None

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:
            self._internal_data(data)
        else:
            owner._server_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        lost = ConnectionUnavailable("tenantgate: server closed the connection")
        if self._ssl_reply is not None and not self._ssl_reply.done():
            self._ssl_reply.set_exception(lost)  # closed instead of answering the SSLRequest
        self._wake(lost)
        if self.owner is not None:
            self.owner._server_lost()

    def pause_writing(self) -> None:  # the server reads slowly: nothing to do yet
        pass

    def resume_writing(self) -> None:
        pass

    # -- internal mode ----------------------------------------------------------------

    def _internal_data(self, data: bytes) -> None:
        if self._ssl_reply is not None and not self._ssl_reply.done():
            self._ssl_reply.set_result(data)
            return
        try:
            self._reader.feed(data)
            while (message := self._reader.next()) is not None:
                self._inbox.append(message)
        except ProxyError as exc:  # a server that breaks framing is not used again
            self._wake(exc)
            self.close()
            return
        self._wake(None)

    def _wake(self, error: Exception | None) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(None)

    async def recv(self) -> tuple[int, bytes]:
        """The next message from the server (internal mode only)."""
        while not self._inbox:
            if self.closed:
                raise ConnectionUnavailable("tenantgate: server closed the connection")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._inbox.popleft()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def query(self, sql: str) -> list[list[bytes | None]]:
        """Run one simple-protocol statement string; rows of the last result set."""
        self.write(m.query(sql))
        return await self.collect_until_ready()

    async def collect_until_ready(self) -> list[list[bytes | None]]:
        """Read replies up to ReadyForQuery; raise ServerError if one was an error."""
        rows: list[list[bytes | None]] = []
        error: dict[str, str] | None = None
        while True:
            mtype, raw = await self.recv()
            if mtype == m.DATA_ROW:
                rows.append(m.decode_data_row(raw))
            elif mtype == m.ROW_DESCRIPTION:
                rows = []
            elif mtype == m.ERROR_RESPONSE:
                error = error or m.decode_error_fields(raw)
            elif mtype == m.PARAMETER_STATUS:
                name, value = m.decode_parameter_status(raw)
                self.params[name] = value
            elif mtype == m.READY_FOR_QUERY:
                if error is not None:
                    raise ServerError(error)
                return rows

    # -- relay mode -------------------------------------------------------------------

    def attach(self, owner) -> None:
        """Send this connection's replies to a leasing session."""
        self._inbox.clear()  # notices that came while it sat idle in the pool
        self.owner = owner

    def detach(self) -> None:
        """Back in internal mode; `last_used` is now (the pool's age check reads it)."""
        self.owner = None
        self.last_used = time.monotonic()
        # The session may have stopped reading it for a slow client (backpressure).
        if self.transport is not None and not self.closed and not self.transport.is_reading():
            self.transport.resume_reading()

    async def send_cancel(self) -> bool:
        """A CancelRequest for this backend, over a new connection. True when it is
        settled: the server closed that connection, which PostgreSQL does only after it
        signalled the backend, or nothing was sent; False if it may still arrive."""
        sent = False
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT):
                reader, writer = await open_stream(self.host, self.port)
                try:
                    writer.write(encode_cancel_request(self.backend_pid, self.backend_key))
                    sent = True
                    await writer.drain()
                    await reader.read()  # until the server closes it
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return not sent
        return True

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            try:
                self.transport.write(m.terminate())
            finally:
                self.transport.close()
        self.closed = True

    # -- startup ----------------------------------------------------------------------

    async def negotiate_tls(self, mode: str, ca_file: str | None) -> None:
        """SSLRequest, then TLS if the server agrees (and as `mode` demands).

        The answer must be exactly one byte: anything the server (or a man in the middle)
        sends with it would be read as if it came over TLS (CVE-2021-23222).
        """
        loop = asyncio.get_running_loop()
        self._ssl_reply = loop.create_future()
        self.write(encode_ssl_request())
        try:
            reply = await self._ssl_reply
        finally:
            self._ssl_reply = None
        if reply == b"N":
            if mode in ("require", "verify-full"):
                raise ConnectionUnavailable(
                    f"tenantgate: server {self.host}:{self.port} does not support TLS "
                    f"(the cluster has tls: {mode})")
            return
        if reply != b"S":
            raise ProtocolViolation(f"tenantgate: server {self.host}:{self.port} sent an invalid "
                                    "answer to SSLRequest")
        context = _client_ssl_context(mode, ca_file)
        server_name = self.host if mode == "verify-full" else None
        try:
            self.transport = await loop.start_tls(self.transport, self, context,
                                                  server_hostname=server_name)
        except BaseException:  # handshake failed or timed out: the transport is closed already
            self.closed = True  # so close() must not write Terminate to it (uvloop raises)
            self.transport.abort()
            raise

    async def startup(self, user: str, password: str | None, database: str) -> None:
        """StartupMessage, authentication, then ParameterStatus/BackendKeyData up to ReadyForQuery."""
        params = {"user": user, "database": database, "application_name": "tenantgate",
                  **PINNED_STARTUP}
        self.write(encode_startup(params))
        auth = BackendAuth(user, password)
        while True:
            mtype, raw = await self.recv()
            if mtype == m.AUTHENTICATION:
                reply = auth.respond(*m.decode_authentication(raw))
                if reply:
                    self.write(reply)
            elif mtype == m.ERROR_RESPONSE:
                fields = m.decode_error_fields(raw)
                raise ConnectionUnavailable(
                    f"tenantgate: server {self.host}:{self.port} refused the connection: "
                    f"{fields.get('M', '')}", detail=fields.get("C"))
            elif mtype == m.PARAMETER_STATUS:
                name, value = m.decode_parameter_status(raw)
                self.params[name] = value
            elif mtype == m.BACKEND_KEY_DATA:
                self.backend_pid, self.backend_key = m.decode_backend_key_data(raw)
            elif mtype == m.READY_FOR_QUERY:
                return


def is_unix_socket(host: str) -> bool:
    """A host that is a directory names PostgreSQL's Unix-domain socket, as in libpq."""
    return host.startswith("/")


def socket_path(host: str, port: int) -> str:
    return f"{host.rstrip('/')}/.s.PGSQL.{port}"


async def open_stream(host: str, port: int):
    """(reader, writer) to `host:port`, or to the Unix socket when `host` is a directory."""
    if is_unix_socket(host):
        return await asyncio.open_unix_connection(socket_path(host, port))
    return await asyncio.open_connection(host, port)


def _client_ssl_context(mode: str, ca_file: str | None) -> ssl.SSLContext:
    """verify-full: the server's certificate must chain to `ca_file` (the system CAs when
    None) and name the host; prefer/require: encrypted, not verified, as libpq does."""
    if mode == "verify-full":
        return ssl.create_default_context(cafile=ca_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def open_server_connection(cluster, database: str) -> ServerConnection:
    """Connect to the first reachable host of `cluster` and log in to `database`."""
    loop = asyncio.get_running_loop()
    last_error: Exception | None = None
    for host, port in cluster.hosts:
        conn = ServerConnection(host, port)
        try:
            async with asyncio.timeout(cluster.connect_timeout):
                if is_unix_socket(host):
                    await loop.create_unix_connection(lambda: conn, socket_path(host, port))
                else:
                    await loop.create_connection(lambda: conn, host, port)
                # TLS is not negotiated over a Unix socket (libpq does not either): the
                # kernel carries the bytes, nothing on a network can read them.
                if cluster.tls != "disable" and not is_unix_socket(host):
                    await conn.negotiate_tls(cluster.tls, cluster.tls_ca)
                await conn.startup(cluster.user, cluster.password, database)
            _check_pinned(conn)
            return conn
        except (OSError, TimeoutError, ssl.SSLError, ProxyError) as exc:
            conn.close()
            last_error = exc
    raise ConnectionUnavailable(
        f"tenantgate: could not connect to cluster {cluster.name!r}: {_describe(last_error)}")


def _check_pinned(conn: ServerConnection) -> None:
    for name, value in PINNED_STARTUP.items():
        if conn.params.get(name, value) != value:
            conn.close()
            raise ConnectionUnavailable(f"tenantgate: server reports {name}={conn.params[name]!r}")


def _describe(error: Exception | None) -> str:
    if isinstance(error, ProxyError):
        return error.message.removeprefix("tenantgate: ")
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__
