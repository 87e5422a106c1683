"""Big SendGrid event batches (issue 12, point 4): short transactions, bad events skipped, replays idempotent.

SendGrid posts up to 5 MB per batch (some 20,000 events). The batch is applied in chunks, each its own
transaction, so a reader's one-click unsubscribe is never queued behind the whole batch; a bad event is
skipped and reported with its index while the rest are stored; the answer is 2xx once they are.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event as sa_event
from sqlalchemy import func, select

from digest.config import Settings
from digest.deliver.events import CHUNK, apply_batch
from digest.reports import issue_figures
from digest.store import DeliveryEvent, engine_for, session_factory
from subscribers.links import ReaderLinks
from subscribers.models import Event, Membership, MembershipStatus, Subscriber
from tests.test_webhooks_sendgrid import Signer, sent_with_webhook_key

READERS = 40  # 1-20 get the ordinary events, 21-40 the consent ones
BIG = 20_000
KINDS = ("processed", "delivered", "open", "click")


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def sent(workdir: Path, signer: Signer) -> Settings:
    """Issue 1 sent (outbox) to READERS readers; the webhook key configured."""
    return sent_with_webhook_key(workdir, signer, READERS)


@pytest.fixture
def client(sent: Settings) -> Iterator[TestClient]:
    from digest.web.app import create_app

    with TestClient(create_app(sent)) as c:
        yield c


def ev(n: int, kind: str, reader: int, **extra: Any) -> dict[str, Any]:
    """A compact event as SendGrid posts it (20,000 of them stay well under the 5 MB a batch may weigh)."""
    return {"email": f"reader{reader}@example.com", "timestamp": 1_780_000_000 + n, "event": kind,
            "sg_event_id": f"e{n}", "digest_issue": "1", "digest_subscriber": str(reader), **extra}


#: the consent events of a big batch: readers 21-30 bounce, 31-35 complain, 36-40 unsubscribe
CONSENT = {**{r: ("bounce", "bounced") for r in range(21, 31)},
           **{r: ("spamreport", "complained") for r in range(31, 36)},
           **{r: ("unsubscribe", "unsubscribed") for r in range(36, 41)}}
#: index -> a bad event put there, and the words its line in `invalid` must hold
BAD: dict[int, tuple[Any, str]] = {
    100: ({**ev(100, "open", 1), "timestamp": 1e12}, "timestamp"),  # milliseconds sent as seconds
    5_000: ({**ev(5_000, "open", 2), "digest_issue": str(2**70)}, "digest_issue"),
    10_000: ({**ev(10_000, "open", 3), "sg_event_id": "x" * 129}, "over 128"),
    12_345: ({**ev(12_345, "open", 4), "event": 5}, "event is a int"),
    15_000: ({**ev(15_000, "open", 5), "digest_subscriber": {"id": 5}}, "digest_subscriber is a dict"),
    17_000: ({**ev(17_000, "open", 6), "email": "reader6@example.com\x00"}, "NUL"),
    19_999: ("not an object", "not an object"),
}
DUPLICATES = (7_777, 8_888)  # the same sg_event_id twice in one batch: stored once
#: what the webhook asks digest.deliver.events to mend (issue 17; apply_batch(mend=True)): a timestamp no
#: datetime holds (the time received stands in), ids that are no 64-bit ids (matched by address), an
#: sg_event_id over 128 characters (stored as its sha256). Through HTTP these are stored and listed under
#: `mended`; handed to apply_batch directly they are skipped like the rest of BAD.
MENDED_AT_DOOR = (100, 5_000, 10_000, 15_000)
SKIPPED_OVER_HTTP = {i: bad for i, bad in BAD.items() if i not in MENDED_AT_DOOR}


def big_batch() -> list[Any]:
    events: list[Any] = []
    for n in range(BIG):
        reader = 1 + (n // len(KINDS)) % 20  # every reader gets every kind
        events.append(ev(n, KINDS[n % len(KINDS)], reader))
    for i, reader in enumerate(sorted(CONSENT)):
        events[2_001 + i * 500] = ev(2_001 + i * 500, CONSENT[reader][0], reader, type="bounce", reason="550 5.1.1")
    for i, (bad, _) in BAD.items():
        events[i] = bad
    for i in DUPLICATES:
        events[i] = {**events[i - 1], "timestamp": events[i]["timestamp"]}
    return events


def post(client: TestClient, signer: Signer, events: Any) -> Any:
    body = json.dumps(events).encode()
    assert len(body) < 5 * 1024 * 1024, "SendGrid posts at most 5 MB"
    return client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body))


def stored(settings: Settings) -> int:
    with session_factory(settings.database_url)() as s:
        return int(s.scalar(select(func.count()).select_from(DeliveryEvent)) or 0)


def statuses(settings: Settings) -> dict[int, str]:
    with session_factory(settings.database_url)() as s:
        return {sub: status for sub, status in s.execute(select(Subscriber.id, Membership.status).join(Membership))}


@pytest.mark.slow  # 20,000 events, twice
def test_a_big_signed_batch_with_bad_events_stores_the_good_ones_in_short_transactions(
        client: TestClient, signer: Signer, sent: Settings) -> None:
    events = big_batch()
    commits: list[float] = []
    engine = engine_for(sent.database_url)
    listener = lambda _conn: commits.append(time.monotonic())  # noqa: E731
    sa_event.listen(engine, "commit", listener)
    try:
        response = post(client, signer, events)
    finally:
        sa_event.remove(engine, "commit", listener)
    assert response.status_code == 200, response.text[:500]
    result = response.json()
    good = BIG - len(SKIPPED_OVER_HTTP) - len(DUPLICATES)
    assert (result["received"], result["recorded"], result["duplicates"]) == (BIG, good, len(DUPLICATES))
    assert result["applied"] == len(CONSENT) and result["unmatched"] == 0
    # every bad event named by its index and what is wrong with it, in batch order
    skipped = sorted(SKIPPED_OVER_HTTP)
    assert [line.split(":")[0] for line in result["invalid"]] == [f"event {i}" for i in skipped]
    for line, (_, words) in zip(result["invalid"], [BAD[i] for i in skipped], strict=True):
        assert words in line, line
    # the mended ones named too, with the words a skip would have used
    assert [line.split(":")[0] for line in result["mended"]] == [f"event {i}" for i in MENDED_AT_DOOR]
    for line, i in zip(result["mended"], MENDED_AT_DOOR, strict=True):
        assert BAD[i][1] in line, line
    assert stored(sent) == good
    # one transaction per chunk, not one for the batch
    assert len(commits) >= good // CHUNK, len(commits)

    found = statuses(sent)
    assert {r: found[r] for r in CONSENT} == {r: status for r, (_, status) in CONSENT.items()}
    assert all(found[r] == MembershipStatus.ACTIVE for r in range(1, 21))
    with session_factory(sent.database_url)() as s:
        figures = asdict(issue_figures(s)[0])
        changes = s.scalar(select(func.count()).select_from(Event).where(Event.source == "sendgrid event webhook"))
    assert changes == len(CONSENT)
    assert (figures["bounced"], figures["complained"]) == (10, 5)
    assert figures["delivered"] == 20 and figures["opened"] == 20  # distinct readers

    again = post(client, signer, events)  # SendGrid's retry of a batch it did not see answered
    assert again.status_code == 200
    assert (again.json()["recorded"], again.json()["duplicates"], again.json()["applied"]) == (0, good + 2, 0)
    assert stored(sent) == good and statuses(sent) == found


def test_a_batch_stopped_half_way_is_finished_by_the_replay(sent: Settings) -> None:
    """Chunks already committed stay; SendGrid's retry stores only the rest (idempotent on sg_event_id)."""
    events = [ev(n, KINDS[n % 4], 1 + n % 20) for n in range(1_200)]
    events[1_100] = ev(1_100, "unsubscribe", 7)
    with session_factory(sent.database_url)() as s:
        first = apply_batch(s, events[:700], chunk_size=200)  # the first delivery was cut off after 700
    assert (first.recorded, first.duplicates) == (700, 0)
    with session_factory(sent.database_url)() as s:
        retry = apply_batch(s, events, chunk_size=200)
    assert (retry.recorded, retry.duplicates, retry.applied) == (500, 700, 1)
    assert stored(sent) == 1_200 and statuses(sent)[7] == MembershipStatus.UNSUBSCRIBED


