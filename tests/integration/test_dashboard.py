"""The dashboard in headless Chromium: served in-process from fake metric calls, and by a
running proxy during a workload.

Chromium is required (Debian package `chromium`); without it this test fails and says so.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import shutil
import types
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from proxy.observability.http import HttpServer
from proxy.observability.metrics import Metrics

pytestmark = pytest.mark.timeout(180)

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
XSS_SHAPE = 'SELECT * FROM "<img src=x onerror=alert(1)>" WHERE id = 42'
XSS_TENANT = "<svg onload=alert(2)>"


def chromium() -> str:
    """The browser binary ($TENANTGATE_CHROMIUM, else the first of BROWSERS on PATH)."""
    candidates = [os.environ.get("TENANTGATE_CHROMIUM"), *BROWSERS]
    for name in filter(None, candidates):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is required for the dashboard test but none was found "
                f"(looked for $TENANTGATE_CHROMIUM and {', '.join(BROWSERS)} on PATH); "
                "install it with `apt-get install -y chromium`", pytrace=False)


async def browse(binary: str, profile: Path, url: str, *options: str) -> str:
    args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
            "--window-size=1280,900", *options, url]
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), 120)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode(errors="replace")[-3000:]
    return out.decode()


def fake_traffic() -> Metrics:
    metrics = Metrics()
    acme, globex = metrics.for_tenant("acme"), metrics.for_tenant("globex")
    for _ in range(3):
        acme.client_connected()
    globex.client_connected()
    for index in range(200):
        acme.query(0.001 + index * 0.00002)
        acme.transaction()
        globex.query(0.0004)
    acme.refusal("cross-tenant-schema", shape="SELECT * FROM globex.users WHERE name = 'bob'",
                 sqlstate="42P01")
    globex.refusal("forbidden-function", shape=XSS_SHAPE, sqlstate="42501")
    metrics.login_refused("unknown-tenant", tenant=XSS_TENANT, login="app")
    pool = types.SimpleNamespace(cluster=types.SimpleNamespace(name="main", pool_size=20),
                                 database="acme", size=5, idle=[object()] * 2, waiting=0)
    metrics.watch_pools(lambda: [pool])
    return metrics


@pytest_asyncio.fixture(loop_scope="function")  # the test's own loop
async def dashboard_url():
    server = HttpServer(("127.0.0.1", 0), fake_traffic())
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}/"
    finally:
        await server.close()


def cells(dom: str, attribute: str, value: str) -> list[str]:
    row = re.search(rf'<tr data-{attribute}="{re.escape(value)}">(.*?)</tr>', dom, re.S)
    assert row, f"no row with data-{attribute}={value!r} in the dashboard"
    return [html.unescape(re.sub(r"<[^>]+>", "", cell))
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row[1], re.S)]


async def test_dashboard_shows_tenants_pools_and_events(dashboard_url: str, tmp_path: Path):
    binary = chromium()
    dom = await browse(binary, tmp_path / "profile-dom", dashboard_url, "--dump-dom")

    acme = cells(dom, "tenant", "acme")
    assert acme[0] == "acme" and acme[1] == "3" and acme[-1] == "1"  # connections, refusals
    assert acme[4] == "200"  # transactions
    assert cells(dom, "tenant", "globex")[1] == "1"
    pool = cells(dom, "pool", "main/acme")
    assert pool[0] == "main / acme" and pool[1].endswith("3 / 20")
    assert 'id="dot" class="up"' in dom and "live" in dom

    events = re.findall(r'<li class="event" data-kind="([a-z_]+)">(.*?)</li>', dom, re.S)
    kinds = [kind for kind, _ in events]
    assert kinds == ["login_refused", "refusal", "refusal"]  # newest first
    texts = [html.unescape(re.sub(r"<[^>]+>", " ", body)) for _, body in events]
    assert "cross-tenant-schema" in texts[2] and "42P01" in texts[2]
    assert "SELECT * FROM globex.users WHERE name = $1" in texts[2]
    assert "bob" not in dom  # literals never reach the page
    # attacker-chosen text is shown as text, never parsed as markup
    assert 'SELECT * FROM "&lt;img src=x onerror=alert(1)&gt;" WHERE id = $1' in dom
    assert "&lt;svg onload=alert(2)&gt;" in dom
    assert "<img" not in dom and "<svg" not in dom

    shot = tmp_path / "dashboard.png"
    await browse(binary, tmp_path / "profile-shot", dashboard_url, f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


# -- the real proxy under a workload ---------------------------------------------------------------

async def test_dashboard_of_a_running_proxy_during_a_workload(proxy_factory, sample,
                                                              tmp_path: Path) -> None:
    """The page served by `tenantgate run` shows the tenants that are working right now and
    the refusal one of them just got; the screenshot is kept in the test's temp dir."""
    from proxy.localpg import free_port

    binary = chromium()
    metrics_port = free_port()
    running = proxy_factory(extra=f'metrics: "127.0.0.1:{metrics_port}"')
    password = sample.password("app")
    acme = await running.aconnect("app.acme", password)
    globex = await running.aconnect("app.globex", password)
    stop = asyncio.Event()

    async def workload(conn) -> int:
        done = 0
        while not stop.is_set():
            await conn.execute("SELECT count(*) FROM items")
            done += 1
        return done

    try:
        with pytest.raises(asyncpg.exceptions.UndefinedTableError):
            await globex.execute("SELECT secret FROM hooli.items WHERE id = 3")
        tasks = [asyncio.create_task(workload(acme)), asyncio.create_task(workload(globex))]
        url = f"http://127.0.0.1:{metrics_port}/"
        dom = await browse(binary, tmp_path / "profile-live", url, "--dump-dom")
        shot = tmp_path / "dashboard-live.png"
        await browse(binary, tmp_path / "profile-live-shot", url, f"--screenshot={shot}")
        stop.set()
        counts = await asyncio.gather(*tasks)
    finally:
        stop.set()
        await acme.close()
        await globex.close()
    assert all(count > 0 for count in counts)
    assert cells(dom, "tenant", "acme")[1] == "1"  # one client connection each
    assert cells(dom, "tenant", "globex")[1] == "1"
    events = re.findall(r'<li class="event" data-kind="([a-z_]+)">(.*?)</li>', dom, re.S)
    texts = [html.unescape(re.sub(r"<[^>]+>", " ", body)) for kind, body in events
             if kind == "refusal"]
    assert any("globex" in text and "relation-reach" in text and "42P01" in text
               and "hooli.items" in text for text in texts), texts
    assert "CANARY" not in dom and "WHERE id = 3" not in dom  # shapes only, no literals
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
