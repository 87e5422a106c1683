"""What every CLI area shares: the --config option, settings loading, consoles, progress bars.

Kept apart from digest.cli so area modules can import it at module level without an import cycle
(Typer resolves the annotations of command functions from their module's globals).

Start-up: `digest --help` imports every command module, so no module of digest.cli imports anything heavy
(the database, the settings schema, APScheduler, the web app, HTTP clients) at module level; a command
imports what it needs when it runs. tests/test_cli_startup.py holds them to it.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress

    from digest.config import Settings

console = Console()
# printed to a file, a pipe or cron's mail, a line is not hard-wrapped at an assumed 80 columns (a wrap in
# the middle of "(Gmail clips at 102 KB)" is a broken line to a log reader or a grep); a terminal wraps
console.soft_wrap = not console.is_terminal
err = Console(stderr=True, soft_wrap=True)  # one error, one line, whatever the width

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", envvar="DIGEST_CONFIG", help="The config file (default ./digest.toml).",
    show_default=False)]


def settings_for(config: Path | None, *, create_secret: bool = False) -> Settings:
    """Load settings and bring the database schema up to date (cheap when it already is)."""
    from digest.config import load_settings
    from digest.store import migrate

    settings = load_settings(config, create_secret=create_secret)
    migrate(settings.database_url)
    return settings


def progress_bar(label: str) -> Progress:
    """A rich progress bar on stderr; silent when stderr is not a terminal (unless DIGEST_PROGRESS=1)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, transient=False,
                    disable=not err.is_terminal and os.environ.get("DIGEST_PROGRESS") != "1")


def stamp(settings: Settings, moment: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A stored (UTC) moment in the publication's zone, the zone named: digest.moments.stamp's rule, written
    here because digest.moments brings APScheduler, a sixth of `digest subscribers show`'s start-up (issue
    16). tests/test_cli_startup.py holds the two to the same output."""
    if moment is None:
        return ""
    local = moment.astimezone(settings.publication.tz)
    return f"{local.strftime(fmt)} {local.tzname()}"
