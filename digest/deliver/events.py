"""Provider events back into the store: recorded once per provider event id, consent changes applied.

SendGrid's Event Webhook posts batches of events; each carries the custom_args we sent (issue,
subscriber and list ids). Those ids are trusted only when the ledger agrees: a delivery of that issue
to that subscriber at that address. Otherwise the event is matched by its address. Replays (SendGrid
retries a batch it did not see answered) change nothing twice: an event id already stored is skipped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest.deliver.sendgrid import ARG_ISSUE, ARG_LIST, ARG_SUBSCRIBER
from digest.errors import NotFound
from digest.store import Delivery, DeliveryEvent, IssueRow, utcnow
from subscribers import lifecycle
from subscribers.models import Subscriber

SOURCE = "sendgrid event webhook"
#: what an event does to the reader's memberships (the lifecycle kind to apply), when it does anything
DROPPED_REASONS = {"bounced address": "dropped", "invalid": "dropped", "spam reporting address": "spamreport",
                   "unsubscribed address": "unsubscribe"}
#: kept from the provider's event; the address, IP and user agent are not (we hold the subscriber id)
KEPT_FIELDS = ("event", "type", "reason", "status", "response", "url", "sg_message_id", "category",
               "bounce_classification", "attempt")


@dataclass
class EventsResult:
    received: int = 0
    recorded: int = 0
    duplicates: int = 0
    applied: int = 0  # memberships whose status changed
    unmatched: int = 0  # no reader found for the event
    invalid: list[str] = field(default_factory=list)


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def kind_of(event: dict[str, Any]) -> str:
    """The kind we store: SendGrid's event name, except a soft bounce (`type: blocked`) is `blocked`, and
    `dropped` is kept for a bad address only (other drops are `dropped_suppressed` or `dropped_other`), so
    the figures count as bounced exactly the readers whose address failed."""
    name = str(event.get("event", ""))
    if name == "bounce" and str(event.get("type", "bounce")).lower() == "blocked":
        return "blocked"
    if name == "dropped":
        applies = DROPPED_REASONS.get(str(event.get("reason", "")).strip().lower())
        return "dropped" if applies == "dropped" else "dropped_suppressed" if applies else "dropped_other"
    return name


def consent_change(event: dict[str, Any]) -> str | None:
    """The lifecycle event kind this provider event applies, if any."""
    kind = kind_of(event)
    if kind in ("bounce", "spamreport", "unsubscribe", "group_unsubscribe"):
        return kind
    if kind.startswith("dropped"):
        return DROPPED_REASONS.get(str(event.get("reason", "")).strip().lower())
    return None


def _reader(session: Session, event: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    """(issue id, subscriber id, list id) for an event, trusting our custom_args only if the ledger agrees."""
    email = str(event.get("email", "")).strip().casefold()
    issue_id, sub_id, list_id = _int(event.get(ARG_ISSUE)), _int(event.get(ARG_SUBSCRIBER)), _int(event.get(ARG_LIST))
    if issue_id is not None and sub_id is not None:
        row = session.execute(select(Delivery.email, Subscriber.email_key).join(
            Subscriber, Subscriber.id == Delivery.subscriber_id, isouter=True)
            .where(Delivery.issue_id == issue_id, Delivery.subscriber_id == sub_id)).first()
        if row is not None and email in {(row[0] or "").casefold(), (row[1] or "").casefold()}:
            return issue_id, sub_id, list_id
    sub = lifecycle.find(session, email) if email else None
    if sub is None:
        return None, None, None
    issue = None
    message = str(event.get("sg_message_id", "")).split(".")[0]
    if message:
        issue = session.scalar(select(Delivery.issue_id).where(Delivery.subscriber_id == sub.id,
                                                               Delivery.message_id == message).limit(1))
    if issue is None and issue_id is not None and session.get(IssueRow, issue_id) is not None:
        issue = issue_id
    return issue, sub.id, None


def _when(event: dict[str, Any]) -> datetime:
    ts = _int(event.get("timestamp"))
    return datetime.fromtimestamp(ts, UTC) if ts is not None else utcnow()


def record_events(session: Session, events: list[Any]) -> EventsResult:
    """Store and apply a webhook batch in one transaction (the caller commits)."""
    result = EventsResult(received=len(events))
    ids = [str(e.get("sg_event_id")) for e in events if isinstance(e, dict) and e.get("sg_event_id")]
    seen = set(session.scalars(select(DeliveryEvent.provider_event_id)
                               .where(DeliveryEvent.provider_event_id.in_(ids)))) if ids else set()
    for i, event in enumerate(events):
        if not isinstance(event, dict) or not event.get("sg_event_id") or not event.get("event"):
            result.invalid.append(f"event {i}: not an object with sg_event_id and event")
            continue
        event_id = str(event["sg_event_id"])[:128]
        if event_id in seen:
            result.duplicates += 1
            continue
        seen.add(event_id)
        issue_id, sub_id, list_id = _reader(session, event)
        if sub_id is None:
            result.unmatched += 1
        session.add(DeliveryEvent(
            provider_event_id=event_id, issue_id=issue_id, subscriber_id=sub_id, kind=kind_of(event)[:32],
            url=str(event["url"]) if event.get("url") else None, at=_when(event),
            payload={k: event[k] for k in KEPT_FIELDS if k in event}))
        result.recorded += 1
        change = consent_change(event)
        if change and sub_id is not None:
            detail = "; ".join(str(event[k]) for k in ("reason", "status", "type") if event.get(k))
            with contextlib.suppress(NotFound):  # erased meanwhile: nothing left to change
                result.applied += lifecycle.apply_event(session, sub_id, change, source=SOURCE, list_id=list_id,
                                                        detail=f"sendgrid {event['event']}: {detail}"[:2000])
    return result


def apply_batch(session: Session, events: list[Any]) -> EventsResult:
    """record_events and commit; a concurrent delivery of the same batch is retried once (it then sees
    the other's rows and skips them)."""
    for attempt in (1, 2):
        try:
            result = record_events(session, events)
            session.commit()
            return result
        except IntegrityError:
            session.rollback()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
