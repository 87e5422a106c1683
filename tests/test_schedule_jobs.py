"""What the scheduled jobs do, run with explicit moments: draft + notice, send, hold, skip, missed runs.

Real SQLite, the real outbox transport: readers' copies and the editors' notices are .eml files.
"""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

from digest import issues
from digest.config import Settings, load_settings
from digest.demo import write_sample_feed
from digest.schedule.jobs import report_missed, run_draft, run_send
from digest.store import Delivery, IssueRow, session_factory, session_scope
from subscribers import lifecycle
from tests.conftest import edit_config

#: the send of Monday 8 April 2024, 07:00 in Sydney (AEST, the day after daylight saving ended)
SEND_AT = datetime(2024, 4, 7, 21, 0, tzinfo=UTC)
DRAFT_AT = SEND_AT - timedelta(hours=24)
EDITOR = "editor@news.example.com"
READERS = ("ann@example.com", "bob@example.com", "cy@example.com")


def fresh_feed(workdir: Path, now: datetime) -> None:
    """The sample feed with items dated in the two weeks before `now` (the fake clock)."""
    write_sample_feed(workdir / "sample" / "feed.xml", now=now - timedelta(hours=1))


def subscribe(settings: Settings, *emails: str) -> None:
    with session_factory(settings.database_url)() as s:
        for i, address in enumerate(emails):
            lifecycle.subscribe(s, address, name=f"Reader {i}", source="test", confirmed=True)
        s.commit()


def emls(workdir: Path) -> list[EmailMessage]:
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in sorted((workdir / "outbox").glob("*.eml"))]


def reader_copies(workdir: Path) -> list[EmailMessage]:
    return [m for m in emls(workdir) if m["To"].addresses[0].addr_spec != EDITOR]


def notices(workdir: Path) -> list[EmailMessage]:
    return [m for m in emls(workdir) if m["To"].addresses[0].addr_spec == EDITOR]


def text_of(message: EmailMessage) -> str:
    return message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def issue_row(settings: Settings, number: int = 1) -> IssueRow:
    with session_factory(settings.database_url)() as s:
        row = s.scalar(select(IssueRow).where(IssueRow.number == number))
        assert row is not None
        return row


def deliveries(settings: Settings) -> int:
    with session_factory(settings.database_url)() as s:
        return s.scalar(select(func.count()).select_from(Delivery)) or 0


def reconfigure(workdir: Path, old: str, new: str) -> Settings:
    edit_config(workdir, old, new)
    return load_settings(workdir / "digest.toml")


@pytest.fixture
def week(settings: Settings, workdir: Path) -> Settings:
    """Three readers and a feed as it is at draft time of the week of 8 April 2024; links not checked."""
    fresh_feed(workdir, DRAFT_AT)
    subscribe(settings, *READERS)
    return reconfigure(workdir, 'if_not_approved = "hold"', 'if_not_approved = "hold"\ncheck_links = false')


def test_the_draft_job_builds_the_draft_and_emails_the_editors_a_summary(week: Settings, workdir: Path) -> None:
    result = run_draft(week, send_at=SEND_AT, now=DRAFT_AT)
    assert result.action == "drafted" and result.number == 1 and not result.problems
    row = issue_row(week)
    assert row.status == "draft" and row.send_at == SEND_AT
    assert not reader_copies(workdir), "a draft sends nothing to readers"
    [notice] = notices(workdir)
    assert "Issue 1 is ready for review" in notice["Subject"]
    assert "Mon 08 Apr 2024 07:00 AEST" in notice["Subject"]
    assert "List-Unsubscribe" not in notice, "editors are not readers"
    text = text_of(notice)
    assert "http://127.0.0.1:8000/admin/draft" in text
    assert "Articles: 8 + 6 headlines" in text and "Listings: 3" in text and "KB (Gmail clips at 102 KB)" in text
    assert "OK   size" in text and "sections" in text, "the checks are in the notice"
    assert "2024-04-07 21:00 UTC" in text
    assert "if_not_approved = hold" in text and "digest approve 1" in text
    html = notice.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert html.lstrip().lower().startswith("<!doctype html") and "/admin/draft" in html


def test_an_approved_draft_is_sent_at_the_send_moment_once(week: Settings, workdir: Path) -> None:
    run_draft(week, send_at=SEND_AT, now=DRAFT_AT)
    with session_scope(week.database_url) as s:
        issues.approve(s, by="editor")
    result = run_send(week, send_at=SEND_AT, now=SEND_AT + timedelta(seconds=1))
    assert result.action == "sent" and result.report is not None and result.report.submitted == 3
    assert sorted(m["To"].addresses[0].addr_spec for m in reader_copies(workdir)) == sorted(READERS)
    assert issue_row(week).status == "sent"
    # the job run again for the same moment (or a restart re-running it) sends nothing twice
    again = run_send(week, send_at=SEND_AT, now=SEND_AT + timedelta(minutes=5))
    assert again.action == "nothing" and "already sent" in again.message
    assert len(reader_copies(workdir)) == 3 and deliveries(week) == 3


