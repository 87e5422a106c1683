#!/usr/bin/env bash
# The test command (README, quick start 2; .ci/run runs exactly this):
# sets up .venv, installs the project with its test extras, makes sure Debian's chromium is there for
# the browser tests, checks style (ruff), the layers (import-linter) and types (mypy), then runs the
# whole suite on both cores: `-m ""` lifts the fast default of a bare `pytest` (slow and browser tests
# included, the wheel test among them).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/ruff check .
.venv/bin/lint-imports
.venv/bin/mypy
exec .venv/bin/python -m pytest -n 2 -m "" "$@"
