"""The metrics listener, started in-process on 127.0.0.1 with a port chosen at run time.

No proxy core and no PostgreSQL: a real `Metrics` fed with calls as the session would make.
"""

from __future__ import annotations

import asyncio
import json
import types
import urllib.request

import pytest
import pytest_asyncio

from proxy.observability.http import METRICS_TYPE, HttpServer
from proxy.observability.metrics import Metrics

pytestmark = pytest.mark.timeout(30)


def busy_metrics() -> Metrics:
    metrics = Metrics()
    acme = metrics.for_tenant("acme")
    acme.client_connected()
    acme.client_connected()
    for _ in range(10):
        acme.query(0.004)
        acme.transaction()
    acme.refusal("cross-tenant-schema", shape="SELECT * FROM globex.users WHERE id = 7",
                 sqlstate="42P01")
    metrics.login_refused("bad-password", tenant="globex", login="app")
    pool = types.SimpleNamespace(cluster=types.SimpleNamespace(name="main", pool_size=4),
                                 database="acme", size=3, idle=[object()], waiting=0)
    metrics.watch_pools(lambda: [pool])
    return metrics


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)  # the server closes after one response
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await request(port, f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())


@pytest_asyncio.fixture(loop_scope="function")  # the test's own loop
async def served():
    state = types.SimpleNamespace(ready=True)
    metrics = busy_metrics()
    server = HttpServer(("127.0.0.1", 0), metrics, lambda: state.ready, read_timeout=0.5)
    await server.start()
    state.server, state.metrics, state.port = server, metrics, server.port
    try:
        yield state
    finally:
        await server.close()


async def test_metrics(served):
    status, headers, body = await get(served.port, "/metrics")
    assert status == 200
    assert headers["content-type"] == METRICS_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    text = body.decode()
    assert 'tenantgate_client_connections{tenant="acme"} 2.0' in text
    assert 'tenantgate_transactions_total{tenant="acme"} 10.0' in text
    assert 'tenantgate_refusals_total{rule="cross-tenant-schema",tenant="acme"} 1.0' in text
    assert 'tenantgate_pool_server_connections{cluster="main",database="acme",state="active"} 2.0' \
        in text
    status, _, again = await get(served.port, "/metrics?ignored=1")
    assert status == 200 and b"tenantgate_query_duration_seconds_bucket" in again


async def test_metrics_with_urllib(served):
    url = f"http://127.0.0.1:{served.port}/metrics"
    with await asyncio.to_thread(urllib.request.urlopen, url, timeout=10) as response:
        assert response.status == 200
        assert b'tenantgate_login_refusals_total{reason="bad-password"} 1.0' in response.read()


async def test_healthz(served):
    status, headers, body = await get(served.port, "/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"


async def test_readyz_follows_the_callable(served):
    status, _, body = await get(served.port, "/readyz")
    assert (status, body) == (200, b"ready\n")
    served.ready = False
    status, _, body = await get(served.port, "/readyz")
    assert (status, body) == (503, b"not ready\n")


async def test_readyz_async_and_failing_checks():
    answers = iter([True, False])

    async def check():
        await asyncio.sleep(0)
        return next(answers)
    server = HttpServer(("127.0.0.1", 0), Metrics(), check)
    await server.start()
    try:
        assert (await get(server.port, "/readyz"))[0] == 200
        assert (await get(server.port, "/readyz"))[0] == 503
        server.ready = lambda: 1 / 0  # a check that raises: not ready, and the server lives on
        assert (await get(server.port, "/readyz"))[0] == 503
        assert (await get(server.port, "/healthz"))[0] == 200
    finally:
        await server.close()


async def test_dashboard_page(served):
    for path in ("/", "/dashboard"):
        status, headers, body = await get(served.port, path)
        assert status == 200
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in headers["content-security-policy"]
        assert "connect-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        page = body.decode()
        assert "<title>tenantgate</title>" in page and "api/summary" in page
        assert "http://" not in page and "https://" not in page  # no external assets


async def test_api_summary(served):
    status, headers, body = await get(served.port, "/api/summary")
    assert status == 200 and headers["content-type"] == "application/json"
    summary = json.loads(body)
    [acme] = summary["tenants"]
    assert acme["tenant"] == "acme" and acme["connections"] == 2 and acme["queries"] == 10
    assert acme["refusals"] == 1 and 2.5 < acme["p95_ms"] <= 5.0
    assert summary["pools"] == [{"cluster": "main", "database": "acme", "active": 2, "idle": 1,
                                 "size": 3, "max": 4, "waiting": 0}]
    kinds = [(e["kind"], e["tenant"], e["rule"]) for e in summary["events"]]
    assert kinds == [("login_refused", "globex", "bad-password"),
                     ("refusal", "acme", "cross-tenant-schema")]
    assert summary["events"][1]["shape"] == "SELECT * FROM globex.users WHERE id = $1"


async def test_other_paths_and_methods(served):
    assert (await get(served.port, "/nope"))[0] == 404
    status, headers, _ = await get(served.port, "/metrics", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, body = await get(served.port, "/healthz", method="HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", "3")
    assert (await request(served.port, b"GET /metrics\r\n\r\n"))[0] == 400
    assert (await request(served.port, b"GET / HTTP/2.0\r\n\r\n"))[0] == 505


async def test_oversized_request_is_refused(served):
    raw = b"GET /metrics HTTP/1.1\r\nX-Junk: " + b"a" * 20000 + b"\r\n\r\n"
    assert (await request(served.port, raw))[0] == 431


async def test_slow_client_times_out(served):
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _, _ = await request(served.port, b"GET /metrics HTTP/1.1\r\n")  # never finished
    assert status == 408
    assert loop.time() - started < 5


async def test_an_endpoint_error_is_a_500_and_the_server_lives_on(served):
    def broken():
        raise RuntimeError("boom")
    served.metrics.render = broken
    assert (await get(served.port, "/metrics"))[0] == 500
    assert (await get(served.port, "/healthz"))[0] == 200


async def test_connections_are_bounded():
    server = HttpServer(("127.0.0.1", 0), Metrics(), read_timeout=2, max_connections=2)
    await server.start()
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    try:
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without an answer
        writer.close()
    finally:
        for _, held in idle:
            held.close()
        await server.close()


async def test_close_stops_listening():
    server = HttpServer(("127.0.0.1", 0), Metrics())
    await server.start()
    port = server.port
    assert port != 0
    held = await asyncio.open_connection("127.0.0.1", port)  # an open, silent client
    await server.close()
    held[1].close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
