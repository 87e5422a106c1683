"""Double opt-in and the reader's own links: what the subscribe form, the confirmation, unsubscribe and
preferences pages (issue 6's web side) and `digest subscribers add/confirm-pending` call.

Each function is one reader action and commits its own work: a confirmation link must never point at
a membership that was rolled back, and a reader's click must be recorded even if the page fails after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html import escape

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.deliver.protocol import Message, Transport
from digest.errors import DeliveryError
from digest.render import TOKENS, Rendered, compile_mjml, render_text
from digest.store import utcnow
from subscribers import lifecycle
from subscribers.categories import canonical, known_categories
from subscribers.models import ACTIVE, PENDING, Event, MailingList, Membership, Subscriber
from subscribers.tokens import TokenError, Tokens

CONFIRM_URL = "%%CONFIRM_URL%%"

# What `request` did; the web never shows it (it must not reveal who is known), the admin CLI does.
SENT, ALREADY_ACTIVE, RECENTLY_SENT, SUPPRESSED = "sent", "already active", "recently sent", "suppressed"


def confirm_url(settings: Settings, subscriber_id: int, list_id: int, tokens: Tokens | None = None) -> str:
    token = (tokens or Tokens(settings.secret_key)).make("confirm", subscriber_id, list_id)
    return f"{settings.publication.public_url}/c/{token}"


def confirmation_edition(settings: Settings, mailing_list: MailingList) -> Rendered:
    """The confirmation email for a list, compiled once: the greeting and link are reader tokens."""
    pub = settings.publication
    days = settings.subscribers.confirm_expiry_days
    subject = f"Please confirm your subscription to {pub.name}"
    if mailing_list.slug != settings.delivery.list:
        subject = f"Please confirm: {mailing_list.name} from {pub.name}"
    context = {
        "publication": pub, "list_name": mailing_list.name, "expiry_days": days, "title": subject,
        "preheader": f"One click to start receiving {mailing_list.name}.",
        "reader": {"greeting": TOKENS["greeting"], "greeting_html": TOKENS["greeting_html"],
                   "confirm_url": CONFIRM_URL},
    }
    html = compile_mjml("email/confirm.mjml.j2", context)
    text = render_text("email/confirm.txt.j2", context)
    return Rendered(subject, str(context["preheader"]), html, text, edition=f"confirm-{mailing_list.slug}")


def _values(name: str, url: str) -> dict[str, str]:
    greeting = f"Hi {name}," if name.strip() else "Hello,"
    return {TOKENS["greeting"]: greeting, TOKENS["greeting_html"]: escape(greeting), CONFIRM_URL: url}


def confirmation_message(settings: Settings, tokens: Tokens, member: Membership, subscriber: Subscriber,
                         edition: Rendered) -> Message:
    """One reader's confirmation. Not in the issue ledger: the membership id stands in as delivery id."""
    url = confirm_url(settings, subscriber.id, member.list_id, tokens)
    return Message(delivery_id=member.id, subscriber_id=subscriber.id, issue_id=0, issue_number=0,
                   to_email=subscriber.email, to_name=subscriber.name, edition=edition,
                   values=_values(subscriber.name, url), headers={}, list_id=member.list_id)


def _send_one(settings: Settings, message: Message, transport: Transport | None) -> None:
    from digest.deliver import send_outside_ledger

    outcome = send_outside_ledger(settings, [message], transport)[0]
    if not outcome.ok:
        raise DeliveryError(f"the confirmation email could not be sent: {outcome.error or 'refused'}")


def _list_for(settings: Settings, session: Session, slug: str) -> MailingList:
    """The default list is created on first use; any other must have been created by an admin."""
    if slug in (settings.delivery.list, lifecycle.DEFAULT_LIST):
        return lifecycle.ensure_list(session, slug)
    return lifecycle.get_list(session, slug)


