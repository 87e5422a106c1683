"""The Transport protocol, the Message it carries, and the ledger loop every transport goes through.

Exactly-once lives here, once: the recipients are snapshotted into `deliveries`; each batch is claimed
(committed) before its request and marked submitted or failed after it. A process killed between the
two leaves `claimed` rows: their fate is unknown, so they are reported and never re-sent by themselves.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formataddr
from typing import Protocol

from sqlalchemy import and_, bindparam, func, insert, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Settings
from digest.errors import DeliveryError
from digest.render import Rendered, token_values
from digest.store import Delivery, IssueRow, utcnow
from subscribers.models import ACTIVE, Membership, Subscriber
from subscribers.tokens import Tokens

QUEUED, CLAIMED, SUBMITTED, FAILED, SKIPPED = "queued", "claimed", "submitted", "failed", "skipped"


@dataclass(frozen=True)
class Message:
    """One reader's copy: the shared edition plus that reader's token values and headers."""

    delivery_id: int
    subscriber_id: int
    issue_id: int
    issue_number: int
    to_email: str
    to_name: str
    edition: Rendered
    values: dict[str, str]
    headers: dict[str, str]


@dataclass(frozen=True)
class Outcome:
    delivery_id: int
    ok: bool
    message_id: str | None = None
    error: str | None = None


class Transport(Protocol):
    """Sends batches. Returns one Outcome per message; raises DeliveryError to stop the whole send."""

    name: str
    batch_size: int
    concurrency: int

    def send(self, messages: list[Message]) -> list[Outcome]: ...

    def close(self) -> None: ...


@dataclass
class SendReport:
    issue_number: int
    subject: str
    submitted: int = 0
    failed: int = 0
    skipped: int = 0
    unknown: int = 0
    already: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.unknown == 0


def sender(settings: Settings) -> str:
    pub = settings.publication
    return formataddr((pub.from_name or pub.name, pub.from_email))


class Personalizer:
    """Token values and headers for a reader: signed links built here, for every transport alike."""

    def __init__(self, settings: Settings) -> None:
        self.public_url = settings.publication.public_url
        self.tokens = Tokens(settings.secret_key)
        self.mailto = settings.publication.reply_to or settings.publication.from_email

    def unsubscribe_url(self, subscriber_id: int, list_id: int) -> str:
        return f"{self.public_url}/u/{self.tokens.make('unsubscribe', subscriber_id, list_id)}"

    def preferences_url(self, subscriber_id: int, list_id: int) -> str:
        return f"{self.public_url}/p/{self.tokens.make('preferences', subscriber_id, list_id)}"

    def for_reader(self, subscriber_id: int, list_id: int, name: str) -> tuple[dict[str, str], dict[str, str]]:
        unsub = self.unsubscribe_url(subscriber_id, list_id)
        values = token_values(name, unsub, self.preferences_url(subscriber_id, list_id))
        headers = {
            "List-Unsubscribe": f"<{unsub}>, <mailto:{self.mailto}?subject=unsubscribe>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
        return values, headers


def snapshot(session: Session, issue: IssueRow, list_id: int) -> int:
    """Freeze the recipients: every active member of the list now. Returns how many were added."""
    if issue.snapshot_at is not None:
        return 0
    now = utcnow()
    rows = select(
        literal(issue.id, Delivery.issue_id.type), Subscriber.id, Subscriber.email,
        literal(QUEUED, Delivery.status.type), literal(now, Delivery.updated_at.type),
    ).join(Membership, and_(Membership.subscriber_id == Subscriber.id, Membership.list_id == list_id,
                            Membership.status == ACTIVE))
    already = select(Delivery.subscriber_id).where(Delivery.issue_id == issue.id)
    rows = rows.where(Subscriber.id.not_in(already))
    result = session.execute(insert(Delivery).from_select(
        ["issue_id", "subscriber_id", "email", "status", "updated_at"], rows))
    issue.snapshot_at = now
    issue.status = "sending"
    return result.rowcount or 0


def counts(session: Session, issue_id: int) -> dict[str, int]:
    return dict(session.execute(select(Delivery.status, func.count()).where(Delivery.issue_id == issue_id)
                                .group_by(Delivery.status)).all())


def _claim(session: Session, issue: IssueRow, list_id: int, size: int) -> list[tuple[Delivery, Subscriber]]:
    """Claim the next batch in one transaction; readers who left since the snapshot are skipped."""
    rows = session.execute(
        select(Delivery, Subscriber, Membership.status)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id, isouter=True)
        .join(Membership, and_(Membership.subscriber_id == Delivery.subscriber_id,
                               Membership.list_id == list_id), isouter=True)
        .where(Delivery.issue_id == issue.id, Delivery.status == QUEUED)
        .order_by(Delivery.id).limit(size)
    ).all()
    now = utcnow()
    gone = [d.id for d, s, status in rows if s is None or status != ACTIVE]
    keep = [(d, s) for d, s, status in rows if s is not None and status == ACTIVE]
    if gone:
        session.execute(update(Delivery).where(Delivery.id.in_(gone))
                        .values(status=SKIPPED, error="left the list before sending", updated_at=now))
    if keep:
        batch = uuid.uuid4().hex
        session.execute(update(Delivery).where(Delivery.id.in_([d.id for d, _ in keep]))
                        .values(status=CLAIMED, batch=batch, updated_at=now))
    session.commit()
    return keep


def _mark(session: Session, outcomes: list[Outcome]) -> tuple[int, int]:
    now = utcnow()
    ok = [{"b_id": o.delivery_id, "message_id": o.message_id} for o in outcomes if o.ok]
    bad = [{"b_id": o.delivery_id, "error": (o.error or "failed")[:2000]} for o in outcomes if not o.ok]
    if ok:
        session.connection().execute(
            update(Delivery.__table__).where(Delivery.__table__.c.id == bindparam("b_id"))
            .values(status=SUBMITTED, message_id=bindparam("message_id"), updated_at=now), ok)
    if bad:
        session.connection().execute(
            update(Delivery.__table__).where(Delivery.__table__.c.id == bindparam("b_id"))
            .values(status=FAILED, error=bindparam("error"), updated_at=now), bad)
    session.commit()
    return len(ok), len(bad)


def _release(session: Session, ids: list[int]) -> None:
    """A batch the provider refused before sending anything goes back to the queue."""
    session.execute(update(Delivery).where(Delivery.id.in_(ids), Delivery.status == CLAIMED)
                    .values(status=QUEUED, batch=None, updated_at=utcnow()))
    session.commit()


def deliver(factory: sessionmaker[Session], settings: Settings, issue_id: int, transport: Transport,
            editions: Callable[[Subscriber], Rendered], *, list_id: int,
            progress: Callable[[int, int], None] | None = None, now: Callable[[], datetime] = utcnow,
            ) -> SendReport:
    """Send an issue to its snapshot of readers, resuming where a previous run stopped."""
    personal = Personalizer(settings)
    with factory() as session:
        issue = session.get(IssueRow, issue_id)
        assert issue is not None
        report = SendReport(issue.number, issue.subject)
        snapshot(session, issue, list_id)
        session.commit()
        before = counts(session, issue_id)
        report.already = before.get(SUBMITTED, 0)
        report.unknown = before.get(CLAIMED, 0)
        if report.unknown:
            report.errors.append(f"{report.unknown} reader(s) in a batch of unknown fate from an earlier run: "
                                 "see `digest status` and `digest deliveries resolve`")
        total = sum(before.get(s, 0) for s in (QUEUED, SUBMITTED, FAILED, SKIPPED))
        done = total - before.get(QUEUED, 0)
        if progress:
            progress(done, total)

        def batches() -> Iterator[list[Message]]:
            while True:
                claimed = _claim(session, issue, list_id, transport.batch_size)
                if not claimed:
                    return
                yield [Message(d.id, s.id, issue.id, issue.number, s.email, s.name, editions(s),
                               *personal.for_reader(s.id, list_id, s.name)) for d, s in claimed]

        try:
            with ThreadPoolExecutor(max_workers=max(1, transport.concurrency)) as pool:
                pending: dict[Future[list[Outcome]], list[int]] = {}
                source = batches()
                exhausted = False
                stop: DeliveryError | None = None
                while pending or not exhausted:
                    while not exhausted and stop is None and len(pending) < max(1, transport.concurrency):
                        msgs = next(source, None)
                        if msgs is None:
                            exhausted = True
                        else:
                            pending[pool.submit(transport.send, msgs)] = [m.delivery_id for m in msgs]
                    if not pending:
                        break
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        ids = pending.pop(fut)
                        try:
                            outcomes = fut.result()
                        except DeliveryError as e:
                            # the provider refused the request as a whole: nothing in it was sent
                            _release(session, ids)
                            stop, exhausted = stop or e, True
                            continue
                        ok, bad = _mark(session, outcomes)
                        report.submitted += ok
                        report.failed += bad
                        done += ok + bad
                        if progress:
                            progress(done, total)
        finally:
            transport.close()
        if stop is not None:
            raise stop
        final = counts(session, issue_id)
        report.skipped = final.get(SKIPPED, 0)
        report.errors += [f"{e}" for (e,) in session.execute(
            select(Delivery.error).where(Delivery.issue_id == issue_id, Delivery.status == FAILED)
            .distinct().limit(5)).all()]
        if not final.get(QUEUED) and not final.get(CLAIMED):
            issue.status = "sent"
            issue.sent_at = issue.sent_at or now()
        session.commit()
    return report
