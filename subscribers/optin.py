"""Double opt-in and the reader's own links: the consent side of subscribe, confirm, unsubscribe and
preferences (the pages of digest.web.reader and `digest subscribers add/confirm-pending` call them,
through digest.confirmations when an email goes out).

Who needs a confirmation, its signed link and the record that it was sent are decided here; writing
and sending the email is the caller's `send` (digest.confirmations), and the directory's categories
come in as data, so this layer imports nothing above the store.

Each function is one reader action and commits its own work: a confirmation link must never point at
a membership that was rolled back, and a reader's click must be recorded even if the page fails after.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, insert, or_, select, update
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.errors import DigestError
from digest.store import utcnow
from subscribers import lifecycle
from subscribers.categories import canonical
from subscribers.links import ReaderLinks, TokenError
from subscribers.models import WITHDRAWN, Event, MailingList, Membership, MembershipStatus, Subscriber

# What `request` did; the web never shows it (it must not reveal who is known), the admin CLI does.
SENT, ALREADY_ACTIVE, RECENTLY_SENT, SUPPRESSED = "sent", "already active", "recently sent", "suppressed"

#: Sends the confirmation email for one membership (its subscriber and list loaded); raises
#: DeliveryError when it cannot. digest.confirmations makes one from the configured transport.
SendConfirmation = Callable[[Membership], None]


def _list_for(settings: Settings, session: Session, slug: str) -> MailingList:
    """The default list is created on first use; any other must have been created by an admin."""
    if slug == settings.delivery.list:
        return lifecycle.configured_list(session, slug)
    if slug == lifecycle.DEFAULT_LIST:
        return lifecycle.ensure_list(session, slug)
    return lifecycle.get_list(session, slug)


def request(settings: Settings, session: Session, email: str, *, send: SendConfirmation,
            known_categories: tuple[str, ...] | None, name: str = "", list_slug: str = "weekly",
            categories: list[str] | None = None, source: str, ip: str | None = None,
            now: datetime | None = None) -> str:
    """Ask to join a list and `send` the confirmation; returns what happened (for the admin's eyes only).

    Name and categories are taken only for a new address: a stranger's form must not change an
    existing reader's details. A withdrawn membership stays withdrawn until the reader confirms.
    """
    address = lifecycle.normalize(email)
    if lifecycle.is_suppressed(session, address):
        return SUPPRESSED
    mlist = _list_for(settings, session, list_slug)
    existing = lifecycle.find(session, address.email)
    cats = None if existing is not None or not categories else canonical(categories, known_categories)
    member = lifecycle.subscribe(session, address.email, name=name if existing is None else "",
                                 list_slug=mlist.slug, source=source, ip=ip, categories=cats)
    now = now or utcnow()
    if member.status == MembershipStatus.ACTIVE:
        session.commit()
        return ALREADY_ACTIVE
    window = timedelta(minutes=settings.subscribers.resend_confirm_minutes)
    if member.confirm_sent_at is not None and now - member.confirm_sent_at < window:
        session.commit()
        return RECENTLY_SENT
    session.commit()  # the membership exists before its link goes out
    send(member)
    member.confirm_sent_at = now
    sub = member.subscriber
    lifecycle.record(session, sub.id, mlist.id, "confirm-sent", source=source, ip=ip,
                     detail=f"confirmation email to {sub.email}", at=now)
    session.commit()
    return SENT


def add_confirmed(session: Session, email: str, *, name: str = "", list_slug: str, evidence: str,
                  by: str) -> Membership:
    """An admin (`by`) adds a reader whose consent was given elsewhere: active at once, `evidence` (where
    and when consent was given) recorded. Raises DigestError without evidence, and for a withdrawn
    membership: only the reader can re-activate that."""
    if not evidence.strip():
        raise DigestError("--confirmed needs --source: say where and when this reader gave consent")
    member = lifecycle.subscribe(session, email, name=name, list_slug=list_slug, source=f"{by}: {evidence.strip()}",
                                 confirmed=True)
    if member.status in WITHDRAWN:
        raise DigestError(f"{member.subscriber.email} is {member.status} on {list_slug!r}: an admin "
                          "cannot re-activate that; the reader can subscribe again themselves")
    return member


def confirm_from_token(settings: Settings, session: Session, token: str, *, ip: str | None = None) -> Membership:
    """The reader opened their confirmation link: the membership becomes active (idempotent)."""
    ref = ReaderLinks(settings).read("confirm", token)
    member = session.scalar(select(Membership).where(Membership.subscriber_id == ref.subscriber_id,
                                                     Membership.list_id == ref.list_id))
    if member is None:
        raise TokenError("this link is no longer valid: please subscribe again")
    if member.status == MembershipStatus.ACTIVE:
        return member
    if not lifecycle.confirm(session, member, source="reader: confirmation link", ip=ip,
                             requested_at=ref.issued_at):
        raise TokenError(f"this link was sent before the subscription was {member.status}: "
                         "please subscribe again to get a new one")
    session.commit()
    return member


def _reader(session: Session, subscriber_id: int) -> Subscriber:
    sub = session.get(Subscriber, subscriber_id)
    if sub is None:
        raise TokenError("this address is no longer on our lists")
    return sub


def unsubscribe_from_token(settings: Settings, session: Session, token: str, *, ip: str | None = None,
                           source: str = "link") -> Subscriber:
    """One-click unsubscribe (GET page button or RFC 8058 POST): leaves the list in the token at once."""
    ref = ReaderLinks(settings).read("unsubscribe", token)
    sub = _reader(session, ref.subscriber_id)
    mlist = session.get(MailingList, ref.list_id)
    # a list that no longer exists: leave every list rather than keep writing to them
    lifecycle.unsubscribe(session, sub, mlist.slug if mlist else None, source=f"reader: {source}", ip=ip)
    session.commit()
    return sub


def unsubscribe_from_mailbox(settings: Settings, session: Session, address: str, *, source: str) -> int:
    """An email to the reader's own address at the unsubscribe mailbox (List-Unsubscribe's mailto:, RFC 2369):
    leaves the list the address names. TokenError for an address that is not one of ours; a replay changes
    nothing (the membership is already unsubscribed). Returns how many memberships changed; the caller commits."""
    mailbox = ReaderLinks(settings).mailbox
    if mailbox is None:
        raise TokenError("no unsubscribe mailbox is configured")
    ref = mailbox.read(address)
    sub = _reader(session, ref.subscriber_id)
    mlist = session.get(MailingList, ref.list_id)
    return lifecycle.unsubscribe(session, sub, mlist.slug if mlist else None, source=f"reader: {source}")


def preferences_from_token(settings: Settings, session: Session, token: str) -> tuple[Subscriber, MailingList]:
    """Whose preferences page this is, and the list whose email the link came from."""
    ref = ReaderLinks(settings).read("preferences", token)
    sub = _reader(session, ref.subscriber_id)
    mlist = session.get(MailingList, ref.list_id)
    if mlist is None:
        raise TokenError("this link is no longer valid")
    return sub, mlist


def update_preferences(settings: Settings, session: Session, subscriber: Subscriber, *, categories: list[str],
                       lists: dict[str, bool], send: SendConfirmation, known_categories: tuple[str, ...] | None,
                       ip: str | None = None, now: datetime | None = None) -> None:
    """Save the preferences page. Leaving a list unsubscribes at once; joining one sends a confirmation
    (consent is per list); unknown categories raise UnknownCategory, unknown lists NotFound."""
    source = "reader: preferences page"
    cats = canonical(categories, known_categories)
    targets = [(_list_for(settings, session, slug), wanted) for slug, wanted in lists.items()]
    if cats != list(subscriber.categories or []):
        subscriber.categories = cats
        lifecycle.record(session, subscriber.id, None, "preferences", source=source, ip=ip,
                         detail="categories: " + (", ".join(cats) or "(none)"))
    joined = (MembershipStatus.PENDING, MembershipStatus.ACTIVE)
    for mlist, wanted in targets:
        member = lifecycle.membership(session, subscriber, mlist)
        if not wanted and member is not None and member.status in joined:
            lifecycle.unsubscribe(session, subscriber, mlist.slug, source=source, ip=ip)
    session.commit()
    for mlist, wanted in targets:
        member = lifecycle.membership(session, subscriber, mlist)
        if wanted and (member is None or member.status != MembershipStatus.ACTIVE):
            request(settings, session, subscriber.email, send=send, known_categories=known_categories,
                    list_slug=mlist.slug, source=source, ip=ip, now=now)


# -- confirmations for imported readers: `digest subscribers confirm-pending` ----------------------

def _pending_ids(settings: Settings, *, list_id: int | None, again: bool, now: datetime) -> Select[Any]:
    """Pending memberships never sent a confirmation (with again: also those whose link has expired)."""
    never = Membership.confirm_sent_at.is_(None)
    expired = Membership.confirm_sent_at < now - timedelta(days=settings.subscribers.confirm_expiry_days)
    q = select(Membership.id).where(Membership.status == MembershipStatus.PENDING,
                                    or_(never, expired) if again else never)
    if list_id is not None:
        q = q.where(Membership.list_id == list_id)
    return q


class Pending:
    """The pending readers a `confirm-pending` run emails, taken in batches in membership order.

    A batch is chosen afresh each time (after the last one taken), so what was recorded as sent is
    never offered again and an interrupted run resumes where it stopped.
    """

    def __init__(self, settings: Settings, session: Session, *, list_slug: str | None = None, again: bool = False,
                 now: datetime | None = None) -> None:
        self.session = session
        self.now = now or utcnow()
        list_id = lifecycle.get_list(session, list_slug).id if list_slug else None
        self._ids = _pending_ids(settings, list_id=list_id, again=again, now=self.now)
        self._last_id = 0

    def count(self, limit: int | None = None) -> int:
        n = self.session.scalar(select(func.count()).select_from(self._ids.subquery())) or 0
        return n if limit is None else min(n, limit)

    def next_batch(self, size: int) -> list[tuple[Membership, Subscriber, MailingList]]:
        rows = self.session.execute(
            select(Membership, Subscriber, MailingList)
            .join(Subscriber, Subscriber.id == Membership.subscriber_id)
            .join(MailingList, MailingList.id == Membership.list_id)
            .where(Membership.id.in_(self._ids.where(Membership.id > self._last_id)))
            .order_by(Membership.id).limit(size)).all()
        if rows:
            self._last_id = rows[-1][0].id
        return list(rows)

    def record_sent(self, sent: Sequence[tuple[Membership, Subscriber, MailingList]], *,
                    source: str = "digest subscribers confirm-pending") -> None:
        """The confirmation went out to these: confirm_sent_at and a `confirm-sent` event each, in bulk
        (the caller commits)."""
        if not sent:
            return
        self.session.execute(update(Membership), [{"id": m.id, "confirm_sent_at": self.now} for m, _, _ in sent])
        self.session.execute(insert(Event), [
            {"subscriber_id": sub.id, "list_id": mlist.id, "kind": "confirm-sent", "old_status": None,
             "new_status": None, "source": source, "ip": None, "detail": f"confirmation email to {sub.email}",
             "at": self.now} for _, sub, mlist in sent])
