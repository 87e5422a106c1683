"""Members per list and status for the admin's pages, counted every few minutes and kept in `list_counts`.

Why: the exact GROUP BY over every membership (`queries.list_counts`) took 270 ms at 1,250,000
memberships on PostgreSQL (benchmarks/admin_search.py), on every view of /admin/lists and of the
dashboard. listmonk meets the same cost the same way: its list subscriber counts are a materialized view
(`mat_list_subscriber_stats`) refreshed periodically, and its admin shows them as they were then. Here
`refresh` runs the GROUP BY once and replaces the rows of `list_counts` in one short transaction; it is
called by the scheduler every `[subscribers] counts_refresh_minutes`, after an import, and by the page
itself when the database is small (under EXACT_UP_TO memberships: the count costs a few milliseconds, so
a small install always sees exact, fresh figures) or when nothing was counted yet. A large database
shows the stored figures with their age.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, literal, select, text
from sqlalchemy.orm import Session

from digest.store import UTCDateTime, utcnow
from subscribers.models import ListCount, MailingList, Membership, MembershipStatus
from subscribers.queries import ListCounts, list_counts
from subscribers.search import COUNT_CAP

#: up to this many memberships the page counts exactly at each view (a few ms); above, the stored counts
EXACT_UP_TO = COUNT_CAP


@dataclass
class Counts:
    lists: list[ListCounts]
    counted_at: datetime
    stored: bool  # read from `list_counts` (shown with its age); False: counted for this very view

    def age(self, now: datetime | None = None) -> timedelta:
        return max(timedelta(0), (now or utcnow()) - self.counted_at)


def refresh(session: Session, now: datetime | None = None) -> Counts:
    """Count every list's members per status and replace the stored counts with them, in one short
    transaction of its own (the session is committed before and after). Returns what was counted."""
    now = now or utcnow()
    session.commit()  # whatever the session read before is not part of the refresh's transaction
    if session.get_bind().dialect.name == "postgresql":
        # two refreshes at once (the scheduler and a page) would insert the same keys: the second waits
        # for the first. EXCLUSIVE mode lets readers through, who see the old rows until the commit
        # (https://www.postgresql.org/docs/current/explicit-locking.html#LOCKING-TABLES)
        session.execute(text("LOCK TABLE list_counts IN EXCLUSIVE MODE"))
    # on SQLite the DELETE takes the write lock first, so nothing read in this transaction can go stale
    session.execute(delete(ListCount))
    session.execute(insert(ListCount).from_select(
        ["list_id", "status", "members", "counted_at"],
        select(Membership.list_id, Membership.status, func.count(), literal(now, UTCDateTime))
        .group_by(Membership.list_id, Membership.status)))
    counts = _read(session)
    session.commit()
    return Counts(counts, now, stored=False)


def _read(session: Session) -> list[ListCounts]:
    by: dict[int, dict[MembershipStatus, int]] = {}
    for lid, status, n in session.execute(select(ListCount.list_id, ListCount.status, ListCount.members)):
        by.setdefault(lid, {})[status] = n
    return [ListCounts(m.slug, m.name, {s: by.get(m.id, {}).get(s, 0) for s in MembershipStatus})
            for m in session.scalars(select(MailingList).order_by(MailingList.slug))]


def stored(session: Session) -> Counts | None:
    """The counts of the last refresh, or None when there has been none (or nobody was a member then)."""
    counted_at = session.scalar(select(func.min(ListCount.counted_at)))
    if counted_at is None:
        return None
    return Counts(_read(session), counted_at, stored=True)


def small(session: Session, up_to: int) -> bool:
    """At most `up_to` memberships (counted no further than one past it: an index range, not the table)."""
    n = session.scalar(select(func.count()).select_from(select(Membership.id).limit(up_to + 1).subquery())) or 0
    return n <= up_to


def current(session: Session, max_age: timedelta, *, exact_up_to: int | None = None,
            now: datetime | None = None) -> Counts:
    """The counts a page shows: exact and fresh on a small database (the table refreshed at most once per
    `max_age` on the way); on a large one the stored counts, whatever their age (the scheduler refreshes
    them; the page says how old they are), counted once here if there are none yet."""
    now = now or utcnow()
    if small(session, EXACT_UP_TO if exact_up_to is None else exact_up_to):
        kept = stored(session)
        if kept is None or kept.age(now) >= max_age:
            return refresh(session, now)
        return Counts(list_counts(session), now, stored=False)
    return stored(session) or refresh(session, now)


def ago(age: timedelta) -> str:
    """An age in words for the page: "less than a minute ago", "3 min ago", "2 h 5 min ago", "3 days ago"."""
    minutes = int(age.total_seconds() // 60)
    if minutes < 1:
        return "less than a minute ago"
    if minutes < 60:
        return f"{minutes} min ago"
    if minutes < 48 * 60:
        hours, rest = divmod(minutes, 60)
        return f"{hours} h {rest} min ago" if rest else f"{hours} h ago"
    return f"{minutes // (24 * 60)} days ago"
