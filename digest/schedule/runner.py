"""The APScheduler 3 wiring: the scheduler over the database's job store, its two jobs, and `serve`.

Two jobs live in the database (SQLAlchemyJobStore, table `apscheduler_jobs`): the draft at the send
moment minus `review_hours`, and the send. Both coalesce, run one at a time, and have a misfire grace
time, so a scheduler back from downtime runs a missed moment once, and one missed by more than the
grace is reported to the editors instead of being done late by surprise. APScheduler 3 does not
coordinate several schedulers, so `serve` holds the scheduler lock (`digest.locks`) kept alive by a
heartbeat; a second `serve` on another host is a standby: it polls the lock and takes over once the
holder has been silent `lock_expiry_seconds`, so one scheduler is active at a time (a second one on the
same host is refused, unless asked to stand by). The job store keeps `draft_job` / `send_job` by reference
("digest.schedule.runner:send_job") and the triggers pickled (`digest.moments`): renaming either orphans
the stored jobs. A third job, in memory, recounts the members of every list every
`counts_refresh_minutes` for the admin's pages (`subscribers.counts`), on a thread of its own.
"""

from __future__ import annotations

import io
import logging
import pickle
import signal
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from types import FrameType
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select, update

from digest import stopping
from digest.config import Settings, load_settings
from digest.locks import LockHeld, SchedulerLock, safe_url
from digest.moments import (
    describe,
    draft_grace,
    draft_trigger,
    last_fire,
    local_and_utc,
    send_grace,
    send_job_trigger,
    send_lead,
    send_moment_of,
)
from digest.notices import Notice, notify_editors
from digest.schedule.jobs import (
    COUNTS_JOB,
    DRAFT_JOB,
    SEND_JOB,
    refresh_counts,
    report_missed,
    run_draft,
    run_send,
    schedule_zones,
)
from digest.store import apscheduler_jobs, engine_for, utcnow

log = logging.getLogger(__name__)

JOBS_TABLE = "apscheduler_jobs"
#: where stored jobs pointed while the schedule was one module (`digest/schedule.py`): the job store
#: keeps the function by "module:name" and pickles the trigger by class path
_OLD_REFS = {"digest.schedule:draft_job": "digest.schedule.runner:draft_job",
             "digest.schedule:send_job": "digest.schedule.runner:send_job"}
_OLD_CLASSES = {("digest.schedule", "SendTrigger"): ("digest.moments", "SendTrigger"),
                ("digest.schedule", "ReviewTrigger"): ("digest.moments", "ReviewTrigger")}


_lock: SchedulerLock | None = None  # the lock of the scheduler running in this process (set by `serve`)


def _ours() -> bool:
    """A job runs only while this process holds the lock (a scheduler that was silent and lost it to
    another must not act on the database behind the other's back)."""
    if _lock is None:
        return True
    if _lock.held():
        return True
    log.error("this scheduler no longer holds the lock: job not run")
    return False


def draft_job(config: str) -> None:
    """APScheduler entry point (stored in the job store by reference): build the draft, notify."""
    settings = load_settings(config)
    now = utcnow()
    if not _ours():
        return
    zones = schedule_zones(settings)  # local delivery: the window closes at the earliest zone's moment
    fired = last_fire(draft_trigger(settings, zones), now, timedelta(seconds=draft_grace(settings) + 60)) or now
    send_at = send_moment_of(settings, fired + timedelta(hours=settings.schedule.review_hours), zones)
    result = run_draft(settings, send_at=send_at, now=now)
    log.info("draft job: %s", result)


def send_job(config: str) -> None:
    """APScheduler entry point (stored in the job store by reference): send, hold or skip."""
    settings = load_settings(config)
    now = utcnow()
    if not _ours():
        return
    lead = send_lead(settings)  # the job may start before the moment it sends for (scheduled batches)
    zones = schedule_zones(settings)  # local delivery: it fires at each zone's moment of the send
    fired = last_fire(send_job_trigger(settings, zones), now, timedelta(seconds=send_grace(settings) + 60))
    send_at = send_moment_of(settings, fired + lead, zones) if fired is not None else now
    log.info("send job: %s", run_send(settings, send_at=send_at, now=now))


