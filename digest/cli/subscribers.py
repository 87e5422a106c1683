"""`digest subscribers ...`: the admin's door onto the subscriber store (lists, consent, import/export).

Presentation only: every command opens a session, calls a function of subscribers (lifecycle, optin,
queries, search, csv_import, csv_export) or digest.confirmations that the tests and the web call too,
and prints the answer.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from digest.cli.common import ConfigOpt, console, err, progress_bar, reading, settings_for, stamp
from digest.errors import DigestError
from digest.wording import plural

ListOpt = Annotated[str | None, typer.Option("--list", "-l", help="The list (default: the digest's list).",
                                             show_default=False)]
StatusOpt = Annotated[str | None, typer.Option(
    "--status", "-s", help="pending, active, unsubscribed, bounced or complained.", show_default=False)]


app = typer.Typer(help="Readers, lists and consent: add, remove, import, export.", no_args_is_help=True)
lists_app = typer.Typer(help="Lists and their counts per status; `lists create` adds one.")
app.add_typer(lists_app, name="lists")

@app.command()
def add(email: Annotated[str, typer.Argument(help="The reader's address.")],
        name: Annotated[str, typer.Option(help="The reader's name.")] = "",
        list_: ListOpt = None,
        confirmed: Annotated[bool, typer.Option(
            "--confirmed", help="Consent was given elsewhere: active at once (needs --source).")] = False,
        source: Annotated[str, typer.Option(help="Where and when consent was given (the evidence).")] = "",
        timezone: Annotated[str, typer.Option(
            help="The reader's IANA time zone (Australia/Perth): with [schedule] local_delivery they get the issue "
                 "at the send's local time there (default: the publication's zone).")] = "",
        config: ConfigOpt = None) -> None:
    """Add a reader: a confirmation email is sent (double opt-in) unless --confirmed --source."""
    from digest import confirmations
    from digest.store import session_scope
    from subscribers import lifecycle, optin, queries, zones
    from subscribers.models import MembershipStatus

    settings = settings_for(config, create_secret=True)
    slug = list_ or settings.delivery.list
    try:
        zone = zones.parse_zone(timezone)  # checked before anything is written or sent
    except zones.InvalidZone as e:
        raise zones.InvalidZone(f"--timezone: {e}") from None
    with session_scope(settings.database_url) as session:
        if confirmed:
            member = optin.add_confirmed(session, email, name=name, list_slug=slug, evidence=source, by="admin (cli)")
            if zone:
                zones.set_zone(member.subscriber, zone)
            console.print(f"{member.subscriber.email}: {member.status} on {slug!r}"
                          + (" (consent recorded)" if member.status == MembershipStatus.ACTIVE else "")
                          + (f"; time zone {zone}" if zone else ""), markup=False)
            return
        outcome = confirmations.request(settings, session, email, name=name, list_slug=slug,
                                        source=f"admin (cli){': ' + source.strip() if source.strip() else ''}")
        address = lifecycle.normalize(email).email
        if outcome == optin.SUPPRESSED:
            raise DigestError(f"{address} was erased on request and cannot be added again")
        reader = lifecycle.find(session, address)
        if zone and reader is not None:
            zones.set_zone(reader, zone)
        status = queries.membership_status(session, address, slug) or MembershipStatus.PENDING
        messages = {optin.SENT: f"confirmation email sent; {status} until the reader confirms",
                    optin.ALREADY_ACTIVE: "already active: nothing sent",
                    optin.RECENTLY_SENT: f"a confirmation was sent recently: not sent again yet ({status})"}
        console.print(f"{address} on {slug!r}: {messages[outcome]}", markup=False)

@app.command()
def remove(email: Annotated[str, typer.Argument(help="The reader's address.")],
           list_: Annotated[str | None, typer.Option("--list", "-l", help="Only this list (default: all).")]
           = None,
           erase: Annotated[bool, typer.Option(
               "--erase", help="GDPR erasure: delete the person and their history; keep a hashed "
                               "suppression so no import adds them back.")] = False,
           config: ConfigOpt = None) -> None:
    """Unsubscribe a reader (from one list or all), or erase them entirely with --erase."""
    from digest.store import session_scope
    from subscribers import lifecycle

    settings = settings_for(config)
    with session_scope(settings.database_url) as session:
        if erase:
            if list_:
                raise DigestError("--erase removes the person from every list: leave out --list")
            address = lifecycle.normalize(email).email
            found = lifecycle.erase(session, email)
            console.print(f"{address}: " + ("erased (memberships and history deleted)" if found else
                                            "not a subscriber") + "; suppressed so it cannot be added again",
                          markup=False)
            return
        if list_:
            lifecycle.get_list(session, list_)  # a mistyped --list is an error naming the lists
        sub, n = lifecycle.unsubscribe_address(session, email, list_, source="admin (cli)")
        where = f"list {list_!r}" if list_ else "every list"
        console.print(f"{sub.email}: unsubscribed from {where} ({plural(n, 'membership')} changed)", markup=False)

@app.command("list")
def list_cmd(status: StatusOpt = None, list_: Annotated[str | None, typer.Option(
                 "--list", "-l", help="Only members of this list.")] = None,
             search: Annotated[str | None, typer.Option(help="Part of an address or name.")] = None,
             limit: Annotated[int, typer.Option(help="At most this many rows.")] = 50,
             config: ConfigOpt = None) -> None:
    """A table of subscribers, newest first."""
    from digest.store import session_scope
    from subscribers.search import Query
    from subscribers.search import search as do_search

    settings = settings_for(config)
    with session_scope(settings.database_url) as session:
        if list_:
            from subscribers.lifecycle import get_list

            get_list(session, list_)  # a mistyped --list is an error naming the lists, not an empty table
        page = do_search(session, Query(q=search or "", status=status or "", list_slug=list_ or "", size=limit))
        if page.error:
            raise DigestError(page.error)
        total = f"{'about ' if page.estimated else ''}{page.count}{'+' if page.capped else ''}"
        table = Table(title=f"Subscribers: {total} match" + ("" if total == "1" else "es"))
        for col in ("email", "name", "lists", "created"):
            table.add_column(col)
        for row in page.rows:
            table.add_row(escape(row.email), escape(row.name),
                          ", ".join(f"{slug}:{s}" for slug, s in row.memberships), stamp(settings, row.created_at))
        console.print(table)
        if page.count > len(page.rows) or page.capped:
            console.print(f"... {total} in all; {len(page.rows)} shown (use --limit, --search or export)")

@app.command()
def show(email: Annotated[str, typer.Argument(help="The reader's address.")], config: ConfigOpt = None) -> None:
    """One reader: details, memberships and the consent history (who, what, when, source, IP)."""
    from subscribers.profile import profile

    with reading(config) as (settings, db):  # the config's database and zone alone: no SQLAlchemy, no pydantic
        p = profile(db, email)
        s = p.subscriber
        console.print(f"[bold]{escape(s.email)}[/]" + (f" ({escape(s.name)})" if s.name else ""), highlight=False)
        console.print(f"  since {stamp(settings, s.created_at)}; categories: {', '.join(s.categories) or '(none)'}",
                      markup=False)
        for key, value in sorted((s.attributes or {}).items()):
            console.print(f"  {key}: {value}", highlight=False, markup=False)
        table = Table(title="Memberships")
        for col in ("list", "status", "since", "confirmed", "confirmation sent"):
            table.add_column(col)
        for m in p.memberships:
            table.add_row(m.slug, m.status, stamp(settings, m.updated_at), stamp(settings, m.confirmed_at),
                          stamp(settings, m.confirm_sent_at))
        console.print(table)
        console.print(f"History ({settings.timezone}):")
        for h in p.history:  # one line each, so it reads (and greps) the same in a pipe
            status = f"{h.old or '-'} -> {h.new}" if h.new and h.new != h.old else (h.new or "")
            parts = [stamp(settings, h.at), h.list_slug or "-", h.kind, status,
                     f"source: {h.source}" if h.source else "",
                     f"IP {h.ip}" if h.ip else "", f"({h.detail})" if h.detail else ""]
            console.print("  " + "  ".join(x for x in parts if x), highlight=False, soft_wrap=True, markup=False)

@app.command("import")
def import_cmd(file: Annotated[Path, typer.Argument(help="The CSV file (header with an email column).")],
               list_: ListOpt = None,
               preconfirmed: Annotated[bool, typer.Option(
                   "--preconfirmed", help="Consent was given elsewhere: active at once (needs --source).")]
               = False,
               source: Annotated[str, typer.Option(help="Where and when consent was given.")] = "",
               dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and count; write nothing.")]
               = False,
               create_lists: Annotated[bool, typer.Option(
                   "--create-lists", help="Create lists named in the `lists` column that do not exist.")]
               = False,
               batch_size: Annotated[int | None, typer.Option(
                   help="Rows per transaction (all or nothing; default: 20,000).",
                   show_default=False)] = None,
               config: ConfigOpt = None) -> None:
    """Import readers from CSV; bad rows go to FILE.rejects.csv with their row number and reason."""
    from digest.sources.categories import known_categories
    from digest.store import session_factory
    from subscribers.csv_import import BATCH_SIZE, import_csv
    from subscribers.lifecycle import configured_list

    settings = settings_for(config, create_secret=True)
    with session_factory(settings.database_url)() as session, progress_bar("importing") as bar:
        configured_list(session, settings.delivery.list)  # the digest's own list exists (committed by the import)
        task = bar.add_task("import", total=None)
        report = import_csv(session, file, list_slug=list_ or settings.delivery.list,
                            preconfirmed=preconfirmed, source=source, dry_run=dry_run,
                            create_lists=create_lists, categories=known_categories(settings),
                            batch_size=max(1, BATCH_SIZE if batch_size is None else batch_size),
                            progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(report.summary())
    if report.blank:
        console.print(f"  {plural(report.blank, 'empty row')} skipped")
    if report.kept_withdrawn:
        console.print(f"  {plural(report.kept_withdrawn, 'row')} named an unsubscribed, bounced or complained "
                      "membership: kept as it was (an import never re-activates one)")
    if report.pending_only:
        console.print(f"  {plural(report.pending_only, 'membership')} marked active in the file were imported as "
                      "pending (use --preconfirmed --source to record consent)")
    for w in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}")
    if report.rejects_path:
        console.print(f"  see {report.rejects_path} for every row not applied as written, with the reason",
                      markup=False)
    if not preconfirmed and report.added and not dry_run:
        console.print("  new readers are pending: `digest subscribers confirm-pending` emails them to confirm")

@app.command()
def export(list_: Annotated[str | None, typer.Option("--list", "-l", help="Only members of this list.")] = None,
           status: StatusOpt = None,
           output: Annotated[Path | None, typer.Option("--output", "-o", help="The CSV file (default: stdout).")]
           = None,
           config: ConfigOpt = None) -> None:
    """Export subscribers as CSV (imports back: email,name,lists,categories,created_at,attributes...)."""
    from digest.store import session_factory
    from subscribers.csv_export import export_csv

    settings = settings_for(config)
    with session_factory(settings.database_url)() as session, progress_bar("exporting") as bar:
        task = bar.add_task("export", total=None)
        update = lambda done, total: bar.update(task, completed=done, total=total)  # noqa: E731
        if output is None:
            n = export_csv(session, sys.stdout, list_slug=list_, status=status, progress=update)
        else:
            tmp = output.with_name(output.name + ".part")
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                n = export_csv(session, f, list_slug=list_, status=status, progress=update)
            tmp.replace(output)
    if output is not None:
        console.print(f"{plural(n, 'subscriber')} written to {output}", markup=False)

@lists_app.callback(invoke_without_command=True)
def lists(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Every list with its members counted per status."""
    if ctx.invoked_subcommand is not None:
        return
    from digest.store import session_scope
    from subscribers import lifecycle
    from subscribers.models import MembershipStatus
    from subscribers.queries import list_counts

    settings = settings_for(config)
    with session_scope(settings.database_url) as session:
        lifecycle.configured_list(session, settings.delivery.list)
        rows = list_counts(session)
    table = Table(title="Lists")
    for col in ("list", "name"):
        table.add_column(col)
    for col in (*MembershipStatus, "total"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.slug, escape(r.name), *(str(r.counts[s]) for s in MembershipStatus), str(r.total))
    console.print(table)

