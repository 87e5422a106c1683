"""The SendGrid transport against the local mail/send contract server (tests/fakes/sendgrid_server.py)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from digest.config import Settings, load_settings
from digest.deliver.ledger import counts, resolve
from digest.deliver.protocol import Message, Outcome
from digest.deliver.sendgrid import (
    PayloadError,
    SendGridTransport,
    categories_for,
    check_shared,
    personalization_json,
)
from digest.deliver.wire import Wire
from digest.errors import DeliveryError
from digest.issues import send
from digest.render import Rendered
from digest.reports import issue_figures
from digest.store import Delivery, IssueRow, migrate, session_factory
from subscribers import lifecycle
from subscribers.links import ReaderLinks, TokenError
from tests.conftest import SENDGRID_KEY, edit_config, run_cli
from tests.fakes.personalization import personalization
from tests.fakes.readers import seed_readers
from tests.fakes.sendgrid_server import (
    SendGridServer,
    accept_then_drop,
    answer_then_close,
    copy_headers,
    delay,
    drop,
    rate_limited,
    status,
    validate,
)

KEY = SENDGRID_KEY  # the key the shared `server` fixture (tests/conftest.py) takes
WIDE = {"COLUMNS": "500"}  # rich wraps at the terminal width; a "line" here is a logical line


def sendgrid_config(workdir: Path, extra: str = "") -> None:
    edit_config(workdir, 'transport = "outbox"', 'transport = "sendgrid"\nallow_http_public_url = true')
    # these tests are of the immediate mode (schedule_ahead_minutes = 0); the scheduled batches have
    # their own tests (test_deliver_sendgrid_batches.py)
    edit_config(workdir, "concurrency = 4", "concurrency = 4\nbackoff_seconds = 0.01\nmax_retries = 3\n"
                "schedule_ahead_minutes = 0\n" + extra)


@pytest.fixture
def sg(workdir: Path, server: SendGridServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    sendgrid_config(workdir, "retry_unanswered = true")  # the retry tests drop connections on purpose
    monkeypatch.setenv("SENDGRID_API_KEY", KEY)
    monkeypatch.setenv("DIGEST_SENDGRID_API_URL", server.url)
    s = load_settings(workdir / "digest.toml")
    migrate(s.database_url)
    return s


def reload(workdir: Path) -> Settings:
    return load_settings(workdir / "digest.toml")


class FakeTime:
    """A clock that sleeping moves forward, so waits are checked without waiting."""

    def __init__(self) -> None:
        self.now = time.time()
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def ledger(settings: Settings) -> dict[str, int]:
    with session_factory(settings.database_url)() as s:
        issue = s.scalar(select(IssueRow).order_by(IssueRow.number.desc()))
        return counts(s, issue.id)


def test_one_request_carries_each_readers_parts_within_the_contract(sg: Settings, server: SendGridServer) -> None:
    with session_factory(sg.database_url)() as s:
        lifecycle.subscribe(s, "ann@example.com", name="Smith, Ann; PhD", source="test", confirmed=True)
        lifecycle.subscribe(s, "zoe@example.org", name="Zoë", source="test", confirmed=True)
        lifecycle.subscribe(s, "noname@example.net", source="test", confirmed=True)
        lifecycle.subscribe(s, "pending@example.net", source="test")  # not confirmed: not a recipient
        s.commit()
    outcome = send(sg)
    assert outcome.report is not None and outcome.report.submitted == 3 and outcome.report.ok
    assert server.refused == [] and len(server.received) == 1
    request = server.received[0]
    body = request.payload
    assert sorted(request.recipients) == ["ann@example.com", "noname@example.net", "zoe@example.org"]
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    html, text = body["content"][1]["value"], body["content"][0]["value"]
    tokens_in_body = set(re.findall(r"%%[A-Z_]+%%", html + text))
    assert "%%UNSUBSCRIBE_URL%%" in tokens_in_body
    assert body["from"]["email"] == "digest@news.example.com"
    assert body["reply_to"]["email"] == "editor@news.example.com"
    assert set(body["categories"]) == {"Leisure Industry Weekly", "Leisure Industry Weekly issue 1"}
    links = ReaderLinks(sg)  # read as the reader pages read them (one "reader" token serves both links)
    with session_factory(sg.database_url)() as s:
        issue = s.scalar(select(IssueRow))
        ids = {sub.email: sub.id for sub in s.scalars(select(lifecycle.Subscriber))}
        rows = s.scalars(select(Delivery)).all()
    for p in body["personalizations"]:
        (to,) = p["to"]
        sid = ids[to["email"]]
        assert p["custom_args"] == {"digest_issue": str(issue.id), "digest_subscriber": str(sid), "digest_list": "1"}
        assert tokens_in_body <= set(p["substitutions"]), "a token in the body has no substitution"
        unsub = p["substitutions"]["%%UNSUBSCRIBE_URL%%"]
        assert unsub.startswith(f"{sg.publication.public_url}/u/")
        ref = links.read("unsubscribe", unsub.rsplit("/", 1)[1])
        assert (ref.subscriber_id, ref.list_id) == (sid, 1)
        prefs_url = p["substitutions"]["%%PREFERENCES_URL%%"]
        assert prefs_url.startswith(f"{sg.publication.public_url}/p/")
        pref = links.read("preferences", prefs_url.rsplit("/", 1)[1])
        assert (pref.subscriber_id, pref.list_id) == (sid, 1)
        with pytest.raises(TokenError):
            links.read("confirm", unsub.rsplit("/", 1)[1])
        # the one-click URL alone: no unsubscribe mailbox is configured, so no mailto: (issue 17, point 4)
        assert p["headers"]["List-Unsubscribe"] == f"<{unsub}>"
        assert copy_headers(body, p)["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # the list's headers once for the request, the reader's own link in each personalization (issue 16)
    assert body["headers"] == {"List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                               "List-Id": "Leisure Industry Weekly - weekly <weekly.news.example.com>",
                               "Precedence": "bulk", "Feedback-ID": f"{issue.number}:weekly:leisure-industry-weekly:"
                                                                    "news-example-com"}
    assert all(set(p["headers"]) == {"List-Unsubscribe"} for p in body["personalizations"])
    names = {p["to"][0]["email"]: p["to"][0].get("name") for p in body["personalizations"]}
    assert names == {"ann@example.com": "Smith Ann PhD", "zoe@example.org": "Zoë", "noname@example.net": None}
    greeting = {p["to"][0]["email"]: p["substitutions"]["%%GREETING%%"] for p in body["personalizations"]}
    assert greeting["zoe@example.org"] == "Hi Zoë," and greeting["noname@example.net"] == "Hello,"
    assert {r.status for r in rows} == {"submitted"} and {r.message_id for r in rows} == {request.message_id}


def test_batches_of_at_most_a_thousand_go_out_several_at_once(sg: Settings, server: SendGridServer) -> None:
    emails = seed_readers(sg, 2500)
    # no timing: each request waits at the server until all three are out at once (concurrency 4); a
    # client that sends them one by one would leave the first waiting out the hold's timeout
    server.hold_until(3)
    outcome = send(sg)
    assert outcome.report is not None and outcome.report.submitted == 2500
    assert sorted(len(r.recipients) for r in server.received) == [500, 1000, 1000]
    assert server.held_together == 3, (f"only {server.held_together} request(s) were out at once; the three "
                                        "batches should all be (concurrency 4)")
    assert Counter(server.recipients()) == Counter(emails)
    assert ledger(sg) == {"submitted": 2500}


def test_429_waits_until_the_reset_then_goes_on(sg: Settings, server: SendGridServer) -> None:
    emails = seed_readers(sg, 30)
    server.script(rate_limited(reset_in=3))
    fake = FakeTime()
    outcome = send(sg, transport=SendGridTransport(sg, sleep=fake.sleep, clock=fake.clock))
    assert outcome.report is not None and outcome.report.submitted == 30
    assert server.stats()["requests"] == 2
    assert fake.slept and 2.0 <= sum(fake.slept) <= 4.1, fake.slept  # until X-RateLimit-Reset, not a guess
    assert sorted(server.recipients()) == sorted(emails)


def test_429s_do_not_use_up_the_retries_of_5xx(sg: Settings, server: SendGridServer) -> None:
    emails = seed_readers(sg, 20)
    server.script(rate_limited(reset_in=1), status(500, "internal error"), rate_limited(reset_in=1),
                  rate_limited(reset_in=1), status(502, "bad gateway"), status(503, "unavailable"),
                  rate_limited(reset_in=1))
    fake = FakeTime()
    outcome = send(sg, transport=SendGridTransport(sg, sleep=fake.sleep, clock=fake.clock))
    assert outcome.report is not None and outcome.report.submitted == 20  # 3 x 5xx: within max_retries = 3
    assert server.stats()["requests"] == 8
    assert Counter(server.recipients()) == Counter(emails)


def test_5xx_and_dropped_connections_are_retried_with_growing_jittered_waits(
        sg: Settings, server: SendGridServer) -> None:
    emails = seed_readers(sg, 40)
    server.script(status(500, "internal error"), drop(), status(503, "unavailable"))
    fake = FakeTime()
    outcome = send(sg, transport=SendGridTransport(sg, sleep=fake.sleep, clock=fake.clock))
    assert outcome.report is not None and outcome.report.submitted == 40
    assert server.stats()["requests"] == 4
    assert len(fake.slept) == 3
    for attempt, waited in enumerate(fake.slept, start=1):
        ceiling = 0.01 * 2 ** (attempt - 1)
        assert ceiling / 2 <= waited <= ceiling, (attempt, waited)
    assert Counter(server.recipients()) == Counter(emails), "every reader exactly once"


def test_5xx_beyond_the_retries_stops_the_send_and_requeues_the_batch(sg: Settings, server: SendGridServer) -> None:
    emails = seed_readers(sg, 25)
    server.script(*[status(502, "bad gateway")] * 4)
    with pytest.raises(DeliveryError, match=r"502.*4 times.*queued again"):
        send(sg)
    assert ledger(sg) == {"queued": 25}
    assert server.recipients() == []
    outcome = send(sg)  # the next run sends them
    assert outcome.report is not None and outcome.report.submitted == 25
    assert sorted(server.recipients()) == sorted(emails)


def test_a_refusal_stops_the_send_with_sendgrids_words_and_nothing_is_lost(
        sg: Settings, server: SendGridServer) -> None:
    seed_readers(sg, 10)
    server.script(status(400, "The from address does not match a verified Sender Identity.", "from"))
    with pytest.raises(DeliveryError) as caught:
        send(sg)
    message = str(caught.value)
    assert "400" in message and "verified Sender Identity" in message and "(field from)" in message
    assert "issue 1" in message and "10 reader(s)" in message and "queued again" in message
    assert ledger(sg) == {"queued": 10}
    with session_factory(sg.database_url)() as s:
        assert s.scalar(select(IssueRow)).status == "sending"


@pytest.mark.slow  # the real command in a subprocess
def test_wrong_key_exits_2_with_one_line(workdir: Path, server: SendGridServer) -> None:
    sendgrid_config(workdir)
    settings = reload(workdir)
    migrate(settings.database_url)
    seed_readers(settings, 3)
    result = run_cli("send", cwd=workdir,
                     env={"SENDGRID_API_KEY": "SG.wrong", "DIGEST_SENDGRID_API_URL": server.url, **WIDE})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "401" in lines[0] and "SENDGRID_API_KEY" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert ledger(settings) == {"queued": 3}


@pytest.mark.slow  # the real command in a subprocess
def test_missing_key_fails_in_one_line_before_anything_is_claimed(workdir: Path, server: SendGridServer) -> None:
    sendgrid_config(workdir)
    settings = reload(workdir)
    migrate(settings.database_url)
    seed_readers(settings, 3)
    result = run_cli("send", cwd=workdir, env={"DIGEST_SENDGRID_API_URL": server.url, **WIDE})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: SENDGRID_API_KEY is not set: {workdir.resolve() / 'digest.toml'} has delivery.transport = "
        "\"sendgrid\"; export SENDGRID_API_KEY=... or choose another transport"]
    with session_factory(settings.database_url)() as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
        assert s.scalar(select(func.count()).select_from(IssueRow).where(IssueRow.status == "sending")) == 0
    assert server.stats()["requests"] == 0



@pytest.mark.slow  # a fresh interpreter, to see what it imports
def test_making_the_transport_leaves_the_sendgrid_package_for_later(sg: Settings) -> None:
    """Issue 16: `digest send` makes its transport first (a missing key fails before anything changes); the
    package's 20 ms import waits for `warm`, which the send loop calls while the snapshot is written."""
    code = ("import sys; from digest.config import load_settings; from digest.deliver import make_transport; "
            "t = make_transport(load_settings(sys.argv[1])); made = 'sendgrid' in sys.modules; t.warm(); "
            "print(made, 'sendgrid' in sys.modules); t.close()")
    done = subprocess.run([sys.executable, "-c", code, str(sg.path)], capture_output=True, text=True, timeout=120,
                          env=os.environ)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]