def counts_job(config: str) -> None:
    """APScheduler entry point: recount the members of every list for the admin's pages."""
    settings = load_settings(config)
    if not _ours():
        return
    log.info("counts job: %s", refresh_counts(settings))


def _on_missed(settings: Settings, event: JobExecutionEvent) -> None:
    if event.job_id not in (DRAFT_JOB, SEND_JOB):
        return
    try:
        report_missed(settings, job_id=event.job_id, scheduled_at=event.scheduled_run_time.astimezone(UTC))
    except Exception:
        log.exception("could not report the missed %s", event.job_id)


def _on_error(settings: Settings, event: JobExecutionEvent) -> None:
    if event.job_id not in (DRAFT_JOB, SEND_JOB):  # the counts: APScheduler logs it; the next run tries again
        return
    what = "send" if event.job_id == SEND_JOB else "draft"
    local, utc = local_and_utc(settings, event.scheduled_run_time)
    notice = Notice("failed", f"The scheduled {what} of {local} failed",
                    (f"{event.exception.__class__.__name__}: {event.exception}",
                     "Readers already sent to are recorded and are never sent to twice; `digest send` resumes."
                     if what == "send" else "Build the draft by hand: `digest draft`."), None,
                    ("See the scheduler's log for details.",))
    notify_editors(settings, notice)