def test_an_unapproved_draft_is_held_and_the_editors_told(week: Settings, workdir: Path) -> None:
    run_draft(week, send_at=SEND_AT, now=DRAFT_AT)
    result = run_send(week, send_at=SEND_AT, now=SEND_AT)
    assert result.action == "held"
    row = issue_row(week)
    assert row.status == "held" and "not approved by the send time" in row.note
    assert not reader_copies(workdir) and deliveries(week) == 0
    [notice] = notices(workdir)
    assert "Issue 1 was held, not sent" in notice["Subject"]
    # a held issue is not sent by hand either, until an editor approves it
    assert issues.send(week).report is None and issue_row(week).status == "held"
    with session_scope(week.database_url) as s:
        issues.approve(s, 1, by="editor")
    outcome = issues.send(week)
    assert outcome.report is not None and outcome.report.submitted == 3
    assert "held -> approved by editor" in issue_row(week).note


def test_if_not_approved_send_sends_the_draft_as_it_is(week: Settings, workdir: Path) -> None:
    settings = reconfigure(workdir, 'if_not_approved = "hold"', 'if_not_approved = "send"')
    run_draft(settings, send_at=SEND_AT, now=DRAFT_AT)
    result = run_send(settings, send_at=SEND_AT, now=SEND_AT)
    assert result.action == "sent" and result.report is not None and result.report.submitted == 3
    assert issue_row(settings).approved_by == "the schedule (if_not_approved = send)"


@pytest.mark.parametrize("when_empty, status", [("skip", "skipped"), ("hold", "held")])
def test_too_few_new_articles_applies_when_empty(week: Settings, workdir: Path, when_empty: str,
                                                 status: str) -> None:
    # 14 new articles in the draft (8 + 6 headlines), so min_articles = 15 makes it "empty"
    reconfigure(workdir, "min_articles = 1", "min_articles = 15")
    settings = reconfigure(workdir, 'when_empty = "skip"', f'when_empty = "{when_empty}"')
    settings = reconfigure(workdir, 'if_not_approved = "hold"', 'if_not_approved = "send"')
    run_draft(settings, send_at=SEND_AT, now=DRAFT_AT)
    assert "fewer than min_articles = 15" in text_of(notices(workdir)[0])
    result = run_send(settings, send_at=SEND_AT, now=SEND_AT)
    assert result.action == status
    row = issue_row(settings)
    assert row.status == status and "14 new articles, fewer than min_articles = 15" in row.note
    assert not reader_copies(workdir)
    assert run_send(settings, send_at=SEND_AT, now=SEND_AT + timedelta(minutes=1)).action == "nothing"
    # next week's draft reuses the number: readers never see a gap
    fresh_feed(workdir, DRAFT_AT + timedelta(days=7))
    nxt = run_draft(settings, send_at=SEND_AT + timedelta(days=7), now=DRAFT_AT + timedelta(days=7))
    assert nxt.number == 1 and issue_row(settings).status == "draft"
    assert issue_row(settings).send_at == SEND_AT + timedelta(days=7)


def test_when_empty_send_and_an_editors_approval_both_send_a_small_issue(week: Settings, workdir: Path) -> None:
    settings = reconfigure(workdir, "min_articles = 1", "min_articles = 15")
    run_draft(settings, send_at=SEND_AT, now=DRAFT_AT)
    with session_scope(settings.database_url) as s:
        issues.approve(s, by="editor")  # an editor's approval wins over when_empty
    assert run_send(settings, send_at=SEND_AT, now=SEND_AT).action == "sent"

    nxt_send, nxt_draft = SEND_AT + timedelta(days=7), DRAFT_AT + timedelta(days=7)
    fresh_feed(workdir, nxt_draft)
    settings = reconfigure(workdir, 'when_empty = "skip"', 'when_empty = "send"')
    settings = reconfigure(workdir, 'if_not_approved = "hold"', 'if_not_approved = "send"')
    run_draft(settings, send_at=nxt_send, now=nxt_draft)
    result = run_send(settings, send_at=nxt_send, now=nxt_send)
    assert result.action == "sent" and result.number == 2


def test_no_draft_at_send_time_builds_one_and_holds_it(week: Settings, workdir: Path) -> None:
    result = run_send(week, send_at=SEND_AT, now=SEND_AT)
    assert result.action == "held"
    row = issue_row(week)
    assert row.status == "held" and "no draft had been built" in row.note and row.send_at == SEND_AT
    assert not reader_copies(workdir)


