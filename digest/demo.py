"""`digest init` and `digest demo`: a working folder from the bundled sample, then one whole issue."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import jinja2

from digest.errors import DigestError

SAMPLE = Path(__file__).resolve().parent / "sample"
SAMPLE_READERS = [
    ("ava.nguyen@example.com", "Ava"),
    ("liam.oconnor@example.com", "Liam"),
    ("mia.rossi@example.com", "Mia"),
    ("noah.smith@example.net", ""),
    ("zoe.tamihana@example.org", "Zoë"),
]


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
    shutil.copyfile(SAMPLE / "digest.toml", config)
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
