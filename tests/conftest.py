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
