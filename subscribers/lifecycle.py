"""The only place membership statuses change; every change writes an Event row (the consent record).

Rules: only `active` members receive a list. `unsubscribed`, `bounced` and `complained` are never
turned back to `active` by an import or the API: only the reader's own fresh double opt-in can.
"""

from __future__ import annotations

import re
import typing
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import Select, String, Table, case, cast, delete, insert, literal, null, select, update
from sqlalchemy.orm import Session

from digest.errors import DigestError, NotFound
from digest.locks import erasing
from digest.store import UTCDateTime, utcnow
from subscribers.addresses import Address as Address
from subscribers.addresses import InvalidEmail as InvalidEmail
from subscribers.addresses import normalize as normalize
from subscribers.bulk import insert_rows
from subscribers.email_key import email_key
from subscribers.models import WITHDRAWN, Event, MailingList, Membership, MembershipStatus, Subscriber, Suppression
from subscribers.names import checked_name

DEFAULT_LIST = "weekly"


class Suppressed(DigestError):
    """The address was erased on request and must not be added again."""


def ensure_list(session: Session, slug: str = DEFAULT_LIST, name: str | None = None) -> MailingList:
    found = session.scalar(select(MailingList).where(MailingList.slug == slug))
    if found is None:
        found = MailingList(slug=slug, name=name or slug.replace("-", " ").title())
        session.add(found)
        session.flush()
    return found


LIST_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def create_list(session: Session, slug: str, name: str = "") -> MailingList:
    """A new list; the slug is what links, imports and the CLI name it by."""
    slug = slug.strip()
    if not LIST_SLUG.fullmatch(slug):
        raise DigestError(f"{slug!r} is not a list name: lower-case letters, digits, - and _ (at most 64)")
    if session.scalar(select(MailingList).where(MailingList.slug == slug)) is not None:
        raise DigestError(f"list {slug!r} already exists")
    return ensure_list(session, slug, name.strip() or None)


def known_lists(session: Session) -> list[str]:
    return list(session.scalars(select(MailingList.slug).order_by(MailingList.slug)))


def unknown_list(session: Session, slug: str, fix: str = "") -> NotFound:
    """The error for a list name that is not a list: it names the lists there are (a typo shows)."""
    known = known_lists(session)
    return NotFound(f"no list named {slug!r} (the lists are: {', '.join(known) if known else 'none yet'})"
                    + (f"; {fix}" if fix else ""))


def get_list(session: Session, slug: str) -> MailingList:
    found = session.scalar(select(MailingList).where(MailingList.slug == slug))
    if found is None:
        raise unknown_list(session, slug, f"create it with `digest subscribers lists create {slug}`")
    return found


def configured_list(session: Session, slug: str) -> MailingList:
    """The digest's own list (`[delivery] list`): created on first use only while the database has no
    list at all (a new install). Once lists exist, a name that is none of them is an error naming them,
    so a typo (`weeky`) does not create an empty list and "send" the issue to nobody."""
    found = session.scalar(select(MailingList).where(MailingList.slug == slug))
    if found is not None:
        return found
    if known_lists(session):
        raise unknown_list(session, slug, "correct `list` in the [delivery] section of digest.toml, or create "
                                          f"the list with `digest subscribers lists create {slug}`")
    return ensure_list(session, slug)


def find(session: Session, email: str) -> Subscriber | None:
    return session.scalar(select(Subscriber).where(Subscriber.email_key == email_key(email)))


def is_suppressed(session: Session, address: Address) -> bool:
    return session.get(Suppression, address.hash) is not None


def membership(session: Session, subscriber: Subscriber, mailing_list: MailingList) -> Membership | None:
    return session.scalar(select(Membership).where(Membership.subscriber_id == subscriber.id,
                                                   Membership.list_id == mailing_list.id))


