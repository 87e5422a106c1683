"""The two locks, both rows of the `locks` table with a heartbeat so a dead holder is found out.

- The send workers (`send:<issue id>:<worker id>`): on PostgreSQL several workers send one issue, each
  claiming its own batches under a lease (`digest.deliver.ledger`); on SQLite one sender per issue. A
  worker on this host is checked by its pid; one elsewhere is taken for dead after its lease without a
  heartbeat.
- The scheduler lock (`scheduler`): one active `digest schedule` per database, as APScheduler 3 does not
  coordinate several schedulers; it expires `lock_expiry_seconds` after the holder's last heartbeat, and a
  standby polling it takes over then.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, or_, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.errors import DeliveryError, DigestError
from digest.store import Lock, core_table, engine_for, utcnow

#: a send lock whose holder has not written for this long (and cannot be checked) is taken for dead
SEND_LOCK_STALE = timedelta(minutes=10)
#: how often a sender renews its lock
SEND_HEARTBEAT = timedelta(seconds=10)
SCHEDULER_LOCK = "scheduler"
LOCKS = core_table(Lock)


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


# -- send workers: several per issue on PostgreSQL, one on SQLite ------------------------------------
# Each running `digest send` (or each of `--workers N`) is a worker with a row `send:<issue>:<worker id>`
# (owner `host:pid`) and a heartbeat. The readers it claims carry its id and a lease (digest.deliver.ledger).
# A worker on this host is checked by its pid; one elsewhere is taken for dead when its heartbeat is older
# than the lease.


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _holder_alive(owner: str, heartbeat: datetime, stale: timedelta = SEND_LOCK_STALE) -> bool:
    """A holder is dead when silent longer than `stale`, and on this host as soon as its pid is gone (a
    killed child not yet waited for still answers os.kill: the heartbeat is what finds it out)."""
    if utcnow() - heartbeat >= stale:
        return False
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return utcnow() - heartbeat < stale


def send_lock_name(issue_id: int, worker: str = "") -> str:
    """`send:<issue>:<worker>`; with no worker, the prefix of the issue's workers."""
    return f"send:{issue_id}:{worker}"


def _row_name(issue_id: int, worker: str) -> str:
    return send_lock_name(issue_id, worker) if worker else f"send:{issue_id}"


def several_senders(session: Session) -> bool:
    """Whether this database lets several workers send one issue: PostgreSQL claims with `FOR UPDATE SKIP
    LOCKED`; SQLite has one writer at a time and no row locks, so one sender per issue there."""
    return session.get_bind().dialect.name == "postgresql"


@dataclass(frozen=True)
class Worker:
    """A live send worker of an issue, as its lock row says."""

    id: str
    owner: str
    acquired_at: datetime
    heartbeat_at: datetime


def _workers(session: Session, issue_id: int) -> list[Worker]:
    """The issue's worker rows; `send:<issue>` without a worker id (id "") is a sender from before several
    workers existed, which holds the whole issue."""
    prefix = send_lock_name(issue_id)
    rows = session.execute(select(Lock.name, Lock.owner, Lock.acquired_at, Lock.heartbeat_at).where(
        or_(Lock.name.startswith(prefix, autoescape=True), Lock.name == prefix[:-1]))).all()
    return [Worker(n[len(prefix):], o, a, h) for n, o, a, h in rows]


def send_workers(session: Session, issue_id: int, stale: timedelta = SEND_LOCK_STALE) -> tuple[list[Worker],
                                                                                                 list[Worker]]:
    """The issue's workers: (alive, dead). Dead: a gone pid on this host, or silent longer than `stale`."""
    alive: list[Worker] = []
    dead: list[Worker] = []
    for w in _workers(session, issue_id):
        (alive if _holder_alive(w.owner, w.heartbeat_at, stale) else dead).append(w)
    return alive, dead


def sender_of(session: Session, issue_id: int) -> str | None:
    """A process sending this issue now, if any (a dead worker does not count)."""
    alive, _ = send_workers(session, issue_id)
    return alive[0].owner if alive else None


