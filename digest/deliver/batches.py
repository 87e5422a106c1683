"""Scheduled provider batches after the request: recover the ones whose answer was lost, recall an issue.

With SendGrid's scheduled sends every request has its own batch id and a send_at, both recorded in the
ledger before the request goes out (`ledger.record_batches`). SendGrid honours a cancel only when it is
made at least 10 minutes before the batch's send_at, with at most 10 batches cancelled or paused at one
time (https://www.twilio.com/docs/sendgrid/api-reference/cancel-scheduled-sends). So:

- a batch of unknown fate (the process died while its request was in flight) is cancelled at the start of
  the next send and its readers queued again; only a cancel that cannot be honoured leaves it unknown,
  for `digest deliveries resolve`;
- `recall` cancels every batch of an issue still 10+ minutes from its send_at: those readers are queued
  again (not sent), the issue is recalled (who, when), and the batches that could not be are listed.

Every cancel SendGrid holds takes one of its 10 slots until it is deleted, and deleting it while the
batch's send_at is ahead would send the batch after all. So each held cancel is recorded
(`ledger.record_cancels`, the provider_cancels table) and deleted at SendGrid only once its send_at has
passed (the transport's `lift_passed`), by whichever run comes next: old cancels never fill the slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.orm import Session

from digest.config import Settings
from digest.deliver.ledger import (
    CLAIMED,
    DeliveryStatus,
    ScheduledBatch,
    adopt_batch,
    batch_send_at,
    held_cancels,
    note_batch,
    record_cancels,
    requeue_batch,
    scheduled_batches,
    sent_without_batch,
    unknown_provider_batches,
)
from digest.errors import DeliveryError
from digest.issue_status import IssueStatus, move
from digest.locks import sender_of
from digest.store import IssueRow, utcnow

#: SendGrid honours a cancel only this long before send_at; a little margin for the clocks and the request
CANCEL_NOTICE = timedelta(minutes=10)
MARGIN = timedelta(seconds=30)


class Cancels(Protocol):
    def cancel(self, batch: str, *, send_at: int | None = None) -> str | None:
        """None when the provider holds the cancel; else why not."""
        ...

    def adopt(self, held: dict[str, int]) -> None:
        """Cancels held for earlier runs (batch -> send_at), to free their slots in time."""
        ...

    def lift_passed(self) -> None:
        """Delete the held cancels whose batch's send_at has passed (their slots are free again)."""
        ...

    def cancels_held(self) -> tuple[dict[str, int], list[str], bool]:
        """(cancels held now, cancels deleted since the last call, whether anything changed)."""
        ...


def sync_cancels(session: Session, cancels: Cancels) -> None:
    """Record in the ledger what the provider holds now (the caller commits)."""
    held, lifted, changed = cancels.cancels_held()
    if changed:
        record_cancels(session, held, lifted)


def free_slots(session: Session, cancels: Cancels) -> None:
    """Take over the cancels earlier runs left held, and delete those whose send_at has passed."""
    cancels.adopt(held_cancels(session))
    cancels.lift_passed()
    sync_cancels(session, cancels)
    session.commit()


def _stamp(at: datetime | None) -> int | None:
    return int(at.timestamp()) if at is not None else None


def canceller(settings: Settings) -> Cancels:
    """The provider that can cancel a scheduled batch: SendGrid (the other transports send at once)."""
    if settings.delivery.transport != "sendgrid":
        raise DeliveryError(f"{settings.path}: delivery.transport is {settings.delivery.transport!r}: only SendGrid's "
                            "scheduled batches can be recalled (the others hand the email over at once)")
    from digest.deliver.sendgrid import SendGridTransport

    return SendGridTransport(settings)


def recall_preview(session: Session, issue_id: int, now: datetime | None = None
                   ) -> tuple[list[ScheduledBatch], list[ScheduledBatch], int]:
    """What a recall would do now: (batches it can cancel, batches too close to send_at, readers sent at
    once), for the confirmation step."""
    now = now or utcnow()
    able: list[ScheduledBatch] = []
    late: list[ScheduledBatch] = []
    for b in scheduled_batches(session, issue_id):
        (able if b.send_at is not None and b.send_at - now >= CANCEL_NOTICE + MARGIN else late).append(b)
    return able, late, sent_without_batch(session, issue_id)


