"""The Transport protocol, the Message it carries, and the ledger loop every transport goes through.

Exactly-once lives here, once: the recipients are snapshotted into `deliveries`; each batch is claimed
(committed) before its request and marked submitted or failed after it. A process killed between the
two leaves `claimed` rows: their fate is unknown, so they are reported and never re-sent by themselves
(`digest deliveries resolve` decides). All database writes happen in the calling thread; worker threads
only talk to the provider.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import formataddr
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Text, and_, bindparam, delete, func, insert, literal, select, type_coerce, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Settings
from digest.errors import DeliveryError
from digest.render import Rendered, token_values
from digest.store import Delivery, IssueRow, Lock, utcnow
from subscribers.links import ReaderLinks
from subscribers.models import Membership, MembershipStatus, Subscriber

QUEUED, CLAIMED, SUBMITTED, FAILED, SKIPPED = "queued", "claimed", "submitted", "failed", "skipped"
_batch_ids = random.Random()  # seeded from os.urandom once per process; batch ids need uniqueness, not secrecy
#: a send lock whose holder has not written for this long (and cannot be checked) is taken for dead
LOCK_STALE = timedelta(minutes=10)
HEARTBEAT = timedelta(seconds=10)


@dataclass
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
    list_id: int = 0


@dataclass(frozen=True)
class Outcome:
    """What became of one message. `unknown`: it may or may not have gone out (left claimed)."""

    delivery_id: int
    ok: bool
    message_id: str | None = None
    error: str | None = None
    unknown: bool = False


class SendStopped(DeliveryError):
    """The send must stop (auth refused, payload refused, provider down): a message fit for the admin.

    `outcomes` are the messages of the batch the transport had already handled before stopping (marked
    as they went); the rest of the batch was not sent and goes back to the queue.
    """

    def __init__(self, message: str, outcomes: Sequence[Outcome] = ()) -> None:
        super().__init__(message)
        self.outcomes = list(outcomes)


class Transport(Protocol):
    """Sends batches. Returns one Outcome per message; raises DeliveryError to stop the whole send.

    A transport may also offer `prepare(messages) -> work` and `submit(work) -> list[Outcome]`: the loop
    then prepares in its own thread (the CPU part) and submits in the worker threads (the waiting).
    """

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
    """Token values and headers for a reader, for every transport alike (the links: subscribers.links)."""

    def __init__(self, settings: Settings) -> None:
        self.links = ReaderLinks(settings)
        self.mailto = settings.publication.reply_to or settings.publication.from_email

    def unsubscribe_url(self, subscriber_id: int, list_id: int) -> str:
        return self.links.unsubscribe_url(subscriber_id, list_id)

    def preferences_url(self, subscriber_id: int, list_id: int) -> str:
        return self.links.preferences_url(subscriber_id, list_id)

    def for_reader(self, subscriber_id: int, list_id: int, name: str) -> tuple[dict[str, str], dict[str, str]]:
        unsub = self.unsubscribe_url(subscriber_id, list_id)
        values = token_values(name, unsub, self.preferences_url(subscriber_id, list_id))
        headers = {
            "List-Unsubscribe": f"<{unsub}>, <mailto:{self.mailto}?subject=unsubscribe>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
        return values, headers


# -- the ledger --------------------------------------------------------------------------------------


def snapshot(session: Session, issue: IssueRow, list_id: int) -> int:
    """Freeze the recipients: every active member of the list now. Returns how many were added."""
    if issue.snapshot_at is not None:
        return 0
    now = utcnow()
    rows = select(
        literal(issue.id, Delivery.issue_id.type), Subscriber.id, Subscriber.email,
        literal(QUEUED, Delivery.status.type), literal(now, Delivery.updated_at.type),
    ).join(Membership, and_(Membership.subscriber_id == Subscriber.id, Membership.list_id == list_id,
                            Membership.status == MembershipStatus.ACTIVE))
    already = select(Delivery.subscriber_id).where(Delivery.issue_id == issue.id,
                                                   Delivery.subscriber_id.is_not(None))
    rows = rows.where(Subscriber.id.not_in(already))
    result = session.connection().execute(insert(Delivery.__table__).from_select(
        ["issue_id", "subscriber_id", "email", "status", "updated_at"], rows))
    issue.snapshot_at = now
    issue.status = "sending"
    return result.rowcount or 0


def counts(session: Session, issue_id: int) -> dict[str, int]:
    return dict(session.execute(select(Delivery.status, func.count()).where(Delivery.issue_id == issue_id)
                                .group_by(Delivery.status)).all())


class Reader(NamedTuple):
    """A claimed reader, as `editions` and the loop see it (read-only: JSON values may be shared)."""

    delivery_id: int
    id: int
    email: str
    name: str
    attributes: dict[str, Any]
    categories: list[Any]


@dataclass(frozen=True)
class Claimed:
    """A claimed batch: its id in the ledger, its readers, and how many were skipped instead."""

    batch: str
    readers: list[Reader]
    skipped: int = 0


class _JSONCache(dict[str, Any]):
    """Decoded JSON by its text: most readers share `{}`, `[]` or a handful of preference sets."""

    def __missing__(self, raw: str) -> Any:
        value = json.loads(raw) if raw else None
        if len(self) < 4096:
            self[raw] = value
        return value


def claim(session: Session, issue_id: int, list_id: int, size: int, *,
          _json: _JSONCache = _JSONCache()) -> Claimed | None:  # noqa: B008  (one cache per process)
    """Claim the next batch in one write transaction; readers who left since the snapshot are skipped.

    The UPDATE comes first so the transaction takes SQLite's write lock at once: a concurrent unsubscribe
    either committed before (the reader is skipped) or waits until this claim is committed.
    """
    batch = f"{_batch_ids.getrandbits(128):032x}"  # not uuid4: os.urandom would yield the GIL per batch
    now = utcnow()
    D = Delivery.__table__.c
    next_ids = (select(D.id).where(D.issue_id == issue_id, D.status == QUEUED).order_by(D.id).limit(size)
                .scalar_subquery())
    conn = session.connection()  # Core, not the ORM: these statements run once per batch, on the hot path
    conn.execute(update(Delivery.__table__).where(D.id.in_(next_ids)).values(status=CLAIMED, batch=batch,
                                                                                updated_at=now))
    rows = conn.execute(
        select(D.id, Subscriber.id, Subscriber.email, Subscriber.name,
               type_coerce(Subscriber.attributes, Text), type_coerce(Subscriber.categories, Text),
               Membership.status)
        .select_from(Delivery.__table__)
        .join(Subscriber, Subscriber.id == D.subscriber_id, isouter=True)
        .join(Membership, and_(Membership.subscriber_id == D.subscriber_id, Membership.list_id == list_id),
              isouter=True)
        .where(D.batch == batch).order_by(D.id)
    ).all()
    if not rows:
        session.commit()
        return None
    readers, gone = [], []
    for did, sid, email, name, attributes, categories, member_status in rows:
        if sid is None or member_status != MembershipStatus.ACTIVE:
            gone.append(did)
        else:
            readers.append(Reader(did, sid, email, name or "", _json[attributes] or {}, _json[categories] or []))
    if gone:
        conn.execute(update(Delivery.__table__).where(D.id.in_(gone))
                     .values(status=SKIPPED, batch=None, error="left the list before sending", updated_at=now))
    session.commit()
    return Claimed(batch, readers, len(gone))


def mark(session: Session, batch: str, outcomes: Sequence[Outcome], size: int) -> tuple[int, int, int]:
    """Record what became of a batch of `size` readers (the caller commits). Returns (submitted, failed,
    unknown)."""
    now = utcnow()
    t = Delivery.__table__
    ok = [o for o in outcomes if o.ok]
    bad = [o for o in outcomes if not o.ok and not o.unknown]
    unknown = [o for o in outcomes if o.unknown]
    ids = {o.message_id for o in ok}
    if ok and len(ids) == 1 and len(ok) == len(outcomes) == size:
        # the common case (one provider request per batch): one statement for the whole batch
        session.connection().execute(update(t).where(t.c.batch == batch, t.c.status == CLAIMED)
                                     .values(status=SUBMITTED, message_id=ok[0].message_id, updated_at=now))
    else:
        by_id = update(t).where(t.c.id == bindparam("b_id"), t.c.status == CLAIMED)
        if ok:
            session.connection().execute(by_id.values(status=SUBMITTED, message_id=bindparam("m"), updated_at=now),
                                         [{"b_id": o.delivery_id, "m": o.message_id} for o in ok])
        if bad:
            session.connection().execute(by_id.values(status=FAILED, error=bindparam("e"), updated_at=now),
                                         [{"b_id": o.delivery_id, "e": (o.error or "failed")[:2000]} for o in bad])
        if unknown:
            session.connection().execute(
                by_id.values(error=bindparam("e"), updated_at=now),
                [{"b_id": o.delivery_id, "e": (o.error or "fate unknown")[:2000]} for o in unknown])
    return len(ok), len(bad), len(unknown)


def release(session: Session, ids: Sequence[int]) -> None:
    """Messages that were certainly not sent go back to the queue (the caller commits)."""
    if ids:
        t = Delivery.__table__
        session.connection().execute(update(t).where(t.c.id.in_(list(ids)), t.c.status == CLAIMED)
                                     .values(status=QUEUED, batch=None, updated_at=utcnow()))


def finish_if_done(session: Session, issue: IssueRow, now: Callable[[], datetime] = utcnow) -> bool:
    """An issue is sent when nobody is queued and no batch is of unknown fate."""
    left = counts(session, issue.id)
    if left.get(QUEUED) or left.get(CLAIMED):
        return False
    if issue.status == "sending":
        issue.status = "sent"
        issue.sent_at = issue.sent_at or now()
    return True


# -- one sender per issue -------------------------------------------------------------------------------


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _holder_alive(owner: str, heartbeat: datetime) -> bool:
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return utcnow() - heartbeat < LOCK_STALE


def lock_name(issue_id: int) -> str:
    return f"send:{issue_id}"


def _lock_row(session: Session, name: str) -> Any:
    return session.execute(select(Lock.owner, Lock.acquired_at, Lock.heartbeat_at).where(Lock.name == name)).first()


def sender_of(session: Session, issue_id: int) -> str | None:
    """The process sending this issue now, if any (a dead holder does not count)."""
    row = _lock_row(session, lock_name(issue_id))
    if row is None or not _holder_alive(row.owner, row.heartbeat_at):
        return None
    return row.owner


def acquire(session: Session, issue_id: int, number: int) -> str:
    """Take the issue's send lock, or say who holds it. A second sender would see the first one's
    in-flight batches as of unknown fate, so there is only ever one."""
    me, now, name = _me(), utcnow(), lock_name(issue_id)
    row = _lock_row(session, name)
    if row is None:
        try:
            session.execute(insert(Lock).values(name=name, owner=me, acquired_at=now, heartbeat_at=now))
            session.commit()
        except IntegrityError:
            session.rollback()
            return acquire(session, issue_id, number)
        return me
    if row.owner != me and _holder_alive(row.owner, row.heartbeat_at):
        raise DeliveryError(f"issue {number} is being sent by {row.owner} (since {row.acquired_at:%Y-%m-%d %H:%M} "
                            "UTC): wait for it to finish")
    taken = session.execute(update(Lock).where(Lock.name == name, Lock.owner == row.owner)
                            .values(owner=me, acquired_at=now, heartbeat_at=now)).rowcount
    session.commit()
    if not taken:
        return acquire(session, issue_id, number)
    return me


def heartbeat(session: Session, issue_id: int, me: str) -> None:
    session.execute(update(Lock).where(Lock.name == lock_name(issue_id), Lock.owner == me)
                    .values(heartbeat_at=utcnow()))


def let_go(session: Session, issue_id: int, me: str) -> None:
    session.rollback()
    session.execute(delete(Lock).where(Lock.name == lock_name(issue_id), Lock.owner == me))
    session.commit()


# -- the loop -----------------------------------------------------------------------------------------


def deliver(factory: sessionmaker[Session], settings: Settings, issue_id: int, transport: Transport,
            editions: Callable[[Any], Rendered], *, list_id: int,
            progress: Callable[[int, int], None] | None = None, now: Callable[[], datetime] = utcnow,
            ) -> SendReport:
    """Send an issue to its snapshot of readers, resuming where a previous run stopped.

    `editions` is called with each reader's row (id, email, name, attributes, categories) and returns
    the rendered edition that reader gets. Raises DeliveryError when the transport stops the send; the
    batches already answered are recorded first.
    """
    personal = Personalizer(settings)
    with factory() as session:
        issue = session.get(IssueRow, issue_id)
        assert issue is not None
        me = acquire(session, issue_id, issue.number)
        # A send makes millions of short-lived objects; every full collection would re-scan the hundred
        # thousand long-lived ones (modules, SQLAlchemy's registries) for nothing: 0.8 s of 4 in the
        # benchmark. Frozen objects are still freed by reference counting; unfrozen again after.
        gc.freeze()
        try:
            return _run(session, settings, issue, transport, editions, personal, list_id, me, progress, now)
        finally:
            gc.unfreeze()
            try:
                transport.close()
            finally:
                let_go(session, issue_id, me)


def _run(session: Session, settings: Settings, issue: IssueRow, transport: Transport,
         editions: Callable[[Any], Rendered], personal: Personalizer, list_id: int, me: str,
         progress: Callable[[int, int], None] | None, now: Callable[[], datetime]) -> SendReport:
    """This thread claims, builds and marks (every database write, in order); the transport's workers
    send. (A separate builder thread was measured: the GIL made it slower, not faster.)"""
    report = SendReport(issue.number, issue.subject)
    snapshot(session, issue, list_id)
    session.commit()
    before = counts(session, issue.id)
    report.already = before.get(SUBMITTED, 0)
    report.unknown = before.get(CLAIMED, 0)
    if report.unknown:
        report.errors.append(f"{report.unknown} reader(s) in a batch of unknown fate from an earlier run: "
                             "see `digest deliveries show` and `digest deliveries resolve`")
    total = sum(before.values())
    done = total - before.get(QUEUED, 0)
    if progress:
        progress(done, total)
    issue_id, number, workers = issue.id, issue.number, max(1, transport.concurrency)
    prepare, submit = getattr(transport, "prepare", None), getattr(transport, "submit", None)
    if prepare is None or submit is None:
        prepare, submit = None, transport.send

    def build(readers: list[Reader]) -> Any:
        msgs = []
        for r in readers:
            values, headers = personal.for_reader(r.id, list_id, r.name)
            msgs.append(Message(r.delivery_id, r.id, issue_id, number, r.email, r.name, editions(r),
                                values, headers, list_id))
        return prepare(msgs) if prepare is not None else msgs

    stop: DeliveryError | None = None
    pending: dict[Future[list[Outcome]], tuple[str, list[int]]] = {}  # out to the provider
    last_beat = utcnow()

    def settle(fut: Future[list[Outcome]]) -> None:
        nonlocal stop, done, last_beat
        batch, ids = pending.pop(fut)
        try:
            outcomes = fut.result()
        except DeliveryError as e:
            outcomes = list(getattr(e, "outcomes", []))
            stop = stop or e
        handled = {o.delivery_id for o in outcomes}
        if outcomes:
            ok, bad, unknown = mark(session, batch, outcomes, len(ids))
            report.submitted += ok
            report.failed += bad
            report.unknown += unknown
            done += ok + bad
        # what the transport did not answer for was not sent: back to the queue, in the same transaction
        release(session, [i for i in ids if i not in handled])
        if utcnow() - last_beat > HEARTBEAT:
            heartbeat(session, issue_id, me)
            last_beat = utcnow()
        session.commit()
        if progress:
            progress(done, total)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"send-{transport.name}") as pool:
        try:
            while True:
                while stop is None and len(pending) < workers:
                    claimed = claim(session, issue_id, list_id, transport.batch_size)
                    if claimed is None:
                        break
                    done += claimed.skipped
                    if not claimed.readers:
                        continue
                    ids = [r.delivery_id for r in claimed.readers]
                    try:
                        work = build(claimed.readers)
                    except BaseException as e:
                        release(session, ids)  # claimed, refused before anything went out
                        session.commit()
                        if not isinstance(e, DeliveryError):
                            raise
                        stop = e
                        break
                    pending[pool.submit(submit, work)] = (claimed.batch, ids)
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    settle(fut)
        except BaseException:
            # Ctrl-C or a bug: claim nothing more, but record the requests already out before leaving
            for fut in list(pending):
                fut.exception()  # waits for it
                with contextlib.suppress(Exception):  # the original error matters more
                    settle(fut)
            raise
    if stop is not None:
        raise stop
    final = counts(session, issue_id)
    report.skipped = final.get(SKIPPED, 0)
    report.unknown = final.get(CLAIMED, 0)
    report.errors += [f"{e}" for (e,) in session.execute(
        select(Delivery.error).where(Delivery.issue_id == issue_id, Delivery.status == FAILED)
        .distinct().limit(5)).all()]
    finish_if_done(session, issue, now)
    session.commit()
    return report


# -- the admin's side: batches of unknown fate ---------------------------------------------------------


@dataclass(frozen=True)
class UnknownBatch:
    """Readers claimed for a request whose answer was never recorded (the sender died, or a connection
    dropped after the request was out)."""

    batch: str
    readers: int
    claimed_at: datetime
    sample: tuple[str, ...]
    error: str | None


def unknown_batches(session: Session, issue_id: int) -> list[UnknownBatch]:
    rows = session.execute(
        select(Delivery.batch, func.count(), func.min(Delivery.updated_at), func.max(Delivery.error))
        .where(Delivery.issue_id == issue_id, Delivery.status == CLAIMED)
        .group_by(Delivery.batch).order_by(func.min(Delivery.id))).all()
    out = []
    for batch, n, at, error in rows:
        sample = tuple(session.scalars(select(Delivery.email).where(
            Delivery.issue_id == issue_id, Delivery.status == CLAIMED, Delivery.batch == batch)
            .order_by(Delivery.id).limit(3)))
        out.append(UnknownBatch(batch or "", n, at, sample, error))  # min() keeps the UTC column type
    return out


def resolve(session: Session, issue: IssueRow, choice: str, *, batch: str | None = None) -> int:
    """The admin's decision for claimed rows of unknown fate: `submitted` (they went out: never send
    again) or `retry` (they did not: queue them for the next `digest send`). Returns how many rows."""
    if choice not in ("submitted", "retry"):
        raise DeliveryError(f"--as must be submitted or retry, not {choice!r}")
    holder = sender_of(session, issue.id)
    if holder is not None:
        raise DeliveryError(f"issue {issue.number} is being sent right now by {holder}: its claimed batches are "
                            "in flight, not of unknown fate; wait for the send to finish")
    t = Delivery.__table__
    where = [t.c.issue_id == issue.id, t.c.status == CLAIMED]
    if batch:
        found = session.scalar(select(func.count()).where(*where, t.c.batch.startswith(batch, autoescape=True)))
        known = {b.batch for b in unknown_batches(session, issue.id) if b.batch.startswith(batch)}
        if not found or len(known) != 1:
            raise DeliveryError(f"issue {issue.number} has {'no' if not found else 'more than one'} unknown batch "
                                f"starting {batch!r}: see `digest deliveries show {issue.number}`")
        where.append(t.c.batch == known.pop())
    now = utcnow()
    if choice == "submitted":
        values: dict[str, Any] = {"status": SUBMITTED, "updated_at": now,
                                  "error": "fate unknown; resolved by the admin as submitted"}
    else:
        values = {"status": QUEUED, "batch": None, "updated_at": now,
                  "error": "fate unknown; resolved by the admin: send again"}
    n = session.execute(update(t).where(*where).values(**values)).rowcount or 0
    finish_if_done(session, issue)
    session.commit()
    return n


def requeue_failed(session: Session, issue: IssueRow) -> int:
    """Readers whose copy failed (a refused recipient, a deferral that never cleared) are queued again,
    and the issue is open again, for the next `digest send`. Returns how many."""
    holder = sender_of(session, issue.id)
    if holder is not None:
        raise DeliveryError(f"issue {issue.number} is being sent right now by {holder}: wait for it to finish")
    t = Delivery.__table__
    n = session.execute(update(t).where(t.c.issue_id == issue.id, t.c.status == FAILED)
                        .values(status=QUEUED, batch=None, updated_at=utcnow())).rowcount or 0
    if n and issue.status == "sent":
        issue.status = "sending"
    session.commit()
    return n