def join_send(session: Session, issue_id: int, number: int, stale: timedelta = SEND_LOCK_STALE) -> str:
    """Register this process as a send worker of the issue; returns its worker id. On SQLite a second
    sender is refused with a DeliveryError saying who sends (one writer: see several_senders)."""
    me, now, worker = _me(), utcnow(), uuid.uuid4().hex[:16]
    alive, _ = send_workers(session, issue_id, stale)
    exclusive = [w for w in alive if w.id == ""]  # an older sender that knows no leases: it holds the issue
    if exclusive or not several_senders(session):
        others = exclusive or [w for w in alive if w.owner != me]
        if others:
            w = others[0]
            why = ("" if exclusive else "SQLite allows one sender per issue (several workers need PostgreSQL); ")
            raise DeliveryError(f"issue {number} is being sent by {w.owner} (since {w.acquired_at:%Y-%m-%d %H:%M} "
                                f"UTC): {why}wait for it to finish")
    session.execute(insert(Lock).values(name=send_lock_name(issue_id, worker), owner=me, acquired_at=now,
                                        heartbeat_at=now))
    session.commit()
    if not several_senders(session):  # two joined at once: the earlier row wins, the later one leaves
        alive, _ = send_workers(session, issue_id, stale)
        first = min(alive, key=lambda w: (w.acquired_at, w.id), default=None)
        if first is not None and first.id != worker:
            leave_send(session, issue_id, worker)
            raise DeliveryError(f"issue {number} is being sent by {first.owner}: SQLite allows one sender per "
                                "issue; wait for it to finish (several workers need PostgreSQL)")
    return worker


def beat_send_lock(session: Session, issue_id: int, worker: str) -> bool:
    """Renew the worker's heartbeat (the caller commits); False if another worker took it for dead."""
    return bool(session.connection().execute(update(Lock).where(Lock.name == send_lock_name(issue_id, worker))
                                             .values(heartbeat_at=utcnow())).rowcount)


def forget_workers(session: Session, issue_id: int, workers: list[Worker]) -> None:
    """Remove the rows of dead workers, each only if it is still as seen (a late heartbeat keeps it)."""
    for w in workers:
        session.connection().execute(delete(Lock).where(Lock.name == _row_name(issue_id, w.id),
                                                        Lock.heartbeat_at == w.heartbeat_at))


def leave_send(session: Session, issue_id: int, worker: str) -> None:
    session.rollback()
    session.connection().execute(delete(Lock).where(Lock.name == send_lock_name(issue_id, worker)))
    session.commit()


#: the key of the advisory lock that serialises the start of a send (pick, build, start the issue)
WORKFLOW_KEY = 0x64696765  # "dige"
#: the key of the advisory lock between an erasure and a send's snapshot (`hold_off_erasures`, `erasing`)
ERASURE_KEY = 0x65726173  # "eras"


def _xact_lock(session: Session, key: int, *, shared: bool = False) -> None:
    """On PostgreSQL, an advisory lock held until the transaction ends. SQLite has one writer at a time: the
    transactions these locks order already run one after the other there."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SELECT pg_advisory_xact_lock{'_shared' if shared else ''}(:key)"), {"key": key})


def hold_send_start(session: Session) -> None:
    """Several `digest send` processes starting together pick (or build) and start the issue one after the
    other, so once."""
    _xact_lock(session, WORKFLOW_KEY)


def hold_off_erasures(session: Session) -> None:
    """Until this transaction ends no erasure starts, and one running now is waited for: a send's snapshot,
    so that every reader it copies into the ledger exists until it commits and an erasure after it finds
    and blanks the rows it wrote. The ledger has no foreign key to do that (migration 0016_deliveries_keys).
    Shared: snapshots do not wait for each other. One lock, not a FOR KEY SHARE lock on each reader's row,
    which PostgreSQL writes into every row: a tenth of the snapshot's time (issue 16)."""
    _xact_lock(session, ERASURE_KEY, shared=True)


def erasing(session: Session) -> None:
    """Until this transaction ends no snapshot starts, and those being written now are waited for: an
    erasure (`subscribers.lifecycle.erase`), which then sees every ledger row naming its reader."""
    _xact_lock(session, ERASURE_KEY)