def recover_unknown(session: Session, issue_id: int, cancels: Cancels, *, worker: str | None = None,
                    ) -> tuple[int, list[str]]:
    """Cancel each scheduled batch of unknown fate and queue its readers again (the caller's send then sends
    them in a new batch). Returns (readers queued again, why each batch left unknown could not be).
    With several workers, each batch is first adopted by one of them (`worker`), so it is cancelled once."""
    queued, left = 0, []
    free_slots(session, cancels)
    for batch in unknown_provider_batches(session, issue_id):
        if not adopt_batch(session, issue_id, batch, worker):
            continue
        why = cancels.cancel(batch, send_at=_stamp(batch_send_at(session, issue_id, batch)))
        sync_cancels(session, cancels)
        if why is None:
            queued += requeue_batch(session, issue_id, batch, CLAIMED,
                                    f"fate unknown; batch {batch} cancelled at SendGrid: sent again in a new batch")
        else:
            note = f"fate unknown; cancelling batch {batch} failed: {why}"
            note_batch(session, issue_id, batch, note)
            left.append(note)
        session.commit()
    return queued, left


@dataclass
class Recall:
    number: int
    recalled: int = 0  # readers queued again: they got nothing
    batches: int = 0
    kept: list[tuple[ScheduledBatch, str]] = field(default_factory=list)  # not recalled, and why
    already_sent: int = 0  # readers sent without a schedule (or before recall was possible)

    def lines(self) -> list[str]:
        out = [f"issue {self.number}: {self.recalled} reader(s) in {self.batches} batch(es) recalled: they get "
               "nothing and are queued again (not sent)"]
        for b, why in self.kept:
            at = f"{b.send_at:%Y-%m-%d %H:%M} UTC" if b.send_at else "no send moment"
            out.append(f"not recalled: batch {b.batch} ({b.readers} reader(s), {b.status}, send_at {at}): {why}")
        if self.already_sent:
            out.append(f"not recalled: {self.already_sent} reader(s) sent at once (no scheduled batch)")
        return out


def recall(session: Session, issue: IssueRow, cancels: Cancels, *, by: str,
           now: datetime | None = None) -> Recall:
    """Cancel every batch of the issue still 10+ minutes from its send_at; their readers go back to queued
    and the issue is recalled (by, when). Refused while a send of the issue is running."""
    holder = sender_of(session, issue.id)
    if holder is not None:
        raise DeliveryError(f"issue {issue.number} is being sent right now by {holder}: stop it (Ctrl-C), then "
                            "recall it")
    if issue.status not in (IssueStatus.SENDING, IssueStatus.SENT):
        raise DeliveryError(f"issue {issue.number} is {issue.status}: only an issue that is sending or sent can be "
                            "recalled")
    now = now or utcnow()
    report = Recall(issue.number)
    free_slots(session, cancels)
    for b in scheduled_batches(session, issue.id):
        if b.send_at is None or b.send_at - now < CANCEL_NOTICE + MARGIN:
            report.kept.append((b, "less than 10 minutes before its send moment (or past it): SendGrid no "
                                   "longer takes a cancel"))
            continue
        why = cancels.cancel(b.batch, send_at=_stamp(b.send_at))
        sync_cancels(session, cancels)
        if why is not None:
            report.kept.append((b, why))
            session.commit()
            continue
        report.recalled += requeue_batch(session, issue.id, b.batch, DeliveryStatus(b.status),
                                         f"recalled by {by} at {now:%Y-%m-%d %H:%M} UTC")
        report.batches += 1
        session.commit()
    report.already_sent = sent_without_batch(session, issue.id)
    if report.recalled:
        move(issue, IssueStatus.RECALLED, now=now, by=by, note=f" by {by}: {report.recalled} reader(s) recalled")
    session.commit()
    return report