def request(settings: Settings, session: Session, email: str, *, name: str = "", list_slug: str = "weekly",
            categories: list[str] | None = None, source: str, ip: str | None = None,
            now: datetime | None = None, transport: Transport | None = None) -> str:
    """Ask to join a list and send the confirmation; returns what happened (for the admin's eyes only).

    Name and categories are taken only for a new address: a stranger's form must not change an
    existing reader's details. A withdrawn membership stays withdrawn until the reader confirms.
    """
    address = lifecycle.normalize(email)
    if lifecycle.is_suppressed(session, address):
        return SUPPRESSED
    mlist = _list_for(settings, session, list_slug)
    existing = lifecycle.find(session, address.email)
    cats = None if existing is not None or not categories else canonical(categories, known_categories(settings))
    member = lifecycle.subscribe(session, address.email, name=name if existing is None else "",
                                 list_slug=mlist.slug, source=source, ip=ip, categories=cats)
    now = now or utcnow()
    if member.status == ACTIVE:
        session.commit()
        return ALREADY_ACTIVE
    window = timedelta(minutes=settings.subscribers.resend_confirm_minutes)
    if member.confirm_sent_at is not None and now - member.confirm_sent_at < window:
        session.commit()
        return RECENTLY_SENT
    session.commit()  # the membership exists before its link goes out
    sub = member.subscriber
    message = confirmation_message(settings, Tokens(settings.secret_key), member, sub,
                                   confirmation_edition(settings, mlist))
    _send_one(settings, message, transport)
    member.confirm_sent_at = now
    lifecycle.record(session, sub.id, mlist.id, "confirm-sent", source=source, ip=ip,
                     detail=f"confirmation email to {sub.email}", at=now)
    session.commit()
    return SENT


def request_confirmation(settings: Settings, session: Session, email: str, *, name: str = "",
                         list_slug: str = "weekly", categories: list[str] | None = None, source: str,
                         ip: str | None = None, now: datetime | None = None,
                         transport: Transport | None = None) -> None:
    """The subscribe form's action. Returns the same (nothing) whether the address was new, pending,
    active or erased, so the form never reveals who is on the list; raises InvalidEmail for a bad
    address, NotFound for a list that does not exist, DeliveryError when the email cannot be sent.
    """
    request(settings, session, email, name=name, list_slug=list_slug, categories=categories, source=source,
            ip=ip, now=now, transport=transport)


def confirm_from_token(settings: Settings, session: Session, token: str, *, ip: str | None = None) -> Membership:
    """The reader opened their confirmation link: the membership becomes active (idempotent)."""
    ref = Tokens(settings.secret_key).read("confirm", token, settings.subscribers.confirm_expiry_days)
    member = session.scalar(select(Membership).where(Membership.subscriber_id == ref.subscriber_id,
                                                     Membership.list_id == ref.list_id))
    if member is None:
        raise TokenError("this link is no longer valid: please subscribe again")
    if member.status == ACTIVE:
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
    ref = Tokens(settings.secret_key).read("unsubscribe", token, settings.subscribers.link_expiry_days)
    sub = _reader(session, ref.subscriber_id)
    mlist = session.get(MailingList, ref.list_id)
    # a list that no longer exists: leave every list rather than keep writing to them
    lifecycle.unsubscribe(session, sub, mlist.slug if mlist else None, source=f"reader: {source}", ip=ip)
    session.commit()
    return sub


def preferences_from_token(settings: Settings, session: Session, token: str) -> tuple[Subscriber, MailingList]:
    """Whose preferences page this is, and the list whose email the link came from."""
    ref = Tokens(settings.secret_key).read("preferences", token, settings.subscribers.link_expiry_days)
    sub = _reader(session, ref.subscriber_id)
    mlist = session.get(MailingList, ref.list_id)
    if mlist is None:
        raise TokenError("this link is no longer valid")
    return sub, mlist


def update_preferences(settings: Settings, session: Session, subscriber: Subscriber, *, categories: list[str],
                       lists: dict[str, bool], ip: str | None = None, now: datetime | None = None,
                       transport: Transport | None = None) -> None:
    """Save the preferences page. Leaving a list unsubscribes at once; joining one sends a confirmation
    (consent is per list); unknown categories raise UnknownCategory, unknown lists NotFound."""
    source = "reader: preferences page"
    cats = canonical(categories, known_categories(settings))
    targets = [(_list_for(settings, session, slug), wanted) for slug, wanted in lists.items()]
    if cats != list(subscriber.categories or []):
        subscriber.categories = cats
        lifecycle.record(session, subscriber.id, None, "preferences", source=source, ip=ip,
                         detail="categories: " + (", ".join(cats) or "(none)"))
    for mlist, wanted in targets:
        member = lifecycle.membership(session, subscriber, mlist)
        if not wanted and member is not None and member.status in (PENDING, ACTIVE):
            lifecycle.unsubscribe(session, subscriber, mlist.slug, source=source, ip=ip)
    session.commit()
    for mlist, wanted in targets:
        member = lifecycle.membership(session, subscriber, mlist)
        if wanted and (member is None or member.status != ACTIVE):
            request(settings, session, subscriber.email, list_slug=mlist.slug, source=source, ip=ip, now=now,
                    transport=transport)


