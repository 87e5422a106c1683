"""The weekly schedule: APScheduler 3 builds the draft, tells the editors, and sends at the send moment.

Two jobs live in the database (SQLAlchemyJobStore, table `apscheduler_jobs`): the draft at the send
moment minus `review_hours`, and the send. Both coalesce, run one at a time, and have a misfire grace
time, so a scheduler back from downtime runs a missed moment once, and one missed by more than the
grace is reported to the editors instead of being done late by surprise. APScheduler 3 does not
coordinate several schedulers, so `digest schedule` holds a lock row in the same database, kept alive
by a heartbeat; a lock whose holder has been silent for `lock_expiry_seconds` can be taken over.

What a job does is in `run_draft`, `run_send` and `report_missed`, plain functions that take the
moment they are for and `now`, so tests (and a person) can run them at any time.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import islice
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from rich.console import Console
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digest import issues
from digest.cli.common import console, err
from digest.config import Settings, load_settings
from digest.deliver.base import SendReport, Transport
from digest.errors import ConfigError, DigestError
from digest.notices import Notice, local_and_utc, notify_editors
from digest.store import Lock, apscheduler_jobs, engine_for, session_scope, utcnow

log = logging.getLogger(__name__)

DRAFT_JOB = "digest-draft"
SEND_JOB = "digest-send"
LOCK_NAME = "scheduler"
JOBS_TABLE = "apscheduler_jobs"


# --- when: the trigger maths --------------------------------------------------------------------------

class SendTrigger(BaseTrigger):
    """The send moments: cron fields in the publication's zone, firing once per local wall-clock moment.

    APScheduler 3's CronTrigger fires twice when an autumn change repeats an hour (02:30 summer time,
    then 02:30 standard time an hour later); the repeat is skipped, so an issue is never sent twice that
    night. A time that a spring change skips fires an hour later by the local clock (02:30 -> 03:30).
    """

    def __init__(self, cron: CronTrigger) -> None:
        self.cron = cron

    def _repeat(self, fire: datetime) -> bool:
        local = fire.astimezone(UTC).astimezone(self.cron.timezone)
        return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()

    def _local(self, moment: datetime) -> datetime:
        """The instant in the zone, with the right `fold` (CronTrigger misreads a UTC time in a repeated hour)."""
        return moment.astimezone(UTC).astimezone(self.cron.timezone)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        previous = self._local(previous_fire_time) if previous_fire_time is not None else None
        fire = self.cron.get_next_fire_time(previous, self._local(now))
        for _ in range(4):  # a repeat is skipped once a year; the bound only guards against a loop
            if fire is None or not (self._repeat(fire) or (previous is not None
                                                           and fire.timestamp() <= previous.timestamp())):
                break
            fire = self.cron.get_next_fire_time(self._local(fire), self._local(fire))
        # in UTC: aware times in one zone compare by wall clock, ignoring `fold`, in a repeated hour
        return None if fire is None else fire.astimezone(UTC)

    def __str__(self) -> str:
        return str(self.cron)

    def __repr__(self) -> str:
        return f"<SendTrigger {self.cron!r}>"


def send_trigger(settings: Settings) -> SendTrigger:
    """The send moment as cron fields in the publication's time zone (DST handled by the zone)."""
    sc = settings.schedule
    for key, value, top in (("hour", sc.hour, 23), ("minute", sc.minute, 59)):
        if not 0 <= value <= top:
            raise ConfigError(f"{settings.path}: schedule.{key} must be 0..{top}, not {value}")
    try:
        return SendTrigger(CronTrigger(day_of_week=sc.day_of_week, hour=sc.hour, minute=sc.minute,
                                       timezone=settings.publication.tz))
    except ValueError as e:
        raise ConfigError(f"{settings.path}: schedule.day_of_week {sc.day_of_week!r} is not valid: {e}") from None