class _OldPaths(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(*_OLD_CLASSES.get((module, name), (module, name)))


def adopt_stored_jobs(settings: Settings) -> int:
    """Rewrite jobs stored under the old paths to the new ones. APScheduler drops a stored job it cannot
    unpickle, and with it the missed run it carries; rewritten, that run is still run (or reported) once.
    Returns how many jobs were rewritten."""
    table = apscheduler_jobs
    adopted = 0
    with engine_for(settings.database_url).begin() as conn:
        for job_id, blob in conn.execute(select(table.c.id, table.c.job_state)).all():
            try:
                state = _OldPaths(io.BytesIO(blob)).load()
            except Exception:  # not ours to judge: the job store reports and drops it as it always has
                continue
            if not isinstance(state, dict) or state.get("func") not in _OLD_REFS:
                continue
            state["func"] = _OLD_REFS[state["func"]]
            conn.execute(update(table).where(table.c.id == job_id)
                         .values(job_state=pickle.dumps(state, pickle.HIGHEST_PROTOCOL)))
            adopted += 1
    return adopted


def build_scheduler(settings: Settings) -> BackgroundScheduler:
    """A scheduler over the database's job store: coalesce, one instance at a time, a grace time.

    One worker thread: the draft and the send never run at once (after downtime both may be due; the
    draft, due first, runs first)."""
    if adopt_stored_jobs(settings):
        log.info("stored jobs moved to digest.schedule.runner")
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine_for(settings.database_url), tablename=JOBS_TABLE),
                   "memory": MemoryJobStore()},
        # the counts' refresh has a thread of its own: a send may run for hours on the default one
        executors={"default": ThreadPoolExecutor(max_workers=1), "counts": ThreadPoolExecutor(max_workers=1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": send_grace(settings)},
        timezone=settings.publication.tz,
    )
    scheduler.add_listener(partial(_on_missed, settings), EVENT_JOB_MISSED)
    scheduler.add_listener(partial(_on_error, settings), EVENT_JOB_ERROR)
    return scheduler


def ensure_jobs(scheduler: BackgroundScheduler, settings: Settings, config: str,
                zones: tuple[str, ...] | None = None) -> list[str]:
    """Add the two jobs, keeping a stored job whose schedule is unchanged, so that a missed run it still
    carries is run (or reported) once; a job whose schedule changed is replaced. Returns what was done.
    With local delivery the triggers carry the readers' zones (`zones`, default: as they are now)."""
    now = utcnow()
    lines = []
    zones = schedule_zones(settings) if zones is None else zones
    specs: list[tuple[str, str, Any, BaseTrigger, int]] = [
        (DRAFT_JOB, "draft", draft_job, draft_trigger(settings, zones), draft_grace(settings)),
        (SEND_JOB, "send", send_job, send_job_trigger(settings, zones), send_grace(settings)),
    ]
    for job_id, name, func, trigger, grace in specs:
        job = scheduler.get_job(job_id)
        if job is not None and repr(job.trigger) == repr(trigger) and tuple(job.args) == (config,) \
                and job.misfire_grace_time == grace:
            if job.next_run_time is not None and job.next_run_time < now:
                late = (now - job.next_run_time).total_seconds()
                fate = "runs once now" if late <= grace else "was missed by more than the grace time: reported"
                lines.append(f"{name}: the run due {describe(settings, job.next_run_time)} {fate}")
            continue
        if job is not None:
            lines.append(f"{name}: schedule changed since the last run; job replaced")
        scheduler.add_job(func, trigger, id=job_id, name=f"digest {name}", args=[config], replace_existing=True,
                          misfire_grace_time=grace, coalesce=True, max_instances=1)
    return lines


def add_counts_job(scheduler: BackgroundScheduler, settings: Settings, config: str) -> str:
    """The list counts' refresh (subscribers.counts): now, then every `counts_refresh_minutes`. In memory,
    not the job store: a run missed while the scheduler was down needs no catching up, the next one counts
    everything anyway. Returns what was done."""
    minutes = settings.subscribers.counts_refresh_minutes
    scheduler.add_job(counts_job, IntervalTrigger(minutes=minutes, timezone=UTC), id=COUNTS_JOB,
                      name="digest list counts", args=[config], jobstore="memory", executor="counts",
                      replace_existing=True, next_run_time=utcnow(), coalesce=True, max_instances=1,
                      misfire_grace_time=None)
    return f"list counts: recounted now and every {minutes} min"


def _follow_zones(scheduler: BackgroundScheduler, settings: Settings, zones: tuple[str, ...],
                  say: Callable[[str], None]) -> tuple[str, ...]:
    """Local delivery: a reader in a zone the jobs do not fire for yet (a new reader, a changed zone) gets a
    fire at their zone's moment: the jobs are replaced with the new zones."""
    if not settings.schedule.local_delivery:
        return zones
    try:
        now = schedule_zones(settings)
        if now != zones:
            for line in ensure_jobs(scheduler, settings, str(settings.path), now):
                say(line)
            say(f"local delivery zones now: {', '.join(now)}")
        return now
    except Exception as e:  # the database away for a moment: the next heartbeat tries again
        log.warning("could not refresh the readers' zones: %s", e)
        return zones


def stored_jobs(settings: Settings) -> dict[str, datetime | None]:
    """The job store's next run times (what a stopped scheduler would run first when started)."""
    table = apscheduler_jobs
    with engine_for(settings.database_url).begin() as conn:
        rows = conn.execute(select(table.c.id, table.c.next_run_time)).all()
    return {r.id: None if r.next_run_time is None else datetime.fromtimestamp(r.next_run_time, UTC) for r in rows}


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    stopping.request(signum)
    raise KeyboardInterrupt


def serve(settings: Settings, *, say: Callable[[str], None] = log.info, stop: threading.Event | None = None,
          heartbeat_seconds: float | None = None, standby: bool = False) -> int:
    """Run the schedule until Ctrl-C / SIGTERM (or `stop` is set). Returns the exit code.

    `say` is told what the scheduler does, a line at a time (the CLI prints it; the default logs it).
    While another scheduler holds the lock this one waits as a standby when the holder is on another host
    (or `standby`); one on this host is refused with LockHeld (a duplicate here would fail with this host).
    """
    draft_trigger(settings)  # a bad [schedule] is reported before anything is taken
    scheduler = build_scheduler(settings)
    expiry = timedelta(seconds=settings.schedule.lock_expiry_seconds)
    lock = SchedulerLock(settings.database_url, expiry)
    stop = stop or threading.Event()
    stopping.reset()
    if threading.current_thread() is threading.main_thread():
        for signum in stopping.SIGNALS:  # systemd's stop, `kill`, a closed terminal: as Ctrl-C
            signal.signal(signum, _stop_on_signal)
    interval = heartbeat_seconds or max(1.0, expiry.total_seconds() / 4)
    with stopping.waits_on(stop) as wait:
        return _run(settings, scheduler, lock, wait, interval, say, standby)


def _run(settings: Settings, scheduler: BackgroundScheduler, lock: SchedulerLock, wait: Callable[[float], bool],
         interval: float, say: Callable[[str], None], standby: bool) -> int:
    """`serve` once its signals are set: stand by or take the lock, run the jobs, heartbeat every `interval`
    until `wait` says stop (or a signal raises KeyboardInterrupt), then shut down."""
    global _lock
    try:
        taken = _standby(lock, wait, interval, say, standby)
    except KeyboardInterrupt:
        say("standby stopped")
        return 0
    if taken is None:
        say("standby stopped")
        return 0
    log.info("%s", taken)
    _lock = lock
    try:
        scheduler.start(paused=True)
        for line in ensure_jobs(scheduler, settings, str(settings.path)):
            say(line)
        say(add_counts_job(scheduler, settings, str(settings.path)))
        jobs = {job.id: job.next_run_time for job in scheduler.get_jobs()}
        scheduler.resume()
        say(f"scheduler running on {safe_url(settings.database_url)} as {lock.owner} "
            f"({settings.publication.timezone}); Ctrl-C stops")
        for job_id, name in ((DRAFT_JOB, "next draft:"), (SEND_JOB, "next send: ")):
            if jobs.get(job_id) is not None:
                say(f"{name} {describe(settings, jobs[job_id])}")
        zones = schedule_zones(settings)
        while not wait(interval):
            try:
                if not lock.heartbeat():
                    log.error("this scheduler lost its lock (silent too long; another took over): stopping")
                    return 1
            except Exception as e:  # the database away for a moment: retry; expiry decides
                log.warning("heartbeat failed: %s", e)
                continue
            zones = _follow_zones(scheduler, settings, zones, say)
        return 0
    except KeyboardInterrupt:
        # a send in progress claims nothing more; its requests in flight are answered and recorded
        # (digest.stopping), then the job ends and `digest send` resumes the rest
        stopping.request(signal.SIGINT)
        say("stopping: waiting for a running job to finish its requests in flight")
        return 0
    finally:
        try:
            if scheduler.running:
                scheduler.shutdown(wait=True)  # a running job is waited for
        finally:
            stopping.reset()  # the job has ended: the flag must not stop a later send in this process
            lock.release()
            _lock = None
            say("scheduler stopped")


def _standby(lock: SchedulerLock, wait: Callable[[float], bool], interval: float, say: Callable[[str], None],
             always: bool) -> str | None:
    """Take the lock, or wait as a standby while another scheduler holds it: polled every `interval`, and
    again just after the holder's lock would expire, so a dead holder is replaced within
    `lock_expiry_seconds` of its last heartbeat. Returns what happened (None: stopped while waiting)."""
    told = ""
    while True:
        try:
            return lock.acquire()
        except LockHeld as held:
            if not always and not told and held.holder.split(":")[0] == socket.gethostname():
                raise
            if held.holder != told:
                say(f"standby: {held.holder} is the active scheduler; this one ({lock.owner}) takes over if it "
                    f"stays silent {lock.expiry.total_seconds():.0f} s")
                told = held.holder
            pause = min(interval, held.retry_in + 0.05)
        except Exception as e:  # the database away for a moment: keep waiting
            log.warning("standby: the lock could not be read: %s", e)
            pause = interval
        if wait(max(0.05, pause)):
            return None
