"""SIGTERM and SIGHUP stop a send as Ctrl-C does: nothing new goes out, the message in flight is answered
and recorded, the command exits 128 + the signal, and `digest send` resumes with nobody sent twice.
Against a real SMTP server (aiosmtpd) that is slow enough to be stopped midway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from digest import stopping
from digest.deliver.protocol import SendInterrupted
from digest.deliver.smtp import SMTPTransport
from digest.issues import send
from digest.store import Delivery, session_factory
from tests.conftest import SECRET, run_cli
from tests.fakes.readers import seed_readers
from tests.fakes.smtp_server import Recorder, SMTPServer
from tests.test_deliver_smtp import ledger, smtp_settings


def _wait_for(what: object, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _submitted(settings: object) -> set[str]:
    with session_factory(settings.database_url)() as s:  # type: ignore[attr-defined]
        return set(s.scalars(select(Delivery.email).where(Delivery.status == "submitted")))


def _stopped_midway_then_resumed(settings: object, workdir: Path, rec: Recorder, emails: list[str]) -> None:
    """After a stop: every message the server accepted (of the readers') is recorded as sent, nothing is of
    unknown fate, the rest are queued; then `digest send` gives every reader exactly one copy."""
    accepted = [r for r in rec.recipients() if r in emails]
    assert 5 <= len(accepted) < 30, "stopped midway"
    counts = ledger(settings)
    assert counts.get("claimed", 0) == 0, "nothing of unknown fate: the message in flight was answered"
    assert _submitted(settings) == set(accepted), "every message the server accepted is recorded as sent"
    assert counts == {"submitted": len(accepted), "queued": 30 - len(accepted)}
    again = run_cli("send", cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert Counter(r for r in rec.recipients() if r in emails) == Counter(emails), "every reader exactly once"
    assert ledger(settings) == {"submitted": 30}


@pytest.mark.slow
@pytest.mark.parametrize(("how", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_mid_send_records_every_accepted_message_and_send_resumes(
        workdir: Path, how: signal.Signals, code: int) -> None:
    rec = Recorder(delay_seconds=0.2)  # each 250 a little late: the signal lands while one is in flight
    with SMTPServer(rec) as server:
        settings = smtp_settings(workdir, server.port)
        emails = seed_readers(settings, 30)
        proc = subprocess.Popen([sys.executable, "-m", "digest", "send"], cwd=workdir, text=True,
                                env={**os.environ, "DIGEST_SECRET_KEY": SECRET},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _wait_for("five messages", lambda: len(rec.received) >= 5)
            proc.send_signal(how)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == code, (out, err)
        assert "Traceback" not in err and f"stopped by {how.name}" in " ".join(err.split())
        _stopped_midway_then_resumed(settings, workdir, rec, emails)
    assert Counter(rec.recipients()) == Counter(emails), "every reader exactly once, and nobody else"


@pytest.mark.slow
def test_a_stop_request_ends_a_send_running_in_another_thread_as_in_the_scheduler(workdir: Path) -> None:
    """`digest schedule` runs the send in a worker thread; its SIGTERM handler sets the same flag."""
    rec = Recorder(delay_seconds=0.1)
    with SMTPServer(rec) as server:
        settings = smtp_settings(workdir, server.port)
        seed_readers(settings, 25)
        raised: list[BaseException] = []

        def job() -> None:
            try:
                send(settings, transport=SMTPTransport(settings, backoff=0.01))
            except BaseException as e:
                raised.append(e)

        stopping.reset()
        worker = threading.Thread(target=job)
        worker.start()
        try:
            _wait_for("three messages", lambda: len(rec.received) >= 3)
            stopping.request(signal.SIGTERM)
            worker.join(timeout=60)
        finally:
            stopping.reset()
        assert not worker.is_alive()
        (error,) = raised
        assert isinstance(error, SendInterrupted) and error.report is not None
        accepted = rec.recipients()
        assert error.report.submitted == len(accepted) < 25 and error.report.unknown == 0
        assert _submitted(settings) == set(accepted)
        assert ledger(settings) == {"submitted": len(accepted), "queued": 25 - len(accepted)}


@pytest.mark.slow
def test_sigterm_stops_digest_schedule_mid_send_like_ctrl_c_and_the_next_send_finishes(workdir: Path) -> None:
    """`digest schedule` in a subprocess, its send job running: SIGTERM claims nothing more, the message in
    flight is answered and recorded, the scheduler exits 0 (docs/schedule.md), and `digest send` then
    sends each remaining reader once."""
    from datetime import UTC, datetime, timedelta

    import time_machine

    from digest import issues
    from digest.config import load_settings
    from digest.store import session_scope
    from tests.fakes.readers import set_keys
    from tests.test_schedule_scheduler import Running

    rec = Recorder(delay_seconds=0.2)
    with SMTPServer(rec) as server:
        settings = smtp_settings(workdir, server.port)
        moment = datetime.now(UTC).replace(second=0, microsecond=0)  # the send moment: the minute just begun
        local = moment.astimezone(settings.publication.tz)
        set_keys(workdir, "schedule", day_of_week=local.strftime("%a").lower(), hour=local.hour,
                 minute=local.minute)
        settings = load_settings(workdir / "digest.toml")
        emails = seed_readers(settings, 30)
        with session_scope(settings.database_url) as s:
            issues.build_draft(settings, s, send_at=moment)
            issues.approve(s, by="editor", allow_empty=True)
        with time_machine.travel(moment - timedelta(minutes=5), tick=True):  # a scheduler ran before the
            Running(settings).stop()  # moment and stopped: its stored send job is now due (within the grace)
        proc = subprocess.Popen([sys.executable, "-m", "digest", "schedule"], cwd=workdir, text=True,
                                env={**os.environ, "DIGEST_SECRET_KEY": SECRET, "COLUMNS": "250"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _wait_for("five messages", lambda: len(rec.received) >= 5 or proc.poll() is not None)
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, (out, err)
        assert "Traceback" not in err and "stopping" in out + err and "scheduler stopped" in out + err
        editors = set(rec.recipients()) - set(emails)
        assert editors == {"editor@news.example.com"}, "the editors are told"
        _stopped_midway_then_resumed(settings, workdir, rec, emails)