# -- the scheduler lock: one scheduler per database ----------------------------------------------------


class LockHeld(DigestError):
    """Another scheduler holds the lock on this database; `retry_in` seconds until it may be taken over."""

    def __init__(self, message: str, retry_in: float = 0.0, holder: str = "") -> None:
        super().__init__(message)
        self.retry_in = retry_in
        self.holder = holder


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class SchedulerLock:
    """A row in `locks`: taken by an insert (or by an update of an expired row), kept by a heartbeat."""

    url: str
    expiry: timedelta = timedelta(seconds=120)
    owner: str = field(default_factory=default_owner)
    name: str = SCHEDULER_LOCK

    def acquire(self, now: datetime | None = None) -> str:
        """Take the lock or raise LockHeld. Returns what happened, for the log."""
        now = now or utcnow()
        table = LOCKS
        engine = engine_for(self.url)
        try:
            with engine.begin() as conn:
                conn.execute(insert(table).values(name=self.name, owner=self.owner, acquired_at=now,
                                                  heartbeat_at=now))
            return f"lock {self.name!r} taken by {self.owner}"
        except IntegrityError:
            pass
        # two short transactions, read then a conditional write: the write alone decides who wins
        with engine.begin() as conn:
            held = conn.execute(select(table.c.owner, table.c.heartbeat_at).where(table.c.name == self.name)).first()
        with engine.begin() as conn:
            taken = conn.execute(
                update(table).where(table.c.name == self.name, table.c.heartbeat_at < now - self.expiry)
                .values(owner=self.owner, acquired_at=now, heartbeat_at=now)).rowcount
        if taken == 1:
            was = f"{held.owner}, silent since {held.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC" if held else "a dead holder"
            return f"lock {self.name!r} taken over from {was} (over {self.expiry.total_seconds():.0f} s)"
        if held is None:  # released between our insert and our look: try again
            return self.acquire(now)
        age = (now - held.heartbeat_at).total_seconds()
        left = max(0.0, self.expiry.total_seconds() - age)
        raise LockHeld(f"another scheduler is running on {safe_url(self.url)} ({held.owner}, last heartbeat "
                       f"{age:.0f} s ago): only one may run. Stop it first; if it died, its lock expires "
                       f"{self.expiry.total_seconds():.0f} s after its last heartbeat (in {left:.0f} s)",
                       retry_in=left, holder=held.owner)

    def heartbeat(self, now: datetime | None = None) -> bool:
        """Renew the lock; False if it is no longer ours (taken over after we were silent too long)."""
        table = LOCKS
        with engine_for(self.url).begin() as conn:
            return conn.execute(update(table).where(table.c.name == self.name, table.c.owner == self.owner)
                                .values(heartbeat_at=now or utcnow())).rowcount == 1

    def held(self) -> bool:
        table = LOCKS
        with engine_for(self.url).begin() as conn:
            return conn.execute(select(table.c.owner).where(table.c.name == self.name)).scalar() == self.owner

    def release(self) -> bool:
        table = LOCKS
        with engine_for(self.url).begin() as conn:
            return conn.execute(delete(table).where(table.c.name == self.name, table.c.owner == self.owner)
                                ).rowcount == 1


def scheduler_lock_state(settings: Settings, now: datetime | None = None) -> str:
    """Who holds the scheduler lock, in words (for `digest schedule --show`)."""
    now = now or utcnow()
    table = LOCKS
    with engine_for(settings.database_url).begin() as conn:
        row = conn.execute(select(table.c.owner, table.c.heartbeat_at).where(table.c.name == SCHEDULER_LOCK)).first()
    if row is None:
        return "not running (no scheduler holds the lock)"
    age = (now - row.heartbeat_at).total_seconds()
    if age > settings.schedule.lock_expiry_seconds:
        return f"not running? {row.owner} holds the lock but has been silent {age:.0f} s (expired: can be taken over)"
    return f"running: {row.owner}, last heartbeat {age:.0f} s ago"
