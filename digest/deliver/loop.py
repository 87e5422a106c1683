"""The send loop, once for every transport (listmonk-style: one checkpointed batch loop per campaign).

Claim a batch in the ledger, build each reader's Message, hand the batch to the transport's workers,
mark what came back; a restart resumes from the ledger. All database writes happen in the calling
thread; worker threads only talk to the provider.

Several such loops (processes, hosts) may send one issue on PostgreSQL: each registers as a worker
(`digest.locks.join_send`), claims under a lease it renews, stamps a batch posted before its request, and
when the queue is empty waits for the others' leased rows, reaping those of a worker that died (its
never-posted rows are sent here; posted ones are of unknown fate). The issue-level moves (snapshot,
sending -> sent) happen under the issue row's lock, so once.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from digest.config import Settings
from digest.deliver.batches import free_slots, recover_unknown, sync_cancels
from digest.deliver.ledger import (
    FAILED,
    QUEUED,
    SKIPPED,
    SUBMITTED,
    Reader,
    claim,
    failure_reasons,
    finish_if_done,
    held_elsewhere,
    mark,
    next_moment,
    post,
    reap,
    record_batches,
    release,
    renew,
    snapshot,
    snapshot_tally,
    tally,
    unsnapshotted,
    waiting,
)
from digest.deliver.personalizer import Personalizer
from digest.deliver.protocol import Message, Outcome, Rows, SendInterrupted, SendReport, Transport
from digest.errors import DeliveryError
from digest.locks import beat_send_lock, forget_workers, join_send, leave_send, send_workers
from digest.moments import local_home
from digest.render import Rendered
from digest.stopping import requested as stop_requested
from digest.stopping import signal_name
from digest.store import IssueRow, utcnow


def deliver(factory: sessionmaker[Session], settings: Settings, issue_id: int, transport: Transport,
            editions: Callable[[Any], Rendered], *, list_id: int,
            progress: Callable[[int, int], None] | None = None, now: Callable[[], datetime] = utcnow,
            on_sending: Callable[[int], None] | None = None) -> SendReport:
    """Send an issue to its snapshot of readers, resuming where a previous run stopped.

    `editions` is called with each reader's row (id, email, name, attributes, categories) and returns
    the rendered edition that reader gets. Raises DeliveryError when the transport stops the send; the
    batches already answered are recorded first.
    """
    personal = Personalizer(settings)
    lease = timedelta(seconds=settings.delivery.lease_seconds)
    # one connection for the whole send: a session gives its connection back to the pool at each commit and
    # checks one out again at its next statement, on PostgreSQL with a ping (`pool_pre_ping`): two round trips
    # more per batch, 0.1 s of the sending thread's time at 100,000 readers (issue 16)
    with factory.kw["bind"].connect() as connection, factory(bind=connection) as session:
        issue = session.get(IssueRow, issue_id)
        assert issue is not None
        me = join_send(session, issue_id, issue.number, lease)
        # A send makes millions of short-lived objects; every full collection would re-scan the hundred
        # thousand long-lived ones (modules, SQLAlchemy's registries) for nothing: 0.8 s of 4 in the
        # benchmark. Frozen objects are still freed by reference counting; unfrozen again after.
        gc.freeze()
        ended = False
        try:
            report = _run(session, settings, issue, transport, editions, personal, list_id, me, lease, progress,
                          now, on_sending)
            ended = True
            return report
        finally:
            gc.unfreeze()
            try:
                transport.close()
            finally:
                try:  # rows still claimed by this worker: never posted back to the queue, posted ones unknown.
                    # A run that ended has none (each of its batches was marked or released): no read of the
                    # issue's rows for it
                    if not ended:
                        reap(session, issue_id, [me])
                finally:
                    leave_send(session, issue_id, me)


def _run(session: Session, settings: Settings, issue: IssueRow, transport: Transport,
         editions: Callable[[Any], Rendered], personal: Personalizer, list_id: int, me: str, lease: timedelta,
         progress: Callable[[int, int], None] | None, now: Callable[[], datetime],
         on_sending: Callable[[int], None] | None = None) -> SendReport:
    """This thread claims, builds and marks (every database write, in order); the transport's workers
    send. (A separate builder thread was measured: the GIL made it slower, not faster.)"""
    report = SendReport(issue.number, issue.subject)
    session.flush()
    session.refresh(issue, with_for_update=True)  # several workers start together: one snapshots
    home = local_home(settings, issue.send_at, now())
    fresh = unsnapshotted(session, issue)
    warming = _warm(transport, editions) if fresh else None
    added = snapshot(session, issue, list_id, home=home)
    session.commit()
    if warming is not None:
        warming.join()
        gc.freeze()  # what it made (the transport's modules, the edition) is long-lived too: see `deliver`
    if on_sending is not None:  # the issue is sending and snapshotted: other workers may join now
        on_sending(issue.number)
    recovering = callable(getattr(transport, "cancel", None))

    def take_over(first: bool = False, fresh: bool = False) -> int:
        """Reap the rows of dead workers; cancel and re-queue their scheduled batches of unknown fate (at the
        start, and when a worker's posted rows were just reaped: a cancel that failed is not retried every
        poll). Returns how many readers were queued again. `fresh`: the ledger is only the snapshot this
        run wrote just now, of which no row was ever claimed, so nothing is read to reap or recover (each
        such question reads all the issue's rows, as no index names `status`: 60 ms before the first claim
        at 100,000 readers, issue 16)."""
        _, dead = send_workers(session, issue.id, lease)
        requeued, unknown = (0, 0) if fresh else reap(session, issue.id, [w.id for w in dead])
        forget_workers(session, issue.id, dead)
        session.commit()
        if recovering and fresh:
            free_slots(session, transport)  # type: ignore[arg-type]  # the cancels earlier runs left held
        elif recovering and (first or unknown):  # scheduled batches left of unknown fate by a dead run or worker
            cancelled, left = recover_unknown(session, issue.id, transport, worker=me)  # type: ignore[arg-type]
            requeued += cancelled
            report.errors += left
        return requeued

    take_over(first=True, fresh=fresh)
    start = snapshot_tally(issue, added, home) if fresh else tally(session, issue.id)  # fresh: known, not read
    local = start.moments  # local delivery: each reader is due at their zone's moment
    before = start.by_status
    report.already = before.get(SUBMITTED, 0)
    report.unknown = start.unknown
    if report.unknown:
        report.errors.append(f"{report.unknown} reader(s) in a batch of unknown fate from an earlier run: "
                             "see `digest deliveries show` and `digest deliveries resolve`")
    total = sum(before.values())
    done = total - before.get(QUEUED, 0)
    if progress:
        progress(done, total)
    issue_id, number, workers = issue.id, issue.number, max(1, transport.concurrency)
    slug = issue.list_slug
    send_moment = issue.send_at
    prepare, submit = getattr(transport, "prepare", None), getattr(transport, "submit", None)
    if prepare is None or submit is None:
        prepare, submit = None, transport.send

    unbuilt: list[Outcome] = []  # readers whose own data made their message impossible: failed alone
    shown: dict[int, str] = {}  # delivery id -> the edition its copy is, recorded with the batch's outcome
    schedule = getattr(transport, "schedule", None)
    plan: tuple[str, int] | None = None

    def message(r: Reader, edition: Rendered | None = None) -> Message | None:
        """One reader's Message, or None (recorded in `unbuilt`, naming why) when their data makes it impossible."""
        try:
            values, headers = personal.for_reader(r.id, list_id, r.name, list_slug=slug, issue_number=number)
            edition = edition or editions(r)
            shown[r.delivery_id] = edition.edition
            return Message(r.delivery_id, r.id, issue_id, number, r.email, r.name, edition, values, headers,
                           list_id, plan)
        except Exception as e:
            shown.pop(r.delivery_id, None)
            unbuilt.append(Outcome(r.delivery_id, False, error=f"could not build this reader's message: {e}"))
            return None

    prepare_rows = getattr(transport, "prepare_rows", None) if personal.columnar else None
    each = getattr(editions, "each", None)
    assemble = partial(personal.assemble, list_slug=slug, issue_number=number)

    def build(readers: list[Reader]) -> Any:
        if prepare_rows is not None and each is not None:
            try:
                shown_in = each(readers)
            except Exception:  # some reader's edition cannot be made: reader by reader, so only theirs fails
                pass
            else:
                return build_rows(readers, shown_in)
        msgs = [m for m in map(message, readers) if m is not None]
        return prepare(msgs) if prepare is not None else msgs

    def build_rows(readers: list[Reader], shown_in: list[Rendered]) -> Any:
        """The batch as a batch (issue 16): editions and tokens in one pass each, handed to the transport as
        they are; a reader whose data needs more is `message`'s, alone."""
        assert prepare_rows is not None
        shown.update(zip([r.delivery_id for r in readers], [e.edition for e in shown_in], strict=True))
        tokens, mailtos = personal.batch_parts([r.id for r in readers], list_id)
        return prepare_rows(Rows(readers, shown_in, tokens, mailtos, personal.mails, assemble,
                                 lambda i: message(readers[i], shown_in[i]), issue_id, number, list_id, plan))

    stop: DeliveryError | None = None
    after = 0  # the last delivery id claimed (ledger.claim)
    # the whole queue was found empty (sending at once): no claim again until this run queued readers again.
    # Each claim that finds nothing reads the issue's rows from its first id (no index names `status`,
    # migration 0014_deliveries_hot), and the loop asked once per answer still out at the end.
    drained = False
    pending: dict[Future[list[Outcome]], tuple[str, list[int]]] = {}  # out to the provider
    last_beat = utcnow()
    beat_every = lease / 3

    def beat() -> None:
        """Renew this worker's heartbeat and its rows' lease (while requests are out, too)."""
        nonlocal last_beat
        if utcnow() - last_beat > beat_every:
            beat_send_lock(session, issue_id, me)
            renew(session, issue_id, me, lease)
            session.commit()
            last_beat = utcnow()

    def settle(fut: Future[list[Outcome]]) -> None:
        nonlocal stop, done, last_beat, drained
        batch, ids = pending.pop(fut)
        try:
            outcomes = fut.result()
        except DeliveryError as e:
            outcomes = list(getattr(e, "outcomes", []))
            stop = stop or e
        handled = {o.delivery_id for o in outcomes}
        if outcomes:
            # what each copy showed (listings, appeal variant), whatever its fate: the reports' reach; written
            # by the statement that marks the batch when it is one edition (the common case)
            ok, bad, unknown = mark(session, batch, outcomes, len(ids), {
                o.delivery_id: shown[o.delivery_id] for o in outcomes if o.delivery_id in shown})
            report.submitted += ok
            report.failed += bad
            report.unknown += unknown
            done += ok + bad
        for i in ids:
            shown.pop(i, None)
        # what the transport did not answer for was not sent: back to the queue, in the same transaction
        unanswered = [i for i in ids if i not in handled]
        release(session, unanswered, batch)
        drained = drained and not unanswered
        if recovering:  # cancels made for lost answers (or slots freed): recorded, so a later run frees them
            sync_cancels(session, transport)  # type: ignore[arg-type]
        session.commit()
        beat()
        if progress:
            progress(done, total)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"send-{transport.name}") as pool:
        try:
            while True:
                while stop is None and len(pending) < workers:
                    if stop_requested():  # SIGTERM/SIGHUP: nothing new goes out; what is out is recorded
                        stop = SendInterrupted(f"stopped by {signal_name()}: every request in flight was "
                                               "answered and recorded; `digest send` resumes")
                        break
                    if drained:  # the queue is empty: wait for the answers out, then for the other workers
                        if pending or not _wait_for_others(session, issue_id, me, lease, take_over, beat):
                            break
                        drained = False  # readers came back to the queue (reaped)
                        continue
                    moment = next_moment(session, issue_id) if local and schedule is not None else None
                    try:  # a scheduled provider batch, recorded with the claim: never a request without it
                        plan = schedule(moment or send_moment) if schedule is not None else None
                    except DeliveryError as e:
                        stop = e
                        break
                    # local delivery: a scheduled batch holds one zone moment (its send_at); sent at once, only
                    # the readers whose moment has come (the scheduler comes back at the next zone's moment)
                    claimed = claim(session, issue_id, list_id, transport.batch_size, scheduled=plan,
                                    moment=moment if plan is not None else None,
                                    due_by=now() if local and plan is None else None, worker=me, lease=lease,
                                    after=0 if local else after,  # a zone's readers are spread over the ids
                                    commit=False)  # committed with the post below, or released
                    if claimed is None and after:  # nothing past the last claim: once more from the start
                        after = 0
                        continue
                    if claimed is None:
                        drained = not local  # local delivery: a zone's moment may come while answers are out
                        if pending or not _wait_for_others(session, issue_id, me, lease, take_over, beat):
                            break
                        drained = False  # readers came back to the queue (reaped)
                        continue
                    done += claimed.skipped
                    after = claimed.last
                    if not claimed.readers:
                        session.commit()  # the skipped ones
                        continue
                    ids = [r.delivery_id for r in claimed.readers]
                    try:
                        work = build(claimed.readers)
                    except BaseException as e:
                        unbuilt.clear()
                        release(session, ids)  # claimed, refused before anything went out
                        session.commit()
                        if not isinstance(e, DeliveryError):
                            raise
                        stop = e
                        break
                    # the claim, the batch's provider batches, its unbuildable readers and its stamp are one
                    # transaction, committed before the request goes out: no other worker saw its rows meanwhile
                    if getattr(work, "batches", None):  # one claim, several requests: each its own provider
                        record_batches(session, work.batches)  # batch, recorded before any of them goes out
                    if unbuilt:
                        report.failed += mark(session, claimed.batch, unbuilt, len(unbuilt))[1]
                        done += len(unbuilt)
                        failed_ids = {o.delivery_id for o in unbuilt}
                        ids = [i for i in ids if i not in failed_ids]
                        unbuilt.clear()
                        if not ids:
                            session.commit()
                            continue
                    if not post(session, claimed.batch, me, len(ids), held=True):
                        continue  # (cannot happen while held: rolled back, the rows queued as they were)
                    pending[pool.submit(submit, work)] = (claimed.batch, ids)
                if not pending:
                    break
                finished, _ = wait(pending, timeout=beat_every.total_seconds(), return_when=FIRST_COMPLETED)
                for fut in finished:
                    settle(fut)
                beat()
        except BaseException:
            # Ctrl-C or a bug: claim nothing more, but record the requests already out before leaving
            for fut in list(pending):
                fut.exception()  # waits for it
                with contextlib.suppress(Exception):  # the original error matters more
                    settle(fut)
            raise
    if stop is not None:
        if isinstance(stop, SendInterrupted):
            report.unknown = tally(session, issue_id).unknown
            stop.report = report
        raise stop
    if local:
        report.waiting, report.next_due = waiting(session, issue_id, now())
    final = finish_if_done(session, issue, now)  # the ledger as the issue's lock holder reads it
    report.skipped = final.by_status.get(SKIPPED, 0)
    report.unknown = final.unknown
    if final.by_status.get(FAILED):
        report.errors += failure_reasons(session, issue_id)
    session.commit()
    return report


