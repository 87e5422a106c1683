#!/usr/bin/env bash
# The test command (README, quick start 2; .ci/run runs exactly this):
# sets up .venv, installs the project with its test extras, makes sure Debian's chromium (browser tests)
# and postgresql (the PostgreSQL half of the suite) are there, checks style (ruff), the layers
# (import-linter) and types (mypy), then runs the whole suite on both cores: `-m ""` lifts the fast
# default of a bare `pytest` (slow and browser tests included, the wheel test among them). pytest itself
# starts and removes the throwaway PostgreSQL server (tests/pgserver.py); DIGEST_TEST_BACKENDS=sqlite
# runs the database tests on SQLite alone.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# npm (with node): axe-core for the browser tests and caniemail for the email-support check
command -v npm >/dev/null 2>&1 || missing+=(npm)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/ruff check .
.venv/bin/lint-imports
.venv/bin/mypy
# axe-core and caniemail, pinned in scripts/npm/package-lock.json, installed with npm ci into .cache/npm
.venv/bin/python scripts/npm_package.py >/dev/null
# every database test on SQLite and on a throwaway PostgreSQL server (tests/pgserver.py); named
# explicitly, so a server that cannot start fails the run instead of being skipped
export DIGEST_TEST_BACKENDS="${DIGEST_TEST_BACKENDS:-sqlite,postgresql}"
exec .venv/bin/python -m pytest -n 2 -m "" "$@"
