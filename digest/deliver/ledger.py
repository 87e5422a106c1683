"""The delivery ledger: the `deliveries` table, one row per issue and reader, and every write to it.

Exactly-once lives here, once: the recipients are snapshotted into `deliveries`; each batch is claimed
(committed) before its request and marked submitted or failed after it. A process killed between the
two leaves `claimed` rows: their fate is unknown, so they are reported and never re-sent by themselves
(`digest deliveries resolve` decides). The issue's own status is moved through `digest.issue_status`.

Several workers (PostgreSQL): each claims with `SELECT ... FOR UPDATE SKIP LOCKED`, so two never take the
same row, and its claimed rows carry a lease (worker id, `lease_until`) that it renews while it works.
Before a batch's request goes out the worker stamps it posted (one `send_batches` row per batch, not a
stamp on each reader's row), only while its lease still holds; the send loop does it in the claim's own
transaction (`claim(commit=False)`, `post(held=True)`), so a crash while the batch is built rolls the claim
back. When a worker dies, another reaps its rows once the lease ran out: rows of a batch never posted are
simply queued again; those of a posted batch are of unknown fate, exactly as a single sender killed
mid-request leaves them (SendGrid's scheduled batches are then cancelled and re-queued,
`digest.deliver.batches`). Every one of these writes is conditional on the current state, and post and
reap both write the batch's row first, so that row's lock decides a race between owner and reaper.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Integer,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from digest.deliver.protocol import Outcome
from digest.errors import DeliveryError
from digest.issue_status import IssueStatus, move
from digest.locks import hold_off_erasures, sender_of
from digest.moments import zone_moment
from digest.store import Delivery, IssueRow, ProviderCancel, SendBatch, core_table, utcnow
from subscribers.models import Membership, MembershipStatus, Subscriber

DELIVERIES = core_table(Delivery)
BATCHES = core_table(SendBatch)


class DeliveryStatus(StrEnum):
    """A reader's row in the ledger: queued -> claimed (a request is about to go out) -> submitted | failed;
    skipped when the reader left the list between snapshot and claim."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    SUBMITTED = "submitted"
    FAILED = "failed"
    SKIPPED = "skipped"


QUEUED, CLAIMED, SUBMITTED, FAILED, SKIPPED = DeliveryStatus


@lru_cache(maxsize=4)
def _in_batch(postgresql: bool, dense: bool) -> tuple[Any, ...]:
    """A claimed batch's rows, by the primary key and the batch, bound by name (`_batch_values`). No index
    names `batch` or `status`, so that claiming and marking a row writes no index entry (migration
    0014_deliveries_hot). `dense`: the batch's ids are a run with few gaps (a claim takes the queue in id
    order), found as a range (`b_lo`, `b_hi`), the cheapest lookup; else by the ids themselves (`b_ids`):
    a claim of local delivery, or of readers queued again, takes rows spread over the whole issue."""
    D = DELIVERIES.c
    ids: Any
    if dense:
        ids = D.id.between(bindparam("b_lo"), bindparam("b_hi"))
    elif postgresql:
        ids = D.id == any_(bindparam("b_ids", type_=ARRAY(Integer)))
    else:  # one parameter, not an IN list of 1,000 parsed again each time: a JSON array (SQLite's json_each)
        ids = D.id.in_(select(func.json_each(bindparam("b_ids", type_=Text)).table_valued("value").c.value))
    return ids, D.batch == bindparam("b_batch"), D.status == CLAIMED


def _dense(ids: Sequence[int]) -> bool:
    """Whether a batch's ids are a run with few gaps (see `_in_batch`): a range reading at most twice its rows."""
    return max(ids) - min(ids) < 2 * len(ids)


def _batch_values(postgresql: bool, batch: str, ids: Iterable[int]) -> tuple[bool, dict[str, Any]]:
    """Whether the batch's ids are dense (`_dense`), and `_in_batch`'s parameters for them."""
    listed = list(ids)
    if _dense(listed):
        return True, {"b_batch": batch, "b_lo": min(listed), "b_hi": max(listed)}
    return False, {"b_batch": batch, "b_ids": listed if postgresql else json.dumps(listed)}


def _is_postgresql(session: Session) -> bool:
    return session.connection().dialect.name == "postgresql"


_batch_ids = random.Random()  # seeded from os.urandom once per process; batch ids need uniqueness, not secrecy


def snapshot(session: Session, issue: IssueRow, list_id: int, *, home: str | None = None) -> int:
    """Freeze the recipients: every active member of the list now. Returns how many were added.

    `home` (the publication's zone, given when local delivery applies): each reader's zone and the moment
    their copy is due there are frozen with them (`set_moments`)."""
    if issue.snapshot_at is not None:
        if issue.status in (IssueStatus.DRAFT, IssueStatus.APPROVED):  # sent again after a recall: the
            # same snapshot, the recalled readers still queued
            move(issue, IssueStatus.SENDING)
        return 0
    now = utcnow()
    columns = ["issue_id", "subscriber_id", "email", "status", "updated_at"]
    rows = select(
        literal(issue.id, Delivery.issue_id.type), Subscriber.id, Subscriber.email,
        literal(QUEUED, Delivery.status.type), literal(now, Delivery.updated_at.type),
    ).join(Membership, _active_in(list_id))
    # local delivery: each reader's zone and moment written by the INSERT itself, not by two more passes over
    # the issue's rows (one a write of every row, the other of every row again, zone by zone)
    moments = _local(issue, home)
    if moments:
        zones = _zones(session, list_id, *moments)
        rows = rows.add_columns(zones.c.zone, zones.c.due_at, zones.c.error).join(
            zones, zones.c.reader_zone == _reader_zone(moments[1]), isouter=True)
        columns += ["zone", "due_at", "error"]
    already = select(Delivery.subscriber_id).where(Delivery.issue_id == issue.id,
                                                   Delivery.subscriber_id.is_not(None))
    rows = rows.where(Subscriber.id.not_in(already))
    # no erasure until this commits: one that went first has removed its reader from the join, one after it
    # blanks and unlinks the rows written here (what the foreign key's check guarded, migration 0016)
    hold_off_erasures(session)
    added = _copy(session, list_id, columns, rows)
    if _is_postgresql(session):
        # the table may have grown by a whole list in one statement, long before autovacuum's next look: with
        # the planner's old view of it (a few rows) each claim's UPDATE scanned every row, 250 ms a claim at
        # 100,000 readers instead of 7 ms (ANALYZE may run inside a transaction). The claim's plan needs the
        # table's size (which any ANALYZE counts) and how the issue's rows and statuses fall: those two columns
        # alone, from 3,000 sampled rows rather than the default 30,000 (statistics target 10, for this
        # transaction only; autovacuum's next ANALYZE samples as usual): 31-57 ms -> 4-5 ms at 100,000 readers
        session.connection().exec_driver_sql("SET LOCAL default_statistics_target = 10")
        session.connection().exec_driver_sql("ANALYZE deliveries (issue_id, status)")
    issue.snapshot_at = now
    move(issue, IssueStatus.SENDING, now=now)
    if moments:  # a reader who moved to a zone not seen a moment ago (between `_zones` and the INSERT)
        set_moments(session, issue.id, *moments)
    return int(added)


