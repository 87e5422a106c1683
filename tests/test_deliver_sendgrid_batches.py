"""SendGrid scheduled batches (send_at + batch_id): a lost answer is cancelled and sent again with nobody in
the loop, a cancel SendGrid cannot honour leaves the batch for `resolve`, and an issue can be recalled.
All against the contract server, which enforces the documented scheduling rules."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.request import Request, urlopen

import pytest
from sqlalchemy import select, update

from digest.config import Settings, load_settings
from digest.deliver.batches import recall
from digest.deliver.ledger import counts, held_cancels, unknown_batches
from digest.deliver.sendgrid import SendGridTransport
from digest.errors import DeliveryError
from digest.issue_status import IssueStatus
from digest.issues import build_draft, send
from digest.store import Delivery, IssueRow, SendBatch, migrate, session_factory
from tests.conftest import SECRET, SENDGRID_KEY, run_cli, run_main
from tests.fakes.readers import odd_even_editions, scheduled_of, seed_readers, sending_issue, set_keys
from tests.fakes.sendgrid_server import (
    Fault,
    SendGridServer,
    accept_then_drop,
    delay,
    drop,
    rate_limited,
    status,
)
from tests.test_web_support import app_fixture, client_fixture, csrf_from, login  # noqa: F401 (fixtures)

KEY = SENDGRID_KEY  # the key the shared `server` fixture (tests/conftest.py) takes


def configure(workdir: Path, *, by_hand: bool = True, **keys: object) -> Settings:
    set_keys(workdir, "delivery", transport="sendgrid", allow_http_public_url=True)  # the local test server
    set_keys(workdir, "delivery.sendgrid", **{"backoff_seconds": 0.01, "max_retries": 3, **keys})
    # `by_hand`: the test sends by hand, now: each batch at now + schedule_ahead_minutes. A draft is for the schedule's
    # next moment (07:00 local on `day_of_week`), and a moment within SendGrid's 72 hours is used as send_at
    # instead (`send_moment`, tested by test_each_claim_has_its_own_batch_recorded_and_the_list_is_scheduled_
    # for_the_send_moment). With the sample's Monday that was so from Thursday evening to Sunday evening
    # (UTC), and such tests failed then: the moment is put on the day four days from today, 79-103 hours
    # away, whatever today is.
    if by_hand:
        tz = load_settings(workdir / "digest.toml").publication.tz
        set_keys(workdir, "schedule", day_of_week=(datetime.now(tz) + timedelta(days=4)).strftime("%a").lower())
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    return settings


@pytest.fixture
def sg(workdir: Path, server: SendGridServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("SENDGRID_API_KEY", KEY)
    monkeypatch.setenv("DIGEST_SENDGRID_API_URL", server.url)
    return configure(workdir, batch_size=50, concurrency=2)


def ledger(settings: Settings) -> dict[str, int]:
    with session_factory(settings.database_url)() as s:
        issue = s.scalar(select(IssueRow).order_by(IssueRow.number.desc()))
        return counts(s, issue.id)


def api(server: SendGridServer, method: str, path: str, body: object | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = Request(server.url + path, data=data, method=method,
                  headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    try:
        with urlopen(req, timeout=5) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except Exception as e:  # HTTPError: the status and SendGrid's errors
        return e.code, json.loads(e.read() or b"null")  # type: ignore[attr-defined]


def test_the_contract_server_enforces_the_scheduling_rules(server: SendGridServer) -> None:
    code, answer = api(server, "POST", "/v3/mail/batch")
    assert code == 201 and isinstance(answer, dict)
    batch = answer["batch_id"]
    base = {"from": {"email": "a@example.com"}, "subject": "s", "content": [{"type": "text/plain", "value": "x"}]}
    later = int(time.time()) + 3600

    def mail(**extra: object) -> int:
        return api(server, "POST", "/v3/mail/send",
                   {**base, "personalizations": [{"to": [{"email": "r@example.com"}]}], **extra})[0]

    assert mail(batch_id="not-a-batch", send_at=later) == 400, "an unknown batch id is refused"
    assert mail(batch_id=batch, send_at=int(time.time()) + 73 * 3600) == 400, "send_at at most 72 h ahead"
    assert mail(batch_id=batch, send_at=str(later)) == 400, "send_at is UNIX seconds"
    assert mail(batch_id=batch, send_at=later) == 202
    assert api(server, "POST", "/v3/user/scheduled_sends", {"batch_id": "nope", "status": "cancel"})[0] == 400
    assert api(server, "POST", "/v3/user/scheduled_sends", {"batch_id": batch, "status": "stop"})[0] == 400
    server.clock_offset = 3600 - 9 * 60  # 9 minutes before send_at: too late for a cancel
    assert api(server, "POST", "/v3/user/scheduled_sends", {"batch_id": batch, "status": "cancel"})[0] == 400
    server.clock_offset = 0
    assert api(server, "POST", "/v3/user/scheduled_sends", {"batch_id": batch, "status": "cancel"})[0] == 201
    assert api(server, "GET", f"/v3/user/scheduled_sends/{batch}") == (200, [{"batch_id": batch, "status": "cancel"}])
    assert server.recipients() == [], "a cancelled batch's mail never goes out"
    # ten batches cancelled or paused at one time, no more
    for _ in range(9):
        other = api(server, "POST", "/v3/mail/batch")[1]["batch_id"]  # type: ignore[index]
        assert mail(batch_id=other, send_at=later) == 202
        assert api(server, "POST", "/v3/user/scheduled_sends", {"batch_id": other, "status": "pause"})[0] == 201
    eleventh = api(server, "POST", "/v3/mail/batch")[1]["batch_id"]  # type: ignore[index]
    assert mail(batch_id=eleventh, send_at=later) == 202
    code, answer = api(server, "POST", "/v3/user/scheduled_sends", {"batch_id": eleventh, "status": "cancel"})
    assert code == 400 and "10" in json.dumps(answer)
    going = len(server.recipients())
    assert api(server, "DELETE", f"/v3/user/scheduled_sends/{batch}")[0] == 204, "lifting one frees a slot"
    assert len(server.recipients()) == going + 1, "deleted while its mail waited: the batch goes out after all"
    assert api(server, "POST", "/v3/user/scheduled_sends", {"batch_id": eleventh, "status": "cancel"})[0] == 201
    server.clock_offset = 3600 + 60  # every send_at has passed: the cancelled mail was dropped...
    code, answer = api(server, "POST", "/v3/user/scheduled_sends", {"batch_id": batch, "status": "cancel"})
    assert code == 400 and "10" in json.dumps(answer), "...but the cancels still hold their slots"
    assert api(server, "DELETE", f"/v3/user/scheduled_sends/{eleventh}")[0] == 204
    assert eleventh in server.dropped and len(server.recipients()) == going, "dropped for good"
    assert api(server, "DELETE", f"/v3/user/scheduled_sends/{eleventh}")[0] == 404


def test_each_claim_has_its_own_batch_recorded_and_the_list_is_scheduled_for_the_send_moment(
        sg: Settings, server: SendGridServer) -> None:
    emails = seed_readers(sg, 120)
    moment = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    with session_factory(sg.database_url)() as s:  # a draft for 2 hours from now, as the scheduler starts it
        row = build_draft(sg, s, send_at=moment).row
        s.commit()
    outcome = send(sg)
    assert outcome.report is not None and outcome.report.submitted == 120
    assert len(server.received) == 3
    batches = [r.batch_id for r in server.received]
    assert len(set(batches)) == 3 and all(batches), "each request its own batch"
    assert {r.send_at for r in server.received} == {int(moment.timestamp())}, "everyone at the send moment"
    with session_factory(sg.database_url)() as s:
        rows = scheduled_of(s, row.id)
    assert {pb for pb, _ in rows.values()} == set(batches)
    assert {at for _, at in rows.values()} == {moment}
    assert Counter(server.recipients()) == Counter(emails)


def test_send_at_is_at_least_schedule_ahead_from_now(sg: Settings, server: SendGridServer) -> None:
    seed_readers(sg, 5)
    before = time.time()
    send(sg)
    (request,) = server.received
    assert request.send_at is not None and before + 15 * 60 <= request.send_at <= time.time() + 15 * 60 + 1


def test_lost_answers_with_5xx_and_429_mixed_in_end_with_everyone_once_and_nothing_to_resolve(
        sg: Settings, server: SendGridServer) -> None:
    emails = seed_readers(sg, 1000)  # 20 requests of 50
    rng = random.Random(13)
    faults = []
    lost = 0
    for _ in range(30):
        kind = rng.random()
        if kind < 0.15 and lost < 7:
            faults.append(accept_then_drop())  # SendGrid has it; the answer is lost
            lost += 1
        elif kind < 0.25 and lost < 7:
            faults.append(drop())  # SendGrid never took it; the client cannot tell
            lost += 1
        elif kind < 0.45:
            faults.append(status(rng.choice([500, 502, 503]), "unavailable"))
        elif kind < 0.55:
            faults.append(rate_limited(reset_in=0))
        else:
            faults.append(accept_plain())
    server.script(*faults)
    outcome = send(sg)
    assert lost >= 3, "the script should lose some answers"
    assert outcome.report is not None and outcome.report.unknown == 0
    assert ledger(sg) == {"submitted": 1000}, "nothing left for `digest deliveries resolve`"
    assert Counter(server.recipients()) == Counter(emails), "every reader exactly once"
    assert len(server.scheduled) == lost, "each lost answer's batch was cancelled"
    with session_factory(sg.database_url)() as s:
        issue = s.scalar(select(IssueRow))
        assert issue.status == IssueStatus.SENT and unknown_batches(s, issue.id) == []


def accept_plain() -> Fault:
    """No fault: the request is accepted and answered."""
    return delay(0)


def test_a_cancel_that_cannot_be_honoured_leaves_the_batch_unknown_and_reported(
        sg: Settings, server: SendGridServer) -> None:
    emails = seed_readers(sg, 100)
    server.clock_offset = 6 * 60  # SendGrid's clock: send_at (15 min ahead) is 9 minutes away, too late
    server.script(accept_plain(), accept_then_drop())
    with pytest.raises(DeliveryError, match=r"cancelling its batch .* failed .*10 minutes.*unknown fate"):
        send(sg)
    assert ledger(sg) == {"submitted": 50, "claimed": 50}
    assert len(server.recipients()) == 100, "SendGrid had the request: it goes out"
    with session_factory(sg.database_url)() as s:
        issue = s.scalar(select(IssueRow))
        (left,) = unknown_batches(s, issue.id)
        assert left.readers == 50 and "cancelling" in (left.error or "")
    status_cmd = run_cli("status", cwd=sg.path.parent, env={"COLUMNS": "250"})
    assert "unknown fate" in status_cmd.stdout + status_cmd.stderr
    # the next send tries the cancel again (still refused): the batch stays for the admin, nothing resent
    outcome = send(sg)
    assert outcome.report is not None and outcome.report.unknown == 50
    assert any("cancelling batch" in e for e in outcome.report.errors)
    assert Counter(server.recipients()) == Counter(emails)


def test_a_batch_left_by_a_dead_run_is_cancelled_and_sent_again_by_the_next_send(
        sg: Settings, server: SendGridServer) -> None:
    emails = seed_readers(sg, 100)
    server.script(accept_plain(), accept_then_drop())
    transport = SendGridTransport(sg)
    transport.cancel = lambda batch, send_at=None: "the process died before it could cancel"  # type: ignore[method-assign]
    with pytest.raises(DeliveryError):
        send(sg, transport=transport)
    assert ledger(sg) == {"submitted": 50, "claimed": 50}
    outcome = send(sg)  # a fresh run: cancels the unknown batch first, then sends those readers again
    assert outcome.report is not None and outcome.report.ok
    assert ledger(sg) == {"submitted": 100}
    assert Counter(server.recipients()) == Counter(emails)


def test_recall_cancels_batches_still_ten_minutes_out_and_lists_the_rest(
        sg: Settings, server: SendGridServer) -> None:
    emails = seed_readers(sg, 150)
    send(sg)
    assert len(server.recipients()) == 150
    with session_factory(sg.database_url)() as s:
        issue = s.scalar(select(IssueRow))
        # the first 50 readers' batch, found by its readers: with two requests out at once (concurrency 2),
        # the order the server accepted them in is not the order they were claimed in
        first = next(r.batch_id for r in server.received if emails[0] in r.recipients)
        # one batch's send moment is only 5 minutes away: too late to recall
        s.execute(update(SendBatch).where(SendBatch.provider_batch == first)
                  .values(send_at=datetime.now(UTC) + timedelta(minutes=5)))
        s.commit()
        report = recall(s, issue, SendGridTransport(sg), by="ed@example.com")
        assert report.recalled == 100 and report.batches == 2
        assert [b.batch for b, _ in report.kept] == [first] and "10 minutes" in report.kept[0][1]
        assert any("not recalled" in line and first in line for line in report.lines())
        s.refresh(issue)
        assert issue.status == IssueStatus.RECALLED and issue.recalled_by == "ed@example.com"
        assert issue.recalled_at is not None
        assert counts(s, issue.id) == {"submitted": 50, "queued": 100}
    assert sorted(server.recipients()) == sorted(emails[:50]), "the recalled readers get nothing"


@pytest.mark.slow  # the real command in a subprocess
def test_digest_recall_command_then_the_fixed_issue_goes_to_the_recalled_readers_once(
        workdir: Path, sg: Settings, server: SendGridServer) -> None:
    emails = seed_readers(sg, 60)
    env = {"SENDGRID_API_KEY": KEY, "DIGEST_SENDGRID_API_URL": server.url, "COLUMNS": "250"}
    assert run_cli("send", cwd=workdir, env=env).returncode == 0
    before = run_cli("status", cwd=workdir, env=env)
    assert "#1: 60 reader(s) scheduled at SendGrid for" in before.stdout, before.stdout
    result = run_cli("recall", "1", "--by", "ed", cwd=workdir, env=env)
    assert result.returncode == 0, result.stderr
    assert "60 reader(s)" in result.stdout and "recalled" in result.stdout
    status_out = run_cli("status", cwd=workdir, env=env)
    assert "#1: recalled by ed at" in status_out.stdout, status_out.stdout
    assert server.recipients() == []
    again = run_cli("recall", "1", cwd=workdir, env=env)
    assert again.returncode == 2 and "recalled" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    # the editor fixes it: a draft again, approved, sent: the recalled readers get it once
    assert run_cli("draft", cwd=workdir, env=env).returncode == 0
    assert run_cli("approve", cwd=workdir, env=env).returncode == 0
    final = run_cli("send", cwd=workdir, env=env)
    assert final.returncode == 0, final.stderr
    assert Counter(server.recipients()) == Counter(emails)
    assert ledger(sg) == {"submitted": 60}


@pytest.mark.slow
def test_sigkill_at_random_points_then_send_ends_with_everyone_once_and_nothing_unknown(
        workdir: Path, server: SendGridServer, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = int(os.environ.get("DIGEST_KILL_SEED", "1313"))
    rng = random.Random(seed)
    monkeypatch.setenv("SENDGRID_API_KEY", KEY)
    monkeypatch.setenv("DIGEST_SENDGRID_API_URL", server.url)
    settings = configure(workdir, batch_size=100, concurrency=2)
    emails = seed_readers(settings, 2000)
    server.delay = 0.2  # slow enough that a kill lands mid-send on a quiet machine too (20 requests, 2 at once)
    env = {**os.environ, "DIGEST_SECRET_KEY": SECRET, "SENDGRID_API_KEY": KEY,
           "DIGEST_SENDGRID_API_URL": server.url, "COLUMNS": "250"}
    kills = unknown_seen = 0
    for round_ in range(5):
        before = server.stats()["requests"]
        proc = subprocess.Popen([sys.executable, "-m", "digest", "send"], cwd=workdir, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        target = before + rng.randint(1, 4)
        while server.stats()["requests"] < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.04) if round_ else rng.uniform(0.2, 1.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        while server.in_flight:
            time.sleep(0.005)
        with session_factory(settings.database_url)() as s:
            issue = s.scalar(select(IssueRow))
            if issue is not None:
                unknown_seen += len(unknown_batches(s, issue.id))
    assert kills >= 3
    final = subprocess.run([sys.executable, "-m", "digest", "send"], cwd=workdir, env=env,
                           capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    print(f"kills {kills}, unknown batches cancelled and resent: {unknown_seen}")
    assert Counter(server.recipients()) == Counter(emails), "every reader exactly once, no admin"
    assert ledger(settings) == {"submitted": 2000}


def test_the_scheduler_starts_a_scheduled_send_early_enough_for_the_send_moment(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from digest.moments import next_send_at, send_job_trigger, send_lead

    monkeypatch.setenv("SENDGRID_API_KEY", KEY)
    outbox = load_settings(workdir / "digest.toml")
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    moment = next_send_at(outbox, now)
    assert send_lead(outbox) == timedelta(0)
    assert send_job_trigger(outbox).get_next_fire_time(None, now) == moment, "sent at once: at the moment"
    sg = configure(workdir, by_hand=False)  # SendGrid, schedule_ahead_minutes = 15 by default; the same schedule
    assert send_lead(sg) == timedelta(minutes=45)
    fire = send_job_trigger(sg).get_next_fire_time(None, now)
    assert fire is not None and fire.astimezone(UTC) == moment - timedelta(minutes=45)
    set_keys(workdir, "delivery.sendgrid", schedule_ahead_minutes=0)
    assert send_lead(load_settings(workdir / "digest.toml")) == timedelta(0)


@pytest.fixture
def settings(sg: Settings) -> Settings:
    """The web app's settings (tests.test_web_support's fixtures) are the SendGrid ones."""
    return sg


def test_the_admin_recalls_an_issue_after_a_confirmation_step(client, sg: Settings,  # type: ignore[no-untyped-def]
                                                              server: SendGridServer) -> None:
    seed_readers(sg, 100)
    send(sg)
    assert len(server.recipients()) == 100
    login(client)
    listing = client.get("/admin/issues")
    assert 'href="/admin/issues/1/recall"' in listing.text
    page = client.get("/admin/issues/1/recall")
    assert page.status_code == 200 and "<strong>100</strong> reader(s) in 2 batch(es)" in page.text
    token = csrf_from(page.text)
    unconfirmed = client.post("/admin/issues/1/recall", data={"csrf_token": token}, follow_redirects=False)
    assert unconfirmed.status_code == 303 and server.scheduled == {}, "nothing happens without the confirmation"
    done = client.post("/admin/issues/1/recall", data={"csrf_token": token, "confirm": "yes"})
    assert done.status_code == 200, done.text
    assert "100 reader(s) in 2 batch(es) recalled" in done.text
    assert "Recalled by admin admin@example.com (web)" in done.text
    assert server.recipients() == [] and ledger(sg) == {"queued": 100}
    again = client.get("/admin/issues/1/recall")
    assert "Nothing can be recalled now." in again.text


# -- one claim, several requests: each its own batch, recorded before it goes out ----------------------


def test_each_request_of_a_claim_has_its_own_batch_so_a_lost_answer_cancels_that_request_alone(
        workdir: Path, sg: Settings, server: SendGridServer) -> None:
    """Two editions in one claim are two requests: the second gets a batch of its own (recorded before it
    goes out); its answer is lost, so its batch alone is cancelled and its readers sent again; the first
    request's readers keep their copy, once."""
    from digest.deliver.loop import deliver

    settings = configure(workdir, batch_size=50, concurrency=1)  # one request at a time: a known order
    emails = seed_readers(settings, 100)
    factory = session_factory(settings.database_url)
    issue_id = sending_issue(settings)
    server.script(accept_plain(), accept_then_drop())  # the claim's second request: taken, answer lost
    report = deliver(factory, settings, issue_id, SendGridTransport(settings), odd_even_editions(), list_id=1)
    assert report.unknown == 0 and report.submitted == 100
    batches = [r.batch_id for r in server.received]
    assert all(batches) and len(set(batches)) == len(batches) >= 5, "every request its own batch"
    first, second = server.received[:2]
    assert server.scheduled == {second.batch_id: "cancel"}, "the lost request's batch alone is cancelled"
    assert Counter(server.recipients()) == Counter(emails), "every reader exactly once"
    carried = {e: r.batch_id for r in server.received if r.batch_id != second.batch_id for e in r.recipients}
    with factory() as s:
        rows = scheduled_of(s, issue_id)
        assert counts(s, issue_id) == {"submitted": 100}
    assert {e: pb for e, (pb, _) in rows.items()} == carried, "the ledger names each copy's batch"
    assert set(first.recipients) <= set(carried) and carried[first.recipients[0]] == first.batch_id


