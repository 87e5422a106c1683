"""Subscriber search (the admin pages and `digest subscribers list`): filtered, keyset-paged and
counted with a cap, so a page of a 100,000-reader list answers well under 200 ms
(benchmarks/admin_search.py measures it).

Why not OFFSET paging and an exact DISTINCT count: with 100,000 readers those took 120-170 ms for
"active members of weekly" and 230-300 ms for a page in the middle on the 2-core machine, because both
walk every match. Here pages are keyset (`id < last id seen`: the last page costs what the first does),
a list/status filter is counted on the (list_id, status) index and the count stops at COUNT_CAP.

At 1,000,000 subscribers on PostgreSQL (benchmarks/admin_search.py, EXPLAIN ANALYZE) three more things
walked most of the table on every view, 50-160 ms each on an idle machine and several times that under
load: the exact total of the unfiltered pages (`count(*)`: a parallel sequential scan), a status filter
without a list (no index began with the status) and a list+status page in the middle (the walk started at
the newest membership and filtered down to the keyset bound). So the unfiltered total is counted up to
COUNT_CAP and, above it, taken from PostgreSQL's own estimate of the table's size (`pg_class.reltuples`,
kept by ANALYZE and autovacuum: https://www.postgresql.org/docs/current/catalog-pg-class.html) and
shown as an estimate; the memberships have (list_id, status, subscriber_id) and (status, subscriber_id)
indexes (migration 0008_admin_indexes), and the keyset bound is repeated inside the membership
subquery, so every page reads an index range of about one page's length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, Select, func, or_, select, text
from sqlalchemy.orm import Session

from subscribers.models import MailingList, Membership, MembershipStatus, Subscriber

COUNT_CAP = 10_000


@dataclass(frozen=True)
class Query:
    q: str = ""
    status: str = ""
    list_slug: str = ""
    before: int | None = None  # the next (older) page: ids below this one
    after: int | None = None  # the previous (newer) page: ids above this one
    size: int = 50


@dataclass
class Row:
    id: int
    email: str
    name: str
    created_at: datetime
    memberships: list[tuple[str, MembershipStatus]] = field(default_factory=list)  # (list slug, status)


@dataclass
class Page:
    rows: list[Row]
    count: int
    capped: bool  # more than `count` match
    next_before: int | None
    prev_after: int | None
    error: str = ""
    estimated: bool = False  # `count` is the database's estimate of everyone (an unfiltered page above the cap)


def _like(text: str) -> str:
    """A LIKE pattern matching the text anywhere, its own % and _ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True)
class _Filter:
    text: ColumnElement[bool] | None  # the WHERE clause of the text search, if any
    members: Select | None  # subscriber ids with the asked-for membership, if a status/list is asked
    distinct: bool  # whether one subscriber may appear in `members` more than once (no list named)


def _filter(session: Session, query: Query) -> _Filter | str:
    """The parts of the search, or why nothing can match (an unknown list or status)."""
    text = None
    q = query.q.strip()
    if q:
        # SQLite's LIKE ignores ASCII case by itself (its lower() knows no more than ASCII either);
        # ILIKE elsewhere. email_key is already case-folded.
        pattern = _like(q)
        sqlite = session.get_bind().dialect.name == "sqlite"
        name = Subscriber.name.like(pattern, escape="\\") if sqlite else Subscriber.name.ilike(pattern, escape="\\")
        text = or_(Subscriber.email_key.like(_like(q.casefold()), escape="\\"), name)
    members = None
    if query.status or query.list_slug:
        members = select(Membership.subscriber_id)
        if query.status:
            try:
                members = members.where(Membership.status == MembershipStatus.parse(query.status))
            except ValueError as e:
                return str(e)
        if query.list_slug:
            list_id = session.scalar(select(MailingList.id).where(MailingList.slug == query.list_slug))
            if list_id is None:
                return f"no list named {query.list_slug!r}"
            members = members.where(Membership.list_id == list_id)
    return _Filter(text, members, distinct=not query.list_slug)


def _capped(session: Session, stmt: Select) -> tuple[int, bool]:
    n = session.scalar(select(func.count()).select_from(stmt.limit(COUNT_CAP + 1).subquery())) or 0
    return min(n, COUNT_CAP), n > COUNT_CAP