def test_an_approval_for_an_earlier_send_does_not_carry_over(week: Settings, workdir: Path) -> None:
    run_draft(week, send_at=SEND_AT - timedelta(days=7), now=DRAFT_AT - timedelta(days=7))
    with session_scope(week.database_url) as s:
        issues.approve(s, by="editor")
    # the send of that week was missed; the next week's send finds the old approval stale
    result = run_send(week, send_at=SEND_AT, now=SEND_AT)
    assert result.action == "held" and not reader_copies(workdir)
    row = issue_row(week)
    assert "approved -> draft: rebuilt" in row.note and "the one there was for an earlier send" in row.note


def test_an_issue_sent_by_hand_in_the_review_window_is_not_sent_again(week: Settings, workdir: Path) -> None:
    settings = reconfigure(workdir, 'if_not_approved = "hold"', 'if_not_approved = "send"')
    run_draft(settings, send_at=SEND_AT, now=DRAFT_AT)
    assert issues.send(settings, now=DRAFT_AT + timedelta(hours=2)).report is not None
    result = run_send(settings, send_at=SEND_AT, now=SEND_AT)
    assert result.action == "nothing" and "already sent" in result.message
    assert len(reader_copies(workdir)) == 3
    with session_factory(settings.database_url)() as s:
        assert s.scalar(select(func.count()).select_from(IssueRow)) == 1


def test_a_draft_job_leaves_an_issue_approved_for_its_send_alone(week: Settings, workdir: Path) -> None:
    run_draft(week, send_at=SEND_AT, now=DRAFT_AT)
    with session_scope(week.database_url) as s:
        issues.approve(s, by="editor")
    again = run_draft(week, send_at=SEND_AT, now=DRAFT_AT + timedelta(minutes=30))
    assert again.action == "nothing" and issue_row(week).status == "approved"


def test_a_missed_send_is_reported_not_done(week: Settings, workdir: Path) -> None:
    run_draft(week, send_at=SEND_AT, now=DRAFT_AT)
    with session_scope(week.database_url) as s:
        issues.approve(s, by="editor")
    result = report_missed(week, job_id="digest-send", scheduled_at=SEND_AT, now=SEND_AT + timedelta(hours=3))
    assert result.action == "missed" and result.number == 1
    row = issue_row(week)
    assert row.status == "approved" and "missed by 3.0 h" in row.note
    assert not reader_copies(workdir) and deliveries(week) == 0
    [notice] = notices(workdir)
    assert "was missed" in notice["Subject"]
    text = " ".join(text_of(notice).split())
    assert "Nothing was sent." in text and "digest send" in text


def test_a_failing_notice_transport_is_reported_not_fatal(week: Settings, workdir: Path) -> None:
    (workdir / "blocked").write_text("a file where the outbox folder should be")
    settings = reconfigure(workdir, 'outbox_dir = "outbox"', 'outbox_dir = "blocked/outbox"')
    result = run_draft(settings, send_at=SEND_AT, now=DRAFT_AT)
    assert result.action == "drafted" and issue_row(settings).status == "draft"
    assert result.problems and "notice not sent" in result.problems[0]
    assert "editors notified" not in result.message


def test_a_failing_job_is_reported_to_the_editors(week: Settings, workdir: Path) -> None:
    from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent

    from digest.errors import DeliveryError
    from digest.schedule.jobs import SEND_JOB
    from digest.schedule.runner import _on_error

    _on_error(week, JobExecutionEvent(EVENT_JOB_ERROR, SEND_JOB, "default", SEND_AT,
                                      exception=DeliveryError("SendGrid refused the API key")))
    [notice] = notices(workdir)
    assert "The scheduled send of Mon 08 Apr 2024 07:00 AEST failed" in notice["Subject"]
    text = " ".join(text_of(notice).split())
    assert "DeliveryError: SendGrid refused the API key" in text and "never sent to twice" in text


def test_a_job_does_nothing_unless_its_scheduler_holds_the_lock(settings: Settings, workdir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from digest.locks import SchedulerLock
    from digest.schedule import runner
    from digest.schedule.runner import draft_job

    lock = SchedulerLock(settings.database_url, owner="this-process")
    SchedulerLock(settings.database_url, owner="another-host:1").acquire()
    monkeypatch.setattr(runner, "_lock", lock)
    draft_job(str(settings.path))
    with session_factory(settings.database_url)() as s:
        assert s.scalar(select(func.count()).select_from(IssueRow)) == 0, "a scheduler without the lock acted"
    SchedulerLock(settings.database_url, owner="another-host:1").release()
    lock.acquire()
    draft_job(str(settings.path))
    assert issue_row(settings).status == "draft"
    assert notices(workdir), "the editors were told"
