"""Figures for people: per-issue delivery and engagement counts (CLI `status`, the admin pages), and how
often each supplier was featured (`digest listings report`).

The ledger gives who was submitted, failed, skipped or is of unknown fate; provider events give who was
delivered, bounced, complained, opened and clicked. Event figures count readers, not events: a reader
who opens twice is one opener, and a reader both bounced and dropped is one bounce.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from digest.models import Listing
from digest.store import Delivery, DeliveryEvent, IssueRow, ListingFeature, utcnow

#: stored event kind -> column. `dropped` is stored only for a bad address (see deliver/events.py);
#: `blocked` (a soft bounce) and other drops are kept but counted nowhere.
EVENT_COLUMNS = {"delivered": "delivered", "bounce": "bounced", "dropped": "bounced",
                 "spamreport": "complained", "open": "opened", "click": "clicked"}
EVENT_FIGURES = ("delivered", "bounced", "complained", "opened", "clicked")
LEDGER = {"submitted": "submitted", "failed": "failed", "skipped": "skipped", "claimed": "unknown",
          "queued": "queued"}


def issue_figures(session: Session, limit: int = 52) -> list[dict[str, Any]]:
    """Newest first: issue, status, subject, readers, submitted, failed, skipped, unknown, queued,
    delivered, bounced, complained, opened, clicked."""
    issues = session.scalars(select(IssueRow).order_by(IssueRow.number.desc()).limit(limit)).all()
    ids = [i.id for i in issues]
    ledger: dict[int, dict[str, int]] = {}
    for issue_id, status, n in session.execute(
            select(Delivery.issue_id, Delivery.status, func.count()).where(Delivery.issue_id.in_(ids))
            .group_by(Delivery.issue_id, Delivery.status)):
        ledger.setdefault(issue_id, {})[status] = n
    column = case(EVENT_COLUMNS, value=DeliveryEvent.kind)
    events: dict[int, dict[str, int]] = {}
    for issue_id, col, n in session.execute(
            select(DeliveryEvent.issue_id, column, func.count(func.distinct(DeliveryEvent.subscriber_id)))
            .where(DeliveryEvent.issue_id.in_(ids), DeliveryEvent.kind.in_(list(EVENT_COLUMNS)))
            .group_by(DeliveryEvent.issue_id, column)):
        events.setdefault(issue_id, {})[col] = n
    # SendGrid's scheduled batches: readers whose copy waits at SendGrid for its send_at, and the moment
    # the issue reaches (reached) the readers
    now = utcnow()
    scheduled: dict[int, tuple[int, datetime | None]] = {}
    for issue_id, waiting, last in session.execute(
            select(Delivery.issue_id, func.sum(case((Delivery.send_at > now, 1), else_=0)), func.max(Delivery.send_at))
            .where(Delivery.issue_id.in_(ids), Delivery.status == "submitted").group_by(Delivery.issue_id)):
        scheduled[issue_id] = (int(waiting or 0), last)
    rows = []
    for i in issues:
        led, ev = ledger.get(i.id, {}), events.get(i.id, {})
        waiting, last = scheduled.get(i.id, (0, None))
        rows.append({
            "issue": i.number, "status": i.status, "subject": i.subject, "readers": sum(led.values()),
            **{name: led.get(status, 0) for status, name in LEDGER.items()},
            **{c: ev.get(c, 0) for c in EVENT_FIGURES},
            "scheduled": waiting, "delivered_at": last or i.sent_at,
            "recalled_at": i.recalled_at, "recalled_by": i.recalled_by,
        })
    return rows


@dataclass(frozen=True)
class FeatureCount:
    """How often one supplier was featured: what an advertiser asks about."""

    name: str
    tier: str
    categories: str
    featured: int
    issues: tuple[int, ...]
    in_directory: bool

    @property
    def last(self) -> int | None:
        return self.issues[-1] if self.issues else None


def feature_report(session: Session, listings: list[Listing], *, last: int | None = None
                   ) -> tuple[list[FeatureCount], list[int]]:
    """Every supplier in the directory (and any featured earlier but gone from it) with the issues that
    featured it, over all issues or the `last` N; and the issue numbers considered. Most featured first."""
    newest = session.scalar(select(func.max(ListingFeature.issue_number))) or 0
    query = select(ListingFeature.issue_number, ListingFeature.listing_key, ListingFeature.name)
    if last:
        query = query.where(ListingFeature.issue_number > newest - last)
    features: dict[str, list[int]] = {}
    names: dict[str, str] = {}
    considered: set[int] = set()
    for number, key, name in session.execute(query.order_by(ListingFeature.issue_number)):
        features.setdefault(key, []).append(number)
        names.setdefault(key, name)
        considered.add(number)
    rows = [FeatureCount(x.name, x.tier or "standard", " / ".join(x.categories), len(features.get(x.key, [])),
                         tuple(features.get(x.key, [])), True) for x in listings]
    known = {x.key for x in listings}
    rows += [FeatureCount(names[k], "", "", len(n), tuple(n), False) for k, n in features.items() if k not in known]
    rows.sort(key=lambda r: (-r.featured, r.tier != "featured", r.name.casefold()))
    return rows, sorted(considered)