def test_a_claim_over_the_30_mb_cap_is_split_and_each_request_has_its_own_batch(
        sg: Settings, server: SendGridServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap is lowered to a few readers' worth (30 MB of JSON is slow to build on a test machine); the
    splitting is the same."""
    from digest.deliver import sendgrid
    from digest.render import Rendered
    from tests.fakes.personalization import personalization
    from tests.test_deliver_sendgrid import _message

    edition = Rendered("Issue 1", "", "<p>%%GREETING%% the issue</p>", "%%GREETING%% the issue", [], "default")
    claim_batch, at = server.new_batch(), int(time.time()) + 3600
    messages = [_message(i, edition, values={"%%GREETING%%": f"Hi {i}" + "x" * 2000}, scheduled=(claim_batch, at))
                for i in range(1, 21)]
    transport = SendGridTransport(sg)
    shared = transport.shared_json(edition, 1)[1]
    one = len(json.dumps(personalization(messages[0])))
    monkeypatch.setattr(sendgrid, "MAX_REQUEST_BYTES", shared + 6 * one)
    prepared = transport.prepare(messages)
    assert len(prepared.requests) >= 4 and not prepared.refused
    assert all(len(body.encode()) < shared + 6 * one for body, _, _ in prepared.requests)
    ids = [b for _, _, b in prepared.requests]
    assert ids[0] == claim_batch and len(set(ids)) == len(ids), "the first keeps the claim's batch; each its own"
    assert [(b, when, dids) for b, when, dids in prepared.batches] == \
        [(b, at, [m.delivery_id for m in included]) for _, included, b in prepared.requests[1:]]
    outcomes = transport.submit(prepared)
    assert sorted(o.delivery_id for o in outcomes if o.ok) == list(range(1, 21))
    assert Counter(server.recipients()) == Counter(m.to_email for m in messages)
    assert [r.batch_id for r in server.received] == ids


# -- SendGrid's 10 cancel slots: a cancel is deleted once its batch's send_at has passed -------------------


def test_a_long_send_with_many_lost_answers_frees_old_cancels_and_ends_with_nothing_unknown(
        workdir: Path, sg: Settings, server: SendGridServer) -> None:
    """14 answers lost over a two-hour send: more than SendGrid's 10 cancel slots. Each cancel is deleted
    once its batch's send_at has passed (never before: that would send the batch after all), so the slots
    never fill up and no batch is left of unknown fate."""
    settings = configure(workdir, batch_size=10, concurrency=1)
    emails = seed_readers(settings, 240)
    server.tick = 180  # every mail/send request: 3 minutes of SendGrid's clock, and of ours
    server.script(*[f for _ in range(14) for f in (accept_plain(), accept_then_drop())])
    transport = SendGridTransport(settings, clock=server.now)
    outcome = send(settings, transport=transport)
    assert outcome.report is not None and outcome.report.unknown == 0
    assert ledger(settings) == {"submitted": 240}, "nothing left for `digest deliveries resolve`"
    assert Counter(server.recipients()) == Counter(emails), "every reader exactly once"
    assert transport.cancels == 14 and len(server.scheduled) + len(server.dropped) == 14
    assert len(server.dropped) >= 5, "old cancels were deleted, their slots free again"
    assert server.lifted_early == [], "no cancel was deleted while its batch's mail was still waiting"
    with session_factory(settings.database_url)() as s:
        assert set(held_cancels(s)) == set(server.scheduled), "the ledger knows which cancels are still held"


def test_when_the_cancel_slots_are_full_nothing_more_is_sent_and_the_next_run_frees_them(
        workdir: Path, sg: Settings, server: SendGridServer) -> None:
    """Lost answers faster than send_at passes: once too few slots are left to cancel every request in
    flight, the send stops before sending more (nothing unknown); a later run, past those send_at,
    deletes the cancels the first run recorded and finishes."""
    settings = configure(workdir, batch_size=10, concurrency=2)
    emails = seed_readers(settings, 200)
    server.script(*[accept_then_drop() for _ in range(12)])
    with pytest.raises(DeliveryError, match="cancel slots"):
        send(settings, transport=SendGridTransport(settings, clock=server.now))
    assert 8 <= len(server.scheduled) <= 10 and server.refused == [], "no cancel was refused"
    assert "claimed" not in ledger(settings), "nothing of unknown fate"
    with session_factory(settings.database_url)() as s:
        assert set(held_cancels(s)) == set(server.scheduled)
    server.faults.clear()  # the connection is good again
    server.clock_offset += 30 * 60  # every cancelled batch's send_at has passed
    outcome = send(settings, transport=SendGridTransport(settings, clock=server.now))
    assert outcome.report is not None and outcome.report.unknown == 0
    assert server.scheduled == {} and server.lifted_early == [], "the first run's cancels, deleted in time"
    assert Counter(server.recipients()) == Counter(emails), "every reader exactly once"
    assert ledger(settings) == {"submitted": 200}
    with session_factory(settings.database_url)() as s:
        assert held_cancels(s) == {}


def test_digest_status_shows_scheduled_then_delivered_at(sg: Settings, server: SendGridServer,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """While SendGrid holds the copies: how many and for when; once that moment has passed: delivered at.
    (Recalled: see the recall command's test.)"""
    seed_readers(sg, 60)
    send(sg)
    moment = datetime.fromtimestamp(max(r.send_at or 0 for r in server.received), UTC)  # the last reader's
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.chdir(sg.path.parent)
    code, out = run_main(monkeypatch, capsys, "status")
    assert code == 0 and f"#1: 60 reader(s) scheduled at SendGrid for {moment:%Y-%m-%d %H:%M} UTC" in out, out
    past = moment - timedelta(hours=1)  # the send moment has come and gone
    with session_factory(sg.database_url)() as s:
        s.execute(update(Delivery).values(send_at=past))
        s.commit()
    code, out = run_main(monkeypatch, capsys, "status")
    assert code == 0 and f"#1: delivered at {past:%Y-%m-%d %H:%M} UTC" in out and "scheduled at" not in out, out


def test_slots_held_by_others_do_not_stop_a_send(sg: Settings, server: SendGridServer) -> None:
    """Ten cancels held for a moment hours away (as a recall's are, until the recalled issue's send_at), or
    by earlier runs' recoveries: they do not stop a send that loses nothing (a lost answer now would be
    left for `resolve`, as SendGrid's limit forces)."""
    emails = seed_readers(sg, 100)
    transport = SendGridTransport(sg)
    later = int(time.time()) + 6 * 3600
    for _ in range(10):
        batch = server.new_batch()
        assert api(server, "POST", "/v3/user/scheduled_sends", {"batch_id": batch, "status": "cancel"})[0] == 201
        transport.adopt({batch: later})
    outcome = send(sg, transport=transport)
    assert outcome.report is not None and outcome.report.ok and outcome.report.submitted == 100
    assert Counter(server.recipients()) == Counter(emails) and len(server.scheduled) == 10
