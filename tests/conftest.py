"""Shared fixtures: one real PostgreSQL per test session with the sample tenants, and proxies.

- `pg`: a LocalPostgres (proxy/localpg.py) with `install_sample` applied; stopped at the end.
- `sample`: the SampleInfo (names, passwords) of what `pg` holds.
- `proxy`: one running proxy per test module, default sample config (transaction, pool_size 4).
- `proxy_factory(**config_options)`: start more proxies in one test (options as for
  `SampleInfo.config_yaml`, or `config_text=`); all are stopped at teardown.
When a test fails, the logs of the proxies it used are attached to its report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from proxy.localpg import LocalPostgres
from proxy.sample import SampleInfo, install_sample
from tests.helpers import RunningProxy, start_proxy


@pytest.fixture(scope="session")
def _cluster() -> Iterator[tuple[LocalPostgres, SampleInfo]]:
    pg = LocalPostgres()
    pg.start()
    try:
        yield pg, install_sample(pg)
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def pg(_cluster: tuple[LocalPostgres, SampleInfo]) -> LocalPostgres:
    return _cluster[0]


@pytest.fixture(scope="session")
def sample(_cluster: tuple[LocalPostgres, SampleInfo]) -> SampleInfo:
    return _cluster[1]


@pytest.fixture(scope="module")
def proxy(pg: LocalPostgres, sample: SampleInfo,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    running = start_proxy(pg, sample, workdir=tmp_path_factory.mktemp("proxy"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def proxy_factory(pg: LocalPostgres, sample: SampleInfo, tmp_path,
                  request: pytest.FixtureRequest) -> Iterator[Callable[..., RunningProxy]]:
    started: list[RunningProxy] = []
    request.node._tenantgate_proxies = started

    def start(**config_options) -> RunningProxy:
        workdir = tmp_path / f"proxy{len(started)}"
        running = start_proxy(pg, sample, workdir=workdir, **config_options)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed and call.when == "call":
        proxies = list(getattr(item, "_tenantgate_proxies", []))
        module_proxy = getattr(item, "funcargs", {}).get("proxy")
        if isinstance(module_proxy, RunningProxy):
            proxies.append(module_proxy)
        for running in proxies:
            report.sections.append((f"tenantgate proxy :{running.port} (pid {running.pid}) log",
                                    running.logs()[-8000:]))
    return report
