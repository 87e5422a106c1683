"""`digest init` and `digest demo`: a working folder from the bundled sample, then one whole issue."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from digest.config import Settings, commented_toml
from digest.errors import DigestError

if TYPE_CHECKING:
    from digest.issues import Draft

SAMPLE = Path(__file__).resolve().parent / "sample"
#: the logo addresses in the bundled directory.csv, replaced by the demo's own media address
SAMPLE_LOGOS = "https://directory.example.com/logos/"
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
    "web": {"media_dir": "sample/media"},
}


@dataclass
class InitResult:
    config: Path
    written: list[Path]


def media_url(public_url: str) -> str:
    """Where `digest serve` serves the sample's pictures and logos (`[web] media_dir`)."""
    return public_url.rstrip("/") + "/media"


def write_sample_feed(target: Path, now: datetime | None = None, *, media: str = "", later: bool = False) -> None:
    """The sample feed with dates in the last two weeks, so the sample is always recent.

    `later` adds the stories "published since" the first issue: `digest demo` writes them after it has
    sent issue 1, so the next issue's draft has new articles for an editor to review.
    """
    now = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    dates = [format_datetime(now - timedelta(hours=6 + 19 * i)) for i in range(15)]
    later_dates = [format_datetime(now - timedelta(minutes=20 + 35 * i)) for i in range(5)]
    media = media or media_url(SAMPLE_CONFIG["publication"]["public_url"])
    template = jinja2.Template((SAMPLE / "feed.xml.j2").read_text(encoding="utf-8"), autoescape=False)
    target.write_text(template.render(dates=dates, later_dates=later_dates, media=media, later=later),
                      encoding="utf-8")


def write_sample_directory(target: Path, media: str) -> None:
    """The sample directory, its logos served by `digest serve` (see `media_url`)."""
    text = (SAMPLE / "directory.csv").read_text(encoding="utf-8")
    target.write_text(text.replace(SAMPLE_LOGOS, media.rstrip("/") + "/"), encoding="utf-8")


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
        write_sample_directory(directory, media_url(SAMPLE_CONFIG["publication"]["public_url"]))
        written.append(directory)
    media = folder / "sample" / "media"
    if not media.exists():
        shutil.copytree(SAMPLE / "media", media)
        written.append(media)
    return InitResult(config, written)


def leave_next_draft(settings: Settings, folder: Path) -> Draft | None:
    """After issue 1: the sample feed gains the stories "published since", and the next issue is drafted
    from them, so an editor has something to review, pin, exclude and approve in `digest serve`.

    Only for the bundled sample feed; nothing is drafted when it brings nothing new (a draft with no
    article would only be skipped).
    """
    from digest.issues import build_draft  # the database and the pipeline only when a demo runs
    from digest.store import session_scope

    feed = folder / "sample" / "feed.xml"
    if not feed.exists() or "sample/feed.xml" not in settings.sources.feeds:
        return None
    write_sample_feed(feed, media=media_url(settings.publication.public_url), later=True)
    with session_scope(settings.database_url) as session:
        draft = build_draft(settings, session)
        if not draft.issue.articles:
            session.rollback()
            return None
        session.commit()
        return draft
