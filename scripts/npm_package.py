"""The npm packages the checks use, installed with npm's own client (`npm ci`) into a cache folder.

The accessibility tests inject axe-core (tests/axe.py) and the email-support checker runs caniemail's own
analyser (scripts/caniemail_check.py); both are published on npm only. scripts/npm/package.json pins
their versions and scripts/npm/package-lock.json every dependency with its SHA-512, so every run checks
against the same engine and data; they come from the package registry (reachable on the developers'
machines and in CI), never from anywhere else.

    python scripts/npm_package.py            # install them (scripts/test.sh does this before the tests)

The cache is $DIGEST_NPM_CACHE, else .cache/npm at the top of the repository (git ignores it); a new lock
file gets a new folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "scripts" / "npm"


class FetchError(RuntimeError):
    """npm is missing or could not install the pinned packages."""


def cache_dir() -> Path:
    return Path(os.environ.get("DIGEST_NPM_CACHE") or ROOT / ".cache" / "npm")


def node_modules() -> Path:
    """The `node_modules` folder holding the pinned packages, installed once per lock file."""
    lock = (SPEC / "package-lock.json").read_bytes()
    home = cache_dir() / hashlib.sha256(lock + (SPEC / "package.json").read_bytes()).hexdigest()[:16]
    if (home / "node_modules" / ".package-lock.json").is_file():
        return home / "node_modules"
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError("npm is not installed; it fetches axe-core and caniemail (apt-get install npm)")
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent) as tmp:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(SPEC / name, Path(tmp) / name)
        # ci: exactly the lock file, integrity checked; no install scripts run (none is needed)
        done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=tmp, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise FetchError(f"npm ci in {SPEC} failed: {last}")
        try:  # another process may have finished first; its copy is the same
            Path(tmp).rename(home)
        except OSError:
            if not (home / "node_modules" / ".package-lock.json").is_file():
                raise
        else:
            Path(tmp).mkdir()  # for TemporaryDirectory's clean-up
    return home / "node_modules"


def package(name: str) -> Path:
    """The installed folder of one pinned package."""
    return node_modules() / name


if __name__ == "__main__":
    try:
        print(node_modules())
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