class ReviewTrigger(BaseTrigger):
    """The send trigger moved earlier by `hours` of elapsed time: the editors get exactly `review_hours`
    to review, also when a daylight-saving change falls between the draft and the send."""

    def __init__(self, send: SendTrigger, hours: int) -> None:
        self.send = send
        self.hours = hours

    @property
    def offset(self) -> timedelta:
        return timedelta(hours=self.hours)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        # shift in UTC: aware-datetime arithmetic in a zone with DST is wall-clock, not elapsed, time
        previous = previous_fire_time.astimezone(UTC) + self.offset if previous_fire_time else None
        fire = self.send.get_next_fire_time(previous, now.astimezone(UTC) + self.offset)
        return None if fire is None else fire.astimezone(UTC) - self.offset

    def __str__(self) -> str:
        return f"review[{self.hours} h before {self.send}]"

    def __repr__(self) -> str:
        return f"<ReviewTrigger (hours={self.hours}, send={self.send!r})>"


def draft_trigger(settings: Settings) -> ReviewTrigger:
    """The draft moments. The review window must be shorter than the shortest gap between two sends, or a
    draft would be built (and an approval dropped) before the previous send had gone out."""
    send = send_trigger(settings)
    hours = settings.schedule.review_hours
    fires = list(islice(fire_times(send, datetime(2024, 1, 1, tzinfo=UTC)), 60))
    gap = min((b - a for a, b in zip(fires, fires[1:], strict=False)), default=timedelta(days=7))
    if not 1 <= hours < gap.total_seconds() / 3600:
        raise ConfigError(f"{settings.path}: schedule.review_hours must be at least 1 and less than the "
                          f"{gap.total_seconds() / 3600:.0f} h between two sends, not {hours}")
    return ReviewTrigger(send, hours)


def send_grace(settings: Settings) -> int:
    return settings.schedule.misfire_grace_seconds


def draft_grace(settings: Settings) -> int:
    """A late draft harms nobody (nothing goes out), so it may run until the send it is for."""
    return max(settings.schedule.misfire_grace_seconds, settings.schedule.review_hours * 3600)


def fire_times(trigger: BaseTrigger, after: datetime) -> Iterator[datetime]:
    """The trigger's fire times from `after` on, as UTC datetimes."""
    fire = trigger.get_next_fire_time(None, after)
    while fire is not None:
        yield fire.astimezone(UTC)
        fire = trigger.get_next_fire_time(fire, fire)


def last_fire(trigger: BaseTrigger, now: datetime, lookback: timedelta) -> datetime | None:
    """The latest fire time at or before `now`, looking back at most `lookback`: the moment a job that
    runs now was scheduled for (APScheduler 3 does not pass it to the job)."""
    last = None
    for fire in fire_times(trigger, now - lookback):
        if fire > now:
            break
        last = fire
    return last


def next_send_at(settings: Settings, now: datetime | None = None) -> datetime:
    fire = send_trigger(settings).get_next_fire_time(None, now or utcnow())
    if fire is None:
        raise ConfigError(f"{settings.path}: [schedule] never fires")
    return fire.astimezone(UTC)


@dataclass(frozen=True)
class Moments:
    draft_at: datetime  # the next time a draft is built
    send_at: datetime  # the next send
    review_from: datetime  # when the draft for that next send is (or was) built


def next_moments(settings: Settings, now: datetime | None = None) -> Moments:
    now = now or utcnow()
    send_at = next_send_at(settings, now)
    draft_at = next(fire_times(draft_trigger(settings), now))
    return Moments(draft_at, send_at, send_at - timedelta(hours=settings.schedule.review_hours))


def describe(settings: Settings, moment: datetime) -> str:
    local, utc = local_and_utc(settings, moment)
    return f"{local} = {utc}"


# --- the lock: one scheduler per database ---------------------------------------------------------------

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
    name: str = LOCK_NAME

    def acquire(self, now: datetime | None = None) -> str:
        """Take the lock or raise LockHeld. Returns what happened, for the log."""
        now = now or utcnow()
        table = Lock.__table__
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
        table = Lock.__table__
        with engine_for(self.url).begin() as conn:
            return conn.execute(update(table).where(table.c.name == self.name, table.c.owner == self.owner)
                                .values(heartbeat_at=now or utcnow())).rowcount == 1

    def held(self) -> bool:
        table = Lock.__table__
        with engine_for(self.url).begin() as conn:
            return conn.execute(select(table.c.owner).where(table.c.name == self.name)).scalar() == self.owner

    def release(self) -> bool:
        table = Lock.__table__
        with engine_for(self.url).begin() as conn:
            return conn.execute(delete(table).where(table.c.name == self.name, table.c.owner == self.owner)
                                ).rowcount == 1


