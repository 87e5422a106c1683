"""No input answers 5xx (issue 17, point 14): one regression test for each of the 17 causes a schemathesis
run and hand-made requests found, at the HTTP level, on both databases.

Causes 1-7: numbers in paths, queries and forms (digest.web.numbers); 8: /login?next; 9: CSRF compare;
10-15: the SendGrid webhook (digest.web.webhook_input); 16-17: bodies (digest.web.bodyguard).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from digest import issues
from digest.config import Settings, load_settings
from digest.store import DeliveryEvent, IssueRow, migrate, session_factory
from digest.web.app import create_app
from digest.web.bodyguard import MAX_FIELDS, MAX_FORM
from tests import test_webhooks_sendgrid as hooks
from tests.fakes.readers import seed_readers, set_keys
from tests.test_web_support import app_fixture, client_fixture, csrf, csrf_from, login  # noqa: F401 (fixtures)

BIG = str(2**63)  # one past the largest signed 64-bit integer
HUGE = str(10**20)


@pytest.fixture
def sent_client(client: TestClient, settings: Settings) -> TestClient:
    """Issue 1 sent to three readers, issue 2 an open draft."""
    seed_readers(settings, 3)
    outcome = issues.send(settings)
    assert outcome.report is not None and outcome.report.submitted == 3
    with session_factory(settings.database_url)() as db:
        issues.build_draft(settings, db, by="test")
        db.commit()
    return client


# -- 1-7: numbers of 2^63 or more, or no number at all --------------------------------------------------


@pytest.mark.parametrize("number", [BIG, HUGE, "9" * 5000])
def test_1_an_archive_number_past_64_bits_is_not_found(sent_client: TestClient, number: str) -> None:
    assert sent_client.get("/issues/1").status_code == 200
    assert sent_client.get(f"/issues/{number}").status_code == 404


def test_2_a_subscriber_id_past_64_bits_is_not_found(sent_client: TestClient) -> None:
    login(sent_client)
    assert sent_client.get("/admin/subscribers/1").status_code == 200
    assert sent_client.get(f"/admin/subscribers/{BIG}").status_code == 404
    token = csrf(sent_client, "/admin/subscribers/1")
    r = sent_client.post(f"/admin/subscribers/{HUGE}/unsubscribe", data={"csrf_token": token})
    assert r.status_code == 404


@pytest.mark.parametrize("suffix", ["html", "txt"])
def test_3_a_preview_number_past_64_bits_is_not_found(sent_client: TestClient, suffix: str) -> None:
    login(sent_client)
    assert sent_client.get(f"/admin/preview/1.{suffix}").status_code == 200
    assert sent_client.get(f"/admin/preview/{BIG}.{suffix}").status_code == 404
    assert sent_client.get(f"/admin/issues/{BIG}/recall").status_code == 404


@pytest.mark.parametrize("value", [BIG, "\u00b2", "9" * 5000])
def test_3_the_report_pages_take_no_number_past_64_bits(sent_client: TestClient, value: str) -> None:
    """The reports (issue 14) came after the 17 causes: their path and `?last=` go through the same door."""
    login(sent_client)
    assert sent_client.get("/admin/issues/1").status_code == 200
    assert sent_client.get(f"/admin/issues/{value}").status_code == 404
    for page in ("/admin/suppliers", "/admin/suppliers.csv"):
        assert sent_client.get(f"{page}?last={value}").status_code == 200, page


@pytest.mark.parametrize("key", ["before", "after"])
def test_4_paging_past_64_bits_shows_the_first_page(sent_client: TestClient, key: str) -> None:
    login(sent_client)
    r = sent_client.get(f"/admin/subscribers?{key}={BIG}")
    assert r.status_code == 200 and "reader1@example.com" in r.text


def test_5_approving_an_issue_number_past_64_bits_is_not_found_and_approves_nothing(
        sent_client: TestClient, settings: Settings) -> None:
    login(sent_client)
    token = csrf(sent_client, "/admin/draft")
    for number in (BIG, "²", "1e3", ""):
        r = sent_client.post("/admin/draft/approve", data={"csrf_token": token, "number": number, "version": ""})
        assert r.status_code in (404, 422), (number, r.status_code)
    r = sent_client.post("/admin/draft/adjust", data={"csrf_token": token, "number": BIG})
    assert r.status_code == 404
    with session_factory(settings.database_url)() as db:
        assert db.scalar(select(IssueRow.status).where(IssueRow.number == 2)) == "draft"


@pytest.mark.parametrize("value", ["²", "١٢", "1_000", " 12", "-1"])
def test_6_paging_with_what_is_no_plain_number_shows_the_first_page(sent_client: TestClient, value: str) -> None:
    login(sent_client)
    r = sent_client.get("/admin/subscribers", params={"before": value})
    assert r.status_code == 200 and "reader1@example.com" in r.text


def test_7_paging_with_5000_digits_shows_the_first_page(sent_client: TestClient) -> None:
    login(sent_client)
    r = sent_client.get("/admin/subscribers?before=" + "9" * 5000)
    assert r.status_code == 200 and "reader1@example.com" in r.text


# -- 8-9: the login target and the CSRF token ----------------------------------------------------------


@pytest.mark.parametrize(("target", "lands"), [
    ("//%5B", "/admin"), ("//[::1", "/admin"), ("%2F%2F%5B", "/admin"), ("/%5B", "/["), ("//x.example", "/admin"),
    ("/admin/lists", "/admin/lists")])
def test_8_a_login_target_that_is_no_url_of_ours_falls_back_to_admin(client: TestClient, target: str,
                                                                     lands: str) -> None:
    r = client.get(f"/login?next={target}")
    assert r.status_code == 200
    assert f'name="next" value="{lands}"' in r.text


@pytest.mark.parametrize("token", ["é", "令牌", "\u00a0", "x" * 5000])
def test_9_a_non_ascii_csrf_token_with_a_visitor_cookie_is_refused(client: TestClient, settings: Settings,
                                                                  token: str) -> None:
    csrf(client)  # the visitor's cookie, holding the session's real token
    r = client.post("/subscribe", data={"csrf_token": token, "email": "new@example.com"})
    assert r.status_code == 403
    r = client.post("/login", data={"csrf_token": token, "email": "admin@example.com", "password": "x"})
    assert r.status_code == 403
    from subscribers.models import Subscriber

    with session_factory(settings.database_url)() as db:
        assert db.scalar(select(func.count()).select_from(Subscriber)) == 0


# -- 10-15: the SendGrid Event Webhook --------------------------------------------------------------------


@pytest.fixture
def hook(workdir: Path, signer: hooks.Signer) -> Iterator[tuple[TestClient, Settings]]:
    set_keys(workdir, "delivery.sendgrid", webhook_public_key=signer.public, webhook_max_age_seconds=300)
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    seed_readers(settings, 3)
    outcome = issues.send(settings)
    assert outcome.report is not None and outcome.report.submitted == 3
    with TestClient(create_app(settings)) as c:
        yield c, settings


@pytest.fixture
def signer() -> hooks.Signer:
    return hooks.Signer()


def _events(settings: Settings) -> list[tuple[str, Any, Any]]:
    with session_factory(settings.database_url)() as db:
        return [tuple(r) for r in db.execute(select(DeliveryEvent.provider_event_id, DeliveryEvent.subscriber_id,
                                                    DeliveryEvent.at).order_by(DeliveryEvent.id))]


def test_10_a_timestamp_header_of_400_digits_is_refused_before_any_arithmetic(hook, signer) -> None:
    client, settings = hook
    body = json.dumps([hooks.event(1, "spamreport", 1)]).encode()
    headers_bytes: dict[str, Any] = dict(signer.headers(body))
    for bad in ("9" * 400, "-" + "9" * 400, "1e20", "١٧٠٠٠٠٠٠٠٠", " 1700000000"):
        headers_bytes[hooks.TS] = bad.encode()  # as sent on the wire (non-ASCII digits too)
        r = client.post("/webhooks/sendgrid", content=body, headers=headers_bytes)
        assert r.status_code == 403 and r.json()["detail"] == "bad timestamp", (bad, r.text)
    assert _events(settings) == [] and hooks.statuses(settings)["reader1@example.com"] == "active"


@pytest.mark.parametrize("stamp", [10**20, 1e20, -(10**15), -1e15, 253_402_300_800, "99999999999999999999"])
def test_11_12_an_event_timestamp_no_datetime_holds_is_the_time_received(hook, signer, stamp) -> None:
    client, settings = hook
    before = time.time()
    r = hooks.post(client, signer, [hooks.event(1, "bounce", 1, timestamp=stamp, type="bounce"),
                                    hooks.event(2, "delivered", 2)])
    assert r.status_code == 200, r.text
    assert r.json()["recorded"] == 2 and r.json()["applied"] == 1
    (mended,) = r.json()["mended"]  # said, not silent: the stored time is not SendGrid's
    assert mended.startswith("event 0: timestamp ") and mended.endswith("; the time received stands in"), mended
    rows = _events(settings)
    assert [e for e, _, _ in rows] == ["evt-1", "evt-2"]
    at = rows[0][2]
    received = (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()  # SQLite keeps naive UTC
    assert abs(received - before) < 600, at
    assert hooks.statuses(settings)["reader1@example.com"] == "bounced"


def test_13_ids_of_10_to_the_20_are_matched_by_address(hook, signer) -> None:
    client, settings = hook
    forged = hooks.event(1, "spamreport", 1, digest_issue=HUGE, digest_subscriber=10**20, digest_list=BIG)
    r = hooks.post(client, signer, [forged])
    assert r.status_code == 200, r.text
    assert r.json()["recorded"] == 1 and r.json()["applied"] == 1 and r.json()["unmatched"] == 0
    (mended,) = r.json()["mended"]
    for arg in ("digest_issue", "digest_subscriber", "digest_list"):
        assert f"{arg} " in mended, mended
    assert mended.count("is not an id (1 to 2**63-1); matched by address") == 3, mended
    assert hooks.statuses(settings)["reader1@example.com"] == "complained"


def test_14_an_sg_event_id_over_128_characters_is_still_a_duplicate_on_retry(hook, signer) -> None:
    client, settings = hook
    batch = [hooks.event(1, "unsubscribe", 1, sg_event_id="e" * 300), hooks.event(2, "delivered", 2)]
    first = hooks.post(client, signer, batch)
    assert first.status_code == 200 and first.json()["recorded"] == 2
    assert first.json()["mended"] == ["event 0: sg_event_id is 300 characters, over 128; stored as its sha256"]
    again = hooks.post(client, signer, batch)  # SendGrid retries a batch it did not see answered
    assert again.status_code == 200, again.text
    assert again.json()["recorded"] == 0 and again.json()["duplicates"] == 2
    assert len(_events(settings)) == 2


@pytest.mark.parametrize("depth", [100_000, 9])
def test_15_json_nested_deep_is_a_400_after_the_signature(hook, signer, depth: int) -> None:
    client, settings = hook
    body = b"[" * depth + b"]" * depth
    r = client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body))
    assert r.status_code == 400 and "nests deeper" in r.json()["detail"]
    ok = json.dumps([{**hooks.event(1, "delivered", 1), "pool": {"name": "a", "id": 1}}]).encode()
    assert client.post("/webhooks/sendgrid", content=ok, headers=signer.headers(ok)).json()["recorded"] == 1
    assert len(_events(settings)) == 1


# -- 16-17: bodies bounded, and login before a body is read --------------------------------------------

FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("size", [20 * 1024 * 1024, MAX_FORM, MAX_FIELDS])
def test_16_a_body_of_separators_is_refused_before_it_is_parsed(client: TestClient, settings: Settings,
                                                               size: int) -> None:
    csrf(client)  # a visitor with a cookie
    started = time.monotonic()
    r = client.post("/subscribe", content=b"&" * size, headers=FORM)
    assert r.status_code == 413, r.status_code
    assert time.monotonic() - started < 5  # python-multipart took 49 s on 20 MB
    r = client.post("/subscribe", content=b";" * size, headers=FORM)
    assert r.status_code == 413
    # an ordinary form still passes the door (and is refused for its missing token only)
    assert client.post("/subscribe", content=b"email=a%40example.com" + b"&" * 10, headers=FORM).status_code == 403


def test_16_a_chunked_body_is_refused_and_an_upload_is_bounded(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"email=a%40example.com"

    assert client.post("/subscribe", content=chunks(), headers=FORM).status_code == 411
    login(client)
    r = client.post("/admin/import", content=b"x", headers={"content-length": str(200 * 1024 * 1024),
                                                             "content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413


def _call(app: Any, path: str, body: bytes, cookie: str = "") -> tuple[int, bool]:
    """The app called as a server calls it; returns the status and whether the body was read at all."""
    read = False
    status = 0
    headers = [(b"content-type", FORM["content-type"].encode()), (b"content-length", str(len(body)).encode()),
               (b"host", b"127.0.0.1:8000")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000), "root_path": "", "app": app}

    async def receive() -> dict[str, Any]:
        nonlocal read
        read = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    asyncio.run(app(scope, receive, send))
    return status, read


@pytest.mark.parametrize("path", ["/admin/draft/adjust", "/admin/draft/approve", "/admin/import",
                                  "/admin/subscribers/1/unsubscribe", "/admin/draft/build"])
def test_17_an_admin_post_without_login_is_refused_before_its_body_is_read(app: Any, client: TestClient,
                                                                           path: str) -> None:
    status, read = _call(app, path, b"&" * (MAX_FIELDS - 1))
    assert status == 401 and not read
    login(client)  # the same request with an admin's session cookie gets past the door and reads its body
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    status, read = _call(app, path, b"number=1", cookie)
    assert read and status < 500, status
