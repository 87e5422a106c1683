"""`digest schedule`, `digest hold`, `digest skip`: the weekly schedule and the editors' brakes."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from digest import issues
from digest.cli.common import ConfigOpt, console, settings_for
from digest.schedule import serve, show
from digest.store import session_scope

app = typer.Typer()


def cli_user() -> str:
    """Who acts at the command line, for the issue's history."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


@app.command("schedule")
def schedule_command(
    config: ConfigOpt = None,
    show_only: Annotated[bool, typer.Option("--show", help="Print the next draft and send moments; run nothing.")]
    = False,
) -> None:
    """Run the weekly schedule in the foreground: draft, notify the editors, send. Ctrl-C stops."""
    settings = settings_for(config, create_secret=True)
    if show_only:
        show(settings)
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code = serve(settings)
    if code:
        raise typer.Exit(code)

@app.command("hold")
def hold_command(number: Annotated[int | None, typer.Argument(help="Issue number (default: the draft).")] = None,
                 reason: Annotated[str, typer.Option(help="Why, for the issue's history.")] = "",
                 config: ConfigOpt = None) -> None:
    """Keep the draft (or approved issue) from going out at its send moment."""
    settings = settings_for(config)
    with session_scope(settings.database_url) as session:
        row = issues.hold(session, number, by=cli_user(), reason=reason)
        console.print(f"issue {row.number} held: it will not be sent (approve it to send it by hand)")

@app.command("skip")
def skip_command(number: Annotated[int | None, typer.Argument(help="Issue number (default: the draft).")] = None,
                 reason: Annotated[str, typer.Option(help="Why, for the issue's history.")] = "",
                 config: ConfigOpt = None) -> None:
    """Send nothing this time; the next draft reuses the issue's number."""
    settings = settings_for(config)
    with session_scope(settings.database_url) as session:
        row = issues.skip(session, number, by=cli_user(), reason=reason)
        console.print(f"issue {row.number} skipped: nothing will be sent for it")