#: the span of subscriber ids at which a snapshot on PostgreSQL is written by two connections at once
SPLIT_SPAN = 20_000


def _copy(session: Session, list_id: int, columns: list[str], rows: Any) -> int:
    """INSERT the snapshot's `rows`; how many it wrote.

    On PostgreSQL a large list is written in two halves at once (subscriber ids below and from the middle of
    the list's span), the upper one by a second connection in its own transaction: the sending process
    waits idle meanwhile, and PostgreSQL gives each backend its own core (the INSERT at 100,000 readers
    0.39-0.45 s -> 0.27-0.28 s, with migration 0018_deliveries_ids_ahead; issue 16). What that changes, and
    why it holds:
    - The upper half commits before the issue's transaction, which waits for it. If that transaction then
      fails, or the process dies, the issue has rows but no `snapshot_at`: the next run's snapshot adds the
      readers missing (`already` above), never one twice (the unique key).
    - It takes no lock of its own: this transaction holds erasures off (`hold_off_erasures`) from before the
      upper half starts until after it commits. Taking the shared lock again there could wait behind an
      erasure queued for this transaction's lock, which waits for this one: a deadlock.
    - Nothing acts on its rows before the issue's transaction commits: every other sender waits for the
      issue's row, which this transaction locked (`deliver.loop`)."""
    conn = session.connection()

    def statement(*where: Any) -> Any:
        # the rows the INSERT wrote, from the cursor: SQLAlchemy 2 keeps an INSERT's rowcount only when asked
        # (`preserve_rowcount`; without it psycopg's count reads -1), and two counts of the issue's rows around
        # the INSERT were two passes over them
        return insert(DELIVERIES).from_select(columns, rows.where(*where)).execution_options(preserve_rowcount=True)

    middle = _middle(session, list_id) if _is_postgresql(session) else None
    if middle is None:
        return int(conn.execute(statement()).rowcount)

    def upper() -> int:
        with conn.engine.begin() as other:
            return int(other.execute(statement(Subscriber.id >= middle)).rowcount)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot") as pool:
        above = pool.submit(upper)
        try:
            below = int(conn.execute(statement(Subscriber.id < middle)).rowcount)
        finally:
            wait([above])  # never leave it running: this transaction's lock covers it
        return below + above.result()