def lock_state(settings: Settings, now: datetime | None = None) -> str:
    """Who holds the scheduler lock, in words (for `digest schedule --show`)."""
    now = now or utcnow()
    table = Lock.__table__
    with engine_for(settings.database_url).begin() as conn:
        row = conn.execute(select(table.c.owner, table.c.heartbeat_at).where(table.c.name == LOCK_NAME)).first()
    if row is None:
        return "not running (no scheduler holds the lock)"
    age = (now - row.heartbeat_at).total_seconds()
    if age > settings.schedule.lock_expiry_seconds:
        return f"not running? {row.owner} holds the lock but has been silent {age:.0f} s (expired: can be taken over)"
    return f"running: {row.owner}, last heartbeat {age:.0f} s ago"


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


# --- what the jobs do -----------------------------------------------------------------------------------

@dataclass
class JobResult:
    """What a job did: drafted | sent | held | skipped | missed | nothing, and in words."""

    action: str
    number: int | None
    message: str
    problems: list[str] = field(default_factory=list)
    report: SendReport | None = None

    def __str__(self) -> str:
        return self.message + "".join(f"; {p}" for p in self.problems)


def _actions(number: int) -> tuple[str, ...]:
    return (f"Approve it: `digest approve {number}` (or on the review page).",
            "Change it: `digest draft --exclude ARTICLE --pin ARTICLE --feature LISTING` (it becomes a draft again).",
            f"Keep it back: `digest hold {number}`; send nothing this time: `digest skip {number}`.")


def _fate_if_not_approved(settings: Settings, summary: issues.Summary) -> str:
    sc = settings.schedule
    if summary.new_articles < sc.min_articles and sc.when_empty != "send":
        fate = {"skip": "skipped (nothing sent)", "hold": "held (nothing sent)"}[sc.when_empty]
        return (f"It has {summary.new_articles} new article(s), fewer than min_articles = {sc.min_articles}: "
                f"unless you approve it, it will be {fate} at the send time (when_empty = {sc.when_empty}).")
    fate = "held, not sent" if sc.if_not_approved == "hold" else "sent as it is"
    return f"If it is not approved by the send time, it will be {fate} (if_not_approved = {sc.if_not_approved})."


def _settled(session: Session, send_at: datetime) -> JobResult | None:
    """An issue for this very send moment that was already sent, held or skipped (by hand or by an
    earlier run of the job): the schedule leaves it as it is, so nothing goes out twice or against an
    editor's decision."""
    newest = issues.newest_issue(session)
    if newest is not None and newest.send_at == send_at and newest.status in ("sent", "held", "skipped"):
        return JobResult("nothing", newest.number, f"issue {newest.number} was already {newest.status} "
                         "for this send: nothing to do")
    return None


def run_draft(settings: Settings, *, send_at: datetime, now: datetime | None = None,
              transport: Transport | None = None, offline: bool | None = None) -> JobResult:
    """Build (or rebuild) the draft for the send at `send_at` and tell the editors."""
    now = now or utcnow()
    offline = not settings.schedule.check_links if offline is None else offline
    with session_scope(settings.database_url) as session:
        settled = _settled(session, send_at)
        if settled is not None:
            return settled
        row = issues.open_issue(session)
        if row is not None and row.status == "sending":
            return JobResult("nothing", row.number, f"issue {row.number} is still being sent: no new draft")
        if row is not None and row.status == "approved" and row.send_at == send_at:
            return JobResult("nothing", row.number,
                             f"issue {row.number} is already approved for this send: left as it is")
        draft = issues.build_draft(settings, session, now=now, send_at=send_at, offline=offline, by="the schedule")
        summary = issues.summarize(settings, draft.row)
    local, _ = local_and_utc(settings, send_at)
    problems = [c for c in summary.checks if c.get("level") != "ok"]
    message = [_fate_if_not_approved(settings, summary)]
    if problems:
        message.append(f"{len(problems)} check(s) need a look before it goes out.")
    notice = Notice("draft", f"Issue {summary.number} is ready for review (send {local})", tuple(message),
                    summary, _actions(summary.number))
    problems = notify_editors(settings, notice, transport=transport)
    return JobResult("drafted", summary.number, f"draft of issue {summary.number} built for the send at "
                     f"{describe(settings, send_at)}" + ("" if problems else "; editors notified"), problems)


