"""`digest report N`: one issue's report, the same figures as the page /admin/issues/N."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from digest.cli.common import ConfigOpt, console, settings_for

app = typer.Typer()

OPENS_NOTE = ("opens are approximate (Apple Mail Privacy Protection pre-fetches images): clicks lead. "
              "Figures count readers.")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 or c in ("article", "supplier", "variant", "link", "appeal",
                                                               "listings", "edition") else "right",
                         overflow="fold")
    for r in rows:
        table.add_row(*(escape(c) for c in r))
    return table


@app.command("report")
def report(number: Annotated[int, typer.Argument(help="The issue's number.")], config: ConfigOpt = None) -> None:
    """One issue: delivered, opens and clicks, unsubscribes, bounces, complaints; clicks per article,
    per listing and on the appeal (per variant); opens and clicks over the first 7 days."""
    from digest.reporting.issue import issue_report
    from digest.store import session_scope

    settings = settings_for(config)
    with session_scope(settings.database_url) as session:
        r = issue_report(session, settings, number)
    sent = f" · sent {r.sent_at:%Y-%m-%d %H:%M} UTC" if r.sent_at else ""
    console.print(f"[bold]Issue #{r.number}[/] {escape(r.subject)} · {r.status} · list {escape(r.list_slug)}{sent}",
                  highlight=False)
    delivered = "–" if r.delivered is None else str(r.delivered)
    console.print(_table("Figures", ("figure", "readers", "rate"), [
        ("sent", str(r.sent), ""),
        ("delivered", delivered, "" if r.delivered is not None else "not reported by this transport"),
        ("clicked", str(r.clicked), _pct(r.rate(r.clicked))),
        ("opened (approximate)", str(r.opened), _pct(r.rate(r.opened))),
        ("unsubscribed (7 days)", str(r.unsubscribed), _pct(r.rate(r.unsubscribed))),
        ("bounced", str(r.bounced), ""), ("complained", str(r.complained), "")]))
    console.print(f"[dim]{OPENS_NOTE}[/]", highlight=False)
    if r.timeline:
        console.print(_table("The first 7 days", ("day", "clicked", "opened (≈)"),
                             [(d, "–" if c is None else str(c), "–" if o is None else str(o))
                              for d, o, c in r.timeline]))
    console.print(_table("Clicks per article (in the issue's order)", ("#", "article", "readers", "clicks"),
                         [(str(i), a.label, str(a.readers), str(a.clicks)) for i, a in enumerate(r.articles, 1)]))
    console.print(_table("Clicks per listing", ("supplier", "reached", "readers", "clicks", "rate"),
                         [(x.label, str(x.reach or 0), str(x.readers), str(x.clicks), _pct(x.rate))
                          for x in r.listings]))
    console.print(_table("The appeal", ("variant", "reached", "readers", "clicks", "rate"),
                         [(x.key, str(x.reach or 0), str(x.readers), str(x.clicks), _pct(x.rate)) for x in r.appeal]))
    console.print(_table("Editions", ("edition", "readers", "appeal", "listings"),
                         [(e.label, str(e.readers), e.appeal or "none", ", ".join(e.listings) or "none")
                          for e in r.editions]))
    if r.unknown_edition:
        console.print(f"[yellow]{r.unknown_edition} reader(s) were sent this issue before editions were recorded: "
                      "counted as the editor's edition[/]", highlight=False)
    if r.other:
        console.print(_table("Other links", ("link", "readers", "clicks"),
                             [(x.label, str(x.readers), str(x.clicks)) for x in r.other]))
