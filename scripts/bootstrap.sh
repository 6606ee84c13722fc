#!/usr/bin/env bash
# Idempotent set-up behind `make demo` and `make test` on a fresh Debian/Ubuntu machine:
#   1. PostgreSQL server binaries (initdb, pg_ctl, postgres, psql, pgbench) from the
#      `postgresql` package, when no /usr/lib/postgresql/*/bin/initdb exists;
#   2. a Python >= 3.11 virtualenv in .venv (PYTHON=... picks the interpreter);
#   3. this package installed editable with its test extras (redone when pyproject.toml changes).
# Packages are installed with apt-get as root (or through sudo). Re-running changes nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'bootstrap: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else say "root is needed to run: $*"; return 1
  fi
}

apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get here: install $* with your package manager, then re-run"; exit 1
  fi
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  say "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# 1. PostgreSQL (pgbench ships in postgresql-NN, which `postgresql` pulls in).
if [ -z "${TENANTGATE_PG_BINDIR:-}" ] && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  apt_install postgresql
fi

# Headless Chromium renders the dashboard in its test.
if ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium
fi

# 2. Python >= 3.11 and the virtualenv.
py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
find_python() {
  local py
  for py in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
    if command -v "$py" >/dev/null 2>&1 && py_ok "$py"; then command -v "$py"; return 0; fi
  done
  return 1
}

if ! { [ -x .venv/bin/python ] && py_ok .venv/bin/python && .venv/bin/python -m pip --version >/dev/null 2>&1; }; then
  python=$(find_python) || { apt_install python3 python3-venv; python=$(find_python); }
  say "creating .venv with $python ($("$python" --version 2>&1))"
  rm -rf .venv
  if ! "$python" -m venv .venv; then
    rm -rf .venv
    apt_install python3-venv "python$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
    "$python" -m venv .venv
  fi
fi

# 3. The package, editable, with the test extras.
stamp=.venv/.tenantgate-bootstrap
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/tenantgate ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing tenantgate (editable) and its test dependencies into .venv"
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi
say "ready: .venv ($(.venv/bin/python --version 2>&1)) with tenantgate installed"
