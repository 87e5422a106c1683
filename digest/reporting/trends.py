"""Figures over time for the dashboard: the appeal's clicks per issue and variant, and the list's growth
per week (new, confirmed, unsubscribed, bounced).

The appeal: for each sent issue, per variant, the readers whose arrived copy carried it and those who
clicked its button (digest.reporting.issue does the counting, the same as the issue's own report). The
list: the consent history (`events`, one row per status change, written only by subscribers.lifecycle),
per week starting Monday in the publication's time zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

from sqlalchemy import case, func, literal, select
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.issue_status import IssueStatus
from digest.models import Issue
from digest.reporting.issue import APPEAL, appeal_reach, issue_clicks, link_map, reached_by_edition
from digest.store import IssueRow, utcnow
from subscribers.models import Event, MailingList, MembershipStatus

#: the issues whose sending started (a recalled one may have gone out in part)
SENT = (IssueStatus.SENDING, IssueStatus.SENT, IssueStatus.RECALLED)


@dataclass(frozen=True)
class AppealPoint:
    """One variant in one issue: readers it reached, readers who clicked it."""

    issue: int
    variant: str
    reach: int
    readers: int

    @property
    def rate(self) -> float | None:
        return self.readers / self.reach if self.reach else None


def appeal_over_time(session: Session, settings: Settings, *, issues: int = 12) -> list[AppealPoint]:
    """The last `issues` sent issues, oldest first, one point per variant carried or clicked."""
    rows = session.scalars(select(IssueRow).where(IssueRow.status.in_(SENT))
                           .order_by(IssueRow.number.desc()).limit(issues)).all()
    points: list[AppealPoint] = []
    for row in reversed(rows):
        issue = Issue.from_json(row.content)
        reached, _ = reached_by_edition(session, row.id)
        carried = appeal_reach(issue, reached)
        clicks = issue_clicks(session, row.id, issue, link_map(settings, issue))
        clicked = {t.key: len(readers) for t, readers in clicks.readers.items() if t.kind == APPEAL}
        for variant in dict.fromkeys([*carried, *clicked]):
            points.append(AppealPoint(row.number, variant, carried.get(variant, 0), clicked.get(variant, 0)))
    return points


@dataclass(frozen=True)
class Week:
    """One week of a list (or of all lists): memberships created, confirmed, unsubscribed, bounced."""

    start: date
    new: int = 0
    confirmed: int = 0
    unsubscribed: int = 0
    bounced: int = 0


def week_start(moment: datetime, tz: tzinfo) -> date:
    day = moment.astimezone(tz).date()
    return day - timedelta(days=day.weekday())


def list_growth(session: Session, tz: tzinfo, *, list_slug: str | None = None, weeks: int = 12,
                now: datetime | None = None) -> list[Week]:
    """The last `weeks` weeks, oldest first (the current week last, so far).

    new: a membership created (the first event of a reader on a list, whatever its status: a form's
    pending sign-up or an import's active reader); confirmed: a membership becoming active (double
    opt-in, or imported as confirmed); unsubscribed and bounced: a membership moving to that status.
    """
    current = week_start(now or utcnow(), tz)
    starts = [current - timedelta(weeks=weeks - 1 - i) for i in range(weeks)]
    # each week's first instant (Monday 00:00 in `tz`) in UTC: the events are put in weeks by the database
    # and only the counts come back (at a million events a Python loop over the rows took seconds)
    edges = [datetime.combine(d, datetime.min.time(), tz).astimezone(UTC)
             for d in [*starts, current + timedelta(weeks=1)]]
    week = case(*[(Event.at < edge, i) for i, edge in enumerate(edges[1:-1])], else_=len(starts) - 1) \
        if len(starts) > 1 else literal(0)
    rows = select(week.label("week"), Event.old_status.is_(None).label("first"), Event.new_status.label("status")) \
        .where(Event.at >= edges[0], Event.at < edges[-1], Event.new_status.is_not(None),
               (Event.old_status.is_(None)) | (Event.old_status != Event.new_status))
    if list_slug is not None:
        rows = rows.join(MailingList, MailingList.id == Event.list_id).where(MailingList.slug == list_slug)
    else:
        rows = rows.where(Event.list_id.is_not(None))
    inner = rows.subquery()  # grouped outside, by the columns: PostgreSQL cannot match a CASE of bound parameters
    counts: dict[date, dict[str, int]] = {start: {} for start in starts}
    names = {MembershipStatus.ACTIVE: "confirmed", MembershipStatus.UNSUBSCRIBED: "unsubscribed",
             MembershipStatus.BOUNCED: "bounced"}
    for i, first, status, n in session.execute(
            select(inner.c.week, inner.c.first, inner.c.status, func.count())
            .group_by(inner.c.week, inner.c.first, inner.c.status)):
        bucket = counts[starts[i]]
        if first:
            bucket["new"] = bucket.get("new", 0) + n
        name = names.get(status)
        if name is not None:
            bucket[name] = bucket.get(name, 0) + n
    return [Week(start, **c) for start, c in counts.items()]
