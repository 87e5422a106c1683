"""The confirmation email of double opt-in: rendered once per list, personalised per reader, sent by the
configured transport outside the issue ledger.

`subscribers.optin` decides who is asked to confirm and records that it was sent; it takes the sending
from here (`sender`) and the directory's categories as data. The functions below are what the web's
reader pages and `digest subscribers add/confirm-pending` call: optin's actions with both filled in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from html import escape

from sqlalchemy.orm import Session

from digest.config import Settings
from digest.deliver import make_transport, send_outside_ledger
from digest.deliver.protocol import Message, Transport
from digest.errors import DeliveryError
from digest.render import TOKENS, Rendered, compile_mjml, render_text
from digest.sources.categories import known_categories
from subscribers import optin
from subscribers.links import ReaderLinks
from subscribers.models import MailingList, Membership, Subscriber

CONFIRM_URL = "%%CONFIRM_URL%%"


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


def confirmation_message(links: ReaderLinks, member: Membership, subscriber: Subscriber,
                         edition: Rendered) -> Message:
    """One reader's confirmation. Not in the issue ledger: the membership id stands in as delivery id."""
    url = links.confirm_url(subscriber.id, member.list_id)
    return Message(delivery_id=member.id, subscriber_id=subscriber.id, issue_id=0, issue_number=0,
                   to_email=subscriber.email, to_name=subscriber.name, edition=edition,
                   values=_values(subscriber.name, url), headers={}, list_id=member.list_id)


def sender(settings: Settings, transport: Transport | None = None) -> optin.SendConfirmation:
    """Sends one membership's confirmation at once (its own transport unless one is given)."""

    def send(member: Membership) -> None:
        message = confirmation_message(ReaderLinks(settings), member, member.subscriber,
                                       confirmation_edition(settings, member.mailing_list))
        outcome = send_outside_ledger(settings, [message], transport)[0]
        if not outcome.ok:
            raise DeliveryError(f"the confirmation email could not be sent: {outcome.error or 'refused'}")

    return send


def request(settings: Settings, session: Session, email: str, *, name: str = "", list_slug: str = "weekly",
            categories: list[str] | None = None, source: str, ip: str | None = None,
            now: datetime | None = None, transport: Transport | None = None) -> str:
    """Ask to join a list and send the confirmation (optin.request); returns what happened, for admins."""
    return optin.request(settings, session, email, send=sender(settings, transport),
                         known_categories=known_categories(settings) if categories else None, name=name,
                         list_slug=list_slug, categories=categories, source=source, ip=ip, now=now)


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


def update_preferences(settings: Settings, session: Session, subscriber: Subscriber, *, categories: list[str],
                       lists: dict[str, bool], ip: str | None = None, now: datetime | None = None,
                       transport: Transport | None = None) -> None:
    """Save the preferences page (optin.update_preferences): joining a list emails its confirmation."""
    optin.update_preferences(settings, session, subscriber, categories=categories, lists=lists,
                             send=sender(settings, transport), known_categories=known_categories(settings),
                             ip=ip, now=now)


# -- confirmations for imported readers: `digest subscribers confirm-pending` ----------------------

@dataclass
class PendingReport:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def send_pending(settings: Settings, session: Session, *, list_slug: str | None = None, again: bool = False,
                 limit: int | None = None, transport: Transport | None = None, now: datetime | None = None,
                 progress: Callable[[int, int], None] | None = None) -> PendingReport:
    """Send the confirmation email to pending readers (imported without consent evidence), one at a time
    at the transport's pace. Each one is recorded (confirm_sent_at, an event) and committed as soon as it
    went out, before the next, so a run that crashes or is killed never sends anyone a second one; a
    reader whose message cannot be built or is refused fails alone, with the reason."""
    pending = optin.Pending(settings, session, list_slug=list_slug, again=again, now=now)
    total = pending.count(limit)
    report = PendingReport()
    if not total:
        return report
    transport = transport or make_transport(settings)
    links = ReaderLinks(settings)
    editions: dict[int, Rendered] = {}

    def failed(email: str, why: str | None) -> None:
        report.failed += 1
        if len(report.errors) < 5:
            report.errors.append(f"{email}: {why or 'refused'}")

    try:
        while report.sent + report.failed < total:
            rows = pending.next_batch(min(100, total - report.sent - report.failed))
            if not rows:
                break
            for row in rows:
                member, sub, mlist = row
                try:
                    if mlist.id not in editions:
                        editions[mlist.id] = confirmation_edition(settings, mlist)
                    message = confirmation_message(links, member, sub, editions[mlist.id])
                except Exception as e:  # this reader's data alone; the others still get theirs
                    failed(sub.email, f"could not build the confirmation: {e}")
                    continue
                (outcome,) = transport.send([message])
                if outcome.ok:
                    pending.record_sent([row])
                    session.commit()  # recorded before the next one goes out
                    report.sent += 1
                else:
                    failed(sub.email, outcome.error)
                if progress:
                    progress(report.sent + report.failed, total)
    except DeliveryError:
        session.commit()
        raise
    finally:
        transport.close()
    return report
