"""`digest recall ISSUE`: stop an approved issue that is already scheduled at SendGrid (digest.deliver.batches)."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from digest.cli.common import ConfigOpt, console, err, settings_for

app = typer.Typer()


@app.command()
def recall(issue: Annotated[int, typer.Argument(help="Issue number.")],
           by: Annotated[str, typer.Option(help="Who recalls it (recorded; default: cli:<your user name>).")] = "",
           config: ConfigOpt = None) -> None:
    """Cancel every batch of the issue still 10+ minutes from its send moment: those readers get nothing and
    are queued again; the issue is recalled. Lists what could not be recalled. With local delivery sent zone by
    zone (SMTP, outbox, SendGrid without scheduling), the zones whose moment has not come are recalled."""
    from digest.deliver.batches import canceller
    from digest.deliver.batches import recall as do_recall
    from digest.issues import get_issue
    from digest.store import session_scope

    settings = settings_for(config)
    from digest.deliver.zones import recall_waiting, zone_by_zone

    if zone_by_zone(settings):
        with session_scope(settings.database_url) as session:
            zoned = recall_waiting(session, get_issue(session, issue), by=by or f"cli:{getpass.getuser()}")
        first, *lines = zoned.lines()
        console.print(first, highlight=False)
        for line in lines:
            console.print(line, highlight=False)
        return
    cancels = canceller(settings)
    with session_scope(settings.database_url) as session:
        row = get_issue(session, issue)
        report = do_recall(session, row, cancels, by=by or f"cli:{getpass.getuser()}")
    first, *rest = report.lines()
    console.print(first, highlight=False)
    for line in rest:
        err.print(f"[yellow]{line}[/]", highlight=False)
