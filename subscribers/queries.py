"""Read-only views of the subscriber store, shared by the CLI and the admin pages."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from subscribers import lifecycle
from subscribers.models import MailingList, Membership, MembershipStatus, Subscriber


@dataclass
class ListCounts:
    slug: str
    name: str
    counts: dict[MembershipStatus, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def list_counts(session: Session) -> list[ListCounts]:
    """Every list with how many memberships it has in each status (zeros included)."""
    counts: dict[int, dict[MembershipStatus, int]] = {}
    for lid, status, n in session.execute(select(Membership.list_id, Membership.status, func.count())
                                          .group_by(Membership.list_id, Membership.status)):
        counts.setdefault(lid, {})[status] = n
    return [ListCounts(m.slug, m.name, {s: counts.get(m.id, {}).get(s, 0) for s in MembershipStatus})
            for m in session.scalars(select(MailingList).order_by(MailingList.slug))]


def membership_status(session: Session, email: str, list_slug: str) -> MembershipStatus | None:
    """Where this address stands on this list; None when it is not a member (or not known)."""
    sub = lifecycle.find(session, email)
    if sub is None:
        return None
    return session.scalar(select(Membership.status).join(MailingList, MailingList.id == Membership.list_id)
                          .where(Membership.subscriber_id == sub.id, MailingList.slug == list_slug))


# -- lookups for the web pages (readers' links, admins' pages) ---------------------------------------

def list_slugs(session: Session) -> list[str]:
    """Every list's slug, in order."""
    return list(session.scalars(select(MailingList.slug).order_by(MailingList.slug)))


def subscriber_by_id(session: Session, subscriber_id: int) -> Subscriber | None:
    return session.get(Subscriber, subscriber_id)


def mailing_list_by_id(session: Session, list_id: int) -> MailingList | None:
    return session.get(MailingList, list_id)


def list_choices(session: Session, subscriber_id: int) -> list[tuple[MailingList, str | None]]:
    """Every list by name, with this reader's membership status in it (None where they have none)."""
    statuses = dict(session.execute(select(Membership.list_id, Membership.status)
                                    .where(Membership.subscriber_id == subscriber_id)).all())
    return [(mlist, statuses.get(mlist.id))
            for mlist in session.scalars(select(MailingList).order_by(MailingList.name))]


def active_zones(session: Session, list_slug: str) -> dict[str | None, int]:
    """How many active readers of the list are in each time zone (None: no zone of their own)."""
    return {zone: n for zone, n in session.execute(
        select(Subscriber.timezone, func.count()).join(Membership, Membership.subscriber_id == Subscriber.id)
        .join(MailingList, MailingList.id == Membership.list_id)
        .where(MailingList.slug == list_slug, Membership.status == MembershipStatus.ACTIVE)
        .group_by(Subscriber.timezone))}