def _conclude(settings: Settings, row_number: int, action: str, reason: str, now: datetime,
              transport: Transport | None) -> JobResult:
    """Hold or skip the issue for `reason` and tell the editors."""
    with session_scope(settings.database_url) as session:
        change = issues.hold if action == "held" else issues.skip
        row = change(session, row_number, by="the schedule", reason=reason, now=now)
        summary = issues.summarize(settings, row)
    if action == "held":
        headline = f"Issue {row_number} was held, not sent"
        steps = (f"Send it now: `digest approve {row_number}` then `digest send`.",
                 "Or leave it: the next scheduled draft rebuilds it with the newest articles.")
    else:
        headline = f"Issue {row_number} was skipped: nothing was sent"
        steps = ("The next scheduled draft reuses its number, with the newest articles.",)
    notice = Notice(action, headline, (reason[0].upper() + reason[1:] + ".",), summary, steps)
    problems = notify_editors(settings, notice, transport=transport)
    return JobResult(action, row_number, f"issue {row_number} {action}: {reason}", problems)


def run_send(settings: Settings, *, send_at: datetime, now: datetime | None = None,
             transport: Transport | None = None) -> JobResult:
    """At the send moment: send the approved issue, or apply `when_empty` / `if_not_approved`.

    Never sends twice: an issue for this moment that was already sent (by hand, or by an earlier run),
    held or skipped means there is nothing to do. An issue in the middle of sending is resumed (the
    deliveries ledger sends each reader once).
    """
    now = now or utcnow()
    sc = settings.schedule
    with session_scope(settings.database_url) as session:
        settled = _settled(session, send_at)
        row = issues.open_issue(session)
        if settled is not None and (row is None or row.status != "sending"):
            return settled
        if row is not None and row.status != "sending" and row.send_at is not None and row.send_at > send_at:
            return JobResult("nothing", row.number, f"issue {row.number} is for a later send "
                             f"({describe(settings, row.send_at)}): nothing sent now")
        if row is None or (row.status != "sending" and row.send_at is not None and row.send_at < send_at):
            stale = row is not None
            draft = issues.build_draft(settings, session, now=now, send_at=send_at,
                                       offline=not sc.check_links, by="the schedule")
            row = draft.row
            issues.add_note(row, "draft built at the send time: " + (
                "the one there was for an earlier send" if stale else "no draft had been built"), now)
        if row.status == "draft":
            n = len(issues.issue_of(row).all_articles)
            number = row.number
            if n < sc.min_articles and sc.when_empty != "send":
                session.commit()
                action = "skipped" if sc.when_empty == "skip" else "held"
                return _conclude(settings, number, action, f"{n} new article(s), fewer than min_articles = "
                                 f"{sc.min_articles} (when_empty = {sc.when_empty})", now, transport)
            if sc.if_not_approved == "hold":
                session.commit()
                return _conclude(settings, number, "held", "not approved by the send time "
                                 "(if_not_approved = hold)", now, transport)
            row.status, row.approved_at, row.approved_by = "approved", now, "the schedule (if_not_approved = send)"
    outcome = issues.send(settings, transport=transport, now=now)
    report = outcome.report
    if report is None:
        return JobResult("nothing", None, outcome.message)
    message = (f"issue {report.issue_number} sent: {report.submitted} submitted, {report.failed} failed, "
               f"{report.skipped} skipped, {report.already} already sent earlier")
    if not report.ok:
        notice = Notice("failed", f"Issue {report.issue_number} was sent with problems",
                        (message + ".", *report.errors[:5]), None, ("See `digest status`.",))
        return JobResult("sent", report.issue_number, message, notify_editors(settings, notice), report)
    return JobResult("sent", report.issue_number, message, [], report)


