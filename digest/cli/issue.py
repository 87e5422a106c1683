"""The issue's commands, at the top level of `digest`: init, collect, draft, approve, preview, send, demo,
status. Each calls digest.issues (and digest.issue_queries, digest.reports), as the editors' pages do.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from digest.cli.common import ConfigOpt, console, err, progress_bar, reading, settings_for, stamp
from digest.errors import DigestError
from digest.wording import plural

if TYPE_CHECKING:
    from digest.config import Settings

app = typer.Typer()


@app.command()
def init(folder: Annotated[Path, typer.Argument(help="Where to write digest.toml.")] = Path("."),
         force: Annotated[bool, typer.Option(help="Overwrite an existing digest.toml.")] = False) -> None:
    """Write a commented digest.toml (and the sample sources) to start from."""
    from digest.demo import init as do_init

    result = do_init(folder, force=force)
    for path in result.written:
        console.print(f"wrote {path}")
    console.print("Next: `digest collect` to see what the next issue would hold.")


@app.command()
def collect(config: ConfigOpt = None) -> None:
    """Fetch the sources and show what would go into the next issue."""
    from digest.compose import compose
    from digest.issues import feature_history
    from digest.sources.collect import collect as do_collect
    from digest.store import session_scope
    from digest.store import utcnow as now

    settings = settings_for(config, create_secret=True)
    with session_scope(settings.database_url) as session:
        collected = do_collect(session, settings)
        issue = compose(settings, 0, collected.articles, collected.listings, feature_history(session), now())
    table = Table(title=f"Next issue: {len(issue.articles)} articles, {len(issue.headlines)} headlines, "
                        f"{len(issue.listings)} listings")
    table.add_column("section")
    table.add_column("date")
    table.add_column("title")
    table.add_column("key", style="dim")
    for i, a in enumerate(issue.articles):
        table.add_row("top story" if i == 0 else "article", stamp(settings, a.published, "%Y-%m-%d"), a.title,
                      a.key[:12])
    for a in issue.headlines:
        table.add_row("more news", stamp(settings, a.published, "%Y-%m-%d"), a.title, a.key[:12])
    for x in issue.listings:
        table.add_row("listing", x.tier or "", f"{x.name} ({' / '.join(x.categories)})", "")
    console.print(table)
    _print_health(collected.feed_health)
    for problem in collected.problems:
        err.print(f"[yellow]problem:[/] {problem}")


def _print_health(health: list[dict]) -> None:
    if not health:
        return
    table = Table(title="Feed health")
    for col in ("feed", "health", "items", "new", "failures", "quiet runs", "error"):
        table.add_column(col)
    for h in health:
        colour = {"ok": "green", "quiet": "yellow", "failing": "red"}[h["health"]]
        table.add_row(h["feed"], f"[{colour}]{h['health']}[/]", str(h["items"]), str(h["new"]),
                      str(h["failures"]), str(h["quiet_runs"]), h["error"])
    console.print(table)


@app.command()
def draft(config: ConfigOpt = None,
          exclude: Annotated[list[str] | None, typer.Option(help="Article key (or prefix) to leave out.")] = None,
          pin: Annotated[list[str] | None, typer.Option(help="Article key (or prefix) to put first.")] = None,
          feature: Annotated[list[str] | None, typer.Option(help="Supplier name to feature.")] = None,
          reset: Annotated[bool, typer.Option("--reset", help="Forget earlier --exclude/--pin/--feature.")] = False,
          offline: Annotated[bool, typer.Option("--offline", help="Skip the link check (no HEAD requests).")]
          = False,
          notify: Annotated[bool, typer.Option("--notify", help="Email the editors the summary and link.")]
          = False) -> None:
    """Build (or rebuild) the next issue's draft, check it (links too, unless --offline) and show the checks.

    Adjustments are kept across rebuilds; an approved issue that is rebuilt becomes a draft again."""
    from digest import issues
    from digest.issue_queries import expand_keys
    from digest.issue_status import IssueStatus
    from digest.store import session_scope

    settings = settings_for(config, create_secret=True)
    with session_scope(settings.database_url) as session:
        before = issues.newest_issue(session)
        was = (before.number, before.status) if before is not None else None
        empty: list[str] | None = [] if reset else None
        d = issues.build_draft(settings, session, offline=offline, by=_who(),
                               excluded=expand_keys(session, exclude) if exclude else empty,
                               pinned=expand_keys(session, pin) if pin else empty,
                               featured=feature if feature else empty)
        summary = issues.summarize(settings, d.row)
    if was is not None and was[0] == summary.number and was[1] in (
            IssueStatus.APPROVED, IssueStatus.HELD, IssueStatus.SKIPPED):
        console.print(f"[yellow]issue {summary.number} was {was[1]}: rebuilt, it is a draft again "
                      f"(approve it again to send it)[/]")
    console.print(f"Draft of issue {summary.number}: {summary.subject!r}")
    console.print(f"{summary.articles} articles, {summary.headlines} headlines, {summary.listings} listings, "
                  f"HTML {summary.html_bytes / 1024:.1f} KB")
    if summary.send_at is not None:
        from digest.moments import describe

        console.print(f"send at {describe(settings, summary.send_at)}", highlight=False)
    if d.issue.excluded or d.issue.pinned or d.issue.featured:
        console.print(f"adjustments: excluded {len(d.issue.excluded)}, pinned {len(d.issue.pinned)}, "
                      f"featured {', '.join(d.issue.featured) or 'none'}")
    _print_checks(summary.checks)
    if offline:
        console.print("  [dim]links not checked (--offline)[/]")
    for problem in d.collected.problems:
        err.print(f"[yellow]problem:[/] {problem}")
    if notify:
        from digest.notices import Notice, notify_editors

        problems = notify_editors(settings, Notice("draft", f"Issue {summary.number} is ready for review",
                                                   (), summary, (f"Approve it: `digest approve {summary.number}`.",)))
        for failure in problems:
            err.print(f"[yellow]problem:[/] {failure}")
        if not problems:
            console.print(f"editors notified: {', '.join(settings.schedule.editors)}")


def _who() -> str:
    """Who did it, for the issue's history: the local user at the command line."""
    from digest.cli.schedule import cli_user

    return cli_user()