def record(session: Session, subscriber_id: int | None, list_id: int | None, kind: str, *,
           old: MembershipStatus | None = None, new: MembershipStatus | None = None, source: str = "",
           ip: str | None = None, detail: str = "", at: datetime | None = None) -> Event:
    event = Event(subscriber_id=subscriber_id, list_id=list_id, kind=kind, old_status=old, new_status=new,
                  source=source, ip=ip, detail=detail, at=at or utcnow())
    session.add(event)
    return event


def change(session: Session, member: Membership, new: MembershipStatus, *, kind: str, source: str,
           ip: str | None = None, detail: str = "") -> bool:
    """Set a membership's status and record why. Returns False when nothing changed."""
    old = member.status
    if old == new:
        return False
    now = utcnow()
    member.status = new
    member.updated_at = now
    if new == MembershipStatus.ACTIVE:
        member.confirmed_at = now
    record(session, member.subscriber_id, member.list_id, kind, old=old, new=new, source=source, ip=ip,
           detail=detail, at=now)
    return True


def upsert_subscriber(session: Session, address: Address, name: str = "", *,
                      attributes: dict | None = None, categories: list[str] | None = None) -> tuple[Subscriber, bool]:
    """The person for this address, created when new. Raises Suppressed for an erased address, InvalidName
    for a name too long (control characters and line breaks in it become spaces: `subscribers.names`)."""
    name = checked_name(name)
    if is_suppressed(session, address):
        raise Suppressed(f"{address.email} was erased on request and cannot be added again")
    sub = session.scalar(select(Subscriber).where(Subscriber.email_key == address.key))
    created = sub is None
    if sub is None:
        sub = Subscriber(email=address.email, email_key=address.key, name=name,
                         attributes=attributes or {}, categories=categories or [])
        session.add(sub)
        session.flush()
    return sub, created


def subscribe(session: Session, email: str, *, name: str = "", list_slug: str = DEFAULT_LIST,
              source: str, ip: str | None = None, confirmed: bool = False,
              categories: list[str] | None = None) -> Membership:
    """Join a list: `pending` until confirmed, or `active` at once when consent was given elsewhere.

    A withdrawn membership (unsubscribed/bounced/complained) keeps its status here, whatever the
    caller: the request is recorded and only the reader's click on a confirmation link signed after
    the withdrawal (`confirm(..., requested_at=...)`) makes it active again. So no import, admin or
    stranger filling in a form can put a withdrawn reader back on a list.
    """
    address = normalize(email)
    name = checked_name(name)
    sub, created = upsert_subscriber(session, address, name, categories=categories)
    if name and not sub.name:
        sub.name = name
    mlist = ensure_list(session, list_slug)
    member = membership(session, sub, mlist)
    if member is None:
        member = Membership(subscriber_id=sub.id, list_id=mlist.id, status=MembershipStatus.PENDING)
        session.add(member)
        session.flush()
        record(session, sub.id, mlist.id, "subscribed", new=MembershipStatus.PENDING, source=source, ip=ip)
    if confirmed and member.status == MembershipStatus.PENDING:
        change(session, member, MembershipStatus.ACTIVE, kind="confirmed", source=source, ip=ip,
               detail="consent recorded by admin")
    elif member.status in WITHDRAWN:
        record(session, sub.id, mlist.id, "requested", old=member.status, new=member.status, source=source,
               ip=ip, detail="asked to join again: stays " + member.status + " until the reader confirms")
    return member


def confirm(session: Session, member: Membership, *, source: str, ip: str | None = None,
            requested_at: datetime | None = None) -> bool:
    """The reader clicked their confirmation link (signed at `requested_at`).

    A pending membership becomes active. A withdrawn one becomes active only when the link was signed
    after the withdrawal: the reader asked again, so this is a fresh double opt-in; an old link
    clicked after an unsubscribe changes nothing. (Signed links keep whole seconds, hence the rounding.)
    """
    if member.status == MembershipStatus.PENDING:
        return change(session, member, MembershipStatus.ACTIVE, kind="confirmed", source=source, ip=ip)
    if member.status in WITHDRAWN and requested_at is not None \
            and requested_at >= member.updated_at.replace(microsecond=0):
        return change(session, member, MembershipStatus.ACTIVE, kind="confirmed", source=source, ip=ip,
                      detail=f"fresh double opt-in after {member.status}")
    return False


