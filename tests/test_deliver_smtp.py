"""The SMTP transport against a real SMTP server (aiosmtpd) started here."""

from __future__ import annotations

import socket
import ssl
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from digest.config import Settings, load_settings
from digest.deliver.ledger import counts
from digest.deliver.smtp import Pacer, SMTPTransport
from digest.errors import DeliveryError
from digest.issues import send
from digest.store import Delivery, IssueRow, migrate, session_factory
from tests.conftest import run_cli
from tests.fakes.readers import seed_readers, set_keys
from tests.fakes.smtp_server import Recorder, SMTPServer, self_signed


def smtp_settings(workdir: Path, port: int, *, security: str = "none", username: str = "",
                  rate: float = 0) -> Settings:
    set_keys(workdir, "delivery", transport="smtp", allow_http_public_url=True)  # a local test setup
    set_keys(workdir, "delivery.smtp", host="127.0.0.1", port=port, security=security, username=username,
             max_per_second=float(rate), timeout_seconds=10.0)
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    return settings


def quick(settings: Settings, **kwargs: object) -> SMTPTransport:
    """The transport with short retry waits (the waits themselves are checked in the pacing test)."""
    return SMTPTransport(settings, backoff=0.01, **kwargs)  # type: ignore[arg-type]


def ledger(settings: Settings) -> dict[str, int]:
    with session_factory(settings.database_url)() as s:
        return counts(s, s.scalar(select(IssueRow.id)))


def test_one_connection_carries_every_readers_full_message(workdir: Path) -> None:
    with SMTPServer() as server:
        settings = smtp_settings(workdir, server.port)
        emails = seed_readers(settings, 45)
        outcome = send(settings, transport=quick(settings))
        rec = server.recorder
    assert outcome.report is not None and outcome.report.submitted == 45 and outcome.report.ok
    assert rec.connections == 1, "one connection reused for every batch"
    assert Counter(rec.recipients()) == Counter(emails)
    with session_factory(settings.database_url)() as s:
        ids = {d.email: d.message_id for d in s.scalars(select(Delivery))}
    for received in rec.received:
        msg = received.message
        (to,) = received.rcpt_tos
        assert received.mail_from == "digest@news.example.com"
        assert msg["To"].addresses[0].addr_spec == to
        assert msg["Message-ID"] == ids[to]
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        text, html = (p.get_content() for p in msg.iter_parts())
        name = f"Reader {to.removeprefix('reader').split('@')[0]}"
        assert f"Hi {name}," in text and f"Hi {name}," in html
        assert "%%" not in text and "%%" not in html
        unsub = msg["List-Unsubscribe"].split("<")[1].split(">")[0]
        assert unsub in html and msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert ledger(settings) == {"submitted": 45}


def test_a_refused_recipient_fails_alone_and_a_deferred_one_is_tried_again(workdir: Path) -> None:
    rec = Recorder(refuse={"reader3@example.com"}, defer_once={"reader5@example.com"})
    with SMTPServer(rec) as server:
        settings = smtp_settings(workdir, server.port)
        emails = seed_readers(settings, 8)
        outcome = send(settings, transport=quick(settings))
    assert outcome.report is not None and (outcome.report.submitted, outcome.report.failed) == (7, 1)
    assert not outcome.report.ok
    assert any("550" in e and "User unknown" in e for e in outcome.report.errors), outcome.report.errors
    assert Counter(rec.recipients()) == Counter(e for e in emails if e != "reader3@example.com")
    assert rec.rcpt_attempts.count("reader5@example.com") == 2
    with session_factory(settings.database_url)() as s:
        failed = s.scalars(select(Delivery).where(Delivery.status == "failed")).all()
    assert [d.email for d in failed] == ["reader3@example.com"] and "550" in failed[0].error



@pytest.mark.slow  # the real command in a subprocess
def test_failed_readers_can_be_queued_again_once_the_cause_is_fixed(workdir: Path) -> None:
    rec = Recorder(refuse={"reader2@example.com"})
    with SMTPServer(rec) as server:
        settings = smtp_settings(workdir, server.port)
        emails = seed_readers(settings, 4)
        send(settings, transport=quick(settings))
        with session_factory(settings.database_url)() as s:
            assert s.scalar(select(IssueRow)).status == "sent"
        rec.refuse.clear()  # the mailbox exists again
        result = run_cli("deliveries", "retry-failed", "1", cwd=workdir)
        assert result.returncode == 0 and "1 failed reader queued again" in result.stdout, result.stderr
        outcome = send(settings, transport=quick(settings))
    assert outcome.report is not None and outcome.report.submitted == 1 and outcome.report.already == 3
    assert Counter(rec.recipients()) == Counter(emails)
    assert ledger(settings) == {"submitted": 4}