def _print_checks(checks: list[dict]) -> None:
    marks = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}
    for c in checks:
        console.print(f"  {marks[c['level']]} {c['name']}: {c['message']}")


@app.command()
def approve(number: Annotated[int | None, typer.Argument(help="Issue number (default: the draft).")] = None,
            allow_empty: Annotated[bool, typer.Option(
                "--allow-empty", help="Approve even with fewer new articles than [schedule] min_articles.")]
            = False,
            config: ConfigOpt = None) -> None:
    """Approve the draft (or a held issue): it is frozen and goes out at its send moment (or by `digest send`)."""
    from digest import issues
    from digest.store import session_scope

    settings = settings_for(config)
    with session_scope(settings.database_url) as session:
        row = issues.approve(session, number, by=_who(), min_articles=settings.schedule.min_articles,
                             allow_empty=allow_empty)
        summary = issues.summarize(settings, row)
    console.print(f"issue {summary.number} approved: {summary.subject!r}")
    if summary.send_at is not None:
        from digest.moments import describe
        from digest.store import utcnow

        if summary.send_at > utcnow():
            console.print(f"it goes out at {describe(settings, summary.send_at)} "
                          "(when `digest schedule` runs), or now with `digest send`", highlight=False)
        else:
            console.print(f"its send moment ({describe(settings, summary.send_at)}) has passed: "
                          "send it with `digest send`", highlight=False)
    _print_checks(summary.problems)
    if any(c.get("level") == "fail" for c in summary.checks):
        err.print("[red]warning:[/] a check failed; approved anyway")


@app.command()
def preview(config: ConfigOpt = None,
            out: Annotated[Path, typer.Option(help="Where to write the HTML.")] = Path("preview.html"),
            text: Annotated[Path, typer.Option(help="Where to write the plain text.")] = Path("preview.txt"),
            open_: Annotated[bool, typer.Option("--open", help="Open the HTML in a browser.")] = False,
            offline: Annotated[bool, typer.Option("--offline", help="If a draft is built, skip the link check.")]
            = False) -> None:
    """Write the current draft (or, if there is none, what one would hold) to files and show its status and
    checks. It changes nothing in the database: a draft built here is not kept (`digest draft` keeps one)."""
    from digest import issues
    from digest.store import session_factory

    settings = settings_for(config, create_secret=True)
    with session_factory(settings.database_url)() as session:
        row = issues.current_issue(session)
        built = row is None
        if row is None:
            row = issues.build_draft(settings, session, offline=offline, by=_who()).row
        out.write_text(row.html, encoding="utf-8")
        text.write_text(row.text, encoding="utf-8")
        summary = issues.summarize(settings, row)
        session.rollback()  # a preview records nothing
    for line in summary.lines(settings.publication.tz):
        console.print(line, highlight=False)
    console.print(f"HTML -> {out}; text -> {text}")
    if built:
        console.print("there is no draft yet: this is what one would hold (not kept; `digest draft` builds it)")
    _print_checks(summary.checks)
    if open_:
        import webbrowser  # on demand: `digest --help` need not load it

        webbrowser.open(out.resolve().as_uri())