def _everyone(session: Session) -> tuple[int, bool, bool]:
    """How many subscribers there are: (count, capped, estimated). Exact up to COUNT_CAP; above it, on
    PostgreSQL, the planner's estimate (reltuples; -1 when the table was never analysed, then exact)."""
    count, capped = _capped(session, select(Subscriber.id))
    if not capped:
        return count, False, False
    if session.get_bind().dialect.name == "postgresql":
        estimate = session.scalar(text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:t)"),
                                  {"t": Subscriber.__tablename__})
        if estimate is not None and estimate > COUNT_CAP:
            return int(estimate), False, True
    # SQLite keeps no such figure; its count(*) reads the smallest index (benchmarks/admin_search.py)
    return session.scalar(select(func.count()).select_from(Subscriber)) or 0, False, False


def search(session: Session, query: Query) -> Page:
    """One page of subscribers, newest first, with their memberships."""
    f = _filter(session, query)
    if isinstance(f, str):
        return Page([], 0, False, None, None, error=f)
    base = select(Subscriber.id)
    if f.text is not None:
        base = base.where(f.text)
    counted: tuple[int, bool] | None = None
    page = base  # `base` is every match (what is counted); `page` may also carry the keyset bound inside
    if f.members is not None:
        if f.text is None:
            # count on the memberships alone: a range of the (list_id, status) index, stopped at the cap
            counted = _capped(session, f.members.distinct() if f.distinct else f.members)
        many = counted is not None and counted[1]
        # the keyset bound inside the subquery too: the membership index is then read from the bound on,
        # not from the newest membership down to it (the outer query's bound does not reach in there)
        bounded = f.members
        if query.after is not None:
            bounded = bounded.where(Membership.subscriber_id > query.after)
        elif query.before is not None:
            bounded = bounded.where(Membership.subscriber_id < query.before)
        if many:
            # most subscribers match: walk them newest first and probe each one's membership (stops
            # after a page); IN (members) would first read every one of the many matches. The bound
            # inside the probe only on PostgreSQL: SQLite (3.40) then probes the (status, subscriber_id)
            # index by the range instead of the id (912 ms against 0.7 ms at 200,000 subscribers)
            probe = bounded if session.get_bind().dialect.name == "postgresql" else f.members
            page = base.where(probe.where(Membership.subscriber_id == Subscriber.id).exists())
            base = base.where(f.members.where(Membership.subscriber_id == Subscriber.id).exists())
        else:
            # few match (or a text search narrows it): read the matching memberships once
            page = base.where(Subscriber.id.in_(bounded))
            base = base.where(Subscriber.id.in_(f.members))
    if query.after is not None:
        page = page.where(Subscriber.id > query.after).order_by(Subscriber.id.asc())
    else:
        if query.before is not None:
            page = page.where(Subscriber.id < query.before)
        page = page.order_by(Subscriber.id.desc())
    ids = [] if counted == (0, False) else list(session.scalars(page.limit(query.size + 1)))
    more = len(ids) > query.size
    ids = ids[: query.size]
    if query.after is not None:
        ids.reverse()
    rows: dict[int, Row] = {}
    if ids:
        rows = {r.id: Row(r.id, r.email, r.name, r.created_at) for r in session.execute(
            select(Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.created_at)
            .where(Subscriber.id.in_(ids)))}
        for sid, slug, status in session.execute(
                select(Membership.subscriber_id, MailingList.slug, Membership.status)
                .join(MailingList, MailingList.id == Membership.list_id)
                .where(Membership.subscriber_id.in_(ids)).order_by(MailingList.slug)):
            rows[sid].memberships.append((slug, status))
    # newer rows exist when we came from a newer page; older ones when this page ran over (or we came back)
    has_newer = bool(ids) and (query.before is not None if query.after is None else more)
    has_older = bool(ids) and (more if query.after is None else True)
    estimated = False
    if counted is not None:
        count, capped = counted
    elif query.before is None and query.after is None and not more:
        count, capped = len(ids), False  # every match is on this first page: no second scan
    elif base.whereclause is None:
        count, capped, estimated = _everyone(session)
    else:
        count, capped = _capped(session, base)
    return Page([rows[i] for i in ids], count, capped,
                next_before=ids[-1] if has_older else None, prev_after=ids[0] if has_newer else None,
                estimated=estimated)
