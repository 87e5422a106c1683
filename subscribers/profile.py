"""One person's record, read-only: their details, memberships and the whole consent history (what
`digest subscribers show` prints and the admin's subscriber page shows).

Plain SQL through digest.dbapi, valid on SQLite and PostgreSQL, with no SQLAlchemy: `subscribers show`
starts within 2x of `import typer` (issue 16); the admin page runs the same SQL over its session. The
person is found by the key subscribers.lifecycle.find uses (subscribers.email_key).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from digest import dbapi
from digest.errors import NotFound
from subscribers.email_key import email_key
from subscribers.membership_status import MembershipStatus

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from digest.dbapi import Reader


@dataclass(frozen=True)
class SubscriberView:
    id: int
    email: str
    name: str
    categories: list[str]
    attributes: dict[str, Any]
    timezone: str | None
    created_at: datetime


@dataclass
class MembershipView:
    slug: str
    status: MembershipStatus
    created_at: datetime
    updated_at: datetime
    confirmed_at: datetime | None
    confirm_sent_at: datetime | None


@dataclass
class HistoryItem:
    at: datetime
    list_slug: str
    kind: str
    old: MembershipStatus | None
    new: MembershipStatus | None
    source: str
    ip: str | None
    detail: str


@dataclass
class Profile:
    subscriber: SubscriberView
    memberships: list[MembershipView]
    history: list[HistoryItem]


PERSON = """SELECT id, email, name, categories, attributes, timezone, created_at
FROM subscribers WHERE email_key = :key"""

MEMBERSHIPS = """SELECT l.slug, m.status, m.created_at, m.updated_at, m.confirmed_at, m.confirm_sent_at
FROM memberships m JOIN lists l ON l.id = m.list_id
WHERE m.subscriber_id = :id ORDER BY l.slug"""

HISTORY = """SELECT e.at, l.slug, e.kind, e.old_status, e.new_status, e.source, e.ip, e.detail
FROM events e LEFT OUTER JOIN lists l ON l.id = e.list_id
WHERE e.subscriber_id = :id ORDER BY e.at, e.id"""


def _status(value: str | None) -> MembershipStatus | None:
    return None if value is None else MembershipStatus(value)


def profile(db: Reader | Session, email: str) -> Profile:
    """One person: memberships and the whole consent history, oldest first; NotFound names the address."""
    read = dbapi.reader(db)
    found = read.rows(PERSON, key=email_key(email))
    if not found:
        raise NotFound(f"no subscriber {email.strip()!r}")
    sid, address, name, categories, attributes, zone, created_at = found[0]
    person = SubscriberView(sid, address, name or "", list(dbapi.json(categories) or []),
                            dict(dbapi.json(attributes) or {}), zone, _utc(created_at))
    members = [MembershipView(slug, MembershipStatus(status), _utc(created), _utc(updated), dbapi.utc(confirmed),
                              dbapi.utc(sent))
               for slug, status, created, updated, confirmed, sent in read.rows(MEMBERSHIPS, id=sid)]
    history = [HistoryItem(_utc(at), slug or "", kind, _status(old), _status(new), source or "", ip, detail or "")
               for at, slug, kind, old, new, source, ip, detail in read.rows(HISTORY, id=sid)]
    return Profile(person, members, history)


def _utc(value: Any) -> datetime:
    """A moment from a NOT NULL column."""
    moment = dbapi.utc(value)
    assert moment is not None, "a NOT NULL moment column read as NULL"
    return moment