@app.command()
def send(config: ConfigOpt = None,
         dry_run: Annotated[bool, typer.Option("--dry-run", help="Show who would get what; send nothing.")] = False,
         to: Annotated[str | None, typer.Option("--to", help="Send a test copy to this address only.")] = None,
         workers: Annotated[int, typer.Option("--workers", min=1, help="Send processes on this host, sharing the "
                                              "issue (PostgreSQL only; see docs/deployment.md).")] = 1,
         join: Annotated[bool, typer.Option("--join", help="Only help send an issue already being sent (another "
                                            "worker, e.g. on another host); never start one.")] = False,
         ) -> None:
    """Send to every active reader of the list: the issue being sent, else the approved one, else the draft
    (or a new one). A held issue is not sent until it is approved."""
    from digest import issues

    settings = settings_for(config, create_secret=True)
    if workers > 1 and settings.database_url.startswith("sqlite"):
        raise DigestError(f"--workers {workers}: SQLite allows one sender per issue (one writer, no row locks); "
                          "several workers need PostgreSQL (database.url)")
    if to:
        console.print(issues.send_test(settings, to))
        return
    if dry_run:
        _dry_run(settings)
        return
    from digest import stopping
    from digest.deliver.protocol import SendInterrupted

    started: list[subprocess.Popen[bytes]] = []
    # SIGTERM/SIGHUP (systemd, docker, `kill`, a closed terminal): stop as Ctrl-C would, with the requests in
    # flight answered and recorded; passed on to the other workers; exit 128 + the signal (143, 129)
    with stopping.on_signals(forward_to=lambda: [p.pid for p in started if p.returncode is None]):
        try:
            with progress_bar("sending") as bar:
                task = bar.add_task("send", total=None)
                outcome = issues.send(settings, progress=lambda done, total: bar.update(task, completed=done,
                                                                                         total=total),
                                      join=join, on_sending=lambda _number: started.extend(_start_workers(
                                          settings, workers - 1)))
        except SendInterrupted as e:
            _wait_workers(started)
            r = e.report
            if r is not None:
                console.print(f"issue {r.issue_number}: submitted {r.submitted}, failed {r.failed}, "
                              f"unknown {r.unknown} before stopping")
            err.print(f"[yellow]{e}[/]", highlight=False)
            raise typer.Exit(stopping.exit_code()) from None
        except BaseException:
            _wait_workers(started)
            raise
        workers_ok = _wait_workers(started)  # a stop asked meanwhile reaches them too
    _print_send(outcome)
    if stopping.requested() and any(p.returncode == stopping.exit_code() for p in started):
        err.print(f"[yellow]stopped by {stopping.signal_name()}[/] while the other workers were sending; "
                  "`digest send` resumes the rest", highlight=False)
        raise typer.Exit(stopping.exit_code())
    if not workers_ok or (outcome.report and not outcome.report.ok):
        raise typer.Exit(1)


def _zone_line(z) -> str:  # type: ignore[no-untyped-def]
    """One zone's progress (digest.reports.ZoneProgress) in a line: its moment there and in UTC, then counts."""
    due = f"{z.due_there} = {z.due_at:%Y-%m-%d %H:%M} UTC" if z.due_at else "?"
    parts = [f"{z.submitted} submitted", f"{z.scheduled} scheduled"]
    parts += [f"{getattr(z, k)} {k}" for k in ("queued", "failed", "skipped", "unknown") if getattr(z, k)]
    out = f"; out {z.out_at:%Y-%m-%d %H:%M} UTC" if z.out_at else ""
    delivered = f"; delivered {z.delivered}" + (f" (last {z.delivered_at:%Y-%m-%d %H:%M} UTC)"
                                                if z.delivered_at else "")
    return f"{z.zone}: due {due}; {plural(z.readers, 'reader')}: {', '.join(parts)}{out}{delivered}"


