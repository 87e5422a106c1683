"""Several send workers on one issue (PostgreSQL): batches claimed FOR UPDATE SKIP LOCKED under a lease, a
worker SIGKILLed mid-send taken over by the others, each reader exactly once; on SQLite, extra workers are
refused with a one-line reason. Real processes, the SendGrid contract server and an aiosmtpd server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from digest.config import Settings, load_settings
from digest.deliver.ledger import claim, counts, post, reap, snapshot
from digest.issues import build_draft, start_sending
from digest.locks import join_send, send_workers
from digest.store import Delivery, IssueRow, Lock, SendBatch, migrate, session_factory, utcnow
from tests.conftest import SECRET, run_main
from tests.fakes.readers import seed_readers, set_keys
from tests.fakes.sendgrid_server import SendGridServer
from tests.fakes.smtp_server import Recorder, SMTPServer

KEY = "SG.workers-test-key"


def only(backend: str, wanted: str) -> None:
    if backend != wanted:
        pytest.skip(f"a {wanted} behaviour")


def workers_of(settings: Settings) -> dict[str, int]:
    """Live worker rows: worker id -> pid."""
    with session_factory(settings.database_url)() as s:
        return {n.rpartition(":")[2]: int(o.rpartition(":")[2])
                for n, o in s.execute(select(Lock.name, Lock.owner).where(Lock.name.startswith("send:")))}


def rows(settings: Settings) -> list[tuple[str, str, str | None, object]]:
    with session_factory(settings.database_url)() as s:
        return list(s.execute(select(Delivery.email, Delivery.status, Delivery.worker, SendBatch.posted_at)
                              .join(SendBatch, SendBatch.batch == Delivery.batch, isouter=True)))


def three_thousand_on_sendgrid(workdir: Path, server: SendGridServer) -> tuple[Settings, list[str], dict[str, str]]:
    """3,000 readers to send through `server` in batches of 50 under a 3 s lease: the settings, the readers'
    addresses and the environment of a `digest send` process."""
    set_keys(workdir, "delivery", transport="sendgrid", allow_http_public_url=True, lease_seconds=3)
    set_keys(workdir, "delivery.sendgrid", batch_size=50, concurrency=2, backoff_seconds=0.01)
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    emails = seed_readers(settings, 3000)
    return settings, emails, {**os.environ, "DIGEST_SECRET_KEY": SECRET, "SENDGRID_API_KEY": KEY,
                              "DIGEST_SENDGRID_API_URL": server.url, "COLUMNS": "250"}


def run_three_workers_and_kill_one(workdir: Path, settings: Settings, env: dict[str, str],
                                   sent: object) -> tuple[subprocess.CompletedProcess[str], str, int]:
    """`digest send --workers 3`; once the three have claimed, SIGKILL a child worker that holds claimed
    rows (mid-send). Returns the finished command, the killed worker's id and how many rows it held."""
    proc = subprocess.Popen([sys.executable, "-m", "digest", "send", "--workers", "3"], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, held = "", 0
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        live = {w: pid for w, pid in workers_of(settings).items() if pid != proc.pid}
        holding = Counter(worker for _e, status, worker, _p in rows(settings) if status == "claimed" and worker)
        targets = [w for w in live if holding[w]]
        if len(live) == 2 and targets and callable(sent) and sent() >= 2:
            victim, held = targets[0], holding[targets[0]]
            os.kill(live[victim], signal.SIGKILL)
            break
        time.sleep(0.02)
    out, errs = proc.communicate(timeout=180)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, errs), victim, held


