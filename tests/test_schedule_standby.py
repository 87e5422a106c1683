"""One active scheduler among several hosts: a second `digest schedule` waits as a standby, polling the
scheduler lock, and takes over within `lock_expiry_seconds` of the active one's last heartbeat; the two
are never active at once (the lock table and their logs say so)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from digest.config import Settings
from digest.locks import SchedulerLock
from digest.schedule.runner import serve
from digest.store import Lock, engine_for, utcnow
from tests.conftest import SECRET

EXPIRY = 30  # the smallest lock_expiry_seconds the schema allows


def owner_now(settings: Settings) -> str | None:
    with engine_for(settings.database_url).begin() as conn:
        return conn.execute(select(Lock.owner).where(Lock.name == "scheduler")).scalar()


def test_a_scheduler_whose_lock_is_held_on_another_host_stands_by_then_takes_over(settings: Settings) -> None:
    far = SchedulerLock(settings.database_url, timedelta(seconds=EXPIRY), owner="another-host:1:abcd")
    far.acquire()
    out, result, stop = io.StringIO(), {}, threading.Event()
    thread = threading.Thread(target=lambda: result.update(
        code=serve(settings, say=lambda line: print(line, file=out), stop=stop, heartbeat_seconds=0.1)))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while "standby:" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "standby: another-host:1:abcd is the active scheduler" in out.getvalue()
        time.sleep(0.5)
        assert owner_now(settings) == "another-host:1:abcd" and "scheduler running" not in out.getvalue()
        with engine_for(settings.database_url).begin() as conn:  # the far holder falls silent
            silent = settings.schedule.lock_expiry_seconds - 1
            conn.execute(update(Lock).values(heartbeat_at=utcnow() - timedelta(seconds=silent)))
        while "next send:" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "scheduler running" in out.getvalue()
        owner = owner_now(settings)
        assert owner is not None and owner != "another-host:1:abcd" and owner in out.getvalue()
        assert not far.heartbeat(), "the silent holder has lost the lock: it stops at its next heartbeat"
    finally:
        stop.set()
        thread.join(20)
    assert result == {"code": 0}


def read_lines(proc: subprocess.Popen[str], into: list[tuple[float, str]]) -> threading.Thread:
    def run() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            into.append((time.monotonic(), line))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def seen(lines: list[tuple[float, str]], marker: str) -> float | None:
    return next((t for t, line in list(lines) if marker in line), None)


def wait_seen(lines: list[tuple[float, str]], marker: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while (t := seen(lines, marker)) is None:
        assert time.monotonic() < deadline, f"no {marker!r} in {''.join(line for _, line in lines)!r}"
        time.sleep(0.05)
    return t


@pytest.mark.slow
def test_two_schedulers_one_active_the_standby_takes_over_after_sigkill(settings: Settings, workdir: Path,
                                                                        backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("several hosts share a PostgreSQL database")
    text = (workdir / "digest.toml").read_text()
    (workdir / "digest.toml").write_text(text.replace("[schedule]", f"[schedule]\nlock_expiry_seconds = {EXPIRY}", 1))
    env = {**os.environ, "DIGEST_SECRET_KEY": SECRET}
    cmd = [sys.executable, "-m", "digest", "schedule", "--standby"]
    a_lines: list[tuple[float, str]] = []
    b_lines: list[tuple[float, str]] = []
    owners: list[tuple[float, str | None]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            owners.append((time.monotonic(), owner_now(settings)))
            time.sleep(0.1)

    a = subprocess.Popen(cmd, cwd=workdir, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    b: subprocess.Popen[str] | None = None
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        read_lines(a, a_lines)
        wait_seen(a_lines, "next send:", 60)
        a_owner = owner_now(settings)
        assert a_owner is not None and a_owner in "".join(line for _, line in a_lines)
        b = subprocess.Popen(cmd, cwd=workdir, env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        read_lines(b, b_lines)
        wait_seen(b_lines, "standby:", 60)
        sampler.start()
        time.sleep(3)  # both up: one active, one standing by
        assert seen(b_lines, "scheduler running") is None and owner_now(settings) == a_owner
        a.send_signal(signal.SIGKILL)
        a.wait()
        killed = time.monotonic()
        active = wait_seen(b_lines, "scheduler running", EXPIRY + 30)
        b_owner = owner_now(settings)
        time.sleep(0.5)  # a few samples after the takeover: the sampler's last one may predate it (0.1 s apart)
        sampling.set()
        sampler.join(5)
    finally:
        sampling.set()
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert b_owner is not None and b_owner != a_owner
    assert active - killed <= EXPIRY + 2, f"took over {active - killed:.1f} s after the kill"
    # never both: B became active only after A was killed, and the lock went from A to B once
    assert active > killed
    holders = [o for _, o in owners if o is not None]
    assert holders[0] == a_owner and holders[-1] == b_owner
    assert holders == sorted(holders, key=lambda o: o == b_owner), "the lock never went back to A"
    assert set(holders) == {a_owner, b_owner}
    assert b.returncode == 0 and b_owner is not None
    print(f"standby took over {active - killed:.1f} s after SIGKILL (lock_expiry_seconds {EXPIRY})")