@lists_app.command("create")
def lists_create(slug: Annotated[str, typer.Argument(help="Short name: letters, digits, - and _.")],
                 name: Annotated[str, typer.Option(help="The name readers see.")] = "",
                 config: ConfigOpt = None) -> None:
    """Create a list (readers join it by double opt-in, or by import)."""
    from digest.store import session_scope
    from subscribers import lifecycle

    settings = settings_for(config)
    with session_scope(settings.database_url) as session:
        mlist = lifecycle.create_list(session, slug, name)
        console.print(f"list {mlist.slug!r} ({mlist.name}) created", markup=False)

@app.command("confirm-pending")
def confirm_pending(list_: Annotated[str | None, typer.Option("--list", "-l", help="Only this list.")] = None,
                    again: Annotated[bool, typer.Option(
                        "--again", help="Also those whose earlier confirmation link has expired.")] = False,
                    limit: Annotated[int | None, typer.Option(help="At most this many emails.")] = None,
                    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count; send nothing.")] = False,
                    config: ConfigOpt = None) -> None:
    """Email a confirmation link to pending readers who have not been sent one (e.g. after an import)."""
    from digest import confirmations
    from digest.store import session_factory
    from subscribers import optin

    settings = settings_for(config, create_secret=True)
    with session_factory(settings.database_url)() as session:
        if list_:
            from subscribers.lifecycle import get_list

            get_list(session, list_)  # a mistyped --list is an error naming the lists
        if dry_run:
            n = optin.Pending(settings, session, list_slug=list_, again=again).count(limit)
            console.print(f"would send {plural(n, 'confirmation email')} by {settings.delivery.transport}")
            return
        with progress_bar("confirmations") as bar:
            task = bar.add_task("send", total=None)
            report = confirmations.send_pending(settings, session, list_slug=list_, again=again, limit=limit,
                                                progress=lambda d, t: bar.update(task, completed=d, total=t))
    console.print(f"{plural(report.sent, 'confirmation email')} sent, {report.failed} failed")
    for e in report.errors:
        err.print(f"[red]error:[/] {escape(e)}")
    if report.failed:
        raise typer.Exit(1)