@pytest.mark.slow
def test_three_sendgrid_workers_one_killed_mid_send_each_reader_exactly_once(
        backend: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    only(backend, "postgresql")
    with SendGridServer(KEY, delay=0.5) as server:  # slow: the kill lands mid-send
        settings, emails, env = three_thousand_on_sendgrid(workdir, server)
        done, victim, held = run_three_workers_and_kill_one(workdir, settings, env,
                                                             lambda: server.stats()["requests"])
        assert victim, f"no worker was killed mid-send: {done.stdout}{done.stderr}"
        assert held > 0
        assert "was killed by SIGKILL" in done.stderr and done.returncode == 1
        # the survivors finished the issue: the killed worker's batches were re-queued (never posted) or
        # cancelled at SendGrid and re-queued (posted, scheduled), so nobody is unknown and nobody twice
        assert Counter(server.recipients()) == Counter(emails), "every reader exactly once"
        with session_factory(settings.database_url)() as s:
            issue = s.scalar(select(IssueRow))
            assert counts(s, issue.id) == {"submitted": 3000}
            assert issue.status == "sent"
            assert s.scalar(select(Lock).where(Lock.name.startswith("send:"))) is None
        senders = Counter(r.batch_id for r in server.received)
        assert len(senders) >= 3000 // 50
    print(f"killed worker {victim} holding {held} claimed reader(s); cancelled batches: "
          f"{sum(1 for v in server.scheduled.values() if v == 'cancel')}")


@pytest.mark.slow
def test_sigterm_to_the_parent_alone_stops_every_worker_and_the_next_send_gives_each_reader_one_copy(
        backend: str, workdir: Path) -> None:
    only(backend, "postgresql")
    with SendGridServer(KEY, delay=0.5) as server:  # slow: the stop lands mid-send
        settings, emails, env = three_thousand_on_sendgrid(workdir, server)
        proc = subprocess.Popen([sys.executable, "-m", "digest", "send", "--workers", "3"], cwd=workdir, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        children: set[int] = set()
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and not children:
            live = {w: pid for w, pid in workers_of(settings).items() if pid != proc.pid}
            holding = Counter(worker for _e, status, worker, _p in rows(settings) if status == "claimed" and worker)
            if len(live) == 2 and all(holding[w] for w in live) and server.stats()["requests"] >= 2:
                children = set(live.values())
            time.sleep(0.02)
        assert children, "the two other workers never held claimed readers at once"
        proc.send_signal(signal.SIGTERM)  # the parent alone, as `kill <pid>` does (systemd signals the group)
        out, errs = proc.communicate(timeout=120)
        assert proc.returncode == 143, f"{out}{errs}"
        for pid in children:  # both other workers were told, and stopped the same way
            assert f"worker {pid} stopped by SIGTERM" in errs, errs
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        ledger = Counter(status for _e, status, _w, _p in rows(settings))
        assert ledger.get("claimed", 0) == 0, "nothing of unknown fate: every request in flight was answered"
        assert 0 < ledger["submitted"] < 3000, f"stopped midway: {ledger}"
        again = subprocess.run([sys.executable, "-m", "digest", "send"], cwd=workdir, env=env, capture_output=True,
                               text=True, timeout=180)
        assert again.returncode == 0, again.stderr
        assert Counter(server.recipients()) == Counter(emails), "every reader exactly once"
        with session_factory(settings.database_url)() as s:
            assert counts(s, s.scalar(select(IssueRow.id))) == {"submitted": 3000}


@pytest.mark.slow
def test_three_smtp_workers_one_killed_mid_send_nobody_twice_and_the_rest_recorded(
        backend: str, workdir: Path) -> None:
    only(backend, "postgresql")
    with SMTPServer(Recorder(delay_seconds=0.02)) as server:
        set_keys(workdir, "delivery", transport="smtp", allow_http_public_url=True, lease_seconds=3)
        set_keys(workdir, "delivery.smtp", host="127.0.0.1", port=server.port, security="none",
                 timeout_seconds=10.0)
        settings = load_settings(workdir / "digest.toml")
        migrate(settings.database_url)
        emails = seed_readers(settings, 300)
        env = {**os.environ, "DIGEST_SECRET_KEY": SECRET, "COLUMNS": "250"}
        done, victim, held = run_three_workers_and_kill_one(workdir, settings, env,
                                                             lambda: len(server.recorder.received))
        got = Counter(server.recorder.recipients())
    assert victim and held > 0, f"no worker was killed mid-send: {done.stdout}{done.stderr}"
    assert "was killed by SIGKILL" in done.stderr
    ledger = rows(settings)
    by_status: dict[str, set[str]] = {}
    for email, status, _w, _p in ledger:
        by_status.setdefault(status, set()).add(email)
    assert max(got.values()) == 1, "nobody got the issue twice"
    assert by_status["submitted"] <= set(got), "every submitted reader got it"
    unknown = by_status.get("claimed", set())
    assert len(unknown) <= 1, "SMTP sends one message per claim: at most the one in flight is unknown"
    assert by_status["submitted"] | unknown == set(emails), "everyone else was sent: nobody skipped"
    assert set(got) - by_status["submitted"] <= unknown, "a copy not recorded is shown as unknown, not lost"
    assert all(w is None for _e, st, w, _p in ledger if st == "claimed"), "unknown rows belong to no worker"


# -- the lease rules, step by step (both databases) ----------------------------------------------------


@pytest.fixture
def ready(workdir: Path) -> Settings:
    set_keys(workdir, "delivery", lease_seconds=2)
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    seed_readers(settings, 30)
    with session_factory(settings.database_url)() as s:
        issue = build_draft(settings, s).row
        start_sending(s, issue)
        snapshot(s, issue, 1)
        s.commit()
    return settings


def test_a_worker_on_another_host_is_taken_over_after_its_lease_posted_unknown_unposted_queued(
        ready: Settings) -> None:
    lease = timedelta(seconds=2)
    with session_factory(ready.database_url)() as s:
        issue = s.scalar(select(IssueRow))
        a = claim(s, issue.id, 1, 10, worker="farworker", lease=lease)
        b = claim(s, issue.id, 1, 10, worker="farworker", lease=lease)
        assert a and b and post(s, a.batch, "farworker", 10)  # a's request went out; b never did
        now = utcnow()
        s.add(Lock(name=f"send:{issue.id}:farworker", owner="another-host:4242", acquired_at=now, heartbeat_at=now))
        s.commit()
        assert reap(s, issue.id) == (0, 0), "a live lease is never taken over"
        assert send_workers(s, issue.id, lease)[1] == []
        s.execute(update(Delivery).values(lease_until=now - timedelta(seconds=1)))  # the lease ran out
        s.commit()
        assert reap(s, issue.id) == (10, 10)
        assert counts(s, issue.id) == {"queued": 20, "claimed": 10}
        # the dead worker wakes up: its lease is gone, so its batch b does not go out
        assert not post(s, b.batch, "farworker", 10)


def test_sqlite_refuses_a_second_sender_and_several_workers_with_one_line(
        backend: str, ready: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    only(backend, "sqlite")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with session_factory(ready.database_url)() as s:
            issue = s.scalar(select(IssueRow))
            now = utcnow()
            s.add(Lock(name=f"send:{issue.id}:w1", owner=f"{socket.gethostname()}:{holder.pid}", acquired_at=now,
                       heartbeat_at=now))
            s.commit()
        monkeypatch.chdir(ready.path.parent)
        code, out = run_main(monkeypatch, capsys, "send")
        assert code == 2
        assert out.strip().count("\n") == 0 and f":{holder.pid}" in out and "SQLite allows one sender" in out
        code, out = run_main(monkeypatch, capsys, "send", "--workers", "3")
        assert code == 2 and out.strip().count("\n") == 0
        assert "--workers 3: SQLite allows one sender per issue" in out
    finally:
        holder.kill()
        holder.wait()


def test_on_postgresql_a_second_worker_joins_instead_of_being_refused(backend: str, ready: Settings) -> None:
    only(backend, "postgresql")
    with session_factory(ready.database_url)() as s:
        issue = s.scalar(select(IssueRow))
        first = join_send(s, issue.id, issue.number)
        second = join_send(s, issue.id, issue.number)
        alive, dead = send_workers(s, issue.id)
        assert {w.id for w in alive} == {first, second} and not dead
        a = claim(s, issue.id, 1, 20, worker=first)
        b = claim(s, issue.id, 1, 20, worker=second)
        assert a and b and not {r.delivery_id for r in a.readers} & {r.delivery_id for r in b.readers}
        assert len(a.readers) + len(b.readers) == 30
