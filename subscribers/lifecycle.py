"""The only place membership statuses change; every change writes an Event row (the consent record).

Rules: only `active` members receive a list. `unsubscribed`, `bounced` and `complained` are never
turned back to `active` by an import or the API: only the reader's own fresh double opt-in can.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.errors import DigestError, NotFound
from digest.store import utcnow
from subscribers.models import (
    ACTIVE,
    BOUNCED,
    COMPLAINED,
    PENDING,
    UNSUBSCRIBED,
    WITHDRAWN,
    Event,
    MailingList,
    Membership,
    Subscriber,
    Suppression,
)

DEFAULT_LIST = "weekly"


class InvalidEmail(DigestError):
    pass


class Suppressed(DigestError):
    """The address was erased on request and must not be added again."""


@dataclass(frozen=True)
class Address:
    email: str  # as given, with the domain normalised (IDN -> Unicode form, lower case)
    key: str  # the identity: case-folded

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.key.encode("utf-8")).hexdigest()


def normalize(raw: str) -> Address:
    """Validate syntax (no DNS) and normalise; raises InvalidEmail with the validator's reason."""
    try:
        result = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as e:
        raise InvalidEmail(f"{raw.strip()!r} is not a valid email address: {e}") from None
    email = result.normalized
    return Address(email=email, key=email.casefold())


def ensure_list(session: Session, slug: str = DEFAULT_LIST, name: str | None = None) -> MailingList:
    found = session.scalar(select(MailingList).where(MailingList.slug == slug))
    if found is None:
        found = MailingList(slug=slug, name=name or slug.replace("-", " ").title())
        session.add(found)
        session.flush()
    return found


def get_list(session: Session, slug: str) -> MailingList:
    found = session.scalar(select(MailingList).where(MailingList.slug == slug))
    if found is None:
        raise NotFound(f"no list named {slug!r}")
    return found


def find(session: Session, email: str) -> Subscriber | None:
    try:
        key = normalize(email).key
    except InvalidEmail:
        key = email.strip().casefold()
    return session.scalar(select(Subscriber).where(Subscriber.email_key == key))


def is_suppressed(session: Session, address: Address) -> bool:
    return session.get(Suppression, address.hash) is not None


def membership(session: Session, subscriber: Subscriber, mailing_list: MailingList) -> Membership | None:
    return session.scalar(select(Membership).where(Membership.subscriber_id == subscriber.id,
                                                   Membership.list_id == mailing_list.id))


def record(session: Session, subscriber_id: int | None, list_id: int | None, kind: str, *,
           old: str | None = None, new: str | None = None, source: str = "", ip: str | None = None,
           detail: str = "", at: datetime | None = None) -> Event:
    event = Event(subscriber_id=subscriber_id, list_id=list_id, kind=kind, old_status=old, new_status=new,
                  source=source, ip=ip, detail=detail, at=at or utcnow())
    session.add(event)
    return event


def change(session: Session, member: Membership, new: str, *, kind: str, source: str,
           ip: str | None = None, detail: str = "") -> bool:
    """Set a membership's status and record why. Returns False when nothing changed."""
    old = member.status
    if old == new:
        return False
    now = utcnow()
    member.status = new
    member.updated_at = now
    if new == ACTIVE:
        member.confirmed_at = now
    record(session, member.subscriber_id, member.list_id, kind, old=old, new=new, source=source, ip=ip,
           detail=detail, at=now)
    return True


def upsert_subscriber(session: Session, address: Address, name: str = "", *,
                      attributes: dict | None = None, categories: list[str] | None = None) -> tuple[Subscriber, bool]:
    """The person for this address, created when new. Raises Suppressed for an erased address."""
    if is_suppressed(session, address):
        raise Suppressed(f"{address.email} was erased on request and cannot be added again")
    sub = session.scalar(select(Subscriber).where(Subscriber.email_key == address.key))
    created = sub is None
    if sub is None:
        sub = Subscriber(email=address.email, email_key=address.key, name=name.strip(),
                         attributes=attributes or {}, categories=categories or [])
        session.add(sub)
        session.flush()
    return sub, created


def subscribe(session: Session, email: str, *, name: str = "", list_slug: str = DEFAULT_LIST,
              source: str, ip: str | None = None, confirmed: bool = False,
              categories: list[str] | None = None) -> Membership:
    """Join a list: `pending` until confirmed, or `active` at once when consent was given elsewhere.

    A withdrawn membership (unsubscribed/bounced/complained) becomes `pending` again only through this
    path with confirmed=False: the reader asked again and must confirm again.
    """
    address = normalize(email)
    sub, created = upsert_subscriber(session, address, name, categories=categories)
    if name and not sub.name:
        sub.name = name.strip()
    mlist = ensure_list(session, list_slug)
    member = membership(session, sub, mlist)
    if member is None:
        member = Membership(subscriber_id=sub.id, list_id=mlist.id, status=PENDING)
        session.add(member)
        session.flush()
        record(session, sub.id, mlist.id, "subscribed", new=PENDING, source=source, ip=ip)
    if confirmed and member.status == PENDING:
        change(session, member, ACTIVE, kind="confirmed", source=source, ip=ip,
               detail="consent recorded by admin")
    elif not confirmed and member.status in WITHDRAWN:
        change(session, member, PENDING, kind="resubscribed", source=source, ip=ip)
    return member


def confirm(session: Session, member: Membership, *, source: str, ip: str | None = None) -> bool:
    """The reader clicked their confirmation link."""
    if member.status != PENDING:
        return False
    return change(session, member, ACTIVE, kind="confirmed", source=source, ip=ip)


def unsubscribe(session: Session, subscriber: Subscriber, list_slug: str | None = None, *, source: str,
                ip: str | None = None) -> int:
    """Leave one list, or every list when list_slug is None. Returns how many memberships changed."""
    changed = 0
    for member in subscriber.memberships:
        if list_slug and member.mailing_list.slug != list_slug:
            continue
        if member.status in (PENDING, ACTIVE):
            changed += change(session, member, UNSUBSCRIBED, kind="unsubscribed", source=source, ip=ip)
    return changed


EVENT_STATUS = {"bounce": BOUNCED, "dropped": BOUNCED, "spamreport": COMPLAINED,
                "unsubscribe": UNSUBSCRIBED, "group_unsubscribe": UNSUBSCRIBED}


def apply_event(session: Session, subscriber_id: int, kind: str, *, source: str, list_id: int | None = None,
                detail: str = "") -> int:
    """A delivery event (bounce, complaint, unsubscribe) applied at once to the reader's memberships."""
    status = EVENT_STATUS.get(kind)
    if status is None:
        return 0
    sub = session.get(Subscriber, subscriber_id)
    if sub is None:
        raise NotFound(f"no subscriber with id {subscriber_id}")
    changed = 0
    for member in sub.memberships:
        if list_id is not None and member.list_id != list_id and status == UNSUBSCRIBED:
            continue
        if member.status != status and member.status != COMPLAINED:
            changed += change(session, member, status, kind=kind, source=source, detail=detail)
    return changed
