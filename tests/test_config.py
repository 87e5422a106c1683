"""Settings: every key validated with a message naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from digest.config import load_settings
from digest.errors import ConfigError
from tests.conftest import edit_config, run_cli

pytestmark = pytest.mark.nodb  # settings are read, never a database: these run once


def test_sample_config_loads_with_paths_relative_to_the_file(workdir: Path) -> None:
    s = load_settings(workdir / "digest.toml")
    assert s.publication.name == "Leisure Industry Weekly"
    assert s.database_url == f"sqlite:///{workdir / 'digest.db'}"
    assert s.resolve(s.sources.feeds[0]) == str(workdir / "sample" / "feed.xml")
    assert s.delivery.transport == "outbox"
    assert s.publication.tz.key == "Australia/Sydney"
    assert s.delivery.sendgrid.retry_unanswered is False  # exactly once before throughput


@pytest.mark.parametrize(("old", "new", "message"), [
    ('postal_address = "PO Box 100, Sydney NSW 2000, Australia"', "", "publication.postal_address is missing"),
    ('transport = "outbox"', 'transport = "pigeon"', "delivery.transport must be one of outbox, smtp, sendgrid"),
    ("window_days = 14", 'window_days = "two weeks"', "sources.window_days must be a int"),
    ('timezone = "Australia/Sydney"', 'timezone = "Mars/Olympus"', "publication.timezone 'Mars/Olympus'"),
    ('public_url = "http://127.0.0.1:8000"', 'public_url = "localhost"', "publication.public_url must be an http"),
])
def test_bad_keys_name_the_key_and_the_file(workdir: Path, old: str, new: str, message: str) -> None:
    edit_config(workdir, old, new)
    with pytest.raises(ConfigError) as info:
        load_settings(workdir / "digest.toml")
    assert message in str(info.value)
    assert str(workdir / "digest.toml") in str(info.value)


def test_environment_overrides_database_and_needs_a_secret(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_DATABASE_URL", f"sqlite:///{workdir / 'other.db'}")
    assert load_settings(workdir / "digest.toml").database_url.endswith("other.db")
    monkeypatch.delenv("DIGEST_SECRET_KEY")
    with pytest.raises(ConfigError, match="DIGEST_SECRET_KEY is not set"):
        load_settings(workdir / "digest.toml")
    generated = load_settings(workdir / "digest.toml", create_secret=True).secret_key
    assert len(generated) == 64
    assert generated not in (workdir / "digest.toml").read_text()
    assert (workdir / ".digest-secret").stat().st_mode & 0o077 == 0
    assert load_settings(workdir / "digest.toml").secret_key == generated


def test_cli_reports_a_bad_key_in_one_line_with_exit_2(workdir: Path) -> None:
    edit_config(workdir, 'transport = "outbox"', 'transport = "pigeon"')
    result = run_cli("collect", cwd=workdir)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, result.stderr  # rich may wrap one long line
    assert "delivery.transport" in result.stderr and "digest.toml" in result.stderr


def test_cli_missing_config_names_the_file(tmp_path: Path) -> None:
    result = run_cli("send", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.toml" in result.stderr and "not found" in result.stderr
    assert "Traceback" not in result.stderr