# -- confirmations for imported readers: `digest subscribers confirm-pending` ----------------------

@dataclass
class PendingReport:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def pending_query(settings: Settings, *, list_id: int | None = None, again: bool = False,
                  now: datetime | None = None):  # type: ignore[no-untyped-def]
    """Pending memberships never sent a confirmation (with again: also those whose link has expired)."""
    now = now or utcnow()
    never = Membership.confirm_sent_at.is_(None)
    expired = Membership.confirm_sent_at < now - timedelta(days=settings.subscribers.confirm_expiry_days)
    q = select(Membership.id).where(Membership.status == PENDING, or_(never, expired) if again else never)
    if list_id is not None:
        q = q.where(Membership.list_id == list_id)
    return q


def send_pending(settings: Settings, session: Session, *, list_slug: str | None = None, again: bool = False,
                 limit: int | None = None, transport: Transport | None = None, now: datetime | None = None,
                 progress: Callable[[int, int], None] | None = None) -> PendingReport:
    """Send the confirmation email to pending readers (imported without consent evidence), in the
    transport's batches and at its pace; each batch is recorded (confirm_sent_at, an event) as it goes,
    so an interrupted run resumes without sending anyone two."""
    from digest.deliver import make_transport

    now = now or utcnow()
    list_id = lifecycle.get_list(session, list_slug).id if list_slug else None
    total = session.scalar(select(func.count()).select_from(pending_query(settings, list_id=list_id, again=again,
                                                                          now=now).subquery())) or 0
    if limit is not None:
        total = min(total, limit)
    report = PendingReport()
    if not total:
        return report
    transport = transport or make_transport(settings)
    tokens = Tokens(settings.secret_key)
    editions: dict[int, Rendered] = {}
    last_id = 0
    try:
        while report.sent + report.failed < total:
            size = min(transport.batch_size, total - report.sent - report.failed)
            ids = pending_query(settings, list_id=list_id, again=again, now=now).where(Membership.id > last_id)
            rows = session.execute(
                select(Membership, Subscriber, MailingList)
                .join(Subscriber, Subscriber.id == Membership.subscriber_id)
                .join(MailingList, MailingList.id == Membership.list_id)
                .where(Membership.id.in_(ids)).order_by(Membership.id).limit(size)).all()
            if not rows:
                break
            last_id = rows[-1][0].id
            messages = []
            for member, sub, mlist in rows:
                if mlist.id not in editions:
                    editions[mlist.id] = confirmation_edition(settings, mlist)
                messages.append(confirmation_message(settings, tokens, member, sub, editions[mlist.id]))
            outcomes = transport.send(messages)
            by_id = {m.delivery_id: (m, r) for m, r in zip(messages, rows, strict=True)}
            sent = [by_id[o.delivery_id] for o in outcomes if o.ok]
            for o in outcomes:
                if not o.ok:
                    report.failed += 1
                    if len(report.errors) < 5:
                        report.errors.append(f"{by_id[o.delivery_id][0].to_email}: {o.error}")
            if sent:
                session.execute(update(Membership), [{"id": r[0].id, "confirm_sent_at": now} for _, r in sent])
                session.execute(insert(Event), [
                    {"subscriber_id": r[1].id, "list_id": r[2].id, "kind": "confirm-sent", "old_status": None,
                     "new_status": None, "source": "digest subscribers confirm-pending", "ip": None,
                     "detail": f"confirmation email to {r[1].email}", "at": now} for _, r in sent])
            session.commit()
            report.sent += len(sent)
            if progress:
                progress(report.sent + report.failed, total)
    except DeliveryError:
        session.commit()
        raise
    finally:
        transport.close()
    return report