def report_missed(settings: Settings, *, job_id: str, scheduled_at: datetime, now: datetime | None = None,
                  transport: Transport | None = None) -> JobResult:
    """A moment missed by more than its grace time: say so on the issue and to the editors, do nothing late."""
    now = now or utcnow()
    what = "send" if job_id == SEND_JOB else "draft"
    late = now - scheduled_at
    local, utc = local_and_utc(settings, scheduled_at)
    late_words = f"{late.total_seconds() / 3600:.1f} h" if late >= timedelta(hours=1) \
        else f"{late.total_seconds() / 60:.0f} min"
    note = f"the scheduled {what} of {local} was missed by {late_words} (scheduler not running): not done late"
    with session_scope(settings.database_url) as session:
        row = issues.current_issue(session)
        if row is not None:
            issues.add_note(row, note, now)
        summary = issues.summarize(settings, row) if row is not None else None
    following = next_moments(settings, now).send_at
    message = (f"The scheduler was not running at {local} ({utc}) and came back {late_words} later, more "
               f"than the grace time allows, so the {what} was not done late.",
               "Nothing was sent." if what == "send" else "No draft was built then.",
               f"The next scheduled send is {describe(settings, following)}.")
    steps = (("Send now by hand: `digest approve` then `digest send`.",) if what == "send"
             else ("Build the draft now: `digest draft`.",))
    notice = Notice("missed", f"The scheduled {what} of {local} was missed", message, summary, steps)
    problems = notify_editors(settings, notice, transport=transport)
    log.warning("%s", note)
    return JobResult("missed", row.number if row is not None else None, note, problems)


# --- the APScheduler wiring ------------------------------------------------------------------------------

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
    fired = last_fire(draft_trigger(settings), now, timedelta(seconds=draft_grace(settings) + 60)) or now
    result = run_draft(settings, send_at=fired + timedelta(hours=settings.schedule.review_hours), now=now)
    log.info("draft job: %s", result)


def send_job(config: str) -> None:
    """APScheduler entry point (stored in the job store by reference): send, hold or skip."""
    settings = load_settings(config)
    now = utcnow()
    if not _ours():
        return
    fired = last_fire(send_trigger(settings), now, timedelta(seconds=send_grace(settings) + 60)) or now
    log.info("send job: %s", run_send(settings, send_at=fired, now=now))


def _on_missed(settings: Settings, event: JobExecutionEvent) -> None:
    try:
        report_missed(settings, job_id=event.job_id, scheduled_at=event.scheduled_run_time.astimezone(UTC))
    except Exception:
        log.exception("could not report the missed %s", event.job_id)


def _on_error(settings: Settings, event: JobExecutionEvent) -> None:
    what = "send" if event.job_id == SEND_JOB else "draft"
    local, utc = local_and_utc(settings, event.scheduled_run_time)
    notice = Notice("failed", f"The scheduled {what} of {local} failed",
                    (f"{event.exception.__class__.__name__}: {event.exception}",
                     "Readers already sent to are recorded and are never sent to twice; `digest send` resumes."
                     if what == "send" else "Build the draft by hand: `digest draft`."), None,
                    ("See the scheduler's log for details.",))
    notify_editors(settings, notice)


def build_scheduler(settings: Settings) -> BackgroundScheduler:
    """A scheduler over the database's job store: coalesce, one instance at a time, a grace time.

    One worker thread: the draft and the send never run at once (after downtime both may be due; the
    draft, due first, runs first)."""
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine_for(settings.database_url), tablename=JOBS_TABLE)},
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": send_grace(settings)},
        timezone=settings.publication.tz,
    )
    scheduler.add_listener(partial(_on_missed, settings), EVENT_JOB_MISSED)
    scheduler.add_listener(partial(_on_error, settings), EVENT_JOB_ERROR)
    return scheduler