def _middle(session: Session, list_id: int) -> int | None:
    """The subscriber id that halves the list's active readers' span, or None when the span is under
    `SPLIT_SPAN` (one INSERT is then quicker than a second connection). Two index probes
    (ix_memberships_list_status_subscriber)."""
    low, high = session.execute(select(func.min(Membership.subscriber_id), func.max(Membership.subscriber_id))
                                .where(Membership.list_id == list_id,
                                       Membership.status == MembershipStatus.ACTIVE)).one()
    if low is None or high - low < SPLIT_SPAN:
        return None
    return int(low + (high - low + 1) // 2)


def _local(issue: IssueRow, home: str | None) -> tuple[datetime, str] | None:
    """The send moment and home zone when a snapshot taken with `home` gives each reader a zone and a moment
    (`_zones`, `set_moments`); None when it does not."""
    return (issue.send_at, home) if home is not None and issue.send_at is not None else None


def unsnapshotted(session: Session, issue: IssueRow) -> bool:
    """Whether the issue has no snapshot and no row yet: then the snapshot about to be taken is the whole
    ledger, and `snapshot_tally` knows it without reading it. One index lookup (ix_deliveries_issue_id)."""
    return issue.snapshot_at is None and not session.scalar(select(exists().where(Delivery.issue_id == issue.id)))


def snapshot_tally(issue: IssueRow, added: int, home: str | None) -> Tally:
    """`tally` of a ledger that is only the snapshot just taken (`unsnapshotted` before it): `added` readers,
    all queued, none claimed, each with a moment if it was taken for local delivery."""
    return Tally({QUEUED: added} if added else {}, 0, bool(added) and _local(issue, home) is not None)


# -- local delivery: each reader's zone and the moment their copy is due ---------------------------------


def _active_in(list_id: int) -> Any:
    """A subscriber's membership of the list, active: the snapshot's readers (joined from `Subscriber`)."""
    return and_(Membership.subscriber_id == Subscriber.id, Membership.list_id == list_id,
                Membership.status == MembershipStatus.ACTIVE)


def _reader_zone(home: str) -> Any:
    """A reader's zone: their own, else the publication's."""
    return func.coalesce(Subscriber.timezone, home)


def _moment(send_at: datetime, home: str, zone: str) -> tuple[str, datetime, str | None]:
    """A reader's zone as stored, their moment there, and why it is not theirs: a zone this machine does not
    know (the doors refuse them; a zone database older than the one that stored it) is sent at the
    publication's moment, and the row says so."""
    home_tz = ZoneInfo(home)
    try:
        return zone, zone_moment(send_at, home_tz, ZoneInfo(zone)), None
    except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError; a malformed key a ValueError
        return home, zone_moment(send_at, home_tz, home_tz), \
            f"time zone {zone!r} unknown here: due at the publication's moment ({home})"


def _zones(session: Session, list_id: int, send_at: datetime, home: str) -> Any:
    """The zones the list's active readers are in (their own, else `home`), each with what `_moment` makes of
    it, as a table the snapshot's INSERT joins (one read of the list; a handful of rows)."""
    found = set(session.scalars(select(_reader_zone(home)).join(Membership, _active_in(list_id)).distinct()))
    # a derived table of SELECTs joined by UNION ALL, not a VALUES CTE: SQLAlchemy puts a CTE ahead of the INSERT,
    # and sqlite3 gives a statement starting with WITH no rowcount; SQLite's VALUES names no columns
    moments = [(zone, *_moment(send_at, home, zone)) for zone in sorted(found | {home})]
    return union_all(*(select(literal(zone, Text).label("reader_zone"),
                              literal(stored, Delivery.zone.type).label("zone"),
                              literal(due_at, Delivery.due_at.type).label("due_at"),
                              literal(error, Delivery.error.type).label("error"))
                       for zone, stored, due_at, error in moments)).subquery("zones")


def set_moments(session: Session, issue_id: int, send_at: datetime, home: str) -> None:
    """The zone (the reader's, else `home`) and due_at of each delivery of the issue that has no moment yet:
    the snapshot writes both with each row (`_zones`); these are the rows of readers who moved to a zone the
    snapshot had not seen. Found by issue (no index names `due_at`): a few reads of the issue's rows."""
    D = DELIVERIES.c
    conn = session.connection()
    reader_zone = select(Subscriber.timezone).where(Subscriber.id == D.subscriber_id).scalar_subquery()
    left = [D.issue_id == issue_id, D.due_at.is_(None)]
    conn.execute(update(DELIVERIES).where(*left, D.zone.is_(None)).values(zone=func.coalesce(reader_zone, home)))
    for zone in list(conn.execute(select(D.zone).where(*left).distinct()).scalars()):
        stored, due_at, error = _moment(send_at, home, zone)
        conn.execute(update(DELIVERIES).where(*left, D.zone == zone).values(
            zone=stored, due_at=due_at, **({"error": error} if error else {})))


def next_moment(session: Session, issue_id: int) -> datetime | None:
    """The earliest moment a queued reader of the issue is due (None: nobody queued, or no moments)."""
    return session.scalar(select(func.min(Delivery.due_at)).where(Delivery.issue_id == issue_id,
                                                                  Delivery.status == QUEUED))


def queued_zones(session: Session) -> set[str]:
    """The zones of readers still queued for their zone's moment, in any issue (the scheduler fires at them).
    Only issues not sent are looked at, each by its own rows: no index names `status`, and a sent issue has
    nobody queued (`finish_if_done`)."""
    open_issues = select(IssueRow.id).where(IssueRow.status != IssueStatus.SENT)
    return {z for z in session.scalars(select(Delivery.zone).where(
        Delivery.issue_id.in_(open_issues), Delivery.status == QUEUED, Delivery.due_at.is_not(None)).distinct()) if z}


def waiting_zones(session: Session, issue_id: int, now: datetime) -> list[tuple[str, datetime, int]]:
    """(zone, moment, readers) still queued for a zone moment ahead, earliest first."""
    return [(z or "", at, int(n)) for z, at, n in session.execute(  # due_at > now: never NULL here
        select(Delivery.zone, Delivery.due_at, func.count()).where(
            Delivery.issue_id == issue_id, Delivery.status == QUEUED, Delivery.due_at > now)
        .group_by(Delivery.zone, Delivery.due_at).order_by(Delivery.due_at, Delivery.zone)) if at is not None]


def note_waiting(session: Session, issue_id: int, now: datetime, note: str) -> int:
    """Say on each reader still waiting for their zone's moment why they are not sent (they stay queued)."""
    t = DELIVERIES
    return session.connection().execute(update(t).where(t.c.issue_id == issue_id, t.c.status == QUEUED,
                                                        t.c.due_at > now).values(error=note[:2000])).rowcount or 0


def waiting(session: Session, issue_id: int, now: datetime) -> tuple[int, datetime | None]:
    """Queued readers whose zone's moment is still ahead, and the next such moment."""
    n, at = session.execute(select(func.count(), func.min(Delivery.due_at)).where(
        Delivery.issue_id == issue_id, Delivery.status == QUEUED, Delivery.due_at > now)).one()
    return int(n or 0), at


def counts(session: Session, issue_id: int) -> dict[str, int]:
    """The issue's readers by status (`tally`)."""
    return tally(session, issue_id).by_status


@dataclass(frozen=True)
class Tally:
    """An issue's ledger in one read of its rows: readers by status; of the claimed ones, how many no live
    worker holds (posted, their worker gone: of unknown fate); whether readers are due at their own zone's
    moment (local delivery). No index names `status` (migration 0014_deliveries_hot), so every such question
    reads all of the issue's rows: the send asks them together, once at its start and once at its end."""

    by_status: dict[str, int]
    unknown: int
    moments: bool

    @property
    def done(self) -> bool:
        """Nobody queued and no batch claimed: the issue is sent (`finish_if_done`)."""
        return not (self.by_status.get(QUEUED) or self.by_status.get(CLAIMED))


def tally(session: Session, issue_id: int) -> Tally:
    D = Delivery
    rows = session.execute(select(D.status, func.count(), func.count(D.worker), func.count(D.due_at))
                           .where(D.issue_id == issue_id).group_by(D.status)).all()
    unknown = sum(n - held for status, n, held, _ in rows if status == CLAIMED)
    return Tally({status: n for status, n, _, _ in rows}, unknown, any(due for *_, due in rows))


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
    last: int = 0  # the highest delivery id claimed: where the next claim may start (`after`)


class _JSONCache(dict[str, Any]):
    """Decoded JSON by its text: most readers share `{}`, `[]` or a handful of preference sets."""

    def __missing__(self, raw: str) -> Any:
        value = json.loads(raw) if raw else None
        if len(self) < 4096:
            self[raw] = value
        return value


_NEW_BATCH = insert(BATCHES)


@lru_cache(maxsize=16)
def _claim_statement(postgresql: bool, local: bool, at_moment: bool) -> Any:
    """The claim's statement (pick the ids, stamp the rows, and on PostgreSQL read their readers; SQLite's
    `_read_statement` reads them after), built once per shape: built and hashed again for every batch they
    were a tenth of the send loop's own Python (issue 16). Values are bound by name at execution (`c_*`)."""
    D = DELIVERIES.c
    # `id > c_after`: past the last batch this sender claimed. PostgreSQL's plan walks the ids from the first
    # one, past every row already sent (its statistics cannot tell the queue sits at the end), so without
    # this bound each claim was slower than the last: 60 ms a claim at 100,000 readers. Rows queued again
    # below it (released, reaped) are claimed when a claim `after` finds none and the caller starts over.
    queued = [D.issue_id == bindparam("c_issue"), D.status == QUEUED, D.id > bindparam("c_after")]
    if local:  # only readers whose zone's moment has come
        queued.append(or_(D.due_at.is_(None), D.due_at <= bindparam("c_due_by", type_=D.due_at.type)))
    if at_moment:  # only readers due at that moment: one scheduled provider batch holds one zone moment
        queued.append(D.due_at == bindparam("c_moment", type_=D.due_at.type))
    pick: Any = select(D.id).where(*queued).order_by(D.id).limit(bindparam("c_size"))
    stamp: dict[str, Any] = {"status": CLAIMED, "batch": bindparam("c_batch"),
                             "updated_at": bindparam("c_now", type_=D.updated_at.type),
                             "worker": bindparam("c_worker"),
                             "lease_until": bindparam("c_lease_until", type_=D.lease_until.type)}
    # a scheduled send's provider batch and send moment: on the batch's row (`_NEW_BATCH`), not on each reader's,
    # where they made every claimed row 60 bytes longer and wrote an entry in ix_deliveries_provider_batch per
    # reader (migration 0015_batch_schedule)
    if postgresql:
        # one statement, one round trip: the ids picked (locked, SKIP LOCKED: a concurrent worker's claim passes
        # over them), their rows stamped, their readers read. The pick is a MATERIALIZED CTE: as a subquery of
        # the UPDATE, PostgreSQL may run a LIMIT ... SKIP LOCKED more than once (each run skipping the rows the
        # last one locked) and take more than `size`. Three statements did the same in three round trips, each
        # a wake-up of this thread on a busy machine: 26 ms a claim in the send against 11 ms of PostgreSQL's
        # own time (issue 16; docs/delivery.md, Speed)
        ids = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        # the picked rows by primary key, `id = ANY(ARRAY(SELECT id FROM picked))`: the array is computed once
        # and each id is one lookup in deliveries_pkey. Joined to the CTE instead, the planner (which cannot
        # see how few ids a CTE holds) hashed a sequential scan of the whole table for every claim: O(readers)
        # per batch (issue 16; 100 claims on a 100,000-row table holding dead versions, where it chose the
        # hash: 2.6-3.1 s joined, 0.86-1.05 s by key)
        picked = func.array(select(ids.c.id).scalar_subquery(), type_=ARRAY(Integer))
        took = (update(DELIVERIES).where(D.id == any_(picked), D.status == QUEUED).values(**stamp)
                .returning(D.id, D.subscriber_id).cte("took"))
        # each reader looked up by key, a LATERAL subquery per row: joined plainly, the planner cannot tell
        # how many rows the UPDATE returns and hashes both tables whole (48-55 ms a claim at 100,000 readers,
        # not 5). LIMIT 1 keeps it a subquery (one reader per key anyway); a reader erased since: NULLs
        reader = (select(*_reader_columns()).select_from(Subscriber)
                  .join(Membership, and_(Membership.subscriber_id == Subscriber.id,
                                         Membership.list_id == bindparam("c_list")), isouter=True)
                  .where(Subscriber.id == took.c.subscriber_id).limit(1).lateral("reader"))
        return (select(took.c.id, *reader.c).select_from(took).join(reader, true(), isouter=True)
                .order_by(took.c.id))
    # SQLite (no UPDATE in a WITH): the UPDATE returns the ids it took, read by `_read_statement`
    take = update(DELIVERIES).where(D.id.in_(pick.scalar_subquery()), D.status == QUEUED).values(**stamp)
    return take.returning(D.id)


def _reader_columns() -> tuple[Any, ...]:
    """What a claim reads of each reader: as they are now, and their membership's status (`c_list`)."""
    # the JSON columns as their stored text, decoded once per distinct value (_JSONCache): a SQL CAST, as
    # psycopg decodes a PostgreSQL `json` value itself (a type_coerce would only change SQLAlchemy's view)
    return (Subscriber.id, Subscriber.email, Subscriber.name, cast(Subscriber.attributes, Text),
            cast(Subscriber.categories, Text),
            cast(Membership.status, Text))  # the stored string: compared with a StrEnum, no Enum decoding


@lru_cache(maxsize=4)
def _read_statement(dense: bool) -> Any:
    """SQLite's read of a claim's readers (`_in_batch`), built once per shape as `_claim_statement`."""
    D = DELIVERIES.c
    return (select(D.id, *_reader_columns()).select_from(DELIVERIES)
            .join(Subscriber, Subscriber.id == D.subscriber_id, isouter=True)
            .join(Membership, and_(Membership.subscriber_id == D.subscriber_id,
                                   Membership.list_id == bindparam("c_list")), isouter=True)
            .where(*_in_batch(False, dense)).order_by(D.id))


def claim(session: Session, issue_id: int, list_id: int, size: int, *, scheduled: tuple[str, int] | None = None,
          due_by: datetime | None = None, moment: datetime | None = None,
          worker: str | None = None, lease: timedelta = timedelta(seconds=60), after: int = 0, commit: bool = True,
          _json: _JSONCache = _JSONCache()) -> Claimed | None:  # noqa: B008  (one cache per process)
    """Claim the next batch in one write transaction; readers who left since the snapshot are skipped.
    `commit=False` (the send loop): a batch claimed is left in the open transaction, for `post(held=True)`
    to commit with its stamp; None (nothing left) is committed either way.

    The UPDATE comes first so the transaction takes SQLite's write lock at once: a concurrent unsubscribe
    either committed before (the reader is skipped) or waits until this claim is committed. Local delivery
    (`due_by`): only readers whose zone's moment has come; (`moment`): only readers due at that moment, so
    a scheduled provider batch holds one zone moment and can be cancelled by its own send_at. On PostgreSQL
    the rows are picked `FOR UPDATE SKIP LOCKED`: a concurrent worker's claim passes over the rows being
    claimed here instead of waiting for them (and then finding them claimed).
    """
    batch = f"{_batch_ids.getrandbits(128):032x}"  # not uuid4: os.urandom would yield the GIL per batch
    now = utcnow()
    conn = session.connection()  # Core, not the ORM: these statements run once per batch, on the hot path
    postgresql = conn.dialect.name == "postgresql"
    statement = _claim_statement(postgresql, due_by is not None, moment is not None)
    values: dict[str, Any] = {"c_issue": issue_id, "c_after": after, "c_size": size, "c_due_by": due_by,
                              "c_moment": moment, "c_batch": batch, "c_now": now, "c_worker": worker,
                              "c_lease_until": now + lease, "c_list": list_id}
    if postgresql:  # claimed and read in one statement
        rows: Sequence[Any] = conn.execute(statement, values).all()
        ids = [r[0] for r in rows]
        dense = bool(ids) and _dense(ids)
    else:
        ids = list(conn.scalars(statement, values))
        rows = []
        if ids:
            dense, found = _batch_values(postgresql, batch, ids)
            rows = conn.execute(_read_statement(dense), values | found).all()
    if not rows:
        session.commit()
        return None
    readers, gone = [], []
    for did, sid, email, name, attributes, categories, member_status in rows:
        if sid is None or member_status != MembershipStatus.ACTIVE:
            gone.append(did)
        else:
            readers.append(Reader(did, sid, email, name or "", _json[attributes] or {}, _json[categories] or []))
    if readers:  # the batch's own row, not posted yet (`post`), committed with the claim; a scheduled send's
        # provider batch and send moment with it, for every reader of the claim, found by the claim's id range
        # (`_provider_rows`). Readers spread over the issue (one zone's, readers queued again) carry them on
        # their own rows instead (ix_deliveries_provider_batch): a recall would otherwise read a range that may
        # span the whole issue once for each of its batches
        on_batch = scheduled if scheduled and dense else None
        conn.execute(_NEW_BATCH, {"batch": batch, "issue_id": issue_id, "first_id": min(ids), "last_id": max(ids),
                                  "provider_batch": on_batch[0] if on_batch else None,
                                  "send_at": datetime.fromtimestamp(on_batch[1], UTC) if on_batch else None})
        if scheduled and not on_batch:
            record_batches(session, [(scheduled[0], scheduled[1], [r.delivery_id for r in readers])])
    if gone:  # skipped readers were in no request: no batch, so no provider batch either
        D = DELIVERIES.c
        conn.execute(update(DELIVERIES).where(D.id.in_(gone))
                     .values(status=SKIPPED, batch=None, error="left the list before sending", updated_at=now))
    if commit:
        session.commit()
    return Claimed(batch, readers, len(gone), rows[-1][0])


def post(session: Session, batch: str, worker: str | None, size: int, *, held: bool = False) -> bool:
    """Stamp a claimed batch as about to go out, and commit: from here on its fate is unknown until
    marked. Only while this worker's lease holds on all `size` of its rows; False (nothing stamped) when
    another worker reaped the batch meanwhile: then it must not go out. `held`: the batch was claimed in
    this same transaction, not committed since (`claim(commit=False)`), so no other worker has seen its
    rows and none can have reaped them: stamped and committed with the claim, without counting the rows
    (issue 16: one commit and one read of the batch's rows fewer per batch).

    One row per batch is written (`send_batches`), not the batch's 1,000 rows. The reaper writes that
    row too, before it touches the readers' rows (`reap`), so the two are ordered by its lock: a reap that
    came first has set `reaped_at`, which PostgreSQL re-checks on the row's newest version once the reap
    commits (READ COMMITTED's re-evaluation of an UPDATE's WHERE, manual 13.2.1), and nothing is posted;
    a post that came first is seen by the reap, which then leaves the rows of unknown fate."""
    t, b = DELIVERIES, BATCHES
    now = utcnow()
    where = [b.c.batch == batch, b.c.posted_at.is_(None), b.c.reaped_at.is_(None)]
    if not held:  # the batch's issue, by its row: no index names `batch` (migration 0014_deliveries_hot)
        issue = select(b.c.issue_id).where(b.c.batch == batch).scalar_subquery()
        rows = [t.c.issue_id == issue, t.c.batch == batch, t.c.status == CLAIMED]
        if worker is not None:
            rows += [t.c.worker == worker, t.c.lease_until >= now]
        where.append(select(func.count()).select_from(t).where(*rows).scalar_subquery() == size)
    n = session.connection().execute(update(b).where(*where).values(posted_at=now)).rowcount
    if n != 1:  # some rows were reaped: none of the batch goes out (the reaper queued or kept them)
        session.rollback()
        return False
    session.commit()
    return True


def renew(session: Session, issue_id: int, worker: str, lease: timedelta) -> int:
    """Extend the lease of this worker's claimed rows (the caller commits). Returns how many. Found by issue
    and status (the issue's claimed rows, a few batches per worker): `worker` has no index of its own."""
    t = DELIVERIES
    return session.connection().execute(update(t).where(t.c.issue_id == issue_id, t.c.status == CLAIMED,
                                                        t.c.worker == worker)
                                        .values(lease_until=utcnow() + lease)).rowcount or 0


def reap(session: Session, issue_id: int, dead: Sequence[str] = ()) -> tuple[int, int]:
    """Take over the claimed rows of workers that died: those in `dead`, and any whose lease ran out.
    Rows of a batch never posted go back to the queue; those of a posted batch stay claimed, of unknown
    fate, without a worker (`unknown_provider_batches`, `digest deliveries resolve`). Commits. Returns
    (queued again, unknown).

    The batches' rows are written first (`reaped_at`, which `post` checks), so a post and a reap of one
    batch are ordered by that row's lock, and `posted_at` is read as the row's newest version (RETURNING
    of the UPDATE): a post committed meanwhile is seen. A batch without a row (none is missing after
    migration 0012) counts as posted: unknown, never sent twice."""
    t, b = DELIVERIES, BATCHES
    now = utcnow()
    expired = t.c.lease_until < now
    gone = or_(expired, t.c.worker.in_(list(dead))) if dead else expired
    mine = [t.c.issue_id == issue_id, t.c.status == CLAIMED, t.c.worker.is_not(None), gone]
    conn = session.connection()
    batches = list(conn.scalars(select(t.c.batch).where(*mine).distinct()))
    if not batches:
        session.commit()
        return 0, 0
    posted: dict[str, datetime | None] = dict(conn.execute(update(b).where(b.c.batch.in_(batches)).values(reaped_at=now)
                               .returning(b.c.batch, b.c.posted_at)).all())
    never = [x for x in batches if x in posted and posted[x] is None]
    queued = unknown = 0
    if never:
        queued = conn.execute(update(t).where(*mine, t.c.batch.in_(never)).values(
            status=QUEUED, batch=None, worker=None, lease_until=None, provider_batch=None, send_at=None,
            updated_at=now)).rowcount or 0
    kept = [x for x in batches if x not in never]  # posted (or without a row): only the batches locked above
    if kept:
        unknown = conn.execute(update(t).where(*mine, t.c.batch.in_(kept)).values(
            worker=None, lease_until=None, updated_at=now,
            error="fate unknown: its worker died (lease ran out) while the request was in flight")).rowcount or 0
    session.commit()
    return queued, unknown


def held_elsewhere(session: Session, issue_id: int, worker: str | None) -> int:
    """Rows other workers hold under a lease now: in flight, or to be reaped when the lease runs out."""
    t = DELIVERIES
    where = [t.c.issue_id == issue_id, t.c.status == CLAIMED, t.c.worker.is_not(None)]
    if worker is not None:
        where.append(t.c.worker != worker)
    return session.scalar(select(func.count()).where(*where)) or 0


def mark(session: Session, batch: str, outcomes: Sequence[Outcome], size: int,
         editions: dict[int, str] | None = None) -> tuple[int, int, int]:
    """Record what became of a batch of `size` readers (the caller commits). Returns (submitted, failed,
    unknown). `editions`: which edition each delivery's copy was (`note_editions`), written with the marks."""
    now = utcnow()
    t = DELIVERIES
    ok = [o for o in outcomes if o.ok]
    bad = [o for o in outcomes if not o.ok and not o.unknown]
    unknown = [o for o in outcomes if o.unknown]
    ids = {o.message_id for o in ok}
    shown = set(editions.values()) if editions else set()
    if ok and len(ids) == 1 and len(ok) == len(outcomes) == size:
        # the common case (one provider request per batch, one edition): one statement for the whole batch
        edition = shown.pop() if len(shown) == 1 and editions is not None and len(editions) == size else None
        if editions and edition is None:  # before the mark: the rows are found by batch while claimed
            note_editions(session, batch, editions)
        postgresql = _is_postgresql(session)
        dense, found = _batch_values(postgresql, batch, (o.delivery_id for o in ok))
        session.connection().execute(_mark_statement(edition is not None, postgresql, dense), {
            "m_message": ok[0].message_id, "m_now": now, "m_edition": edition, **found})
        return len(ok), 0, 0
    if editions:
        note_editions(session, batch, editions)
    # by id and batch: a row reaped and claimed again by another worker is no longer this batch's
    by_id = update(t).where(t.c.id == bindparam("b_id"), t.c.batch == batch, t.c.status == CLAIMED)
    if ok:
        session.connection().execute(by_id.values(status=SUBMITTED, message_id=bindparam("m"), updated_at=now),
                                     [{"b_id": o.delivery_id, "m": o.message_id} for o in ok])
    if bad:
        session.connection().execute(by_id.values(status=FAILED, error=bindparam("e"), updated_at=now),
                                     [{"b_id": o.delivery_id, "e": (o.error or "failed")[:2000]} for o in bad])
    if unknown:
        session.connection().execute(
            by_id.values(error=bindparam("e"), updated_at=now, worker=None, lease_until=None),  # no lease:
            # of unknown fate now, whoever looks
            [{"b_id": o.delivery_id, "e": (o.error or "fate unknown")[:2000]} for o in unknown])
    return len(ok), len(bad), len(unknown)


@lru_cache(maxsize=8)
def _mark_statement(edition: bool, postgresql: bool, dense: bool) -> Any:
    """The common mark (the whole batch submitted in one request), built once: see `_claim_statement`."""
    t = DELIVERIES
    values: dict[str, Any] = {"status": SUBMITTED, "message_id": bindparam("m_message"),
                              "updated_at": bindparam("m_now", type_=t.c.updated_at.type), "worker": None,
                              "lease_until": None}
    if edition:
        values["edition"] = bindparam("m_edition")
    return update(t).where(*_in_batch(postgresql, dense)).values(**values)


def note_editions(session: Session, batch: str, editions: dict[int, str]) -> None:
    """Record which edition (digest.editions key) each delivery's copy in a batch was, for the reports:
    one statement when the batch is one edition (the common case), else one per distinct edition (the
    caller commits). Called before the batch's rows are marked: they are found by batch while claimed."""
    by_edition: dict[str, list[int]] = {}
    for delivery_id, key in editions.items():
        by_edition.setdefault(key, []).append(delivery_id)
    t = DELIVERIES
    if len(by_edition) == 1:
        postgresql = _is_postgresql(session)
        dense, found = _batch_values(postgresql, batch, editions)
        session.connection().execute(update(t).where(*_in_batch(postgresql, dense))
                                     .values(edition=next(iter(by_edition))), found)
        return
    for key, ids in by_edition.items():
        session.connection().execute(update(t).where(t.c.id.in_(ids)).values(edition=key))


def release(session: Session, ids: Sequence[int], batch: str | None = None) -> None:
    """Messages that were certainly not sent go back to the queue (the caller commits); a provider batch
    they were in (cancelled, or never sent) is no longer theirs. With `batch`, only rows still in that
    batch (not reaped and claimed again by another worker)."""
    if ids:
        t = DELIVERIES
        where = [t.c.id.in_(list(ids)), t.c.status == CLAIMED]
        if batch is not None:
            where.append(t.c.batch == batch)
        session.connection().execute(update(t).where(*where).values(
            status=QUEUED, batch=None, provider_batch=None, send_at=None, worker=None, lease_until=None,
            updated_at=utcnow()))


def finish_if_done(session: Session, issue: IssueRow, now: Callable[[], datetime] = utcnow) -> Tally:
    """An issue is sent when nobody is queued and no batch is of unknown fate (`Tally.done`). With several
    workers the issue's row is locked first (FOR UPDATE on PostgreSQL) and read again, so one of them moves
    it. Returns the ledger as read under that lock."""
    session.flush()  # a refresh reloads the row: what this session changed in it must be written first
    session.refresh(issue, with_for_update=True)
    left = tally(session, issue.id)
    if left.done and issue.status == IssueStatus.SENDING:
        move(issue, IssueStatus.SENT, now=now())
    return left


def failure_reasons(session: Session, issue_id: int, limit: int = 5) -> list[str]:
    """A few of the distinct errors of the issue's failed readers, for the send's report."""
    return [f"{e}" for e in session.scalars(
        select(Delivery.error).where(Delivery.issue_id == issue_id, Delivery.status == FAILED)
        .distinct().limit(limit))]


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


def _of_unknown_fate(issue_id: int) -> Any:
    """Claimed rows that may have gone out: their batch posted, or from before leases (no worker)."""
    posted = select(SendBatch.batch).where(SendBatch.issue_id == issue_id, SendBatch.posted_at.is_not(None))
    return or_(Delivery.batch.in_(posted), Delivery.worker.is_(None))


def unknown_batches(session: Session, issue_id: int) -> list[UnknownBatch]:
    rows = session.execute(
        select(Delivery.batch, func.count(), func.min(Delivery.updated_at), func.max(Delivery.error))
        .where(Delivery.issue_id == issue_id, Delivery.status == CLAIMED, _of_unknown_fate(issue_id))
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
    t = DELIVERIES
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
        values: dict[str, Any] = {"status": SUBMITTED, "updated_at": now, "worker": None, "lease_until": None,
                                  "error": "fate unknown; resolved by the admin as submitted"}
    else:
        values = {"status": QUEUED, "batch": None, "updated_at": now, "worker": None, "lease_until": None,
                  "error": "fate unknown; resolved by the admin: send again"}
    n = session.connection().execute(update(t).where(*where).values(**values)).rowcount or 0
    finish_if_done(session, issue)
    session.commit()
    return n


def requeue_failed(session: Session, issue: IssueRow) -> int:
    """Readers whose copy failed (a refused recipient, a deferral that never cleared) are queued again,
    and the issue is open again, for the next `digest send`. Returns how many."""
    holder = sender_of(session, issue.id)
    if holder is not None:
        raise DeliveryError(f"issue {issue.number} is being sent right now by {holder}: wait for it to finish")
    t = DELIVERIES
    n = session.connection().execute(update(t).where(t.c.issue_id == issue.id, t.c.status == FAILED)
                        .values(status=QUEUED, batch=None, updated_at=utcnow())).rowcount or 0
    if n and issue.status == IssueStatus.SENT:
        move(issue, IssueStatus.SENDING)
    session.commit()
    return n


# -- scheduled provider batches (SendGrid send_at + batch_id): recorded, recovered, recalled -------------


def _with_batches() -> Any:
    """The issue's deliveries with their claimed batch's row, for a reader's provider batch and send moment
    (`_provider`)."""
    return DELIVERIES.outerjoin(BATCHES, BATCHES.c.batch == DELIVERIES.c.batch)


def _provider(column: str) -> Any:
    """A reader's provider batch or send moment: its row's own where set (a claim split into several
    requests, `record_batches`; rows claimed before migration 0015_batch_schedule), else its claimed batch's.
    Only over `_with_batches()`."""
    return func.coalesce(DELIVERIES.c[column], BATCHES.c[column])


def _provider_rows(session: Session, issue_id: int, provider_batch: str) -> list[tuple[Any, ...]]:
    """The WHERE clauses that find a provider batch's readers for an UPDATE: the rows that name it
    themselves (ix_deliveries_provider_batch), and the rows of each claimed batch that has it, by the
    claim's id range (no index names `batch`, migration 0014_deliveries_hot). One provider batch is one or
    the other: `record_batches` gives a split claim's other requests batch ids of their own."""
    D, B = DELIVERIES.c, BATCHES.c
    found: list[tuple[Any, ...]] = [(D.issue_id == issue_id, D.provider_batch == provider_batch)]
    for batch, first, last in session.execute(select(B.batch, B.first_id, B.last_id).where(
            B.issue_id == issue_id, B.provider_batch == provider_batch)):
        found.append((D.id.between(first, last), D.batch == batch, D.provider_batch.is_(None)))
    return found


def unknown_provider_batches(session: Session, issue_id: int) -> list[str]:
    """Provider batches with readers of unknown fate (claimed, no answer recorded)."""
    D, provider = DELIVERIES.c, _provider("provider_batch")
    return list(session.scalars(select(provider).select_from(_with_batches()).where(
        D.issue_id == issue_id, D.status == CLAIMED, provider.is_not(None),
        D.worker.is_(None))  # a live worker's batch is in flight, not lost; a dead one's is reaped first
        .group_by(provider).order_by(func.min(D.id))))


def requeue_batch(session: Session, issue_id: int, provider_batch: str, from_status: DeliveryStatus,
                  note: str) -> int:
    """A provider batch SendGrid cancelled: its readers certainly get nothing from it, so back to queued."""
    t, now = DELIVERIES, utcnow()
    return sum(session.connection().execute(update(t).where(*rows, t.c.status == from_status).values(
        status=QUEUED, batch=None, provider_batch=None, send_at=None, error=note[:2000], worker=None,
        lease_until=None, updated_at=now)).rowcount or 0 for rows in _provider_rows(session, issue_id, provider_batch))


def record_batches(session: Session, batches: Sequence[tuple[str, int, Sequence[int]]]) -> None:
    """Claimed readers whose request got a provider batch of its own (one claim, several requests): the
    batch and send moment, recorded before the request goes out (the caller commits)."""
    t = DELIVERIES
    for batch, at, ids in batches:
        session.connection().execute(update(t).where(t.c.id.in_(list(ids)), t.c.status == CLAIMED).values(
            provider_batch=batch, send_at=datetime.fromtimestamp(at, UTC)))


def adopt_batch(session: Session, issue_id: int, provider_batch: str, worker: str | None,
                lease: timedelta = timedelta(seconds=60)) -> bool:
    """Take an orphaned provider batch (unknown fate, no worker) to settle it, and commit: of several
    workers starting together, one cancels it. False when another worker has it."""
    if worker is None:
        return True
    t, until = DELIVERIES, utcnow() + lease
    n = sum(session.connection().execute(update(t).where(*rows, t.c.status == CLAIMED, t.c.worker.is_(None)).values(
        worker=worker, lease_until=until)).rowcount or 0 for rows in _provider_rows(session, issue_id, provider_batch))
    session.commit()
    return bool(n)


def note_batch(session: Session, issue_id: int, provider_batch: str, note: str) -> None:
    """Why a batch stays of unknown fate; it is left to nobody (adopt_batch gave it to this worker)."""
    t = DELIVERIES
    for rows in _provider_rows(session, issue_id, provider_batch):
        session.connection().execute(update(t).where(*rows, t.c.status == CLAIMED).values(
            error=note[:2000], worker=None, lease_until=None))


@dataclass(frozen=True)
class ScheduledBatch:
    """A provider batch of an issue that SendGrid accepted (or may have): its readers and send moment."""

    batch: str
    status: str
    readers: int
    send_at: datetime | None


def scheduled_batches(session: Session, issue_id: int) -> list[ScheduledBatch]:
    D, provider = DELIVERIES.c, _provider("provider_batch")
    rows = session.execute(
        select(provider, D.status, func.count(), func.min(_provider("send_at"))).select_from(_with_batches())
        .where(D.issue_id == issue_id, provider.is_not(None), D.status.in_([SUBMITTED, CLAIMED]))
        .group_by(provider, D.status).order_by(func.min(D.id))).all()
    return [ScheduledBatch(b or "", s, n, at) for b, s, n, at in rows]


def scheduled_count(session: Session, issue_id: int, now: datetime) -> int:
    """Readers submitted for a send moment still ahead (SendGrid holds their copy until then)."""
    D = DELIVERIES.c
    return session.scalar(select(func.count()).select_from(_with_batches()).where(
        D.issue_id == issue_id, D.status == SUBMITTED, _provider("send_at") > now)) or 0


def sent_without_batch(session: Session, issue_id: int) -> int:
    """Readers submitted at once, without a scheduled batch: nothing can call their copy back."""
    D = DELIVERIES.c
    return session.scalar(select(func.count()).select_from(_with_batches()).where(
        D.issue_id == issue_id, D.status == SUBMITTED, _provider("provider_batch").is_(None))) or 0


def batch_send_at(session: Session, issue_id: int, provider_batch: str) -> datetime | None:
    """The send moment recorded for a provider batch (its earliest, as SendGrid counts it)."""
    D, B = DELIVERIES.c, BATCHES.c
    own = select(func.min(D.send_at)).where(D.issue_id == issue_id, D.provider_batch == provider_batch)
    claimed = select(func.min(B.send_at)).where(B.issue_id == issue_id, B.provider_batch == provider_batch)
    return min((at for at in (session.scalar(own), session.scalar(claimed)) if at is not None), default=None)


# -- cancels SendGrid holds for us: 10 slots, each freed only once its batch's send_at has passed ----------


def held_cancels(session: Session) -> dict[str, int]:
    """Every cancel recorded as held at SendGrid: batch -> its send_at (UNIX seconds)."""
    return {b: int(at.timestamp()) for b, at in session.execute(select(ProviderCancel.batch, ProviderCancel.send_at))}


def record_cancels(session: Session, held: dict[str, int], lifted: Sequence[str]) -> None:
    """Cancels now held (added if new) and cancels deleted at SendGrid (forgotten). The caller commits."""
    known = set(session.scalars(select(ProviderCancel.batch)))
    new = [{"batch": b, "send_at": datetime.fromtimestamp(at, UTC), "cancelled_at": utcnow()}
           for b, at in held.items() if b not in known and b not in lifted]
    if new:
        session.connection().execute(insert(core_table(ProviderCancel)), new)
    if lifted:
        session.connection().execute(delete(core_table(ProviderCancel))
                                     .where(core_table(ProviderCancel).c.batch.in_(list(lifted))))