def test_bad_values_are_skipped_with_their_index_and_the_rest_applied(sent: Settings) -> None:
    events = [
        ev(1, "bounce", 1, type="bounce"),
        {**ev(2, "open", 2), "timestamp": 10**12},
        {**ev(3, "open", 2), "timestamp": "yesterday"},
        {**ev(4, "open", 2), "timestamp": float("nan")},
        {**ev(5, "open", 2), "digest_issue": -1},
        {**ev(6, "open", 2), "digest_list": True},
        {**ev(7, "open", 2), "sg_event_id": 12345},
        {**ev(8, "open", 2), "url": ["https://x.example"]},
        {"event": "open"},
        [],
        ev(10, "spamreport", 3),
        {**ev(11, "bounce", 4, type="bounce"), "reason": "bad\x00reason"},  # only stored text can hold no NUL
    ]
    with session_factory(sent.database_url)() as s:
        result = apply_batch(s, events)
    assert [line.split(":")[0] for line in result.invalid] == [f"event {i}" for i in range(1, 10)]
    assert (result.recorded, result.applied) == (3, 3)
    found = statuses(sent)
    assert (found[1], found[2], found[3], found[4]) == ("bounced", "active", "complained", "bounced")


def test_each_event_is_checked_once_by_the_events_module(sent: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The door reads the JSON and no more (its events are handed on as parsed); digest.deliver.events
    checks each event once, and mends (webhook) or skips (strict) the fields the store cannot hold,
    huge numbers included."""
    from digest.deliver import events as module
    from digest.web.webhook_input import read_events

    bad = [{**ev(1, "open", 1), "timestamp": 10**400, "digest_issue": 10**400, "digest_list": "9" * 5000},
           {**ev(2, "open", 2), "sg_event_id": "y" * 129}]
    body = json.dumps(bad).encode()
    assert read_events(body) == json.loads(body)  # nothing cleaned or dropped at the door
    calls: list[int] = []
    original = module.check
    monkeypatch.setattr(module, "check", lambda i, e, *a: calls.append(i) or original(i, e, *a))
    with session_factory(sent.database_url)() as s:
        strict = apply_batch(s, bad)
    assert calls == [0, 1] and strict.recorded == 0
    assert [line.split(":")[0] for line in strict.invalid] == ["event 0", "event 1"]
    assert "digest_issue 'a number of over 40 digits' is not an id" in strict.invalid[0]  # checked before the time
    assert "over 128" in strict.invalid[1]
    calls.clear()
    with session_factory(sent.database_url)() as s:
        mended = apply_batch(s, bad, mend=True)
    assert calls == [0, 1] and mended.recorded == 2 and mended.invalid == [] and mended.unmatched == 0
    first = mended.mended[0]
    assert "timestamp a number of over 40 digits is not Unix seconds" in first and "digest_list '99999" in first
    assert mended.mended[1] == "event 1: sg_event_id is 129 characters, over 128; stored as its sha256"


@pytest.mark.slow  # two threads post the same batch at once
def test_the_same_batch_posted_twice_at_once_is_stored_once(client: TestClient, signer: Signer,
                                                            sent: Settings) -> None:
    events = [ev(n, KINDS[n % 4], 1 + n % 20) for n in range(3_000)]
    events[1_500] = ev(1_500, "unsubscribe", 9)
    answers: list[Any] = []
    threads = [threading.Thread(target=lambda: answers.append(post(client, signer, events))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [a.status_code for a in answers] == [200, 200], [a.text[:300] for a in answers]
    assert sum(a.json()["recorded"] for a in answers) == 3_000
    assert sum(a.json()["applied"] for a in answers) == 1
    assert stored(sent) == 3_000 and statuses(sent)[9] == MembershipStatus.UNSUBSCRIBED


@pytest.mark.slow  # a 20,000-event batch in one thread, a reader's one-click unsubscribe in another
def test_a_one_click_unsubscribe_is_not_blocked_by_a_big_batch(client: TestClient, signer: Signer,
                                                               sent: Settings) -> None:
    """Only "not blocked for the whole batch" is asserted; benchmarks/webhook_batch.py measures the latency."""
    events = big_batch()
    with session_factory(sent.database_url)() as s:
        list_id = s.scalar(select(Membership.list_id).where(Membership.subscriber_id == 20))
    path = urlsplit(ReaderLinks(sent).unsubscribe_url(20, list_id)).path
    done: dict[str, float] = {}

    def batch() -> None:
        assert post(client, signer, events).status_code == 200
        done["batch"] = time.monotonic()

    worker = threading.Thread(target=batch)
    worker.start()
    deadline = time.monotonic() + 120
    while stored(sent) == 0 and time.monotonic() < deadline:  # the batch is being applied
        time.sleep(0.01)
    assert stored(sent) > 0 and "batch" not in done
    asked = time.monotonic()
    r = client.post(path, data={"List-Unsubscribe": "One-Click"}, follow_redirects=False)
    answered = time.monotonic()
    worker.join(timeout=300)
    assert r.status_code == 200 and "You are unsubscribed" in r.text
    assert statuses(sent)[20] == MembershipStatus.UNSUBSCRIBED
    assert answered < done["batch"], (f"the unsubscribe took {answered - asked:.2f} s and answered only after "
                                      "the batch was applied")
    assert stored(sent) == BIG - len(SKIPPED_OVER_HTTP) - len(DUPLICATES)


def _after_first_chunk(original: Any, reached: threading.Event, hold: threading.Event) -> Any:
    """_commit_chunk that stops once its first chunk is committed, until `hold` is set."""
    calls = []

    def wrapper(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            reached.set()
            hold.wait(60)
    return wrapper


def _before(original: Any, reached: threading.Event, hold: threading.Event) -> Any:
    """The step that stops before it starts, until `hold` is set."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        hold.wait(60)
        return original(*args, **kwargs)
    return wrapper


#: where the batch is held while the reader unsubscribes: the ECDSA check and the parse of the body (CPU
#: work that must not run on the event loop, or every other request of the worker waits for it), and between
#: two chunks (no transaction may be left open there, or the reader's UPDATE waits for the whole batch)
HOLDS = {"signature check": ("digest.web.webhooks", "check_signature", _before),
         "JSON parse": ("digest.web.webhooks", "read_events", _before),
         "between chunks": ("digest.deliver.events", "_commit_chunk", _after_first_chunk)}


@pytest.mark.slow  # a 20,000-event batch, held mid-way
@pytest.mark.parametrize("where", list(HOLDS))
def test_a_one_click_unsubscribe_is_answered_and_stored_while_a_big_batch_is_held_mid_way(
        client: TestClient, signer: Signer, sent: Settings, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Not a timing assertion: the batch is stopped at `where` until the reader's unsubscribe is answered and
    stored, so this fails if the unsubscribe needs the batch (or the event loop the batch runs on) to finish."""
    import importlib

    module_name, name, hook = HOLDS[where]
    module = importlib.import_module(module_name)
    reached, hold = threading.Event(), threading.Event()
    monkeypatch.setattr(module, name, hook(getattr(module, name), reached, hold))
    with session_factory(sent.database_url)() as s:
        list_id = s.scalar(select(Membership.list_id).where(Membership.subscriber_id == 20))
    path = urlsplit(ReaderLinks(sent).unsubscribe_url(20, list_id)).path
    answers: dict[str, Any] = {}
    batch = threading.Thread(target=lambda: answers.update(batch=post(client, signer, big_batch())))
    reader = threading.Thread(target=lambda: answers.update(
        reader=client.post(path, data={"List-Unsubscribe": "One-Click"}, follow_redirects=False)))
    batch.start()
    try:
        assert reached.wait(120), f"the batch never reached the {where}"
        reader.start()
        reader.join(timeout=30)
        answered_while_held = not reader.is_alive()
        status_while_held = statuses(sent)[20]
        batch_running = batch.is_alive()
        events_while_held = stored(sent)
    finally:
        hold.set()
        batch.join(timeout=300)
        reader.join(timeout=60)
    assert answered_while_held, f"the unsubscribe did not answer while the batch was held at the {where}"
    assert batch_running, "the batch finished before it was released"
    assert answers["reader"].status_code == 200 and "You are unsubscribed" in answers["reader"].text
    assert status_while_held == MembershipStatus.UNSUBSCRIBED
    assert events_while_held == (CHUNK if where == "between chunks" else 0)
    # and the batch, released, is stored whole
    assert answers["batch"].status_code == 200, answers["batch"].text[:300]
    assert stored(sent) == BIG - len(SKIPPED_OVER_HTTP) - len(DUPLICATES)
    assert statuses(sent)[20] == MembershipStatus.UNSUBSCRIBED


def test_a_server_process_freezes_what_its_start_up_built_and_switches_threads_sooner() -> None:
    """`digest serve` calls prepare_to_serve once the app is built: the start-up's objects leave the
    collector's sight (the full collections a big batch triggers walk only what came after: they stalled
    readers' requests 100-270 ms each when they walked everything), and a thread waiting for the GIL gets
    it within 1 ms (benchmarks/webhook_batch.py)."""
    import gc
    import sys

    from digest.web.app import SWITCH_INTERVAL, prepare_to_serve

    before, interval = gc.get_freeze_count(), sys.getswitchinterval()
    try:
        prepare_to_serve()
        assert gc.get_freeze_count() > before
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL) and interval > SWITCH_INTERVAL
    finally:
        gc.unfreeze()
        sys.setswitchinterval(interval)
