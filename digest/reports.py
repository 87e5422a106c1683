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
from zoneinfo import ZoneInfo

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


@dataclass
class ZoneProgress:
    """Local delivery: one zone's group of an issue. `due_at` is the zone's moment; `scheduled` readers are
    held for it (queued for the scheduler, or submitted to SendGrid with a send_at still ahead); `out_at` is
    when their copies were (or are to be) handed to the reader's mail server: the send_at, else when the
    transport took them; `delivered` readers have a delivered event, the last at `delivered_at`."""

    zone: str
    due_at: datetime | None
    readers: int = 0
    queued: int = 0
    submitted: int = 0
    failed: int = 0
    skipped: int = 0
    unknown: int = 0
    scheduled: int = 0
    out_at: datetime | None = None
    delivered: int = 0
    delivered_at: datetime | None = None

    @property
    def due_there(self) -> str:
        """The zone's moment by its own clock ("Mon 07 Oct 07:00 NZDT")."""
        if self.due_at is None:
            return ""
        local = self.due_at.astimezone(ZoneInfo(self.zone))
        return f"{local:%a %d %b %H:%M} {local.tzname()}"


def zone_progress(session: Session, numbers: list[int], now: datetime | None = None) -> dict[int, list[ZoneProgress]]:
    """Per issue number, its zones' progress (earliest moment first); an issue sent without local delivery
    has none."""
    now = now or utcnow()
    ids = {i: n for i, n in session.execute(select(IssueRow.id, IssueRow.number).where(IssueRow.number.in_(numbers)))}
    groups: dict[tuple[int, str], ZoneProgress] = {}
    for issue_id, zone, due_at, status, n, ahead, out_at in session.execute(
            select(Delivery.issue_id, Delivery.zone, Delivery.due_at, Delivery.status, func.count(),
                   func.sum(case((Delivery.send_at > now, 1), else_=0)),
                   func.max(func.coalesce(Delivery.send_at, Delivery.updated_at)))
            .where(Delivery.issue_id.in_(list(ids)), Delivery.zone.is_not(None))
            .group_by(Delivery.issue_id, Delivery.zone, Delivery.due_at, Delivery.status)):
        g = groups.setdefault((issue_id, zone or ""), ZoneProgress(zone or "", due_at))
        g.readers += n
        name = LEDGER.get(status, status)
        setattr(g, name, getattr(g, name, 0) + n)
        if status == "queued":
            g.scheduled += n if due_at is not None and due_at > now else 0
        if status == "submitted":
            g.scheduled += int(ahead or 0)
            g.out_at = out_at if g.out_at is None or (out_at and out_at > g.out_at) else g.out_at
    for issue_id, zone, n, last in session.execute(
            select(Delivery.issue_id, Delivery.zone, func.count(func.distinct(DeliveryEvent.subscriber_id)),
                   func.max(DeliveryEvent.at))
            .join(DeliveryEvent, (DeliveryEvent.issue_id == Delivery.issue_id)
                  & (DeliveryEvent.subscriber_id == Delivery.subscriber_id))
            .where(Delivery.issue_id.in_(list(ids)), Delivery.zone.is_not(None), DeliveryEvent.kind == "delivered")
            .group_by(Delivery.issue_id, Delivery.zone)):
        group = groups.get((issue_id, zone or ""))
        if group is not None:
            group.delivered, group.delivered_at = n, last
    out: dict[int, list[ZoneProgress]] = {}
    for (issue_id, _), g in sorted(groups.items(), key=lambda kv: (kv[1].due_at or now, kv[1].zone)):
        out.setdefault(ids[issue_id], []).append(g)
    return out


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
