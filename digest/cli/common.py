"""What every CLI area shares: the --config option, settings loading, consoles, progress bars.

Kept apart from digest.cli so area modules can import it at module level without an import cycle
(Typer resolves the annotations of command functions from their module's globals).

Start-up: `digest --help` imports every command module, so no module of digest.cli imports anything heavy
(the database, the settings schema, APScheduler, the web app, HTTP clients) at module level; a command
imports what it needs when it runs. tests/test_cli_startup.py holds them to it.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:  # types only: `digest --help` imports this module, and start-up counts (issue 16)
    from typing import Protocol
    from zoneinfo import ZoneInfo

    from rich.progress import Progress

    from digest.config import Settings
    from digest.config_file import Basics
    from digest.dbapi import Reader

    class _Zoned(Protocol):
        @property
        def tz(self) -> ZoneInfo: ...

    class _Published(Protocol):
        @property
        def publication(self) -> _Zoned: ...

console = Console()
# printed to a file, a pipe or cron's mail, a line is not hard-wrapped at an assumed 80 columns (a wrap in
# the middle of "(Gmail clips at 102 KB)" is a broken line to a log reader or a grep); a terminal wraps
console.soft_wrap = not console.is_terminal
err = Console(stderr=True, soft_wrap=True)  # one error, one line, whatever the width

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", envvar="DIGEST_CONFIG", help="The config file (default ./digest.toml).",
    show_default=False)]


def settings_for(config: Path | None, *, create_secret: bool = False) -> Settings:
    """Load settings and bring the database schema up to date (cheap when it already is); the command's
    start-up ends here (`started`)."""
    from digest.config import load_settings
    from digest.store import migrate

    settings = load_settings(config, create_secret=create_secret)
    migrate(settings.database_url)
    started()
    return settings


# Start-up (issue 16). Before it does any work a command makes about 150,000 objects that live as long as
# the process: modules, classes, functions, SQLAlchemy's and pydantic's registries. At CPython's default
# thresholds the cyclic collector ran some 250 times meanwhile, each young collection carrying them on and
# each older one scanning them again: 0.05-0.1 s of `digest send`'s start-up, for no garbage. So the process's
# entry point (`digest.cli.main.run`) makes the first generation's threshold large (`starting`), and once
# the command has its settings and schema (`started`) what exists is frozen out of the collector's sight
# (https://docs.python.org/3/library/gc.html#gc.freeze) and the thresholds are back to what they were. A
# command that never loads settings (`--help`, `status`) keeps the large threshold: it still collects, every
# 100,000 new objects. The tests call `main` in their own process, whose collector is left alone.
STARTUP_THRESHOLD = 100_000
_thresholds: tuple[int, int, int] | None = None  # the collector's own, while `starting` has changed them


def starting() -> None:
    global _thresholds
    _thresholds = gc.get_threshold()
    gc.set_threshold(STARTUP_THRESHOLD, *_thresholds[1:])


def started() -> None:
    global _thresholds
    if _thresholds is not None:
        gc.freeze()
        gc.set_threshold(*_thresholds)
        _thresholds = None


@contextmanager
def reading(config: Path | None) -> Iterator[tuple[Basics, Reader]]:
    """For a command that only reads (`status`, `subscribers show`): the config's database URL and zone
    (digest.config_file, without the pydantic schema) and a read-only connection (digest.dbapi, without
    SQLAlchemy): issue 16, start-up within 2x of `import typer`. A database that is missing or not at the
    newest migration (or a URL digest.dbapi does not open) goes the way every command goes: migrated by
    digest.store (created on first use), then read over a SQLAlchemy session with the same queries."""
    from digest import dbapi
    from digest.config_file import basics
    from digest.revisions import migration_heads

    found = basics(config)
    url = found.database_url
    if dbapi.readable(url) and (not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).is_file()):
        with dbapi.connect(url) as db:
            if dbapi.schema_version(db) == migration_heads():
                yield found, db
                return
    from digest.store import migrate, session_scope

    migrate(url)
    with session_scope(url) as session:
        yield found, dbapi.reader(session)


def progress_bar(label: str) -> Progress:
    """A rich progress bar on stderr; silent when stderr is not a terminal (unless DIGEST_PROGRESS=1)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, transient=False,
                    disable=not err.is_terminal and os.environ.get("DIGEST_PROGRESS") != "1")


def stamp(settings: _Published | Basics, moment: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A stored (UTC) moment in the publication's zone, the zone named: digest.moments.stamp's rule, written
    here because digest.moments brings APScheduler, a sixth of `digest subscribers show`'s start-up (issue
    16). tests/test_cli_startup.py holds the two to the same output. Takes the Settings or, for a command
    that only reads, digest.config_file.Basics (the zone alone)."""
    if moment is None:
        return ""
    tz = settings.tz if hasattr(settings, "tz") else settings.publication.tz
    local = moment.astimezone(tz)
    return f"{local.strftime(fmt)} {local.tzname()}"
