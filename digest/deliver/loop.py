"""The send loop, once for every transport (listmonk-style: one checkpointed batch loop per campaign).

Claim a batch in the ledger, build each reader's Message, hand the batch to the transport's workers,
mark what came back; a restart resumes from the ledger. All database writes happen in the calling
thread; worker threads only talk to the provider.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from digest.config import Settings
from digest.deliver.batches import recover_unknown, sync_cancels
from digest.deliver.ledger import (
    CLAIMED,
    QUEUED,
    SKIPPED,
    SUBMITTED,
    Reader,
    claim,
    counts,
    failure_reasons,
    finish_if_done,
    has_moments,
    mark,
    next_moment,
    note_editions,
    record_batches,
    release,
    snapshot,
    waiting,
)
from digest.deliver.personalizer import Personalizer
from digest.deliver.protocol import Message, Outcome, SendInterrupted, SendReport, Transport
from digest.errors import DeliveryError
from digest.locks import SEND_HEARTBEAT, beat_send_lock, drop_send_lock, take_send_lock
from digest.moments import local_home
from digest.render import Rendered
from digest.stopping import requested as stop_requested
from digest.stopping import signal_name
from digest.store import IssueRow, utcnow


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
        me = take_send_lock(session, issue_id, issue.number)
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
                drop_send_lock(session, issue_id, me)


def _run(session: Session, settings: Settings, issue: IssueRow, transport: Transport,
         editions: Callable[[Any], Rendered], personal: Personalizer, list_id: int, me: str,
         progress: Callable[[int, int], None] | None, now: Callable[[], datetime]) -> SendReport:
    """This thread claims, builds and marks (every database write, in order); the transport's workers
    send. (A separate builder thread was measured: the GIL made it slower, not faster.)"""
    report = SendReport(issue.number, issue.subject)
    snapshot(session, issue, list_id, home=local_home(settings, issue.send_at, now()))
    session.commit()
    local = has_moments(session, issue.id)  # local delivery: each reader is due at their zone's moment
    recovering = callable(getattr(transport, "cancel", None))
    if recovering:  # scheduled batches left of unknown fate by a dead run
        requeued, left = recover_unknown(session, issue.id, transport)  # type: ignore[arg-type]
        report.errors += left
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
    slug = issue.list_slug
    send_moment = issue.send_at
    prepare, submit = getattr(transport, "prepare", None), getattr(transport, "submit", None)
    if prepare is None or submit is None:
        prepare, submit = None, transport.send

    unbuilt: list[Outcome] = []  # readers whose own data made their message impossible: failed alone
    shown: dict[int, str] = {}  # delivery id -> the edition its copy is, recorded with the batch's outcome
    schedule = getattr(transport, "schedule", None)
    plan: tuple[str, int] | None = None

    def build(readers: list[Reader]) -> Any:
        msgs = []
        for r in readers:
            try:
                values, headers = personal.for_reader(r.id, list_id, r.name, list_slug=slug, issue_number=number)
                edition = editions(r)
                msgs.append(Message(r.delivery_id, r.id, issue_id, number, r.email, r.name, edition,
                                    values, headers, list_id, plan))
                shown[r.delivery_id] = edition.edition
            except Exception as e:
                unbuilt.append(Outcome(r.delivery_id, False, error=f"could not build this reader's message: {e}"))
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
            # what each copy showed (listings, appeal variant), whatever its fate: the reports' reach
            note_editions(session, batch, {o.delivery_id: shown[o.delivery_id] for o in outcomes
                                           if o.delivery_id in shown})
        for i in ids:
            shown.pop(i, None)
        # what the transport did not answer for was not sent: back to the queue, in the same transaction
        release(session, [i for i in ids if i not in handled])
        if recovering:  # cancels made for lost answers (or slots freed): recorded, so a later run frees them
            sync_cancels(session, transport)  # type: ignore[arg-type]
        if utcnow() - last_beat > SEND_HEARTBEAT:
            beat_send_lock(session, issue_id, me)
            last_beat = utcnow()
        session.commit()
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
                                    due_by=now() if local and plan is None else None)
                    if claimed is None:
                        break
                    done += claimed.skipped
                    if not claimed.readers:
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
                    if getattr(work, "batches", None):  # one claim, several requests: each its own provider
                        record_batches(session, work.batches)  # batch, recorded before any of them goes out
                        session.commit()
                    if unbuilt:
                        report.failed += mark(session, claimed.batch, unbuilt, len(unbuilt))[1]
                        done += len(unbuilt)
                        failed_ids = {o.delivery_id for o in unbuilt}
                        ids = [i for i in ids if i not in failed_ids]
                        unbuilt.clear()
                        session.commit()
                        if not ids:
                            continue
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
        if isinstance(stop, SendInterrupted):
            report.unknown = counts(session, issue_id).get(CLAIMED, 0)
            stop.report = report
        raise stop
    final = counts(session, issue_id)
    if local:
        report.waiting, report.next_due = waiting(session, issue_id, now())
    report.skipped = final.get(SKIPPED, 0)
    report.unknown = final.get(CLAIMED, 0)
    report.errors += failure_reasons(session, issue_id)
    finish_if_done(session, issue, now)
    session.commit()
    return report