def ensure_jobs(scheduler: BackgroundScheduler, settings: Settings, config: str) -> list[str]:
    """Add the two jobs, keeping a stored job whose schedule is unchanged, so that a missed run it still
    carries is run (or reported) once; a job whose schedule changed is replaced. Returns what was done."""
    now = utcnow()
    lines = []
    specs: list[tuple[str, str, Any, BaseTrigger, int]] = [
        (DRAFT_JOB, "draft", draft_job, draft_trigger(settings), draft_grace(settings)),
        (SEND_JOB, "send", send_job, send_trigger(settings), send_grace(settings)),
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


def stored_jobs(settings: Settings) -> dict[str, datetime | None]:
    """The job store's next run times (what a stopped scheduler would run first when started)."""
    table = apscheduler_jobs
    with engine_for(settings.database_url).begin() as conn:
        rows = conn.execute(select(table.c.id, table.c.next_run_time)).all()
    return {r.id: None if r.next_run_time is None else datetime.fromtimestamp(r.next_run_time, UTC) for r in rows}


def serve(settings: Settings, *, out: Console = console, stop: threading.Event | None = None,
          heartbeat_seconds: float | None = None) -> int:
    """Run the schedule until Ctrl-C / SIGTERM (or `stop` is set). Returns the exit code."""
    global _lock
    say = partial(out.print, soft_wrap=True, highlight=False)
    draft_trigger(settings)  # a bad [schedule] is reported before anything is taken
    scheduler = build_scheduler(settings)
    expiry = timedelta(seconds=settings.schedule.lock_expiry_seconds)
    lock = SchedulerLock(settings.database_url, expiry)
    log.info("%s", lock.acquire())
    _lock = lock
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # systemd's stop: as Ctrl-C
    try:
        scheduler.start(paused=True)
        for line in ensure_jobs(scheduler, settings, str(settings.path)):
            say(line)
        jobs = {job.id: job.next_run_time for job in scheduler.get_jobs()}
        scheduler.resume()
        say(f"scheduler running on {safe_url(settings.database_url)} as {lock.owner} "
            f"({settings.publication.timezone}); Ctrl-C stops")
        for job_id, name in ((DRAFT_JOB, "next draft:"), (SEND_JOB, "next send: ")):
            if jobs.get(job_id) is not None:
                say(f"{name} {describe(settings, jobs[job_id])}")
        interval = heartbeat_seconds or max(1.0, expiry.total_seconds() / 4)
        while not stop.wait(interval):
            try:
                if not lock.heartbeat():
                    err.print("error: this scheduler lost its lock (silent too long; another took over): "
                              "stopping", soft_wrap=True)
                    return 1
            except Exception as e:  # the database away for a moment: retry; expiry decides
                log.warning("heartbeat failed: %s", e)
        return 0
    except KeyboardInterrupt:
        say("stopping: waiting for a running job to finish")
        return 0
    finally:
        try:
            if scheduler.running:
                scheduler.shutdown(wait=True)  # a running job is waited for
        finally:
            lock.release()
            _lock = None
            say("scheduler stopped")


def show(settings: Settings, out: Console = console, now: datetime | None = None) -> None:
    """`digest schedule --show`: the next moments, local and UTC, and what the store and lock hold."""
    now = now or utcnow()
    say = partial(out.print, soft_wrap=True, highlight=False)
    sc = settings.schedule
    m = next_moments(settings, now)
    say(f"schedule: {sc.day_of_week} {sc.hour:02d}:{sc.minute:02d} {settings.publication.timezone}, "
              f"draft {sc.review_hours} h before; when_empty = {sc.when_empty} (min_articles = "
              f"{sc.min_articles}), if_not_approved = {sc.if_not_approved}")
    say(f"next draft: {describe(settings, m.draft_at)}")
    say(f"next send:  {describe(settings, m.send_at)}")
    if m.review_from < now:
        say(f"  (its draft was due {describe(settings, m.review_from)}: the review window is open)")
    stored = stored_jobs(settings)
    for job_id, name in ((DRAFT_JOB, "draft"), (SEND_JOB, "send")):
        if stored.get(job_id) is not None:
            late = " (missed: runs once at start if within the grace time)" if stored[job_id] < now else ""
            say(f"stored {name} job: {describe(settings, stored[job_id])}{late}")
    say(f"scheduler: {lock_state(settings, now)}")
    say(f"editors: {', '.join(sc.editors) or '(none: set [schedule] editors)'}")
    with session_scope(settings.database_url) as session:
        row = issues.current_issue(session)
        if row is not None:
            first, *rest = issues.summarize(settings, row).lines(settings.publication.tz)
            say(f"current {first}")
            for line in rest:
                say(f"  {line}")