def test_a_connection_dropped_mid_batch_is_reopened_and_nobody_is_missed_or_doubled(workdir: Path) -> None:
    rec = Recorder(drop_at={5, 23})
    with SMTPServer(rec) as server:
        settings = smtp_settings(workdir, server.port)
        emails = seed_readers(settings, 30)
        transport = quick(settings)
        outcome = send(settings, transport=transport)
    assert outcome.report is not None and outcome.report.submitted == 30 and outcome.report.ok
    assert transport.connections == 3 and rec.connections == 3
    assert Counter(rec.recipients()) == Counter(emails), "every reader exactly once"
    assert ledger(settings) == {"submitted": 30}


def test_starttls_and_login(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(workdir)
    trust = ssl.create_default_context(cafile=str(cert))
    with SMTPServer(tls=(cert, key), password=("digest", "s3cret-pass")) as server:
        settings = smtp_settings(workdir, server.port, security="starttls", username="digest")
        emails = seed_readers(settings, 4)
        monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "wrong")
        with pytest.raises(DeliveryError, match="refused the login of 'digest'"):
            send(settings, transport=quick(settings, ssl_context=trust))
        assert ledger(settings) == {"queued": 4}
        assert server.recorder.received == []
        monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "s3cret-pass")
        outcome = send(settings, transport=quick(settings, ssl_context=trust))
        assert outcome.report is not None and outcome.report.submitted == 4
        assert Counter(server.recorder.recipients()) == Counter(emails)
        # the system's CAs do not know our certificate: TLS fails, and says so
        with pytest.raises(DeliveryError, match="TLS with the SMTP server"):
            quick(settings)._open()


