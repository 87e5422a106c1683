"""The two locks, both rows of the `locks` table with a heartbeat so a dead holder is found out.

- The send lock (`send:<issue id>`): one sender per issue. A second sender would see the first one's
  in-flight batches as of unknown fate. A holder on this host is checked by its pid; one elsewhere is
  taken for dead after `SEND_LOCK_STALE` without a heartbeat.
- The scheduler lock (`scheduler`): one `digest schedule` per database, as APScheduler 3 does not
  coordinate several schedulers; it expires `lock_expiry_seconds` after the holder's last heartbeat.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
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


# -- the send lock: one sender per issue --------------------------------------------------------------


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
    return utcnow() - heartbeat < SEND_LOCK_STALE


def send_lock_name(issue_id: int) -> str:
    return f"send:{issue_id}"


def _lock_row(session: Session, name: str) -> Any:
    return session.execute(select(Lock.owner, Lock.acquired_at, Lock.heartbeat_at).where(Lock.name == name)).first()


def sender_of(session: Session, issue_id: int) -> str | None:
    """The process sending this issue now, if any (a dead holder does not count)."""
    row = _lock_row(session, send_lock_name(issue_id))
    if row is None or not _holder_alive(row.owner, row.heartbeat_at):
        return None
    return row.owner


def take_send_lock(session: Session, issue_id: int, number: int) -> str:
    """Take the issue's send lock, or raise a DeliveryError saying who holds it. Returns the owner."""
    me, now, name = _me(), utcnow(), send_lock_name(issue_id)
    row = _lock_row(session, name)
    if row is None:
        try:
            session.execute(insert(Lock).values(name=name, owner=me, acquired_at=now, heartbeat_at=now))
            session.commit()
        except IntegrityError:
            session.rollback()
            return take_send_lock(session, issue_id, number)
        return me
    if row.owner != me and _holder_alive(row.owner, row.heartbeat_at):
        raise DeliveryError(f"issue {number} is being sent by {row.owner} (since {row.acquired_at:%Y-%m-%d %H:%M} "
                            "UTC): wait for it to finish")
    taken = session.connection().execute(update(Lock).where(Lock.name == name, Lock.owner == row.owner)
                            .values(owner=me, acquired_at=now, heartbeat_at=now)).rowcount
    session.commit()
    if not taken:
        return take_send_lock(session, issue_id, number)
    return me


def beat_send_lock(session: Session, issue_id: int, me: str) -> None:
    """Renew the send lock (the caller commits)."""
    session.connection().execute(update(Lock).where(Lock.name == send_lock_name(issue_id), Lock.owner == me)
                    .values(heartbeat_at=utcnow()))


def drop_send_lock(session: Session, issue_id: int, me: str) -> None:
    session.rollback()
    session.connection().execute(delete(Lock).where(Lock.name == send_lock_name(issue_id), Lock.owner == me))
    session.commit()


# -- the scheduler lock: one scheduler per database ----------------------------------------------------


class LockHeld(DigestError):
    """Another scheduler holds the lock on this database."""


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
                       f"{self.expiry.total_seconds():.0f} s after its last heartbeat (in {left:.0f} s)")

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