def _start_workers(settings: Settings, n: int) -> list[subprocess.Popen[bytes]]:
    """`digest send --join` n times: the other workers of `--workers`, started once the issue is sending."""
    cmd = [sys.executable, "-m", "digest", "send", "--join", "--config", str(settings.path)]
    return [subprocess.Popen(cmd) for _ in range(n)]


def _wait_workers(started: list[subprocess.Popen[bytes]]) -> bool:
    """Wait for the other workers; True when each ended well. One that died is reported: its batches are
    taken over by the others when its lease runs out (docs/deployment.md)."""
    from digest import stopping

    ok = True
    for proc in started:
        code = proc.wait()
        if code == stopping.exit_code() and stopping.requested():
            ok = False
            err.print(f"[yellow]worker {proc.pid} stopped by {stopping.signal_name()}[/]: what it had in flight "
                      "is recorded", highlight=False)
        elif code:
            ok = False
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
            err.print(f"[yellow]worker {proc.pid} {how}[/]: its claimed batches are taken over after its lease",
                      highlight=False)
    return ok


def _dry_run(settings: Settings) -> None:
    from digest.issues import build_draft, current_issue, issue_of, recipients
    from digest.store import session_factory

    with session_factory(settings.database_url)() as session:
        row = current_issue(session) or build_draft(settings, session).row
        readers = recipients(session, row.list_slug)
        issue = issue_of(row)
        console.print(f"issue {row.number} ({row.status}): {row.subject!r}; {len(issue.articles)} articles, "
                      f"{len(issue.listings)} listings, HTML {row.html_bytes / 1024:.1f} KB")
        console.print(f"would send to {plural(len(readers), 'active reader')} of list {row.list_slug!r} "
                      f"by {settings.delivery.transport}:")
        for sub in readers[:20]:
            console.print(f"  {sub.email}")
        if len(readers) > 20:
            console.print(f"  ... and {len(readers) - 20} more")
        session.rollback()  # a dry run records nothing


def _print_send(outcome) -> None:  # type: ignore[no-untyped-def]
    if outcome.report is None:
        console.print(outcome.message)
        return
    r = outcome.report
    row = outcome.row
    console.print(f"issue {r.issue_number}: {r.subject!r}")
    console.print(f"  submitted {r.submitted}, failed {r.failed}, skipped {r.skipped}, "
                  f"already sent earlier {r.already}, unknown {r.unknown}; HTML {row.html_bytes / 1024:.1f} KB; "
                  f"{plural(outcome.editions, 'edition')} rendered; status {row.status}")
    if r.waiting and r.next_due is not None:  # local delivery: the scheduler sends them at their moment
        console.print(f"  {plural(r.waiting, 'reader')} wait for their zone's moment (next "
                      f"{r.next_due:%Y-%m-%d %H:%M} UTC): `digest schedule` sends each zone then", highlight=False)
    for e in r.errors:
        err.print(f"[red]error:[/] {e}")


