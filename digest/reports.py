"""Figures for people: per-issue delivery and engagement counts (CLI `status`, the admin pages)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.store import Delivery, DeliveryEvent, IssueRow

EVENT_COLUMNS = {"delivered": "delivered", "bounce": "bounced", "dropped": "bounced",
                 "spamreport": "complained", "open": "opened", "click": "clicked"}


def issue_figures(session: Session, limit: int = 52) -> list[dict[str, Any]]:
    """Newest first. Opens and clicks count readers, not events (one reader opening twice is one)."""
    issues = session.scalars(select(IssueRow).order_by(IssueRow.number.desc()).limit(limit)).all()
    ids = [i.id for i in issues]
    ledger: dict[int, dict[str, int]] = {}
    for issue_id, status, n in session.execute(
            select(Delivery.issue_id, Delivery.status, func.count()).where(Delivery.issue_id.in_(ids))
            .group_by(Delivery.issue_id, Delivery.status)):
        ledger.setdefault(issue_id, {})[status] = n
    events: dict[int, dict[str, int]] = {}
    for issue_id, kind, n in session.execute(
            select(DeliveryEvent.issue_id, DeliveryEvent.kind, func.count(func.distinct(DeliveryEvent.subscriber_id)))
            .where(DeliveryEvent.issue_id.in_(ids)).group_by(DeliveryEvent.issue_id, DeliveryEvent.kind)):
        col = EVENT_COLUMNS.get(kind)
        if col:
            events.setdefault(issue_id, {}).setdefault(col, 0)
            events[issue_id][col] += n
    rows = []
    for i in issues:
        led, ev = ledger.get(i.id, {}), events.get(i.id, {})
        rows.append({
            "issue": i.number, "status": i.status, "subject": i.subject,
            "readers": sum(led.values()), "submitted": led.get("submitted", 0), "failed": led.get("failed", 0),
            "skipped": led.get("skipped", 0), "unknown": led.get("claimed", 0), "queued": led.get("queued", 0),
            **{c: ev.get(c, 0) for c in ("delivered", "bounced", "complained", "opened", "clicked")},
        })
    return rows
