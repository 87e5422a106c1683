"""Where digest.toml is, and the few raw values a read-only command needs from it: the one place their
rules live, with the standard library alone (tomllib, os, zoneinfo).

digest.config's pydantic schema calls these functions for the same keys (the file's path and parse,
`[database] url`, `publication.timezone`), so `digest status` and `digest subscribers show`, which read
only these (issue 16: start-up within 2x of `import typer`, which pydantic alone exceeds), and every
other command cannot disagree about where the database is. `basics` checks those keys only; the rest of
the file is checked by any command that loads the whole schema (digest.config.load_settings).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from digest.errors import ConfigError

DEFAULT_CONFIG = "digest.toml"
ENV_CONFIG = "DIGEST_CONFIG"
ENV_DATABASE_URL = "DIGEST_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite:///digest.db"
DEFAULT_TIMEZONE = "UTC"


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config, else $DIGEST_CONFIG, else ./digest.toml."""
    return Path(explicit or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG)


def read(path: str | os.PathLike[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """The config file's path (absolute) and its tables as TOML gives them; a missing or unparsable file
    is a ConfigError naming it."""
    cfg = config_path(path)
    if not cfg.exists():
        raise ConfigError(f"{cfg}: config file not found (run `digest init` to write one, or pass --config)")
    try:
        data = tomllib.loads(cfg.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{cfg}: not valid TOML: {e}") from None
    return cfg.resolve(), data


def database_url(url: str, base_dir: Path | None) -> str:
    """A database URL checked, a relative SQLite path made absolute against the config file's folder
    (so a command run from another folder finds the same database). ValueError gives the reason."""
    if "://" not in url:
        raise ValueError(f"{url!r} is not a database URL (e.g. sqlite:///digest.db)")
    if base_dir and url.startswith("sqlite:///") and not url.startswith("sqlite:////") \
            and url != "sqlite:///:memory:":
        url = "sqlite:///" + str((Path(base_dir) / url.removeprefix("sqlite:///")).resolve())
    return url


def time_zone(value: str) -> str:
    """An IANA zone name checked against the zone database; ValueError gives the reason."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a known time zone") from None
    return value


@dataclass(frozen=True)
class Basics:
    """What a read-only command needs: the config file, where the database is, the publication's zone."""

    path: Path
    database_url: str
    timezone: str

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def basics(path: str | os.PathLike[str] | None = None) -> Basics:
    """The database URL ($DIGEST_DATABASE_URL, else `[database] url`, else the default) and
    `publication.timezone`, each checked as digest.config checks it, with its words: one line naming the
    file and the key."""
    cfg, data = read(path)
    url = os.environ.get(ENV_DATABASE_URL) or _string(cfg, data, "database", "url") or DEFAULT_DATABASE_URL
    where = f"database.url (from {ENV_DATABASE_URL})" if os.environ.get(ENV_DATABASE_URL) else "database.url"
    try:
        url = database_url(url, cfg.parent)
    except ValueError as e:
        raise ConfigError(f"{cfg}: {where} {e}") from None
    zone = _string(cfg, data, "publication", "timezone") or DEFAULT_TIMEZONE
    try:
        time_zone(zone)
    except ValueError as e:
        raise ConfigError(f"{cfg}: publication.timezone {e}") from None
    return Basics(cfg, url, zone)


def _string(cfg: Path, data: dict[str, Any], table: str, key: str) -> str:
    """A string key of a table ("" when absent: an empty string is an unset key, as digest.config reads it)."""
    section = data.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{cfg}: {table} must be a table, not {section!r}")
    value = section.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"{cfg}: {table}.{key} must be a string, not {value!r}")
    return value
