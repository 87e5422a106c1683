"""The real APScheduler 3 (BackgroundScheduler + SQLAlchemyJobStore on a SQLite file) under a fake clock
(time-machine): a restart after downtime runs a missed send once, a send missed beyond the grace time
is reported, many missed weeks coalesce into one run; and the lock keeps a second scheduler out.
"""

from __future__ import annotations

import io
import pickle
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import select, update

from digest import issues
from digest.config import Settings
from digest.locks import LockHeld, SchedulerLock
from digest.schedule.jobs import DRAFT_JOB, SEND_JOB, run_draft
from digest.schedule.runner import build_scheduler, ensure_jobs, serve, stored_jobs
from digest.store import Lock, apscheduler_jobs, engine_for, session_scope
from tests.test_schedule_jobs import (
    DRAFT_AT,
    READERS,
    SEND_AT,
    deliveries,
    fresh_feed,
    issue_row,
    notices,
    reader_copies,
    reconfigure,
    subscribe,
)

WEEK = timedelta(days=7)


class Running:
    """A scheduler started as `digest schedule` starts it, with its job events counted."""

    def __init__(self, settings: Settings) -> None:
        self.events: Counter[tuple[str, str]] = Counter()
        self.scheduler: BackgroundScheduler = build_scheduler(settings)
        self.scheduler.add_listener(self._count, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED)
        self.scheduler.start(paused=True)
        self.lines = ensure_jobs(self.scheduler, settings, str(settings.path))
        self.scheduler.resume()

    def _count(self, event: JobEvent) -> None:
        self.events[(event.job_id, "missed" if event.code == EVENT_JOB_MISSED else "ran")] += 1

    def stop(self) -> None:
        self.scheduler.shutdown(wait=True)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the scheduler")
        time.sleep(0.05)


@pytest.fixture
def approved(settings: Settings, workdir: Path) -> Iterator[Settings]:
    """Readers, a draft for the send of Mon 8 April 2024 07:00 Sydney, approved; a scheduler that ran
    two hours before that send and was then stopped (the jobs stay in the database)."""
    fresh_feed(workdir, DRAFT_AT)
    subscribe(settings, *READERS)
    settings = reconfigure(workdir, 'if_not_approved = "hold"', 'if_not_approved = "hold"\ncheck_links = false')
    run_draft(settings, send_at=SEND_AT, now=DRAFT_AT)
    with session_scope(settings.database_url) as s:
        issues.approve(s, by="editor")
    with time_machine.travel(SEND_AT - timedelta(hours=2), tick=True):
        first = Running(settings)
        first.stop()
    stored = stored_jobs(settings)
    assert stored[SEND_JOB] == SEND_AT and stored[DRAFT_JOB] == DRAFT_AT + WEEK
    yield settings


def test_a_send_missed_within_the_grace_time_runs_once_on_restart(approved: Settings, workdir: Path) -> None:
    with time_machine.travel(SEND_AT + timedelta(minutes=30), tick=True):  # grace: 3600 s
        second = Running(approved)
        try:
            assert any("send: the run due Mon 08 Apr 2024 07:00 AEST" in line and "runs once now" in line
                       for line in second.lines), second.lines
            wait_for(lambda: second.events[(SEND_JOB, "ran")] == 1)
        finally:
            second.stop()
    assert issue_row(approved).status == "sent"
    assert deliveries(approved) == 3 and len(reader_copies(workdir)) == 3
    assert second.events == Counter({(SEND_JOB, "ran"): 1})
    assert stored_jobs(approved)[SEND_JOB] == SEND_AT + WEEK, "the next send is next week's"


def test_a_send_missed_beyond_the_grace_time_is_reported_not_sent(approved: Settings, workdir: Path) -> None:
    with time_machine.travel(SEND_AT + timedelta(hours=2), tick=True):
        second = Running(approved)
        try:
            assert any("missed by more than the grace time" in line for line in second.lines), second.lines
            wait_for(lambda: "missed" in issue_row(approved).note)
            wait_for(lambda: bool(notices(workdir)) and "was missed" in notices(workdir)[0]["Subject"])
        finally:
            second.stop()
    assert second.events == Counter({(SEND_JOB, "missed"): 1})
    row = issue_row(approved)
    assert row.status == "approved" and "scheduled send of Mon 08 Apr 2024 07:00 AEST was missed by 2.0 h" in row.note
    assert deliveries(approved) == 0 and not reader_copies(workdir)
    assert stored_jobs(approved)[SEND_JOB] == SEND_AT + WEEK


def test_three_missed_weeks_coalesce_into_one_send(approved: Settings, workdir: Path) -> None:
    settings = reconfigure(workdir, 'if_not_approved = "hold"', 'if_not_approved = "send"')
    back = SEND_AT + 3 * WEEK + timedelta(minutes=10)
    fresh_feed(workdir, back)
    with time_machine.travel(back, tick=True):
        second = Running(settings)
        try:
            wait_for(lambda: second.events[(SEND_JOB, "ran")] >= 1)
        finally:
            second.stop()
    # the send: four fire times passed (8, 15, 22, 29 April), coalesced into the last, run once;
    # the draft: three passed, the last 24 h 10 min ago, beyond its 24 h grace: reported once
    assert second.events == Counter({(SEND_JOB, "ran"): 1, (DRAFT_JOB, "missed"): 1})
    with session_scope(settings.database_url) as s:
        rows = s.scalars(select(issues.IssueRow)).all()
        assert [(r.number, r.status) for r in rows] == [(1, "sent")]
        assert rows[0].send_at == SEND_AT + 3 * WEEK
        assert "the one there was for an earlier send" in rows[0].note
    assert deliveries(settings) == 3 and len(reader_copies(workdir)) == 3
    assert stored_jobs(settings)[SEND_JOB] == SEND_AT + 4 * WEEK


