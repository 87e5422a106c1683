"""One reader's bad data never stops a send, and names are cleaned at every door (issue 13, point 5);
`confirm-pending` records each confirmation before the next, so a crash never re-sends one (point 6)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from digest import confirmations
from digest.config import Settings
from digest.deliver.protocol import Message, Outcome
from digest.deliver.smtp import SMTPTransport
from digest.issues import send
from digest.store import Delivery, session_factory, session_scope
from subscribers import lifecycle
from subscribers.csv_import import import_csv
from subscribers.models import Membership, Subscriber
from subscribers.names import InvalidName, checked_name, clean_name
from tests.fakes.readers import seed_readers
from tests.fakes.smtp_server import SMTPServer
from tests.test_deliver_sendgrid import sg  # noqa: F401 (fixture)
from tests.test_deliver_smtp import ledger, smtp_settings
from tests.test_web_support import app_fixture, client_fixture, csrf, messages  # noqa: F401 (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BROKEN = "Ann\nBcc: victim@example.com"  # what a multi-line CSV cell or a hand-made POST can carry


def _break_name(settings: Settings, email: str) -> None:
    """A reader stored before names were cleaned (straight into the table, as an old import did)."""
    with session_scope(settings.database_url) as s:
        s.execute(update(Subscriber).where(Subscriber.email == email).values(name=BROKEN))


def _failed(settings: Settings) -> dict[str, str]:
    with session_factory(settings.database_url)() as s:
        return {d.email: d.error or "" for d in s.scalars(select(Delivery).where(Delivery.status == "failed"))}


def test_names_lose_line_breaks_and_control_characters() -> None:
    assert clean_name(" Ann\r\nSmith\t ") == "Ann Smith"
    assert clean_name("A\x00B\x1bC\u2028D") == "A B C D"
    assert clean_name("Zo\u200dë  Ng") == "Zo\u200dë Ng"  # a joiner some scripts need stays
    assert checked_name("x" * 255) == "x" * 255
    with pytest.raises(InvalidName, match="256 characters"):
        checked_name("x" * 256)


def test_on_the_outbox_a_reader_whose_message_cannot_be_built_fails_alone(workdir: Path,
                                                                          settings: Settings) -> None:
    emails = seed_readers(settings, 5)
    _break_name(settings, emails[2])
    outcome = send(settings)
    assert outcome.report is not None and (outcome.report.submitted, outcome.report.failed) == (4, 1)
    failed = _failed(settings)
    assert list(failed) == [emails[2]] and "could not build this reader's message" in failed[emails[2]]
    sent = {p.name.split("-", 3)[3].removesuffix(".eml") for p in (workdir / "outbox").glob("*.eml")}
    assert sent == set(emails) - {emails[2]}
    assert ledger(settings) == {"submitted": 4, "failed": 1}
    assert any("could not build" in e for e in outcome.report.errors), "the reason is shown"


@pytest.mark.slow
def test_over_smtp_a_reader_whose_message_cannot_be_built_fails_alone(workdir: Path) -> None:
    with SMTPServer() as smtp:
        settings = smtp_settings(workdir, smtp.port)
        emails = seed_readers(settings, 5)
        _break_name(settings, emails[0])
        outcome = send(settings, transport=SMTPTransport(settings, backoff=0.01))
        again = send(settings, transport=SMTPTransport(settings, backoff=0.01))
        rec = smtp.recorder
    assert outcome.report is not None and (outcome.report.submitted, outcome.report.failed) == (4, 1)
    assert again.report is None or again.report.submitted == 0  # the issue is done: a rerun sends nobody
    assert Counter(rec.recipients()) == Counter(emails[1:]), "everyone else once; nobody before them again"
    assert list(_failed(settings)) == [emails[0]]
    assert all("Bcc" not in r.data.decode() for r in rec.received)


def test_csv_import_turns_a_multi_line_name_into_one_line(session: Session, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('email,name\nann@example.com,"Ann\nSmith"\nbob@example.com,"Bob\x00 Jones"\n', encoding="utf-8")
    report = import_csv(session, path)
    assert report.added == 2
    names = dict(session.execute(select(Subscriber.email, Subscriber.name)).tuples().all())
    assert names == {"ann@example.com": "Ann Smith", "bob@example.com": "Bob Jones"}


def test_subscribers_add_and_the_lifecycle_clean_or_refuse_a_name(session: Session, settings: Settings) -> None:
    assert confirmations.request(settings, session, "c@example.com", name="Cat\r\nLee", source="admin (cli)")
    assert lifecycle.find(session, "c@example.com").name == "Cat Lee"
    with pytest.raises(InvalidName):
        lifecycle.subscribe(session, "d@example.com", name="d" * 300, source="t")
    session.rollback()
    assert lifecycle.find(session, "d@example.com") is None


def test_subscribe_form_cleans_a_name_and_refuses_one_too_long_with_422(client: TestClient,
                                                                        settings: Settings) -> None:
    ok = client.post("/subscribe", data={"csrf_token": csrf(client), "email": "e@example.com",
                                         "name": "Eve\r\nBcc: x@example.com"})
    assert ok.status_code == 200 and "Check your inbox" in ok.text
    (msg,) = messages(settings, "e@example.com")
    assert msg["To"].addresses[0].display_name == "Eve Bcc: x@example.com" and msg["Bcc"] is None

    refused = client.post("/subscribe", data={"csrf_token": csrf(client), "email": "f@example.com",
                                              "name": "f" * 300})
    assert refused.status_code == 422 and "300 characters" in refused.text
    with session_scope(settings.database_url) as s:
        assert lifecycle.find(s, "f@example.com") is None, "nothing stored for refused input"
    assert messages(settings, "f@example.com") == []


# -- confirm-pending: each confirmation recorded before the next ---------------------------------------

class _CrashingSMTP(SMTPTransport):
    """The real SMTP transport that dies (a power cut, an OOM kill) before its fourth message."""

    batch_size = 20

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, backoff=0.01)
        self.count = 0

    def send(self, messages: list[Message]) -> list[Outcome]:
        out = []
        for m in messages:
            if self.count == 3:
                raise RuntimeError("power cut")
            out.append(self.send_one(m))
            self.count += 1
        return out


@pytest.mark.slow
def test_confirm_pending_after_a_crash_sends_nobody_a_second_confirmation(workdir: Path, tmp_path: Path) -> None:
    with SMTPServer() as smtp:
        settings = smtp_settings(workdir, smtp.port)
        rows = "".join(f"p{i}@example.com,P {i}\n" for i in range(8))
        (tmp_path / "in.csv").write_text("email,name\n" + rows)
        with session_factory(settings.database_url)() as session:
            assert import_csv(session, tmp_path / "in.csv").added == 8
            session.execute(update(Subscriber).where(Subscriber.email == "p5@example.com").values(name=BROKEN))
            session.commit()
            with pytest.raises(RuntimeError, match="power cut"):
                confirmations.send_pending(settings, session, transport=_CrashingSMTP(settings))
        assert len(smtp.recorder.received) == 3
        with session_factory(settings.database_url)() as session:
            recorded = session.scalar(select(func.count()).select_from(Membership)
                                      .where(Membership.confirm_sent_at.is_not(None)))
            assert recorded == 3, "each confirmation that went out was recorded before the next"
            report = confirmations.send_pending(settings, session, transport=SMTPTransport(settings, backoff=0.01))
        assert (report.sent, report.failed) == (4, 1) and "p5@example.com" in report.errors[0]
        got = smtp.recorder.recipients()
    assert Counter(got) == Counter(f"p{i}@example.com" for i in range(8) if i != 5), "nobody twice"


def test_over_sendgrid_one_readers_bad_data_never_stops_the_request(sg: Settings) -> None:  # noqa: F811
    emails = seed_readers(sg, 5)
    _break_name(sg, emails[1])
    with session_scope(sg.database_url) as s:  # an address SendGrid's v3 API cannot take (SMTPUTF8)
        s.execute(update(Subscriber).where(Subscriber.email == emails[3]).values(email="jösé@example.com"))
        s.execute(update(Delivery).where(Delivery.email == emails[3]).values(email="jösé@example.com"))
    outcome = send(sg)
    assert outcome.report is not None and (outcome.report.submitted, outcome.report.failed) == (4, 1)
    assert list(_failed(sg)) == ["jösé@example.com"]
    assert ledger(sg) == {"submitted": 4, "failed": 1}