@app.command()
def demo(folder: Annotated[Path, typer.Argument(help="The folder to work in.")] = Path(".")) -> None:
    """The whole job on the embedded default: sample sources, SQLite, sample readers, an outbox folder."""
    from digest.demo import SAMPLE_READERS, leave_next_draft
    from digest.demo import init as do_init
    from digest.issues import issue_of, newest_issue, open_issue
    from digest.issues import send as do_send
    from digest.store import session_scope
    from subscribers import lifecycle

    config = folder / "digest.toml"
    if not config.exists():
        do_init(folder)
        console.print(f"wrote {config} and sample sources in {folder / 'sample'}")
    settings = settings_for(config, create_secret=True)
    with session_scope(settings.database_url) as session:
        for email, name in SAMPLE_READERS:
            lifecycle.subscribe(session, email, name=name, list_slug=settings.delivery.list,
                                source="digest demo: sample reader", confirmed=True)
    with progress_bar("sending") as bar:
        task = bar.add_task("send", total=None)
        # a draft the demo left for review waits for an editor's approval: the demo never sends it itself
        outcome = do_send(settings, progress=lambda d, t: bar.update(task, completed=d, total=t),
                          require_approval=True)
    with session_scope(settings.database_url) as session:
        row = outcome.row or open_issue(session) or newest_issue(session)
        html_out, text_out = folder / "preview.html", folder / "preview.txt"
        if row is not None:
            html_out.write_text(row.html, encoding="utf-8")
            text_out.write_text(row.text, encoding="utf-8")
    outbox = Path(settings.resolve(settings.delivery.outbox_dir))
    if outcome.report is None:
        console.print(f"{outcome.message}; nobody was sent anything twice.")
    elif row is not None:
        issue = issue_of(row)
        r = outcome.report
        console.print(f"[bold]Issue {r.issue_number}[/]: {r.subject}")
        console.print(f"  articles {len(issue.articles)} + {len(issue.headlines)} headlines, "
                      f"listings {len(issue.listings)}, appeal {'yes' if issue.appeal else 'no'}")
        console.print(f"  readers sent {r.submitted} (already had it: {r.already}, failed: {r.failed}), "
                      f"HTML {row.html_bytes / 1024:.1f} KB (Gmail clips at 102 KB)")
    console.print(f"  outbox: {outbox}/  preview: {folder / 'preview.html'}, {folder / 'preview.txt'}")
    console.print(f"  database: {settings.database_url}")
    draft = leave_next_draft(settings, folder) if outcome.report is not None else None
    if draft is not None:
        url = settings.publication.public_url.rstrip("/")
        console.print(f"[bold]Next:[/] issue {draft.row.number} is a draft with "
                      f"{plural(len(draft.issue.articles), 'new article')} for you to review. Make a login "
                      "(`digest users add you@example.com --role editor`), run `digest serve` and open "
                      f"{url}/admin/draft; or `digest preview`, then `digest approve` and `digest send`.",
                      highlight=False)


@app.command()
def status(config: ConfigOpt = None) -> None:
    """Per issue: status and delivery figures."""
    from digest.reports import issue_figures, zone_progress

    with reading(config) as (_, db):  # the config's database alone: no SQLAlchemy, no pydantic (issue 16)
        rows = issue_figures(db)
        by_zone = zone_progress(db, [r.issue for r in rows[:3]])  # local delivery: the newest issues
    figures = ("readers", "submitted", "failed", "skipped", "unknown", "delivered", "bounced", "complained",
               "opened", "clicked")
    if console.width < 150:  # a narrow terminal: one short paragraph per issue instead of a wide table
        for r in rows:
            console.print(f"[bold]#{r.issue}[/] {r.status}: {r.subject}", highlight=False)
            console.print("   " + ", ".join(f"{c} {getattr(r, c)}" for c in figures), highlight=False)
        if not rows:
            console.print("no issues yet")
    else:
        table = Table(title="Issues")
        table.add_column("#", justify="right")
        table.add_column("status")
        for c in figures:
            table.add_column(c, justify="right")
        table.add_column("subject", no_wrap=True, overflow="ellipsis", max_width=40)
        for r in rows:
            table.add_row(str(r.issue), r.status, *(str(getattr(r, c)) for c in figures), r.subject)
        console.print(table)
    for r in rows:  # SendGrid's scheduled batches: when readers get it; a recall
        if r.scheduled and r.delivered_at is not None:
            console.print(f"#{r.issue}: {r.scheduled} reader(s) scheduled at SendGrid for "
                          f"{r.delivered_at:%Y-%m-%d %H:%M} UTC (`digest recall {r.issue}` can still stop "
                          "those 10+ minutes away)", highlight=False)
        elif r.delivered_at is not None and r.submitted:
            console.print(f"#{r.issue}: delivered at {r.delivered_at:%Y-%m-%d %H:%M} UTC", highlight=False)
        if r.recalled_at is not None:
            console.print(f"#{r.issue}: recalled by {r.recalled_by} at {r.recalled_at:%Y-%m-%d %H:%M} UTC",
                          highlight=False)
    for number, zones in by_zone.items():
        console.print(f"#{number} by time zone (local delivery):", highlight=False)
        for z in zones:
            console.print(f"  {_zone_line(z)}", highlight=False)
    unknown = sum(r.unknown for r in rows)
    if unknown:
        err.print(f"[red]{plural(unknown, 'reader')} in batches of unknown fate[/]: resolve with "
                  "`digest deliveries resolve ISSUE --as submitted|retry`")
