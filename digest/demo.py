"""`digest init` and `digest demo`: a working folder from the bundled sample, then one whole issue."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import jinja2

from digest.config import commented_toml
from digest.errors import DigestError

SAMPLE = Path(__file__).resolve().parent / "sample"
SAMPLE_READERS = [
    ("ava.nguyen@example.com", "Ava"),
    ("liam.oconnor@example.com", "Liam"),
    ("mia.rossi@example.com", "Mia"),
    ("noah.smith@example.net", ""),
    ("zoe.tamihana@example.org", "Zoë"),
]

# The sample publication: the values `digest init` writes into digest.toml (every other key is written as
# its default, commented out, from the schema in digest.config). Required keys must have a value here.
SAMPLE_CONFIG: dict[str, dict[str, Any]] = {
    "publication": {
        "name": "Leisure Industry Weekly",
        "site_url": "https://news.example.com",
        "public_url": "http://127.0.0.1:8000",
        "from_email": "digest@news.example.com",
        "from_name": "Leisure Industry Weekly",
        "reply_to": "editor@news.example.com",
        "postal_address": "PO Box 100, Sydney NSW 2000, Australia",
        "timezone": "Australia/Sydney",
    },
    "sources": {
        "feeds": ["sample/feed.xml"],
        "directory": "sample/directory.csv",
        "window_days": 14,
        "max_articles": 8,
        "headlines": 6,
        "featured_listings": 3,
        "rotation_issues": 4,
    },
    "appeal": {
        "title": "Asking a small favour",
        "body": "We hope you value the news we publish. It is independent, free to read, with no pay walls "
                "and no pop-ups.\n\nAs an independent publisher, can we ask you to support us by subscribing "
                "to the printed magazine, if you don't already? It publishes longer, in-depth features on "
                "aquatics, attractions, fitness, sport, tourism and venues.\n\nSubscriptions cost just $90 a "
                "year.",
        "button": "Subscribe to the magazine",
        "url": "https://news.example.com/subscribe",
    },
    "delivery": {
        "transport": "outbox",
        "outbox_dir": "outbox",
        "list": "weekly",
        "smtp": {"host": "localhost", "port": 587, "security": "starttls", "password_env": "DIGEST_SMTP_PASSWORD"},
        "sendgrid": {"api_url": "https://api.sendgrid.com", "concurrency": 4},
    },
    "schedule": {
        "day_of_week": "mon",
        "hour": 7,
        "minute": 0,
        "review_hours": 24,
        "min_articles": 1,
        "when_empty": "skip",
        "if_not_approved": "hold",
        "editors": ["editor@news.example.com"],
    },
    "database": {"url": "sqlite:///digest.db"},
}


@dataclass
class InitResult:
    config: Path
    written: list[Path]


def write_sample_feed(target: Path, now: datetime | None = None) -> None:
    """The sample feed with dates in the last two weeks, so the sample is always recent."""
    now = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    dates = [format_datetime(now - timedelta(hours=6 + 19 * i)) for i in range(15)]
    template = jinja2.Template((SAMPLE / "feed.xml.j2").read_text(encoding="utf-8"), autoescape=False)
    target.write_text(template.render(dates=dates), encoding="utf-8")


def init(folder: Path, *, force: bool = False) -> InitResult:
    """Write a commented digest.toml and the sample sources next to it (existing files are kept)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "digest.toml"
    written: list[Path] = []
    if config.exists() and not force:
        raise DigestError(f"{config} already exists (use --force to overwrite)")
    config.write_text(commented_toml(SAMPLE_CONFIG), encoding="utf-8")
    written.append(config)
    (folder / "sample").mkdir(exist_ok=True)
    feed = folder / "sample" / "feed.xml"
    if not feed.exists():
        write_sample_feed(feed)
        written.append(feed)
    directory = folder / "sample" / "directory.csv"
    if not directory.exists():
        shutil.copyfile(SAMPLE / "directory.csv", directory)
        written.append(directory)
    return InitResult(config, written)
