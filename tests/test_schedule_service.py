"""`digest schedule` as a real process: it starts, prints the next moments, refuses a second scheduler on
the same database (exit 2, a clear message), and stops cleanly on SIGINT (Ctrl-C) and SIGTERM (systemd)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from digest import stopping
from digest.config import Settings
from digest.locks import SchedulerLock
from digest.store import Lock, engine_for
from tests.conftest import SECRET, run_cli


def start(workdir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "DIGEST_SECRET_KEY": SECRET}
    return subprocess.Popen([sys.executable, "-m", "digest", "schedule"], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float = 30) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while marker not in seen:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"no {marker!r} from `digest schedule`: {seen!r}")
        seen += proc.stdout.readline()
    return seen


def lock_owner(settings: Settings) -> str | None:
    with engine_for(settings.database_url).begin() as conn:
        return conn.execute(select(Lock.owner)).scalar()


def stop(proc: subprocess.Popen[str], how: signal.Signals) -> tuple[str, str]:
    proc.send_signal(how)
    try:
        # well under a heartbeat (30 s): a stop that waits for the next heartbeat to be seen fails here
        return proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_digest_schedule_runs_refuses_a_second_and_stops_on_ctrl_c(settings: Settings, workdir: Path,
                                                                   backend: str) -> None:
    proc = start(workdir)
    try:
        banner = read_until(proc, "next send:")
        shown_url = {"sqlite": "sqlite:///", "postgresql": "postgresql+psycopg://postgres:***@"}[backend]
        assert f"scheduler running on {shown_url}" in banner and "Ctrl-C stops" in banner
        assert "next draft: " in banner and " UTC" in banner and ("AEST" in banner or "AEDT" in banner)
        owner = lock_owner(settings)
        assert owner is not None and owner in banner

        second = run_cli("schedule", cwd=workdir, timeout=60)
        assert second.returncode == 2
        message = " ".join(second.stderr.split())
        assert "error: another scheduler is running" in message and "only one may run" in message
        assert "Traceback" not in second.stderr

        shown = run_cli("schedule", "--show", cwd=workdir, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert f"scheduler: running: {owner}" in shown.stdout
        assert "stored send job: " in shown.stdout
    finally:
        out, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 0, err
    assert "scheduler stopped" in out and "Traceback" not in err
    assert lock_owner(settings) is None, "a clean stop releases the lock"
    after = SchedulerLock(settings.database_url)
    assert "taken by" in after.acquire() and after.release(), "the next scheduler may start at once"


@pytest.mark.slow
def test_digest_schedule_stops_cleanly_on_sigterm(settings: Settings, workdir: Path) -> None:
    proc = start(workdir)
    try:
        read_until(proc, "next send:")
        assert lock_owner(settings) is not None
    finally:
        out, err = stop(proc, signal.SIGTERM)
    assert proc.returncode == 0, err
    assert "scheduler stopped" in out and "Traceback" not in err
    assert lock_owner(settings) is None


def _wait_through_a_signal_taken_by_another_thread(wait: Callable[[float], bool], seconds: float) -> float:
    """How long `wait(seconds)` in the main thread lasts when, 0.2 s in, a SIGUSR1 arrives on another
    thread (as the kernel may deliver a process's signal to any thread that does not block it)."""
    assert threading.current_thread() is threading.main_thread(), "signals are handled in the main thread"
    handled: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: handled.append(signum))

    def other() -> None:
        time.sleep(0.2)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)

    helper = threading.Thread(target=other)
    try:
        started = time.monotonic()
        helper.start()
        wait(seconds)
        took = time.monotonic() - started
        helper.join()
        time.sleep(0)  # the Python-level handler runs here at the latest
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert handled == [signal.SIGUSR1]
    return took


def test_the_schedulers_wait_ends_when_a_signal_arrives_on_another_thread() -> None:
    # the cause of a SIGTERM obeyed only at the next heartbeat (30 s): Event.wait sleeps through it
    assert _wait_through_a_signal_taken_by_another_thread(threading.Event().wait, 2) >= 2
    with stopping.waits_on(threading.Event()) as wait:
        assert _wait_through_a_signal_taken_by_another_thread(wait, 20) < 10
