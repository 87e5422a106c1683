"""Local morning delivery sent by the scheduler zone by zone (issue 15): the outbox transport (SMTP goes through
the same send loop), a controlled clock (time-machine), the scheduler's own job functions.

The send of Monday 7 October 2024, 07:00 in Sydney, the day after Sydney's daylight saving began: Auckland
(NZDT) is due first at 18:00 UTC on the Sunday, Sydney (AEDT) at 20:00, Brisbane (no DST) at 21:00 and Perth at
23:00. Each group goes out at its own moment and nobody before theirs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import select

from digest import issues
from digest.config import Settings, load_settings
from digest.deliver.zones import recall_waiting
from digest.errors import DeliveryError
from digest.issue_status import IssueStatus
from digest.moments import draft_trigger, fire_times, send_job_trigger, send_moment_of
from digest.schedule.jobs import run_send, schedule_zones
from digest.schedule.runner import draft_job, send_job
from digest.store import Delivery, session_factory, session_scope
from subscribers.models import Subscriber
from subscribers.zones import set_zone
from tests.fakes.readers import set_keys
from tests.test_schedule_jobs import fresh_feed, issue_row, notices, reader_copies, reconfigure, subscribe, text_of
from tests.test_web_support import app_fixture, client_fixture  # noqa: F401 (fixtures)

SYDNEY = ZoneInfo("Australia/Sydney")
MOMENT = datetime(2024, 10, 7, 7, 0, tzinfo=SYDNEY).astimezone(UTC)  # the publication's: 2024-10-06 20:00 UTC
DUE = {"Pacific/Auckland": datetime(2024, 10, 6, 18, 0, tzinfo=UTC),
       "Australia/Sydney": datetime(2024, 10, 6, 20, 0, tzinfo=UTC),
       "Australia/Brisbane": datetime(2024, 10, 6, 21, 0, tzinfo=UTC),
       "Australia/Perth": datetime(2024, 10, 6, 23, 0, tzinfo=UTC)}
READERS = {"kiri@example.com": "Pacific/Auckland", "aroha@example.com": "Pacific/Auckland",
           "syd@example.com": "Australia/Sydney", "home@example.com": None,  # no zone: the publication's
           "bris@example.com": "Australia/Brisbane", "pia@example.com": "Australia/Perth"}


@pytest.fixture
def local(settings: Settings, workdir: Path) -> Settings:
    fresh_feed(workdir, MOMENT - timedelta(days=1, hours=2))
    subscribe(settings, *READERS)
    with session_factory(settings.database_url)() as s:
        for sub in s.scalars(select(Subscriber)):
            set_zone(sub, READERS[sub.email])
        s.commit()
    set_keys(workdir, "schedule", local_delivery=True)
    return reconfigure(workdir, 'if_not_approved = "hold"', 'if_not_approved = "hold"\ncheck_links = false')


def sent_to(workdir: Path) -> set[str]:
    return {m["To"].addresses[0].addr_spec for m in reader_copies(workdir)}


def due(zone: str | None) -> datetime:
    return DUE[zone or "Australia/Sydney"]


def test_the_send_job_fires_at_each_zones_moment_and_the_draft_before_the_first(local: Settings) -> None:
    zones = schedule_zones(local)
    assert zones == tuple(sorted(DUE))
    after = MOMENT - timedelta(days=2)
    assert list(islice(fire_times(send_job_trigger(local, zones), after), 4)) == sorted(DUE.values())
    assert next(fire_times(draft_trigger(local, zones), after)) == DUE["Pacific/Auckland"] - timedelta(hours=24)
    for fire in DUE.values():
        assert send_moment_of(local, fire, zones) == MOMENT
    # daylight saving per zone: a week earlier Sydney was on standard time, an hour later in UTC than Auckland's
    # +2 h gap would say, and level with Brisbane
    week_before = list(islice(fire_times(send_job_trigger(local, zones), after - timedelta(days=7)), 4))
    assert week_before == [datetime(2024, 9, 29, 18, 0, tzinfo=UTC), datetime(2024, 9, 29, 21, 0, tzinfo=UTC),
                           datetime(2024, 9, 29, 23, 0, tzinfo=UTC), datetime(2024, 10, 6, 18, 0, tzinfo=UTC)]
    # SendGrid's scheduled batches: one pass, schedule_ahead_minutes + 30 min before the first zone's moment
    set_keys(local.path.parent, "delivery", transport="sendgrid")
    sendgrid = load_settings(local.path)
    lead = timedelta(minutes=15 + 30)
    assert list(islice(fire_times(send_job_trigger(sendgrid, zones), after), 2)) == \
        [DUE["Pacific/Auckland"] - lead, DUE["Pacific/Auckland"] + timedelta(days=7) - lead]
    assert send_moment_of(sendgrid, DUE["Pacific/Auckland"] - lead + lead, zones) == MOMENT


def test_each_zones_group_is_sent_at_its_moment_by_the_scheduler_jobs(local: Settings, workdir: Path) -> None:
    config = str(local.path)
    draft_at = DUE["Pacific/Auckland"] - timedelta(hours=24)
    with time_machine.travel(draft_at, tick=False):
        draft_job(config)
    row = issue_row(local)
    assert row.status == "draft" and row.send_at == MOMENT, "the draft is for the publication's moment"
    [notice] = notices(workdir)
    text = " ".join(text_of(notice).split())
    assert "the first readers (Pacific/Auckland, 2 readers) get it at Mon 07 Oct 2024 07:00 NZDT (2024-10-06 " \
           "18:00 UTC)" in text
    assert "the last (Australia/Perth, 1 reader) at Mon 07 Oct 2024 07:00 AWST (2024-10-06 23:00 UTC)" in text
    with session_scope(local.database_url) as s:
        issues.approve(s, by="editor")

    for zone_at in sorted(set(DUE.values())):
        with time_machine.travel(zone_at - timedelta(minutes=1), tick=False):
            send_job(config)  # a minute early (a job started by hand): nobody whose moment has not come
        assert sent_to(workdir) == {a for a, z in READERS.items() if due(z) < zone_at}
        with time_machine.travel(zone_at, tick=False):
            send_job(config)
        assert sent_to(workdir) == {a for a, z in READERS.items() if due(z) <= zone_at}, zone_at
    assert len(reader_copies(workdir)) == len(READERS), "each reader once"
    assert issue_row(local).status == "sent"
    with session_factory(local.database_url)() as s:
        rows = s.scalars(select(Delivery)).all()
    # each reader's copy was handed over at 07:00 on the Monday by their own clock
    for r in rows:
        zone = ZoneInfo(r.zone or "")
        assert r.zone == (READERS[r.email] or "Australia/Sydney")
        assert r.due_at == due(READERS[r.email]) == r.updated_at
        assert f"{r.updated_at.astimezone(zone):%a %H:%M}" == "Mon 07:00"


def test_a_recall_keeps_the_zones_not_yet_due_from_the_issue(local: Settings, workdir: Path) -> None:
    from digest.schedule.jobs import run_draft

    run_draft(local, send_at=MOMENT, now=DUE["Pacific/Auckland"] - timedelta(hours=24))
    with session_scope(local.database_url) as s:
        issues.approve(s, by="editor")
    auckland = DUE["Pacific/Auckland"]
    with time_machine.travel(auckland, tick=False):
        result = run_send(local, send_at=MOMENT, now=auckland)
    assert result.report is not None and result.report.submitted == 2 and result.report.waiting == 4
    assert "4 readers wait for their zone's moment (next Mon 07 Oct 2024 07:00 AEDT" in result.message
    with session_scope(local.database_url) as s:
        row = issues.get_issue(s, 1)
        report = recall_waiting(s, row, by="editor", now=auckland + timedelta(minutes=30))
        assert row.status == IssueStatus.RECALLED
    assert report.recalled == 4 and [z for z, _, _ in report.zones] == \
        ["Australia/Sydney", "Australia/Brisbane", "Australia/Perth"]
    assert "4 readers in 3 zones not yet due recalled" in report.lines()[0]
    for zone_at in (DUE["Australia/Sydney"], DUE["Australia/Perth"]):
        with time_machine.travel(zone_at, tick=False):
            later = run_send(local, send_at=MOMENT, now=zone_at)
        assert later.action == "nothing" and "recalled" in later.message
    assert sent_to(workdir) == {"kiri@example.com", "aroha@example.com"}, "nobody after the recall"
    with session_scope(local.database_url) as s, pytest.raises(DeliveryError, match="recalled"):
        recall_waiting(s, issues.get_issue(s, 1), by="editor")


def test_status_schedule_show_and_the_admin_page_give_progress_per_zone(
        local: Settings, workdir: Path, client, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
        capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from rich.console import Console

    from digest.cli.schedule import show
    from digest.schedule.jobs import run_draft
    from digest.store import DeliveryEvent
    from tests.conftest import run_main
    from tests.test_web_support import login

    out = io.StringIO()
    show(local, Console(file=out, width=200), now=MOMENT - timedelta(days=2))
    shown = out.getvalue()
    assert "local delivery: the next send in each reader's zone (readers), earliest first:" in shown
    lines = [line.strip() for line in shown.splitlines()]
    zone_lines = [line for line in lines if line.split(" ")[0] in DUE]
    assert zone_lines == ["Pacific/Auckland (2): Mon 07 Oct 2024 07:00 NZDT = 2024-10-06 18:00 UTC",
                          "Australia/Sydney (2): Mon 07 Oct 2024 07:00 AEDT = 2024-10-06 20:00 UTC",
                          "Australia/Brisbane (1): Mon 07 Oct 2024 07:00 AEST = 2024-10-06 21:00 UTC",
                          "Australia/Perth (1): Mon 07 Oct 2024 07:00 AWST = 2024-10-06 23:00 UTC"]
    assert "next draft: Sun 06 Oct 2024 05:00 AEDT = 2024-10-05 18:00 UTC" in lines, "24 h before Auckland's"
    assert "the review window closes at the first: Mon 07 Oct 2024 05:00 AEDT = 2024-10-06 18:00 UTC" in lines

    run_draft(local, send_at=MOMENT, now=DUE["Pacific/Auckland"] - timedelta(hours=24))
    with session_scope(local.database_url) as s:
        issues.approve(s, by="editor")
    with time_machine.travel(DUE["Pacific/Auckland"], tick=False):
        run_send(local, send_at=MOMENT, now=DUE["Pacific/Auckland"])
    with session_scope(local.database_url) as s:  # the provider says one Auckland copy arrived
        kiri = s.scalar(select(Delivery).where(Delivery.email == "kiri@example.com"))
        assert kiri is not None
        s.add(DeliveryEvent(provider_event_id="ev-1", issue_id=kiri.issue_id, subscriber_id=kiri.subscriber_id,
                            kind="delivered", at=DUE["Pacific/Auckland"] + timedelta(minutes=2), payload={}))

    monkeypatch.setenv("COLUMNS", "250")
    with time_machine.travel(DUE["Pacific/Auckland"] + timedelta(minutes=5), tick=False):
        code, text = run_main(monkeypatch, capsys, "status", "--config", str(local.path))
    assert code == 0, text
    assert "#1 by time zone (local delivery):" in text
    assert ("Pacific/Auckland: due Mon 07 Oct 07:00 NZDT = 2024-10-06 18:00 UTC; "
            "2 readers: 2 submitted, 0 scheduled; out 2024-10-06 18:00 UTC; delivered 1 (last 2024-10-06 18:02 UTC)"
            ) in text, text
    assert ("Australia/Perth: due Mon 07 Oct 07:00 AWST = 2024-10-06 23:00 UTC; 1 reader: 0 submitted, "
            "1 scheduled, 1 queued; delivered 0") in text, text

    login(client)
    page = client.get("/admin/issues")
    assert page.status_code == 200 and "Issue #1 by time zone" in page.text
    rows = page.text.split('<table class="figures zones">')[1].split("</table>")[0].split("<tr>")[2:]
    assert [r.split("</th>")[0].split(">")[-1] for r in rows] == list(DUE)
    assert "Mon 07 Oct 07:00 NZDT" in rows[0] and "Mon 07 Oct 07:00 AWST" in rows[3]


def test_the_admin_recalls_the_zones_not_yet_due_on_the_web(local: Settings, workdir: Path, client) -> None:  # type: ignore[no-untyped-def]
    from digest.schedule.jobs import run_draft
    from tests.test_web_support import csrf_from, login

    run_draft(local, send_at=MOMENT, now=DUE["Pacific/Auckland"] - timedelta(hours=24))
    with session_scope(local.database_url) as s:
        issues.approve(s, by="editor")
    with time_machine.travel(DUE["Australia/Sydney"], tick=False):  # Auckland and Sydney are due
        run_send(local, send_at=MOMENT, now=DUE["Australia/Sydney"])
    client.app.state.settings = local  # the app as configured for local delivery
    with time_machine.travel(DUE["Australia/Sydney"] + timedelta(minutes=10), tick=True):
        login(client)  # on the moved clock: a session signed in the future is not one
        page = client.get("/admin/issues/1/recall")
        assert page.status_code == 200
        waiting = page.text.split('<ul id="waiting-zones">')[1].split("</ul>")[0]
        assert "Australia/Brisbane: 1 reader(s), due 2024-10-06 21:00 UTC" in waiting
        assert "Australia/Perth: 1 reader(s), due 2024-10-06 23:00 UTC" in waiting and "Sydney" not in waiting
        done = client.post("/admin/issues/1/recall", data={"csrf_token": csrf_from(page.text), "confirm": "yes"})
    assert done.status_code == 200 and "2 readers in 2 zones not yet due recalled" in done.text
    assert issue_row(local).status == "recalled"
    with time_machine.travel(DUE["Australia/Perth"], tick=False):
        run_send(local, send_at=MOMENT, now=DUE["Australia/Perth"])
    assert sent_to(workdir) == {a for a, z in READERS.items() if due(z) <= DUE["Australia/Sydney"]}


@pytest.mark.slow
def test_the_real_scheduler_sends_each_zone_at_its_moment_and_keeps_its_zones_across_a_restart(
        local: Settings, workdir: Path) -> None:
    from digest.schedule.jobs import SEND_JOB, run_draft
    from digest.schedule.runner import build_scheduler, ensure_jobs, stored_jobs
    from tests.test_schedule_scheduler import Running, wait_for

    run_draft(local, send_at=MOMENT, now=DUE["Pacific/Auckland"] - timedelta(hours=24))
    with session_scope(local.database_url) as s:
        issues.approve(s, by="editor")
    kiwis = {a for a, z in READERS.items() if z == "Pacific/Auckland"}
    with time_machine.travel(DUE["Pacific/Auckland"] - timedelta(seconds=2), tick=True):
        first = Running(local)
        try:
            wait_for(lambda: first.events[(SEND_JOB, "ran")] == 1)
        finally:
            first.stop()
    assert sent_to(workdir) == kiwis, "Auckland's group at its moment, nobody else"
    assert stored_jobs(local)[SEND_JOB] == DUE["Australia/Sydney"], "the stored job fires next at Sydney's"

    # back 30 minutes after Sydney's moment (within the grace time): the stored job, unchanged, runs once
    with time_machine.travel(DUE["Australia/Sydney"] + timedelta(minutes=30), tick=True):
        second = Running(local)
        try:
            assert any("send: the run due" in line and "runs once now" in line for line in second.lines), second.lines
            wait_for(lambda: second.events[(SEND_JOB, "ran")] == 1)
        finally:
            second.stop()
    assert sent_to(workdir) == {a for a, z in READERS.items() if due(z) <= DUE["Australia/Sydney"]}
    assert issue_row(local).status == "sending", "Brisbane and Perth still wait"

    # a reader in a zone the jobs do not fire for yet: the jobs are replaced with it (the running scheduler
    # does this at each heartbeat)
    with session_factory(local.database_url)() as s:
        from subscribers import lifecycle

        member = lifecycle.subscribe(s, "tokyo@example.com", list_slug=local.delivery.list, source="test",
                                     confirmed=True)
        set_zone(member.subscriber, "Asia/Tokyo")
        s.commit()
    scheduler = build_scheduler(local)
    scheduler.start(paused=True)
    try:
        lines = ensure_jobs(scheduler, local, str(local.path))
        assert "send: schedule changed since the last run; job replaced" in lines
        assert "Asia/Tokyo" in repr(scheduler.get_job(SEND_JOB).trigger)
    finally:
        scheduler.shutdown(wait=False)
