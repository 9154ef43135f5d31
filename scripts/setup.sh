#!/usr/bin/env bash
# Set up gridhive in this checkout: a virtualenv in .venv with the package installed.
#   scripts/setup.sh         what `gridhive demo` needs (Python packages only)
#   scripts/setup.sh --test  also what the tests need: test packages, Mosquitto, PostgreSQL, node +
#                            the MicroPython WebAssembly runtime (npm ci)
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
sudo_cmd() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null; then
    say "please install $* with your system's package manager, then run this again"; exit 1
  fi
  if [ $apt_updated -eq 0 ]; then sudo_cmd apt-get update -qq; apt_updated=1; fi
  say "installing $* (apt-get)"
  sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  say "gridhive needs Python >= 3.11 (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11"; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv || { apt_install python3-venv; "$PY" -m venv .venv; }
fi

extras=""
stamp=.venv/.gridhive-installed
[ $want_test -eq 1 ] && { extras="[test]"; stamp=.venv/.gridhive-installed-test; }
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing Python packages into .venv${extras:+ (with test extras)}"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}"
  touch "$stamp"
fi

if [ $want_test -eq 1 ]; then
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto
  command -v mosquitto_sub >/dev/null || apt_install mosquitto-clients  # gridhive bench ingest
  # PostgreSQL for the controller's second back end: its tests start a throwaway server (initdb + postgres).
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || apt_install postgresql
  command -v node >/dev/null || apt_install nodejs npm
  command -v npm >/dev/null || apt_install npm
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    say "installing the MicroPython WebAssembly runtime (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
  fi
fi
say "ready"