def test_unreachable_api_stops_and_requeues(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sendgrid_config(workdir)
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("SENDGRID_API_KEY", KEY)
    monkeypatch.setenv("DIGEST_SENDGRID_API_URL", f"http://127.0.0.1:{port}")
    settings = reload(workdir)
    migrate(settings.database_url)
    seed_readers(settings, 5)
    with pytest.raises(DeliveryError, match="cannot reach SendGrid.*queued again"):
        send(settings)
    assert ledger(settings) == {"queued": 5}


def test_an_unanswered_request_is_left_unknown_when_retries_of_it_are_off(
        workdir: Path, server: SendGridServer, monkeypatch: pytest.MonkeyPatch) -> None:
    sendgrid_config(workdir, "retry_unanswered = false")
    monkeypatch.setenv("SENDGRID_API_KEY", KEY)
    monkeypatch.setenv("DIGEST_SENDGRID_API_URL", server.url)
    settings = reload(workdir)
    migrate(settings.database_url)
    emails = seed_readers(settings, 12)
    server.script(accept_then_drop())
    with pytest.raises(DeliveryError, match="unknown fate"):
        send(settings)
    assert ledger(settings) == {"claimed": 12}
    assert sorted(server.recipients()) == sorted(emails)  # SendGrid did take it
    with session_factory(settings.database_url)() as s:
        assert issue_figures(s)[0].unknown == 12
        issue = s.scalar(select(IssueRow))
        assert resolve(s, issue, "submitted") == 12
        assert issue.status == "sent"
    assert ledger(settings) == {"submitted": 12}
    outcome = send(settings)  # nothing left: nobody gets it twice
    assert outcome.report is None or outcome.report.submitted == 0
    assert Counter(server.recipients()) == Counter(emails)


def test_a_reader_who_leaves_during_a_send_is_not_sent_to_after(
        workdir: Path, server: SendGridServer, monkeypatch: pytest.MonkeyPatch) -> None:
    sendgrid_config(workdir, "batch_size = 50")
    edit_config(workdir, "concurrency = 4", "concurrency = 1")
    monkeypatch.setenv("SENDGRID_API_KEY", KEY)
    monkeypatch.setenv("DIGEST_SENDGRID_API_URL", server.url)
    settings = reload(workdir)
    migrate(settings.database_url)
    emails = seed_readers(settings, 150)
    leaver = emails[-1]
    server.delay = 0.3
    result: dict[str, object] = {}
    sender = threading.Thread(target=lambda: result.setdefault("outcome", send(settings)))
    sender.start()
    deadline = time.time() + 20
    while server.stats()["requests"] == 0 and time.time() < deadline:
        time.sleep(0.01)
    with session_factory(settings.database_url)() as s:  # the reader clicks unsubscribe mid-send
        lifecycle.unsubscribe(s, lifecycle.find(s, leaver), source="test: one-click unsubscribe")
        s.commit()
    sender.join(60)
    assert not sender.is_alive()
    report = result["outcome"].report  # type: ignore[attr-defined]
    assert report.submitted == 149 and report.skipped == 1
    assert leaver not in server.recipients()
    assert Counter(server.recipients()) == Counter(emails[:-1])
    assert ledger(settings) == {"submitted": 149, "skipped": 1}


def _message(i: int, edition: Rendered, **changes: object) -> Message:
    fields = dict(delivery_id=i, subscriber_id=i, issue_id=1, issue_number=1, to_email=f"r{i}@example.com",
                  to_name=f"Reader {i}", edition=edition,
                  values={"%%GREETING%%": f"Hi Reader {i},"},
                  headers={"List-Unsubscribe": f"<https://x.example/u/{i}>"}, list_id=1)
    fields.update(changes)
    return Message(**fields)  # type: ignore[arg-type]


def test_each_edition_goes_in_its_own_request(sg: Settings, server: SendGridServer) -> None:
    a = Rendered("Issue 1", "", "<p>%%GREETING%% edition A</p>", "%%GREETING%% A", [], "a")
    b = Rendered("Issue 1", "", "<p>%%GREETING%% edition B</p>", "%%GREETING%% B", [], "b")
    transport = SendGridTransport(sg)
    outcomes = transport.send([_message(1, a), _message(2, b), _message(3, a)])
    assert [o.ok for o in outcomes] == [True, True, True]
    bodies = {r.payload["content"][1]["value"]: r.recipients for r in server.received}
    assert bodies == {"<p>%%GREETING%% edition A</p>": ["r1@example.com", "r3@example.com"],
                      "<p>%%GREETING%% edition B</p>": ["r2@example.com"]}


def test_readers_whose_list_headers_differ_never_share_a_request(sg: Settings, server: SendGridServer) -> None:
    """The list's headers go once per request (the message's `headers`), so a request holds only readers
    whose copies carry the same ones; each copy still gets exactly its own."""
    edition = Rendered("Issue 1", "", "<p>%%GREETING%%</p>", "%%GREETING%%", [], "default")

    def listed(i: int, list_id: str) -> Message:
        return _message(i, edition, headers={"List-Unsubscribe": f"<https://x.example/u/{i}>",
                                             "List-Id": f"News <{list_id}.n.example>", "Precedence": "bulk"})

    outcomes = SendGridTransport(sg).send([listed(1, "a"), listed(2, "b"), listed(3, "a")])
    assert [o.ok for o in outcomes] == [True, True, True]
    assert sorted(r.recipients for r in server.received) == [["r1@example.com", "r3@example.com"],
                                                             ["r2@example.com"]]
    for r in server.received:
        assert r.payload is not None
        for p in r.payload["personalizations"]:
            i = p["to"][0]["email"][1]
            assert copy_headers(r.payload, p) == {"List-Unsubscribe": f"<https://x.example/u/{i}>",
                                                  "List-Id": f"News <{'b' if i == '2' else 'a'}.n.example>",
                                                  "Precedence": "bulk"}


def test_reader_data_outside_the_limits_fails_that_reader_before_sending(sg: Settings,
                                                                        server: SendGridServer) -> None:
    edition = Rendered("Issue 1", "", "<p>%%GREETING%%</p>", "%%GREETING%%", [], "default")
    bad = [
        _message(1, edition, to_email="zoë@example.com"),  # SMTPUTF8 local part: SendGrid's v3 API refuses it
        _message(2, edition, values={"%%GREETING%%": "x" * 10_001}),
        _message(3, edition, headers={"Reply-To": "someone@example.com"}),  # reserved header
        _message(4, edition, headers={"List-Unsubscribe": "<https://x>\r\nBcc: victim@example.com"}),
    ]
    good = _message(5, edition, to_email="ok@bücher.example")  # IDN domain: sent in its ASCII form
    outcomes = {o.delivery_id: o for o in SendGridTransport(sg).send([*bad, good])}
    assert [outcomes[i].ok for i in (1, 2, 3, 4, 5)] == [False, False, False, False, True]
    assert "non-ASCII local part" in outcomes[1].error
    assert "10000 bytes" in outcomes[2].error
    assert "reserved" in outcomes[3].error
    assert "one-line" in outcomes[4].error
    assert server.recipients() == ["ok@xn--bcher-kva.example"] and server.refused == []


def test_request_level_violations_are_bugs_caught_before_sending(sg: Settings, server: SendGridServer) -> None:
    transport = SendGridTransport(sg)
    empty_subject = Rendered("", "", "<p>x</p>", "x", [], "default")
    with pytest.raises(PayloadError, match="empty subject"):
        transport.send([_message(1, empty_subject)])
    edition = Rendered("Issue 1", "", "<p>x</p>", "x", [], "default")
    with pytest.raises(PayloadError, match="1001 personalizations"):
        transport.send([_message(i, edition) for i in range(1001)])
    with pytest.raises(PayloadError, match="text/plain first"):
        check_shared({"subject": "s", "content": [{"type": "text/html", "value": "h"},
                                                  {"type": "text/plain", "value": "t"}]})
    with pytest.raises(PayloadError, match="categories"):
        check_shared({"subject": "s", "content": [{"type": "text/plain", "value": "t"}],
                      "categories": [f"c{i}" for i in range(11)]})
    assert server.stats()["requests"] == 0


@pytest.mark.nodb  # reads settings only: runs once
def test_categories_are_ascii_and_within_limits(workdir: Path) -> None:
    edit_config(workdir, 'name = "Leisure Industry Weekly"', 'name = "Café Society Wöchentlich ' + "x" * 300 + '"')
    cats = categories_for(load_settings(workdir / "digest.toml"), 7)
    assert len(cats) == 2 and all(c.isascii() and len(c) <= 255 for c in cats)
    assert cats[0].startswith("Cafe Society Wochentlich") and cats[1].endswith("issue 7")


def test_the_contract_server_is_strict() -> None:
    """The fake must refuse what SendGrid refuses, or the tests above prove nothing."""
    good = {"personalizations": [{"to": [{"email": "a@example.com"}]}], "from": {"email": "f@example.com"},
            "subject": "s", "content": [{"type": "text/plain", "value": "t"}, {"type": "text/html", "value": "h"}]}
    assert validate(good) == []

    def fields(change: dict) -> set[str]:  # type: ignore[type-arg]
        return {f for f, _ in validate({**good, **change})}

    assert "content" in fields({"content": [{"type": "text/html", "value": "h"}, {"type": "text/plain", "value": "t"}]})
    assert "personalizations.0.to.0.name" in fields(
        {"personalizations": [{"to": [{"email": "a@example.com", "name": "Smith, Ann"}]}]})
    assert "personalizations.0.headers" in fields(
        {"personalizations": [{"to": [{"email": "a@example.com"}], "headers": {"To": "x"}}]})
    assert "personalizations.0.substitutions" in fields(
        {"personalizations": [{"to": [{"email": "a@example.com"}], "substitutions": {"%%A%%": "x" * 10_001}}]})
    assert "personalizations.0.custom_args" in fields(
        {"personalizations": [{"to": [{"email": "a@example.com"}], "custom_args": {"id": 5}}]})
    assert "personalizations" in fields({"personalizations": [{"to": [{"email": f"r{i}@example.com"}]}
                                                              for i in range(1001)]})
    assert "personalizations.1.to" in fields({"personalizations": [{"to": [{"email": "a@example.com"}]},
                                                                   {"to": [{"email": "A@example.com"}]}]})
    assert "categories" in fields({"categories": ["é"]})
    assert "subject" in fields({"subject": ""})
    assert "personalizations.0.to.0.email" in fields({"personalizations": [{"to": [{"email": "zoë@example.com"}]}]})


def test_outcomes_of_a_batch_stopped_halfway_are_kept(sg: Settings, server: SendGridServer) -> None:
    """Two editions, the second refused: the first request's readers are reported sent, not requeued."""
    a = Rendered("Issue 1", "", "<p>A</p>", "A", [], "a")
    b = Rendered("Issue 1", "", "<p>B</p>", "B", [], "b")
    server.script(delay(0), status(400, "bad"))
    with pytest.raises(DeliveryError) as caught:
        SendGridTransport(sg).send([_message(1, a), _message(2, b)])
    kept: list[Outcome] = caught.value.outcomes  # type: ignore[attr-defined]
    assert [(o.delivery_id, o.ok) for o in kept] == [(1, True)]
    assert server.recipients() == ["r1@example.com"]


def test_a_personalization_written_as_json_text_is_the_one_json_would_write() -> None:
    """personalization_json (the send's fast path) against json.dumps of the personalization dict, for
    readers whose data needs escaping: quotes, backslashes, non-ASCII, a '%' and an IDN domain."""
    edition = Rendered("Issue 1", "", "<p>%%GREETING%%</p>", "%%GREETING%%", [], "default")
    names = ["Reader 1", 'Ann "the" O\\Hara', "Zoë Ørsted 😀", "", "100% sure", "  spaced  ", "Smith, Ann; Jr"]
    for i, name in enumerate(names, 1):
        for scheduled in (None, ("b" * 32, 1_900_000_000)):
            m = _message(i, edition, to_name=name, to_email=f"r{i}@bücher.example" if i % 2 else f"r{i}@example.com",
                         values={"%%GREETING%%": f"Hi {name},", "%%GREETING_HTML%%": f"Hi {name} &amp;",
                                 "%%UNSUBSCRIBE_URL%%": f"https://x.example/u/{i}.a.b"},
                         headers={"List-Unsubscribe": f"<https://x.example/u/{i}>", "List-Id": "News <n.example>"},
                         scheduled=scheduled)
            text = personalization_json(m)
            assert text.isascii(), "its length is its size in bytes"
            assert json.loads(text) == personalization(m)
            assert text == json.dumps(personalization(m), separators=(",", ":"))


def test_the_json_text_refuses_what_the_dict_refused_and_a_line_break_in_any_header() -> None:
    edition = Rendered("Issue 1", "", "<p>%%GREETING%%</p>", "%%GREETING%%", [], "default")
    for changes, words in [
        ({"headers": {"List-Unsubscribe": "<https://x>", "List-Id": "a\r\nBcc: victim@example.com"}}, "one-line"),
        ({"headers": {"List-Unsubscribe": "<https://x>\nBcc: v@example.com"}}, "one-line"),
        ({"headers": {"Subject": "x"}}, "reserved"),
        ({"headers": {"X-Count": 5}}, "one-line"),
        ({"values": {"%%GREETING%%": 5}}, "string"),
        ({"values": {"%%GREETING%%": "é" * 5_000}}, "over 10000 bytes"),
        ({"to_email": "zoë@example.com"}, "non-ASCII local part"),
    ]:
        with pytest.raises(ValueError, match=words):
            personalization_json(_message(1, edition, **changes))
    # a name with a line break is one line in `to` (display_name), never a header of its own
    m = _message(1, edition, to_name="Eve\r\nBcc: x@example.com")
    assert json.loads(personalization_json(m))["to"] == [{"email": "r1@example.com", "name": "Eve Bcc: x@example.com"}]


def test_requests_go_over_one_kept_alive_connection(sg: Settings, server: SendGridServer) -> None:
    edition = Rendered("Issue 1", "", "<p>%%GREETING%%</p>", "%%GREETING%%", [], "default")
    transport = SendGridTransport(sg)
    try:
        for i in range(1, 6):
            assert [o.ok for o in transport.send([_message(i, edition)])] == [True]
    finally:
        transport.close()
    assert server.stats()["accepted"] == 5 and server.connections == 1


def test_a_hold_that_is_never_met_lets_the_requests_through_and_counts_them(
        sg: Settings, server: SendGridServer) -> None:
    """The concurrency test's barrier can fail: a client with one request out at a time is answered once
    the hold times out (not hung), and `held_together` says 1, which that test reports."""
    edition = Rendered("Issue 1", "", "<p>%%GREETING%%</p>", "%%GREETING%%", [], "default")
    server.hold_until(2, timeout=0.5)
    transport = SendGridTransport(sg)
    started = time.monotonic()
    try:
        for i in (1, 2):
            assert [o.ok for o in transport.send([_message(i, edition)])] == [True]
    finally:
        transport.close()
    assert server.held_together == 1 and server.stats()["accepted"] == 2
    assert time.monotonic() - started >= 0.5, "the first request waited out the hold"


def test_a_connection_the_server_closed_while_idle_is_opened_again_before_a_request(server: SendGridServer) -> None:
    """A keep-alive connection closed by the server between two requests (an idle timeout) is noticed
    before it is used: the next request goes out whole on a new connection and is answered, with no error
    (no failed write to retry, no answer lost)."""
    wire = Wire(server.url, {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, timeout=5)
    body = json.dumps({"personalizations": [{"to": [{"email": "a@example.com"}]}], "from": {"email": "f@example.com"},
                       "subject": "s", "content": [{"type": "text/plain", "value": "x"}]})
    try:
        server.script(answer_then_close())
        assert wire.request("POST", "/v3/mail/send", body).status_code == 202
        time.sleep(0.2)  # idle: the server's FIN has arrived
        assert wire.request("POST", "/v3/mail/send", body).status_code == 202
        assert wire.request("POST", "/v3/mail/send", body).status_code == 202
    finally:
        wire.close()
    assert server.requests == 3 and server.connections == 2