@pytest.mark.slow  # the real command in a subprocess
def test_missing_password_fails_in_one_line_before_anything_is_claimed(workdir: Path) -> None:
    settings = smtp_settings(workdir, 2525, security="starttls", username="digest")
    seed_readers(settings, 2)
    result = run_cli("send", cwd=workdir, env={"COLUMNS": "500"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DIGEST_SMTP_PASSWORD is not set" in lines[0], result.stderr
    with session_factory(settings.database_url)() as s:
        assert s.scalar(select(Delivery.id).limit(1)) is None


def test_an_unreachable_server_stops_the_send_and_requeues(workdir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = smtp_settings(workdir, port)
    seed_readers(settings, 3)
    with pytest.raises(DeliveryError, match=r"lost the SMTP server 127\.0\.0\.1:\d+ 4 times.*queued again"):
        send(settings, transport=quick(settings))
    assert ledger(settings) == {"queued": 3}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_pacer_spaces_messages_evenly() -> None:
    clock = FakeClock()
    pacer = Pacer(4, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        pacer.wait()
    assert clock.slept == [0.25, 0.25, 0.25, 0.25]
    clock.now += 10  # idle for a while: no burst allowance is built up beyond the next slot
    pacer.wait()
    pacer.wait()
    assert clock.slept[-1] == 0.25 and len(clock.slept) == 5
    unlimited = Pacer(0, clock=clock, sleep=clock.sleep)
    unlimited.wait()
    unlimited.wait()
    assert len(clock.slept) == 5


def test_the_rate_cap_applies_to_a_real_send(workdir: Path) -> None:
    clock = FakeClock()
    with SMTPServer() as server:
        settings = smtp_settings(workdir, server.port, rate=5)
        seed_readers(settings, 6)
        outcome = send(settings, transport=quick(settings, clock=clock, sleep=clock.sleep))
    assert outcome.report is not None and outcome.report.submitted == 6
    assert clock.slept == [pytest.approx(0.2)] * 5


def test_a_deferred_recipient_waits_the_jittered_backoff_before_its_next_try(workdir: Path) -> None:
    clock = FakeClock()
    rec = Recorder(defer_once={"reader2@example.com"}, drop_at={4})
    with SMTPServer(rec) as server:
        settings = smtp_settings(workdir, server.port)
        emails = seed_readers(settings, 4)
        transport = SMTPTransport(settings, backoff=0.5, clock=clock, sleep=clock.sleep)
        outcome = send(settings, transport=transport)
    assert outcome.report is not None and outcome.report.submitted == 4
    assert Counter(rec.recipients()) == Counter(emails)
    assert len(clock.slept) == 2, clock.slept  # one 450, one dropped connection: one wait each
    assert all(0.25 <= waited <= 0.5 for waited in clock.slept), clock.slept  # first wait: half to all of 0.5


def test_a_permanent_refusal_is_not_tried_again(workdir: Path) -> None:
    clock = FakeClock()
    rec = Recorder(refuse={"reader1@example.com"})
    with SMTPServer(rec) as server:
        settings = smtp_settings(workdir, server.port)
        seed_readers(settings, 2)
        outcome = send(settings, transport=SMTPTransport(settings, clock=clock, sleep=clock.sleep))
    assert outcome.report is not None and (outcome.report.submitted, outcome.report.failed) == (1, 1)
    assert rec.rcpt_attempts.count("reader1@example.com") == 1 and clock.slept == []


# -- the late final reply (RFC 5321 §4.5.3.2.6) -------------------------------------------------------

@pytest.mark.slow
def test_a_final_250_later_than_the_command_timeout_is_waited_for_and_one_copy_arrives(workdir: Path) -> None:
    rec = Recorder(hold_at={2}, hold_seconds=2.5)
    with SMTPServer(rec) as server:
        settings = smtp_settings(workdir, server.port)
        set_keys(workdir, "delivery.smtp", timeout_seconds=1.0)  # the reply after the dot has its own wait
        settings = load_settings(workdir / "digest.toml")
        assert settings.delivery.smtp.data_timeout_seconds == 600.0, "RFC 5321's 10 minutes by default"
        emails = seed_readers(settings, 3)
        transport = quick(settings)
        outcome = send(settings, transport=transport)
    assert outcome.report is not None and outcome.report.submitted == 3 and outcome.report.ok
    assert Counter(rec.recipients()) == Counter(emails), "every reader exactly once: no second copy"
    assert transport.connections == 1
    assert ledger(settings) == {"submitted": 3}


@pytest.mark.slow
def test_no_final_reply_within_the_data_timeout_is_unknown_for_that_message_alone(workdir: Path) -> None:
    import time

    rec = Recorder(hold_at={2}, hold_seconds=3.0)
    with SMTPServer(rec) as server:
        smtp_settings(workdir, server.port)
        set_keys(workdir, "delivery.smtp", timeout_seconds=5.0, data_timeout_seconds=1.0)
        settings = load_settings(workdir / "digest.toml")
        emails = seed_readers(settings, 4)
        outcome = send(settings, transport=quick(settings))
        assert outcome.report is not None
        assert (outcome.report.submitted, outcome.report.unknown, outcome.report.failed) == (3, 1, 0)
        assert ledger(settings) == {"submitted": 3, "claimed": 1}
        with session_factory(settings.database_url)() as s:
            left = s.scalars(select(Delivery).where(Delivery.status == "claimed")).one()
        assert left.email == emails[1] and "final dot" in (left.error or "")
        # a second run sends nobody again: the unknown one waits for `digest deliveries resolve`
        again = send(settings, transport=quick(settings))
        assert again.report is not None and again.report.submitted == 0 and again.report.unknown == 1
        time.sleep(2.5)  # the held 250 goes out to a closed connection; the server kept the message
    assert Counter(rec.recipients()) == Counter(emails), "the server took it once; nobody got two"
    assert ledger(settings) == {"submitted": 3, "claimed": 1}


@pytest.mark.slow
def test_a_connection_closed_right_after_the_final_dot_is_unknown_for_that_message_alone(workdir: Path) -> None:
    """The server took the 2nd message and closed without a reply: it may have it, so that one message is of
    unknown fate (never sent again without a decision), and the others go out on a new connection."""
    rec = Recorder(close_after_dot={2})
    with SMTPServer(rec) as server:
        settings = smtp_settings(workdir, server.port)
        emails = seed_readers(settings, 4)
        transport = quick(settings)
        outcome = send(settings, transport=transport)
        assert outcome.report is not None
        assert (outcome.report.submitted, outcome.report.unknown, outcome.report.failed) == (3, 1, 0)
        assert transport.connections == 2, "the next reader went out on a new connection"
        with session_factory(settings.database_url)() as s:
            left = s.scalars(select(Delivery).where(Delivery.status == "claimed")).one()
        assert left.email == emails[1] and "closed after the message's final dot" in (left.error or "")
        again = send(settings, transport=quick(settings))
        assert again.report is not None and again.report.submitted == 0 and again.report.unknown == 1
    assert Counter(rec.recipients()) == Counter(emails), "taken once, never sent a second time"
    assert ledger(settings) == {"submitted": 3, "claimed": 1}


@pytest.mark.slow  # ~40 s: the real hold of issue 13, with the default configuration
def test_a_server_holding_its_final_250_for_40_seconds_gets_one_copy_with_the_defaults(workdir: Path) -> None:
    rec = Recorder(hold_at={2}, hold_seconds=40.0)
    with SMTPServer(rec) as server:
        set_keys(workdir, "delivery", transport="smtp", allow_http_public_url=True)
        # where the test server is, and no TLS (it has none); the timeouts are the defaults
        set_keys(workdir, "delivery.smtp", host="127.0.0.1", port=server.port, security="none")
        settings = load_settings(workdir / "digest.toml")
        migrate(settings.database_url)
        assert settings.delivery.smtp.timeout_seconds < 40 <= settings.delivery.smtp.data_timeout_seconds
        emails = seed_readers(settings, 3)
        transport = quick(settings)
        outcome = send(settings, transport=transport)
    assert outcome.report is not None and outcome.report.submitted == 3 and outcome.report.ok
    assert Counter(rec.recipients()) == Counter(emails), "every reader exactly once: no second copy"
    assert transport.connections == 1 and rec.connections == 1
    assert ledger(settings) == {"submitted": 3}
