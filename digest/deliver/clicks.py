"""Clicks through our own redirect (`/r/<token>`, delivery.click_redirect): stored as `click` events, the
same rows SendGrid's click events make, so the reports count both alike."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.deliver.ledger import DeliveryStatus
from digest.store import Delivery, DeliveryEvent, IssueRow, utcnow

SOURCE = "click redirect"


def record_click(session: Session, issue_number: int, subscriber_id: int, url: str) -> bool:
    """Record one click of a reader on a link of an issue they were sent (the caller commits). A token for
    an issue they were not sent (a test copy, a forwarded link after an erasure) records nothing."""
    issue_id = session.scalar(select(Delivery.issue_id).join(IssueRow, IssueRow.id == Delivery.issue_id).where(
        IssueRow.number == issue_number, Delivery.subscriber_id == subscriber_id,
        Delivery.status == DeliveryStatus.SUBMITTED).limit(1))
    if issue_id is None:
        return False
    # every click is its own event (one id each); the reports count readers, so a second click adds a
    # click, not a reader
    session.add(DeliveryEvent(provider_event_id=f"redirect-{uuid.uuid4().hex}", issue_id=issue_id,
                              subscriber_id=subscriber_id, kind="click", url=url, at=utcnow(),
                              payload={"event": "click", "source": SOURCE}))
    return True
