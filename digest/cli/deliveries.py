"""`digest deliveries ...`: the admin's door onto the delivery ledger of an issue.

`show` lists the ledger's counts and any batch of unknown fate; `resolve` settles those batches by the
admin's decision (they went out, or send them again); `retry-failed` queues failed readers again.
Nothing here sends anything.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from digest.cli.common import ConfigOpt, console, err, settings_for, stamp
from digest.wording import plural

app = typer.Typer(help="The delivery ledger of an issue: counts, and batches of unknown fate.",
                         no_args_is_help=True)

@app.command()
def show(issue: Annotated[int | None, typer.Argument(help="Issue number (default: the newest).")] = None,
         config: ConfigOpt = None) -> None:
    """The ledger of an issue: readers per status, and each batch of unknown fate."""
    from digest.deliver.ledger import DeliveryStatus, counts, unknown_batches
    from digest.issues import get_issue, newest_issue
    from digest.locks import sender_of
    from digest.store import session_scope

    settings = settings_for(config)
    with session_scope(settings.database_url) as session:
        row = get_issue(session, issue) if issue is not None else newest_issue(session)
        if row is None:
            console.print("no issues yet")
            return
        ledger = counts(session, row.id)
        console.print(f"issue {row.number} ({row.status}): {row.subject!r}")
        console.print("  " + ", ".join(f"{status} {ledger.get(status, 0)}" for status in DeliveryStatus))
        holder = sender_of(session, row.id)
        if holder:
            console.print(f"  being sent now by {holder}: claimed readers are in flight")
            return
        batches = unknown_batches(session, row.id)
        if not batches:
            console.print("  no batch of unknown fate")
            return
        table = Table(title=f"Batches of unknown fate in issue {row.number}")
        for col in ("batch", "readers", "claimed at", "first readers", "note"):
            table.add_column(col)
        for b in batches:
            claimed = stamp(settings, b.claimed_at, "%Y-%m-%d %H:%M:%S")
            table.add_row(b.batch[:12], str(b.readers), claimed, ", ".join(b.sample),
                          b.error or "the sender stopped before recording the answer")
        console.print(table)
        err.print("Check the provider's activity log for these readers, then "
                  f"`digest deliveries resolve {row.number} --as submitted` (they got it) or "
                  "`--as retry` (send again); add --batch ID to settle one batch at a time.")

@app.command()
def resolve(issue: Annotated[int, typer.Argument(help="Issue number.")],
            as_: Annotated[str, typer.Option("--as", help="submitted (they got it) or retry (send again).",
                                             show_default=False)],
            batch: Annotated[str | None, typer.Option(help="Only this batch (an id or its first characters).",
                                                      show_default=False)] = None,
            config: ConfigOpt = None) -> None:
    """Settle readers of unknown fate: the admin decides, nothing is guessed."""
    from digest.deliver.ledger import resolve as do_resolve
    from digest.issues import get_issue
    from digest.store import session_scope

    settings = settings_for(config)
    with session_scope(settings.database_url) as session:
        row = get_issue(session, issue)
        n = do_resolve(session, row, as_.strip().lower(), batch=batch)
        if not n:
            console.print(f"issue {row.number}: no reader of unknown fate{' in that batch' if batch else ''}")
        elif as_.strip().lower() == "submitted":
            console.print(f"issue {row.number}: {plural(n, 'reader')} recorded as submitted; never sent it again")
        else:
            console.print(f"issue {row.number}: {plural(n, 'reader')} queued again; run `digest send` to send to them")
        console.print(f"issue {row.number} is {row.status}")

@app.command("retry-failed")
def retry_failed(issue: Annotated[int, typer.Argument(help="Issue number.")], config: ConfigOpt = None) -> None:
    """Queue the readers whose copy failed again (after fixing the cause), for the next `digest send`."""
    from digest.deliver.ledger import requeue_failed
    from digest.issues import get_issue
    from digest.store import session_scope

    settings = settings_for(config)
    with session_scope(settings.database_url) as session:
        row = get_issue(session, issue)
        n = requeue_failed(session, row)
        console.print(f"issue {row.number}: {plural(n, 'failed reader')} queued again"
                      + ("; run `digest send` to send to them" if n else ""))
