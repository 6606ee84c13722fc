"""The `workers` key: an integer from 1 to MAX_WORKERS, default 1; errors are FILE:LINE."""

from __future__ import annotations

import pytest

from proxy.config import MAX_WORKERS, parse_config
from proxy.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

BASE = """\
clusters:
  main:
    hosts: ["127.0.0.1:5432"]
    user: tenantgate
users:
  app:
    password: pw
    tenants: ["*"]
tenants:
  acme: {strategy: database, database: acme}
"""  # a `workers:` line appended to it is line 11


def load(text: str):
    return parse_config(text, "cfg.yaml", {})


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    return str(info.value)


def test_default_is_one_process() -> None:
    assert load(BASE).workers == 1


@pytest.mark.parametrize("value", [1, 2, MAX_WORKERS])
def test_accepted_values(value: int) -> None:
    assert load(BASE + f"workers: {value}\n").workers == value


@pytest.mark.parametrize("value,message", [
    ("0", "workers: must be at least 1, got 0"),
    ("-2", "workers: must be at least 1, got -2"),
    (str(MAX_WORKERS + 1), f"workers: must be at most {MAX_WORKERS}, got {MAX_WORKERS + 1}"),
    ("two", "workers: expected an integer, got the string 'two'"),
    ("true", "workers: expected an integer, got the boolean true"),
    ("1.5", "workers: expected an integer, got the number 1.5"),
])
def test_bad_values_name_the_line(value: str, message: str) -> None:
    assert error(BASE + f"workers: {value}\n") == f"cfg.yaml:11: {message}"


def test_misspelt_key_is_an_error() -> None:
    assert "did you mean 'workers'" in error(BASE + "worker: 2\n")
