"""Figures over time for the dashboard: the appeal's clicks per issue and variant, and the list's growth
per week (new, confirmed, unsubscribed, bounced).

The appeal: for each sent issue, per variant, the readers whose arrived copy carried it and those who
clicked its button (digest.reporting.issue does the counting, the same as the issue's own report). The
list: the consent history (`events`, one row per status change, written only by subscribers.lifecycle),
per week starting Monday in the publication's time zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

from sqlalchemy import select
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
    first = current - timedelta(weeks=weeks - 1)
    since = datetime.combine(first, datetime.min.time(), tz) - timedelta(days=1)  # a day's margin, cut below
    counts: dict[date, dict[str, int]] = {first + timedelta(weeks=i): {} for i in range(weeks)}
    query = select(Event.at, Event.old_status, Event.new_status).where(
        Event.at >= since, Event.new_status.is_not(None),
        (Event.old_status.is_(None)) | (Event.old_status != Event.new_status))
    if list_slug is not None:
        query = query.join(MailingList, MailingList.id == Event.list_id).where(MailingList.slug == list_slug)
    else:
        query = query.where(Event.list_id.is_not(None))
    for at, old, new in session.execute(query.execution_options(yield_per=2000)):
        bucket = counts.get(week_start(at, tz))
        if bucket is None:
            continue
        if old is None:
            bucket["new"] = bucket.get("new", 0) + 1
        for status, name in ((MembershipStatus.ACTIVE, "confirmed"), (MembershipStatus.UNSUBSCRIBED, "unsubscribed"),
                             (MembershipStatus.BOUNCED, "bounced")):
            if new == status:
                bucket[name] = bucket.get(name, 0) + 1
    return [Week(start, **c) for start, c in counts.items()]
