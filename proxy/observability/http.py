"""The metrics listener: a tiny asyncio HTTP/1.1 server (GET only, one request per connection).

    /metrics       Prometheus text exposition (`Metrics.render()`)
    /healthz       200 "ok" while the process runs
    /readyz        200 when `ready()` returns true (it may be async), else 503
    /              the dashboard page (self-contained: no external assets)
    /api/summary   the dashboard's JSON (`Metrics.summary()`)

Every response closes the connection. Requests are bounded (8 KiB of head, 5 s to send
it, 64 connections at a time); anything else is refused with the fitting status. Bind it
to a loopback or private address: it shows tenant names and statement shapes (never
literal values) and has no authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.observability.dashboard import PAGE
from proxy.observability.logging import get_logger

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST = 8192  # bytes of request line + headers
READ_TIMEOUT = 5.0  # seconds for the client to send its request
MAX_CONNECTIONS = 64
DASHBOARD_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                 "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                 "frame-ancestors 'none'")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable",
            505: "HTTP Version Not Supported"}


class _Response:
    def __init__(self, status: int, body: bytes | str, content_type: str = "text/plain; "
                 "charset=utf-8", **headers: str) -> None:
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = {"Content-Type": content_type, **headers}

    def encode(self, head_only: bool = False) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {_REASONS[self.status]}",
                 *(f"{name.replace('_', '-')}: {value}" for name, value in self.headers.items()),
                 f"Content-Length: {len(self.body)}", "Connection: close",
                 "Cache-Control: no-store", "X-Content-Type-Options: nosniff", "", ""]
        return "\r\n".join(lines).encode("latin-1") + (b"" if head_only else self.body)


class HttpServer:
    """Serves the endpoints above on `address` until `close()`."""

    def __init__(self, address: tuple[str, int], metrics: Any,
                 ready: Callable[[], Any] | None = None, *,
                 read_timeout: float = READ_TIMEOUT, max_request: int = MAX_REQUEST,
                 max_connections: int = MAX_CONNECTIONS,
                 refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        self.host, self.port = address
        self.metrics = metrics
        self.ready = ready or (lambda: True)
        self.refresh = refresh  # awaited before /metrics and /api/summary (workers' totals)
        self.read_timeout = read_timeout
        self.max_request = max_request
        self.max_connections = max_connections
        self.log = get_logger(component="http")
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=self.max_request)
        self.port = self._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
        self.log.info("metrics endpoint listening", host=self.host, port=self.port)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._clients) >= self.max_connections:
            writer.close()
            return
        self._clients.add(task)
        try:
            response, head_only = await self._respond(reader)
            writer.write(response.encode(head_only))
            async with asyncio.timeout(self.read_timeout):
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or stopped reading
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[_Response, bool]:
        try:
            async with asyncio.timeout(self.read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return _Response(408, "request timeout\n"), False
        except (asyncio.LimitOverrunError, ValueError):
            return _Response(431, "request too large\n"), False
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3:
            return _Response(400, "bad request line\n"), False
        method, target, version = parts
        if not version.startswith("HTTP/1."):
            return _Response(505, "HTTP/1.x only\n"), False
        if method not in ("GET", "HEAD"):
            return _Response(405, "GET only\n", Allow="GET, HEAD"), False
        try:
            return await self._route(target.split("?", 1)[0]), method == "HEAD"
        except Exception as exc:  # never let an endpoint error kill the listener
            self.log.error("metrics endpoint failed", path=target[:200], error=repr(exc))
            return _Response(500, "internal error\n"), False

    async def _route(self, path: str) -> _Response:
        if path in ("/metrics", "/api/summary") and self.refresh is not None:
            await self.refresh()
        if path == "/metrics":
            return _Response(200, self.metrics.render(), METRICS_TYPE)
        if path == "/healthz":
            return _Response(200, "ok\n")
        if path == "/readyz":
            return _Response(200, "ready\n") if await self._is_ready() else _Response(
                503, "not ready\n")
        if path in ("/", "/dashboard"):
            return _Response(200, PAGE, "text/html; charset=utf-8",
                             Content_Security_Policy=DASHBOARD_CSP,
                             X_Frame_Options="DENY", Referrer_Policy="no-referrer")
        if path == "/api/summary":
            body = json.dumps(self.metrics.summary(), ensure_ascii=True, allow_nan=False)
            return _Response(200, body, "application/json")
        return _Response(404, "not found\n")

    async def _is_ready(self) -> bool:
        try:
            answer = self.ready()
            if inspect.isawaitable(answer):
                async with asyncio.timeout(self.read_timeout):
                    answer = await answer
            return bool(answer)
        except Exception as exc:
            self.log.warning("readiness check failed", error=repr(exc))
            return False
