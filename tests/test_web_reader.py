"""Reader pages through FastAPI's test client: subscribe, the signed links, the archive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from fastapi.testclient import TestClient
from sqlalchemy import select

from digest import issues
from digest.config import Web
from digest.store import session_scope
from digest.web.app import create_app
from subscribers import lifecycle
from subscribers.links import Tokens
from subscribers.models import Event, Membership, MembershipStatus, Subscriber
from tests.test_web_support import app_fixture, client_fixture, csrf, link, messages, path_of  # noqa: F401 (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def status_of(settings, email: str) -> str | None:
    with session_scope(settings.database_url) as s:
        sub = lifecycle.find(s, email)
        if sub is None:
            return None
        return s.scalar(select(Membership.status).where(Membership.subscriber_id == sub.id))


def subscribe_form(client: TestClient, email: str, **extra) -> object:
    return client.post("/subscribe", data={"csrf_token": csrf(client), "email": email, "name": "", **extra})


def active_readers(settings, *emails: str) -> None:
    with session_scope(settings.database_url) as s:
        for e in emails:
            lifecycle.subscribe(s, e, source="test", confirmed=True, list_slug=settings.delivery.list)


def send_issue(settings) -> None:
    outcome = issues.send(settings)
    assert outcome.report is not None and outcome.report.ok, outcome.message


def test_subscribe_confirm_by_the_emailed_link(client, settings):
    r = subscribe_form(client, "New.Reader@Example.com", name="New", categories=["Aquatics", "Not a category"])
    assert r.status_code == 200 and "Check your inbox" in r.text
    (msg,) = messages(settings, "new.reader@example.com")
    url = link(msg, "c")
    assert url.startswith(settings.publication.public_url + "/c/")
    page = client.get(path_of(url))
    assert page.status_code == 200 and "Yes, subscribe me" in page.text
    # opening the link (a mail scanner) is not consent
    assert status_of(settings, "new.reader@example.com") == MembershipStatus.PENDING
    done = client.post(path_of(url))
    assert done.status_code == 200 and "You are subscribed" in done.text
    assert status_of(settings, "new.reader@example.com") == MembershipStatus.ACTIVE
    with session_scope(settings.database_url) as s:
        sub = lifecycle.find(s, "new.reader@example.com")
        assert sub.categories == ["Aquatics"]  # only the directory's categories are kept
        kinds = [(e.kind, e.ip) for e in s.scalars(select(Event).where(Event.subscriber_id == sub.id))]
    assert ("confirmed", "testclient") in kinds


def test_the_answer_never_tells_who_is_known(client, settings):
    active_readers(settings, "known@example.com")
    known = subscribe_form(client, "known@example.com")
    unknown = subscribe_form(client, "stranger@example.com")
    assert known.status_code == unknown.status_code == 200
    assert known.text.replace("known@example.com", "X") == unknown.text.replace("stranger@example.com", "X")


def test_honeypot_answers_like_success_and_does_nothing(client, settings):
    r = subscribe_form(client, "bot@example.com", website="http://spam.example")
    assert r.status_code == 200 and "Check your inbox" in r.text
    assert status_of(settings, "bot@example.com") is None
    assert messages(settings) == []


def test_subscribe_is_rate_limited_per_ip(settings):
    from tests.test_web_support import make_users

    make_users(settings)
    limited = settings.model_copy(update={"web": Web(subscribe_limit=2, subscribe_window_seconds=600)})
    with TestClient(create_app(limited)) as c:
        answers = [subscribe_form(c, f"r{i}@example.com").status_code for i in range(3)]
    assert answers == [200, 200, 429]
    assert status_of(settings, "r2@example.com") is None


def test_subscribe_refuses_a_form_without_its_csrf_token(client, settings):
    client.get("/subscribe")
    r = client.post("/subscribe", data={"email": "x@example.com"})
    assert r.status_code == 403
    r = client.post("/subscribe", data={"email": "x@example.com", "csrf_token": "forged"})
    assert r.status_code == 403
    assert status_of(settings, "x@example.com") is None


def test_bad_address_is_named_and_nothing_sent(client, settings):
    r = subscribe_form(client, "not-an-address")
    assert r.status_code == 422 and "does not look like an email address" in r.text
    assert messages(settings) == []


def test_expired_and_tampered_links_get_a_clear_page(client, settings):
    active_readers(settings, "ann@example.com")
    with session_scope(settings.database_url) as s:
        sub = lifecycle.find(s, "ann@example.com")
        list_id = sub.memberships[0].list_id
        sid = sub.id
    tokens = Tokens(settings.secret_key)
    with time_machine.travel(datetime.now(UTC) - timedelta(days=settings.subscribers.link_expiry_days + 5)):
        old = tokens.make("unsubscribe", sid, list_id)
    expired = client.get(f"/u/{old}")
    assert expired.status_code == 400 and "This link has expired" in expired.text
    assert client.post(f"/u/{old}").status_code == 400
    good = tokens.make("unsubscribe", sid, list_id)
    for bad in (good[:-1] + ("A" if good[-1] != "A" else "B"), good[:20], "x" * 40):
        for method in ("GET", "POST"):
            r = client.request(method, f"/u/{bad}")
            assert r.status_code == 400 and "This link is not valid" in r.text
            assert "Traceback" not in r.text
    # a confirm token is not an unsubscribe token (one signer per purpose)
    assert client.post(f"/u/{tokens.make('confirm', sid, list_id)}").status_code == 400
    assert client.get(f"/p/{good}").status_code == 400
    assert status_of(settings, "ann@example.com") == MembershipStatus.ACTIVE


def test_one_click_unsubscribe_from_a_sent_email(client, settings):
    active_readers(settings, "ann@example.com", "bob@example.com")
    send_issue(settings)
    (msg,) = messages(settings, "ann@example.com")
    header = str(msg["List-Unsubscribe"])
    url = header.split("<", 1)[1].split(">", 1)[0]
    assert url == link(msg, "u") and msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    page = client.get(path_of(url))
    assert page.status_code == 200 and 'method="post"' in page.text and "ann@example.com" in page.text
    assert status_of(settings, "ann@example.com") == MembershipStatus.ACTIVE  # the GET page only asks
    # the mail provider's POST: no cookie, no form token, no login; 200 and no redirect (RFC 8058)
    with TestClient(client.app) as provider:
        r = provider.post(path_of(url), data={"List-Unsubscribe": "One-Click"}, follow_redirects=False)
    assert r.status_code == 200 and "You are unsubscribed" in r.text
    assert status_of(settings, "ann@example.com") == MembershipStatus.UNSUBSCRIBED
    assert status_of(settings, "bob@example.com") == MembershipStatus.ACTIVE  # ann's token acted on ann only
    with session_scope(settings.database_url) as s:
        sub = lifecycle.find(s, "ann@example.com")
        sources = [e.source for e in s.scalars(select(Event).where(Event.subscriber_id == sub.id,
                                                                   Event.kind == "unsubscribed"))]
    assert sources == ["reader: one-click (RFC 8058)"]
    again = client.post(path_of(url))  # a second click is harmless
    assert again.status_code == 200 and status_of(settings, "ann@example.com") == MembershipStatus.UNSUBSCRIBED


def test_preferences_page_changes_only_its_own_reader(client, settings):
    active_readers(settings, "ann@example.com", "bob@example.com")
    send_issue(settings)
    (msg,) = messages(settings, "ann@example.com")
    url = path_of(link(msg, "p"))
    page = client.get(url)
    assert page.status_code == 200 and "ann@example.com" in page.text and "bob@example.com" not in page.text
    token = csrf(client, url)
    with session_scope(settings.database_url) as s:
        bob_id = lifecycle.find(s, "bob@example.com").id
    # extra fields naming someone else are ignored: the signed URL decides whose preferences these are
    r = client.post(url, data={"csrf_token": token, "categories": ["Aquatics", "Fitness"], "lists": [],
                               "subscriber_id": str(bob_id), "email": "bob@example.com"})
    assert r.status_code == 200 and "Saved." in r.text
    with session_scope(settings.database_url) as s:
        ann, bob = lifecycle.find(s, "ann@example.com"), lifecycle.find(s, "bob@example.com")
        assert ann.categories == ["Aquatics", "Fitness"] and bob.categories == []
    assert status_of(settings, "ann@example.com") == MembershipStatus.UNSUBSCRIBED
    assert status_of(settings, "bob@example.com") == MembershipStatus.ACTIVE
    assert client.post(url, data={"categories": ["Aquatics"]}).status_code == 403  # no CSRF token


def test_archive_shows_sent_issues_without_reader_parts(client, settings):
    assert "No issue has been sent yet" in client.get("/issues").text
    with session_scope(settings.database_url) as s:
        issues.build_draft(settings, s)
    assert client.get("/issues/1").status_code == 404  # a draft is not public
    active_readers(settings, "ann@example.com")
    send_issue(settings)
    listing = client.get("/issues")
    assert listing.status_code == 200 and 'href="/issues/1"' in listing.text
    page = client.get("/issues/1")
    assert page.status_code == 200
    assert "%%" not in page.text and "/u/" not in page.text and "/p/" not in page.text
    assert f"{settings.publication.public_url}/unsubscribe" in page.text
    assert "ann@example.com" not in page.text
    assert client.get("/issues/2").status_code == 404
    assert client.get("/issues/abc").status_code == 404  # not an issue number: no such page (digest.web.numbers)


def test_public_unsubscribe_page_explains_the_way_out(client, settings):
    r = client.get("/unsubscribe")
    assert r.status_code == 200 and settings.publication.reply_to in r.text and "Unsubscribe" in r.text
    assert "set-cookie" not in r.headers  # a page without a form gives no cookie


def test_confirm_link_of_a_removed_reader_is_explained(client, settings):
    subscribe_form(client, "gone@example.com")
    (msg,) = messages(settings, "gone@example.com")
    with session_scope(settings.database_url) as s:
        s.delete(s.scalar(select(Subscriber).where(Subscriber.email_key == "gone@example.com")))
    assert client.get(path_of(link(msg, "c"))).status_code == 404
    r = client.post(path_of(link(msg, "c")))
    assert r.status_code == 400 and "Traceback" not in r.text


def test_a_bug_answers_with_a_plain_page_and_no_trace(app, monkeypatch, caplog):
    def broken(_settings):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internals")

    monkeypatch.setattr("digest.web.reader.known_categories", broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/subscribe")
    assert r.status_code == 500 and "Something went wrong" in r.text
    assert "secret internals" not in r.text and "Traceback" not in r.text
    assert "secret internals" in caplog.text  # the trace goes to the server's log
