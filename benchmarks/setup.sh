#!/usr/bin/env bash
# Idempotent set-up for benchmarks/run.py on a fresh Debian/Ubuntu machine:
#   1. the project's own set-up (PostgreSQL server binaries with pgbench, .venv, tenantgate);
#   2. PgBouncer from the Debian package `pgbouncer` (its service is not needed: run.py starts
#      its own instance in a temp dir and stops it again);
#   3. matplotlib in .venv, through the `bench` extra of pyproject.toml.
# Re-running changes nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'bench setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else say "root is needed to run: $*"; return 1
  fi
}

bash scripts/bootstrap.sh

if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get here: install PgBouncer with your package manager, then re-run"; exit 1
  fi
  say "installing pgbouncer"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer
  # Debian's postinst may start the packaged service where systemd runs; the benchmark does
  # not use it (it listens on 6432, which the demo uses too).
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet pgbouncer 2>/dev/null; then
    as_root systemctl stop pgbouncer || true
  fi
fi

if ! .venv/bin/python -c 'import matplotlib' >/dev/null 2>&1; then
  say "installing matplotlib into .venv (extra: bench)"
  .venv/bin/python -m pip install -q -e '.[test,bench]'
  if ! .venv/bin/python -c 'import matplotlib' >/dev/null 2>&1; then
    say "pyproject.toml has no 'bench' extra yet: installing matplotlib by name"
    .venv/bin/python -m pip install -q 'matplotlib>=3.6,<4'
  fi
fi

say "ready: $(/usr/sbin/pgbouncer --version 2>/dev/null | head -1 || pgbouncer --version | head -1), matplotlib $(.venv/bin/python -c 'import matplotlib; print(matplotlib.__version__)')"