def unsubscribe(session: Session, subscriber: Subscriber, list_slug: str | None = None, *, source: str,
                ip: str | None = None) -> int:
    """Leave one list, or every list when list_slug is None. Returns how many memberships changed."""
    changed = 0
    for member in subscriber.memberships:
        if list_slug and member.mailing_list.slug != list_slug:
            continue
        if member.status in (MembershipStatus.PENDING, MembershipStatus.ACTIVE):
            changed += change(session, member, MembershipStatus.UNSUBSCRIBED, kind="unsubscribed", source=source, ip=ip)
    return changed


def unsubscribe_address(session: Session, email: str, list_slug: str | None = None, *, source: str,
                        ip: str | None = None) -> tuple[Subscriber, int]:
    """`unsubscribe` the person with this address: NotFound for an unknown address or list."""
    sub = find(session, email)
    if sub is None:
        raise NotFound(f"no subscriber {email.strip()!r}")
    if list_slug:
        get_list(session, list_slug)
    return sub, unsubscribe(session, sub, list_slug, source=source, ip=ip)


def erase(session: Session, email: str, *, reason: str = "erasure request") -> bool:
    """GDPR erasure: delete the person, their memberships and events; keep only a hashed suppression.

    Their address is also blanked in the delivery ledger and provider events (the rows stay for the
    issue's figures). Returns whether a subscriber was found; the suppression is written either way,
    so an address erased before it was ever imported still cannot be added.
    """
    address = normalize(email)
    # first: after any send's snapshot being written now, so the ledger's rows read below include its rows; a
    # snapshot that starts meanwhile waits, and then leaves this reader out. It also orders two erasures, so
    # the person needs no row lock of their own
    erasing(session)
    if session.get(Suppression, address.hash) is None:
        session.add(Suppression(email_hash=address.hash, reason=reason[:64]))
    sub = session.scalar(select(Subscriber).where(Subscriber.email_key == address.key))
    if sub is None:
        session.flush()
        return False
    from digest.store import Delivery, DeliveryEvent

    session.execute(update(Delivery).where(Delivery.subscriber_id == sub.id).values(email="(erased)",
                                                                                     subscriber_id=None))
    session.execute(update(DeliveryEvent).where(DeliveryEvent.subscriber_id == sub.id)
                    .values(payload={"erased": True}))
    session.execute(delete(Event).where(Event.subscriber_id == sub.id))
    _ = sub.memberships  # loaded, so the ORM deletes them too (not only the database's cascade)
    session.delete(sub)
    session.flush()
    return True


# -- imports: the same rules, applied to a batch of thousands in a few statements ------------------

@lru_cache(maxsize=256)
def import_status(old: MembershipStatus | None, wanted: MembershipStatus | None, *,
                  preconfirmed: bool) -> tuple[MembershipStatus | None, str]:
    """The status an import may set on a membership, and a note when it may not do what the row asks.

    `wanted` is the status the row names (None: join). Active needs consent evidence (preconfirmed);
    a withdrawn membership is never changed by an import; a withdrawal in the file is always honoured.
    Returns (new status or None for no change, note).
    """
    target = wanted or (MembershipStatus.ACTIVE if preconfirmed else MembershipStatus.PENDING)
    note = ""
    if target == MembershipStatus.ACTIVE and not preconfirmed:
        target = MembershipStatus.PENDING
        note = "active needs --preconfirmed with consent evidence: imported as pending"
    if old is None:
        return target, note
    if old in WITHDRAWN:
        if target == old:
            return None, ""
        return None, f"kept {old}: an import never changes a withdrawn membership (only the reader can)"
    if target in WITHDRAWN:
        return target, ""
    if old == MembershipStatus.PENDING and target == MembershipStatus.ACTIVE:
        return MembershipStatus.ACTIVE, ""
    return None, note if old == MembershipStatus.PENDING else ""  # an active member stays active


