"""The `digest` command (Typer): a thin door onto the same functions the web app and the tests call.

The root only gathers the groups, one module each; errors a user can cause print one line and exit 2,
tracebacks are for bugs.
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from digest.cli import deliveries, issue, listings, recall, report, schedule, subscribers, users, web
from digest.cli.common import err
from digest.errors import DigestError

app = typer.Typer(help="Build and send a weekly newsletter digest.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)

# a group without a name adds its commands at the top level (`digest draft`, `digest schedule`,
# `digest hold`, `digest serve`, ...); the order here is the order `digest --help` lists them in
app.add_typer(issue.app)
app.add_typer(subscribers.app, name="subscribers")
app.add_typer(deliveries.app, name="deliveries")
app.add_typer(recall.app)
app.add_typer(report.app)
app.add_typer(users.app, name="users")
app.add_typer(listings.app, name="listings")
app.add_typer(schedule.app)
app.add_typer(web.app)


def main() -> None:
    """Entry point: usage errors are Typer's (exit 2); our own user errors print one line and exit 2."""
    try:
        app()
    except DigestError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)  # `[delivry]` is text, not markup
        sys.exit(2)