def test_a_changed_schedule_replaces_the_stored_job_on_restart(approved: Settings, workdir: Path) -> None:
    settings = reconfigure(workdir, "hour = 7", "hour = 9")
    with time_machine.travel(SEND_AT - timedelta(hours=1), tick=True):
        second = Running(settings)
        second.stop()
    assert any("send: schedule changed" in line for line in second.lines)
    assert stored_jobs(settings)[SEND_JOB] == SEND_AT + timedelta(hours=2)


# --- the lock -------------------------------------------------------------------------------------------

def test_the_lock_admits_one_scheduler_and_expires_when_its_holder_goes_silent(settings: Settings) -> None:
    t0 = datetime(2024, 4, 1, tzinfo=UTC)
    first = SchedulerLock(settings.database_url, timedelta(seconds=120), owner="host-a:1")
    second = SchedulerLock(settings.database_url, timedelta(seconds=120), owner="host-b:2")
    assert "taken by host-a:1" in first.acquire(t0)
    with pytest.raises(LockHeld, match=r"another scheduler is running .* \(host-a:1, last heartbeat 60 s ago\)"):
        second.acquire(t0 + timedelta(seconds=60))
    assert first.heartbeat(t0 + timedelta(seconds=90))
    with pytest.raises(LockHeld, match="in 90 s"):
        second.acquire(t0 + timedelta(seconds=120))  # 30 s after the heartbeat: still alive
    # host-a dies: 121 s without a heartbeat, and host-b may take over
    assert "taken over from host-a:1" in second.acquire(t0 + timedelta(seconds=90 + 121))
    assert not first.heartbeat(t0 + timedelta(seconds=300)), "the old holder learns it lost the lock"
    assert not first.release() and second.held()
    assert second.release() and not second.held()


def _serve_in_thread(settings: Settings, stop: threading.Event) -> tuple[threading.Thread, dict, io.StringIO]:
    out, result = io.StringIO(), {}
    thread = threading.Thread(target=lambda: result.update(
        code=serve(settings, say=lambda line: print(line, file=out), stop=stop, heartbeat_seconds=0.05)))
    thread.start()
    wait_for(lambda: "next send:" in out.getvalue() or not thread.is_alive())
    return thread, result, out


def _lock_owner(settings: Settings) -> str | None:
    with engine_for(settings.database_url).begin() as conn:
        return conn.execute(select(Lock.owner)).scalar()


def test_a_second_scheduler_on_the_same_database_is_refused(settings: Settings) -> None:
    stop = threading.Event()
    thread, result, out = _serve_in_thread(settings, stop)
    try:
        owner = _lock_owner(settings)
        assert owner is not None and owner in out.getvalue()
        with pytest.raises(LockHeld, match="only one may run"):
            serve(settings, say=lambda line: None, stop=threading.Event())
    finally:
        stop.set()
        thread.join(10)
    assert result == {"code": 0} and "scheduler stopped" in out.getvalue()
    assert _lock_owner(settings) is None, "a clean stop releases the lock"


def test_a_scheduler_that_lost_its_lock_stops(settings: Settings) -> None:
    stop = threading.Event()
    thread, result, out = _serve_in_thread(settings, stop)
    try:
        with engine_for(settings.database_url).begin() as conn:
            conn.execute(update(Lock).values(owner="another-host:9"))  # taken over while we were silent
        thread.join(10)
    finally:
        stop.set()
        thread.join(10)
    assert result == {"code": 1}
    assert _lock_owner(settings) == "another-host:9", "the lock it lost is not released by it"


def test_a_bad_schedule_is_reported_before_the_lock_is_taken(workdir: Path, settings: Settings) -> None:
    from digest.errors import ConfigError

    bad = reconfigure(workdir, "minute = 0", "minute = 61")
    with pytest.raises(ConfigError, match="schedule.minute must be 0..59"):
        serve(bad, say=lambda line: None, stop=threading.Event())
    assert _lock_owner(settings) is None


def test_jobs_stored_by_the_one_module_schedule_are_kept_on_restart(approved: Settings, workdir: Path) -> None:
    """Jobs stored while the schedule was `digest/schedule.py` (references `digest.schedule:send_job`,
    triggers pickled as `digest.schedule.SendTrigger`) keep their missed run: rewritten, not dropped."""
    table = apscheduler_jobs
    with engine_for(approved.database_url).begin() as conn:
        for job_id, blob in conn.execute(select(table.c.id, table.c.job_state)).all():
            old = pickle.dumps(pickle.loads(blob), 0)  # protocol 0: paths are plain text lines
            old = old.replace(b"digest.moments\n", b"digest.schedule\n").replace(b"digest.schedule.runner:",
                                                                                   b"digest.schedule:")
            assert b"digest.schedule\nSendTrigger" in old and b"digest.schedule:" in old
            conn.execute(update(table).where(table.c.id == job_id).values(job_state=old))
    with time_machine.travel(SEND_AT + timedelta(minutes=30), tick=True):
        second = Running(approved)
        try:
            assert not any("replaced" in line for line in second.lines), second.lines
            assert {job.func_ref for job in second.scheduler.get_jobs()} == {
                "digest.schedule.runner:draft_job", "digest.schedule.runner:send_job"}
            wait_for(lambda: second.events[(SEND_JOB, "ran")] == 1)
        finally:
            second.stop()
    assert issue_row(approved).status == "sent" and deliveries(approved) == 3
