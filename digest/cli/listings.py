"""`digest listings ...`: the supplier directory and its featured rotation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from digest.cli.common import ConfigOpt, console, err, settings_for
from digest.wording import plural

if TYPE_CHECKING:
    from digest.models import Listing


def _issues_text(numbers: tuple[int, ...], limit: int = 12) -> str:
    shown = ", ".join(str(n) for n in numbers[-limit:])
    return ("…, " if len(numbers) > limit else "") + shown


app = typer.Typer(help="The supplier directory and its featured rotation.", no_args_is_help=True)

@app.command("report")
def report(config: ConfigOpt = None,
           last: Annotated[int | None, typer.Option(help="Only the last N issues (default: all).")] = None,
           csv_out: Annotated[Path | None, typer.Option("--csv", help="Also write the table to this CSV file.")]
           = None) -> None:
    """How often each supplier was featured, from the choices stored with every issue sent."""
    from rich.table import Table

    from digest.reporting.suppliers import SupplierReach, supplier_reach
    from digest.reports import feature_report
    from digest.sources.directory import read_directory
    from digest.store import session_scope

    settings = settings_for(config)
    directory: list[Listing] = []
    if settings.sources.directory:
        directory, problems = read_directory(settings.resolve(settings.sources.directory),
                                             timeout=settings.sources.timeout_seconds)
        for problem in problems:
            err.print(f"[yellow]problem:[/] {problem}", highlight=False)
    with session_scope(settings.database_url) as session:
        rows, considered = feature_report(session, directory, last=last)
        reach = supplier_reach(session, settings, last=last)
    span = f"issues {considered[0]}–{considered[-1]}" if considered else "no issue sent yet"
    table = Table(title=f"Featured suppliers: {plural(len(considered), 'issue')} ({span}), "
                        f"{settings.sources.featured_listings} per issue")
    numbers = ("featured", "share", "last issue", "reached", "clicked", "click rate")
    for column in ("supplier", "tier", "featured", "share", "last issue", "reached", "clicked", "click rate",
                   "issues"):
        table.add_column(column, justify="right" if column in numbers else "left")
    for r in rows:
        share = f"{r.featured / len(considered):.0%}" if considered else "–"
        name = r.name if r.in_directory else f"{r.name} [dim](no longer in the directory)[/]"
        got = reach.get(r.name.strip().casefold()) or SupplierReach("", r.name)
        table.add_row(name, r.tier, str(r.featured), share, str(r.last or "–"), str(got.reach), str(got.readers),
                      f"{got.rate:.1%}" if got.rate is not None else "–", _issues_text(r.issues))
    console.print("reached: readers whose copy showed the listing and arrived; clicked: readers who followed "
                  "its link (sent issues only)", highlight=False)
    console.print(table)
    if csv_out:
        import csv

        from subscribers.csv_safe import safe_row

        with csv_out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["supplier", "tier", "categories", "featured", "issues_considered", "last_issue",
                             "issues", "in_directory", "readers_reached", "readers_clicked", "clicks"])
            for r in rows:
                got = reach.get(r.name.strip().casefold()) or SupplierReach("", r.name)
                # supplier names come from the directory file: neutralised against formulas (csv_safe)
                writer.writerow(safe_row([r.name, r.tier, r.categories, r.featured, len(considered), r.last or "",
                                          " ".join(map(str, r.issues)), "yes" if r.in_directory else "no",
                                          got.reach, got.readers, got.clicks]))
        console.print(f"wrote {csv_out}")