def _warm(*parts: object) -> threading.Thread:
    """Call each part's `warm()` (the transport's imports, the editor's edition) in a thread of its own,
    while the database writes the snapshot and this thread only waits for it: about 70 ms of the send's
    start (the sendgrid package, Jinja2, the edition's render; issue 16). Only ahead of time: what fails
    here is left to fail again where it is used, in its place and with its own message."""
    def run() -> None:
        for part in parts:
            warm = getattr(part, "warm", None)
            if callable(warm):
                with contextlib.suppress(Exception):
                    warm()

    thread = threading.Thread(target=run, name="send-warm", daemon=True)
    thread.start()
    return thread


def _wait_for_others(session: Session, issue_id: int, me: str, lease: timedelta, take_over: Callable[[], int],
                     beat: Callable[[], None]) -> bool:
    """The queue is empty: while other workers hold rows under a lease, wait, reaping those of a worker
    that died. True when rows came back to the queue (claim again); False when there is nothing left to
    wait for (or a stop was asked)."""
    poll = min(1.0, lease.total_seconds() / 4)
    while held_elsewhere(session, issue_id, me):
        session.commit()  # end the read: a fresh snapshot next time
        if take_over():
            return True
        if stop_requested():
            return False
        beat()
        time.sleep(poll)
    session.commit()  # no other worker holds a row, and this one holds none: nobody's rows to reap
    return False