class ImportedStatus(NamedTuple):
    """One membership to create (member_id None) or change, as decided by `import_status`."""

    subscriber_id: int
    list_id: int
    member_id: int | None
    old: MembershipStatus | None
    new: MembershipStatus
    detail: str = ""


def apply_imported(session: Session, items: list[ImportedStatus], *, source: str,
                   now: datetime | None = None) -> None:
    """Write a batch's memberships and their events in bulk (a few statements, not 3 x N)."""
    now = now or utcnow()
    source = source[:255]
    joins, changes, events = [], [], []
    for item in items:
        if item.old in WITHDRAWN or (item.old == item.new):
            raise ValueError(f"an import may not change a {item.old} membership to {item.new}")
        confirmed = now if item.new == MembershipStatus.ACTIVE else None
        if item.member_id is None:
            joins.append((item.subscriber_id, item.list_id, item.new, now, now, confirmed))
        else:
            change_row = {"id": item.member_id, "status": item.new, "updated_at": now}
            if confirmed:
                change_row["confirmed_at"] = confirmed
            changes.append(change_row)
        events.append((item.subscriber_id, item.list_id, "imported", item.old, item.new, source, item.detail, now))
    conn = session.connection()
    insert_rows(conn, typing.cast(Table, Membership.__table__), MEMBERSHIP_COLUMNS, joins)
    for group in same_columns(changes):
        session.execute(update(Membership), group)
    insert_rows(conn, typing.cast(Table, Event.__table__), EVENT_COLUMNS, events)


def join_imported(session: Session, people: Select[Any], *, source: str, detail_prefix: str,
                  now: datetime | None = None) -> None:
    """New people's memberships and their `imported` events, straight from a query: `people` gives
    (subscriber id, list id, status, file row) per membership; each event's detail is `detail_prefix`
    + the row. The rows `apply_imported` would write, as one INSERT ... SELECT per table: a batch of
    new readers costs the database two statements and Python nothing per reader."""
    now = now or utcnow()
    joins = people.subquery()
    stamp = literal(now, UTCDateTime())
    session.execute(insert(Membership).from_select(
        ["subscriber_id", "list_id", "status", "created_at", "updated_at", "confirmed_at"],
        select(joins.c[0], joins.c[1], joins.c[2], stamp, stamp,
               case((joins.c[2] == MembershipStatus.ACTIVE, stamp), else_=null())).order_by(joins.c[0], joins.c[1])))
    session.execute(insert(Event).from_select(
        ["subscriber_id", "list_id", "kind", "old_status", "new_status", "source", "detail", "at"],
        select(joins.c[0], joins.c[1], literal("imported"), null(), joins.c[2], literal(source[:255]),
               literal(detail_prefix) + cast(joins.c[3], String), stamp).order_by(joins.c[0], joins.c[1])))


MEMBERSHIP_COLUMNS = ("subscriber_id", "list_id", "status", "created_at", "updated_at", "confirmed_at")
EVENT_COLUMNS = ("subscriber_id", "list_id", "kind", "old_status", "new_status", "source", "detail", "at")


def same_columns(rows: list[dict]) -> list[list[dict]]:
    """Bulk UPDATE by primary key wants the same columns in every row of one call."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    return list(groups.values())


EVENT_STATUS = {"bounce": MembershipStatus.BOUNCED, "dropped": MembershipStatus.BOUNCED,
                "spamreport": MembershipStatus.COMPLAINED, "unsubscribe": MembershipStatus.UNSUBSCRIBED,
                "group_unsubscribe": MembershipStatus.UNSUBSCRIBED}


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
        if list_id is not None and member.list_id != list_id and status == MembershipStatus.UNSUBSCRIBED:
            continue
        if member.status != status and member.status != MembershipStatus.COMPLAINED:
            changed += change(session, member, status, kind=kind, source=source, detail=detail)
    return changed
