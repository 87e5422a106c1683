"""`digest schedule`, `digest hold`, `digest skip`: the weekly schedule and the editors' brakes."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from digest.cli.common import ConfigOpt, console, settings_for

if TYPE_CHECKING:
    from digest.config import Settings

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
    standby: Annotated[bool, typer.Option("--standby", help="Wait as a standby while another scheduler is active, "
                                          "even one on this host (on another host it always does).")] = False,
) -> None:
    """Run the weekly schedule in the foreground: draft, notify the editors, send. Ctrl-C stops."""
    from digest.schedule.runner import serve

    settings = settings_for(config, create_secret=True)
    if show_only:
        show(settings)
        return
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code = serve(settings, say=partial(console.print, soft_wrap=True, highlight=False), standby=standby)
    if code:
        raise typer.Exit(code)

@app.command("hold")
def hold_command(number: Annotated[int | None, typer.Argument(help="Issue number (default: the draft).")] = None,
                 reason: Annotated[str, typer.Option(help="Why, for the issue's history.")] = "",
                 config: ConfigOpt = None) -> None:
    """Keep the draft (or approved issue) from going out at its send moment."""
    from digest import issues
    from digest.store import session_scope

    settings = settings_for(config)
    with session_scope(settings.database_url) as session:
        row = issues.hold(session, number, by=cli_user(), reason=reason)
        console.print(f"issue {row.number} held: it will not be sent (approve it to send it by hand)")

@app.command("skip")
def skip_command(number: Annotated[int | None, typer.Argument(help="Issue number (default: the draft).")] = None,
                 reason: Annotated[str, typer.Option(help="Why, for the issue's history.")] = "",
                 config: ConfigOpt = None) -> None:
    """Send nothing this time; the next draft reuses the issue's number."""
    from digest import issues
    from digest.store import session_scope

    settings = settings_for(config)
    with session_scope(settings.database_url) as session:
        row = issues.skip(session, number, by=cli_user(), reason=reason)
        console.print(f"issue {row.number} skipped: nothing will be sent for it")


def reader_zones_now(settings: Settings) -> dict[str, int]:
    """Local delivery: active readers per zone (none when it is off)."""
    if not settings.schedule.local_delivery:
        return {}
    from digest.schedule.jobs import reader_zones
    from digest.store import session_scope

    with session_scope(settings.database_url) as session:
        return reader_zones(session, settings)


def show(settings: Settings, out: Console = console, now: datetime | None = None) -> None:
    """`digest schedule --show`: the next moments, local and UTC, and what the store and lock hold."""
    from zoneinfo import ZoneInfo

    from digest import issues
    from digest.locks import scheduler_lock_state
    from digest.moments import describe, next_moments, zone_moments
    from digest.schedule.jobs import DRAFT_JOB, SEND_JOB
    from digest.schedule.runner import stored_jobs
    from digest.store import session_scope, utcnow

    now = now or utcnow()
    say = partial(out.print, soft_wrap=True, highlight=False)
    sc = settings.schedule
    zones = reader_zones_now(settings)
    m = next_moments(settings, now, tuple(zones))
    say(f"schedule: {sc.day_of_week} {sc.hour:02d}:{sc.minute:02d} {settings.publication.timezone}, "
              f"draft {sc.review_hours} h before; when_empty = {sc.when_empty} (min_articles = "
              f"{sc.min_articles}), if_not_approved = {sc.if_not_approved}")
    say(f"next draft: {describe(settings, m.draft_at)}")
    say(f"next send:  {describe(settings, m.send_at)}")
    if settings.schedule.local_delivery:
        say("local delivery: the next send in each reader's zone (readers), earliest first:")
        for zone, at in zone_moments(settings, m.send_at, zones or [None]).items():
            local = at.astimezone(ZoneInfo(zone))
            say(f"  {zone} ({zones.get(zone, 0)}): {local:%a %d %b %Y %H:%M} {local.tzname()} = "
                f"{at:%Y-%m-%d %H:%M} UTC")
        closes = m.review_from + timedelta(hours=sc.review_hours)
        say(f"  the review window closes at the first: {describe(settings, closes)}")
    if m.review_from < now:
        say(f"  (its draft was due {describe(settings, m.review_from)}: the review window is open)")
    stored = stored_jobs(settings)
    for job_id, name in ((DRAFT_JOB, "draft"), (SEND_JOB, "send")):
        due = stored.get(job_id)
        if due is not None:
            late = " (missed: runs once at start if within the grace time)" if due < now else ""
            say(f"stored {name} job: {describe(settings, due)}{late}")
    say(f"scheduler: {scheduler_lock_state(settings, now)}")
    say(f"editors: {', '.join(sc.editors) or '(none: set [schedule] editors)'}")
    with session_scope(settings.database_url) as session:
        row = issues.current_issue(session)
        if row is not None:
            first, *rest = issues.summarize(settings, row).lines(settings.publication.tz)
            say(f"current {first}")
            for line in rest:
                say(f"  {line}")
