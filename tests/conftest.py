"""Shared fixtures: real folders, real SQLite files, real servers. Nothing here mocks the database."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from digest.config import Settings, load_settings
from digest.demo import init
from digest.store import migrate, session_factory

SECRET = "test-secret-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"  # Debian's package; scripts/test.sh installs it, never a downloaded browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_SECRET_KEY", SECRET)
    for name in ("DIGEST_DATABASE_URL", "DIGEST_CONFIG", "SENDGRID_API_KEY", "DIGEST_SENDGRID_API_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder as `digest init` leaves it: digest.toml and the sample sources."""
    init(tmp_path)
    return tmp_path


def edit_config(folder: Path, old: str, new: str) -> None:
    path = folder / "digest.toml"
    text = path.read_text()
    assert old in text, f"{old!r} not in digest.toml"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture
def settings(workdir: Path) -> Settings:
    s = load_settings(workdir / "digest.toml")
    migrate(s.database_url)
    return s


@pytest.fixture
def session(settings: Settings) -> Iterator:
    with session_factory(settings.database_url)() as s:
        yield s


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """The real `digest` command in a subprocess, as a user runs it."""
    full_env = {**os.environ, "DIGEST_SECRET_KEY": SECRET, **(env or {})}
    return subprocess.run([sys.executable, "-m", "digest", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def screenshots() -> Path:
    """Where browser tests write screenshots: $DIGEST_SCREENSHOTS (CI lists it), else test-artifacts/."""
    folder = Path(os.environ.get("DIGEST_SCREENSHOTS") or ROOT / "test-artifacts" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless Debian Chromium driven by Playwright. Missing chromium fails: a skip would hide it in CI."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed: scripts/test.sh installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
