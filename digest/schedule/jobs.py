"""What the scheduled jobs do: build the draft and tell the editors, send (or hold, or skip) at the send
moment, report a moment missed by more than its grace time.

Plain functions that take the moment they are for and `now`, so tests (and a person) can run them at
any time; `runner` calls them from APScheduler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from digest import issues
from digest.config import Settings
from digest.deliver.ledger import queued_zones
from digest.deliver.protocol import SendInterrupted, SendReport, Transport
from digest.issue_status import IssueStatus, add_note, move
from digest.moments import describe, local_and_utc, local_delivery, next_moments, zone_moments
from digest.notices import Notice, notify_editors
from digest.store import session_scope, utcnow
from digest.wording import plural
from subscribers import counts
from subscribers.queries import active_zones

log = logging.getLogger(__name__)

#: the two jobs' ids in APScheduler's job store
DRAFT_JOB = "digest-draft"
SEND_JOB = "digest-send"
#: the list counts' periodic refresh (kept in memory, not in the job store: a missed run matters to nobody)
COUNTS_JOB = "digest-counts"


@dataclass
class JobResult:
    """What a job did: drafted | sent | stopped | held | skipped | missed | nothing, and in words."""

    action: str
    number: int | None
    message: str
    problems: list[str] = field(default_factory=list)
    report: SendReport | None = None

    def __str__(self) -> str:
        return self.message + "".join(f"; {p}" for p in self.problems)


def _actions(number: int) -> tuple[str, ...]:
    return (f"Approve it: `digest approve {number}` (or on the review page).",
            "Change it: `digest draft --exclude ARTICLE --pin ARTICLE --feature LISTING` (it becomes a draft again).",
            f"Keep it back: `digest hold {number}`; send nothing this time: `digest skip {number}`.")


def _fate_if_not_approved(settings: Settings, summary: issues.Summary) -> str:
    sc = settings.schedule
    if summary.new_articles < sc.min_articles and sc.when_empty != "send":
        fate = {"skip": "skipped (nothing sent)", "hold": "held (nothing sent)"}[sc.when_empty]
        return (f"It has {plural(summary.new_articles, 'new article')}, fewer than min_articles = {sc.min_articles}: "
                f"unless you approve it, it will be {fate} at the send time (when_empty = {sc.when_empty}).")
    fate = "held, not sent" if sc.if_not_approved == "hold" else "sent as it is"
    return f"If it is not approved by the send time, it will be {fate} (if_not_approved = {sc.if_not_approved})."


def reader_zones(session: Session, settings: Settings) -> dict[str, int]:
    """Local delivery: how many active readers of the list are in each zone (no zone: the publication's)."""
    out: dict[str, int] = {}
    for zone, n in active_zones(session, settings.delivery.list).items():
        name = zone or settings.publication.timezone
        out[name] = out.get(name, 0) + n
    return out


def schedule_zones(settings: Settings) -> tuple[str, ...]:
    """The zones the local-delivery jobs fire for: the readers' and those still queued for their moment
    (a reader who moved since the snapshot is still due at the zone frozen with them)."""
    if not local_delivery(settings):
        return ()
    with session_scope(settings.database_url) as session:
        return tuple(sorted(set(reader_zones(session, settings)) | queued_zones(session)))


def first_and_last(settings: Settings, send_at: datetime, zones: dict[str, int]) -> list[str]:
    """The draft notice's lines on when the first and the last readers get the issue (local delivery)."""
    moments = zone_moments(settings, send_at, zones or [None])
    (first, first_at), (last, last_at) = next(iter(moments.items())), list(moments.items())[-1]
    counted = {z: zones.get(z, 0) for z in moments}
    if first_at == last_at:
        return [f"Every reader gets it at {describe(settings, first_at)} (local delivery: one zone)."]
    return [f"Local delivery: the first readers ({first}, {plural(counted[first], 'reader')}) get it at "
            f"{_in(first_at, first)}, the last ({last}, {plural(counted[last], 'reader')}) at {_in(last_at, last)}; "
            f"{len(moments)} zones. The review window closes at the first.",
            "Approve it before then, or it is held or skipped for every zone."]


def _in(moment: datetime, zone: str) -> str:
    local = moment.astimezone(ZoneInfo(zone))
    return f"{local:%a %d %b %Y %H:%M} {local.tzname()} ({moment:%Y-%m-%d %H:%M} UTC)"


def _settled(session: Session, send_at: datetime) -> JobResult | None:
    """An issue for this very send moment that was already sent, held, skipped or recalled (by hand or by an
    earlier run of the job): the schedule leaves it as it is, so nothing goes out twice or against an
    editor's decision (with local delivery a later zone's moment finds the issue recalled: nothing more)."""
    newest = issues.newest_issue(session)
    settled = (IssueStatus.SENT, IssueStatus.HELD, IssueStatus.SKIPPED, IssueStatus.RECALLED)
    if newest is not None and newest.send_at == send_at and newest.status in settled:
        return JobResult("nothing", newest.number, f"issue {newest.number} was already {newest.status} "
                         "for this send: nothing to do")
    return None


def run_draft(settings: Settings, *, send_at: datetime, now: datetime | None = None,
              transport: Transport | None = None, offline: bool | None = None) -> JobResult:
    """Build (or rebuild) the draft for the send at `send_at` and tell the editors."""
    now = now or utcnow()
    offline = not settings.schedule.check_links if offline is None else offline
    with session_scope(settings.database_url) as session:
        settled = _settled(session, send_at)
        if settled is not None:
            return settled
        row = issues.open_issue(session)
        if row is not None and row.status == IssueStatus.SENDING:
            return JobResult("nothing", row.number, f"issue {row.number} is still being sent: no new draft")
        if row is not None and row.status == IssueStatus.APPROVED and row.send_at == send_at:
            return JobResult("nothing", row.number,
                             f"issue {row.number} is already approved for this send: left as it is")
        draft = issues.build_draft(settings, session, now=now, send_at=send_at, offline=offline, by="the schedule")
        summary = issues.summarize(settings, draft.row)
        zones = reader_zones(session, settings) if local_delivery(settings) else None
    local, _ = local_and_utc(settings, send_at)
    message = [_fate_if_not_approved(settings, summary)]
    if zones is not None:
        message += first_and_last(settings, send_at, zones)
    if summary.problems:
        message.append(f"{plural(len(summary.problems), 'check')} need a look before it goes out.")
    headline = f"Issue {summary.number} is ready for review (send {local})"
    feeds_failed = next((c for c in summary.checks if c["name"] == "feeds" and c["level"] == "fail"), None)
    if feeds_failed is not None:  # the notice leads with it: without feeds the issue has nothing new
        message.insert(0, f"Feeds: {feeds_failed['message']}.")
        headline = f"Every feed failed: issue {summary.number} needs a look (send {local})"
    notice = Notice("draft", headline, tuple(message), summary, _actions(summary.number))
    problems = notify_editors(settings, notice, transport=transport)
    return JobResult("drafted", summary.number, f"draft of issue {summary.number} built for the send at "
                     f"{describe(settings, send_at)}" + ("" if problems else "; editors notified"), problems)


def _conclude(settings: Settings, row_number: int, action: str, reason: str, now: datetime,
              transport: Transport | None) -> JobResult:
    """Hold or skip the issue for `reason` and tell the editors."""
    with session_scope(settings.database_url) as session:
        change = issues.hold if action == "held" else issues.skip
        row = change(session, row_number, by="the schedule", reason=reason, now=now)
        summary = issues.summarize(settings, row)
    if action == "held":
        headline = f"Issue {row_number} was held, not sent"
        steps: tuple[str, ...] = (f"Send it now: `digest approve {row_number}` then `digest send`.",
                 "Or leave it: the next scheduled draft rebuilds it with the newest articles.")
    else:
        headline = f"Issue {row_number} was skipped: nothing was sent"
        steps = ("The next scheduled draft reuses its number, with the newest articles.",)
    notice = Notice(action, headline, (reason[0].upper() + reason[1:] + ".",), summary, steps)
    problems = notify_editors(settings, notice, transport=transport)
    return JobResult(action, row_number, f"issue {row_number} {action}: {reason}", problems)


def run_send(settings: Settings, *, send_at: datetime, now: datetime | None = None,
             transport: Transport | None = None) -> JobResult:
    """At the send moment: send the approved issue, or apply `when_empty` / `if_not_approved`.

    Never sends twice: an issue for this moment that was already sent (by hand, or by an earlier run),
    held or skipped means there is nothing to do. An issue in the middle of sending is resumed (the
    deliveries ledger sends each reader once).
    """
    now = now or utcnow()
    sc = settings.schedule
    with session_scope(settings.database_url) as session:
        settled = _settled(session, send_at)
        row = issues.open_issue(session)
        if settled is not None and (row is None or row.status != IssueStatus.SENDING):
            return settled
        if row is not None and row.status != IssueStatus.SENDING and row.send_at is not None and row.send_at > send_at:
            return JobResult("nothing", row.number, f"issue {row.number} is for a later send "
                             f"({describe(settings, row.send_at)}): nothing sent now")
        if row is None or (row.status != IssueStatus.SENDING and row.send_at is not None and row.send_at < send_at):
            stale = row is not None
            draft = issues.build_draft(settings, session, now=now, send_at=send_at,
                                       offline=not sc.check_links, by="the schedule")
            row = draft.row
            add_note(row, "draft built at the send time: " + (
                "the one there was for an earlier send" if stale else "no draft had been built"), now)
        if row.status == IssueStatus.DRAFT:
            n = len(issues.issue_of(row).all_articles)
            number = row.number
            if n < sc.min_articles and sc.when_empty != "send":
                session.commit()
                action = "skipped" if sc.when_empty == "skip" else "held"
                return _conclude(settings, number, action, f"{plural(n, 'new article')}, fewer than min_articles = "
                                 f"{sc.min_articles} (when_empty = {sc.when_empty})", now, transport)
            if sc.if_not_approved == "hold":
                session.commit()
                return _conclude(settings, number, "held", "not approved by the send time "
                                 "(if_not_approved = hold)", now, transport)
            move(row, IssueStatus.APPROVED, now=now, by="the schedule (if_not_approved = send)")
    try:
        outcome = issues.send(settings, transport=transport, now=now)
    except SendInterrupted as e:  # SIGTERM, SIGHUP or Ctrl-C stopped `digest schedule`: a stop, not a failure
        stopped = e.report.issue_number if e.report else None
        notice = Notice("failed", f"The send of issue {stopped} was stopped" if stopped else "The send was stopped",
                        (f"{e}.", "Readers already sent to are recorded and are never sent to twice."), None,
                        ("Resume it: `digest send` (or start `digest schedule` again).",))
        return JobResult("stopped", stopped, f"send stopped: {e}",
                         notify_editors(settings, notice, transport=transport), e.report)
    report = outcome.report
    if report is None:
        return JobResult("nothing", None, outcome.message)
    message = (f"issue {report.issue_number} sent: {report.submitted} submitted, {report.failed} failed, "
               f"{report.skipped} skipped, {report.already} already sent earlier")
    if report.waiting and report.next_due is not None:
        message += (f"; {plural(report.waiting, 'reader')} wait for their zone's moment (next "
                    f"{describe(settings, report.next_due)})")
    if not report.ok:
        notice = Notice("failed", f"Issue {report.issue_number} was sent with problems",
                        (message + ".", *report.errors[:5]), None, ("See `digest status`.",))
        return JobResult("sent", report.issue_number, message, notify_editors(settings, notice), report)
    return JobResult("sent", report.issue_number, message, [], report)


def report_missed(settings: Settings, *, job_id: str, scheduled_at: datetime, now: datetime | None = None,
                  transport: Transport | None = None) -> JobResult:
    """A moment missed by more than its grace time: say so on the issue and to the editors, do nothing late."""
    now = now or utcnow()
    what = "send" if job_id == SEND_JOB else "draft"
    late = now - scheduled_at
    local, utc = local_and_utc(settings, scheduled_at)
    late_words = f"{late.total_seconds() / 3600:.1f} h" if late >= timedelta(hours=1) \
        else f"{late.total_seconds() / 60:.0f} min"
    note = f"the scheduled {what} of {local} was missed by {late_words} (scheduler not running): not done late"
    with session_scope(settings.database_url) as session:
        row = issues.current_issue(session)
        if row is not None:
            add_note(row, note, now)
        summary = issues.summarize(settings, row) if row is not None else None
    following = next_moments(settings, now).send_at
    message = (f"The scheduler was not running at {local} ({utc}) and came back {late_words} later, more "
               f"than the grace time allows, so the {what} was not done late.",
               "Nothing was sent." if what == "send" else "No draft was built then.",
               f"The next scheduled send is {describe(settings, following)}.")
    steps = (("Send now by hand: `digest approve` then `digest send`.",) if what == "send"
             else ("Build the draft now: `digest draft`.",))
    notice = Notice("missed", f"The scheduled {what} of {local} was missed", message, summary, steps)
    problems = notify_editors(settings, notice, transport=transport)
    log.warning("%s", note)
    return JobResult("missed", row.number if row is not None else None, note, problems)


def refresh_counts(settings: Settings) -> JobResult:
    """Recount the members of every list (subscribers.counts), for the admin's pages."""
    with session_scope(settings.database_url) as session:
        found = counts.refresh(session)
    total = sum(c.total for c in found.lists)
    return JobResult("counted", None, f"list counts refreshed: {plural(len(found.lists), 'list')}, "
                     f"{plural(total, 'membership')}")
