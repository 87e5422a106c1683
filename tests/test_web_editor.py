"""Editors' pages through the test client: preview, adjust, test send, approve."""

from __future__ import annotations

import re

from sqlalchemy import select

from digest import issues
from digest.store import IssueRow, session_scope
from tests.test_web_support import EDITOR, app_fixture, client_fixture, csrf, csrf_from, login, messages  # noqa: F401 (fixtures)


def draft_row(settings) -> IssueRow:
    with session_scope(settings.database_url) as s:
        return s.scalar(select(IssueRow).order_by(IssueRow.number.desc()))


def build(client) -> None:
    r = client.post("/admin/draft/build", data={"csrf_token": csrf(client, "/admin/draft")}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/draft"


def test_draft_page_shows_both_previews_the_text_and_the_checks(client, settings):
    login(client, EDITOR)
    empty = client.get("/admin/draft")
    assert empty.status_code == 200 and "Build the draft" in empty.text
    build(client)
    page = client.get("/admin/draft")
    assert page.status_code == 200
    row = draft_row(settings)
    assert row is not None and row.status == "draft"
    assert "Draft of issue 1 rebuilt" in page.text  # the flash message, shown once
    assert "rebuilt" not in client.get("/admin/draft").text
    assert page.text.count(f'src="/admin/preview/{row.number}.html"') == 2
    assert 'class="preview phone"' in page.text and 'class="preview desktop"' in page.text
    for check in row.checks:
        assert check["message"].replace("'", "&#39;") in page.text
    assert row.subject.split(" | ")[0].replace("'", "&#39;")[:30] in page.text
    text_part = row.text.splitlines()[0]
    assert text_part in page.text
    html = client.get(f"/admin/preview/{row.number}.html")
    assert html.status_code == 200 and html.text == row.html
    assert html.headers["content-security-policy"].startswith("sandbox")
    assert client.get(f"/admin/preview/{row.number}.txt").text == row.text
    assert client.get("/admin/preview/99.html").status_code == 404


def test_exclude_and_pin_articles_and_choose_listings(client, settings):
    login(client, EDITOR)
    build(client)
    before = issues.issue_of(draft_row(settings))
    assert len(before.articles) >= 3
    excluded, pinned = before.articles[0], before.articles[2]
    listing = "Cascade Slides & Play"
    page = client.get("/admin/draft").text
    assert f'value="{excluded.key}"' in page
    r = client.post("/admin/draft/adjust", data={
        "csrf_token": csrf_from(page), "number": "1", "exclude": [excluded.key], "pin": [pinned.key],
        "feature": [listing]}, follow_redirects=False)
    assert r.status_code == 303
    after = issues.issue_of(draft_row(settings))
    assert excluded.key not in [a.key for a in after.all_articles]
    assert after.articles[0].key == pinned.key
    assert listing in [x.name for x in after.listings]
    assert after.excluded == [excluded.key] and after.pinned == [pinned.key]
    page = client.get("/admin/draft").text
    assert "1 excluded, 1 pinned" in page
    # the excluded article is still offered, ticked, so the editor can take it back
    assert re.search(rf'name="exclude" value="{re.escape(excluded.key)}"[^>]*checked', page)
    r = client.post("/admin/draft/adjust", data={"csrf_token": csrf_from(page), "number": "1"},
                    follow_redirects=False)
    assert r.status_code == 303
    assert excluded.key in [a.key for a in issues.issue_of(draft_row(settings)).all_articles]


def test_send_a_test_to_oneself(client, settings):
    login(client, EDITOR)
    build(client)
    r = client.post("/admin/draft/test", data={"csrf_token": csrf(client, "/admin/draft")})
    assert r.status_code == 200 and f"sent to {EDITOR[0]}" in r.text
    (msg,) = messages(settings, EDITOR[0])
    assert str(msg["Subject"]).strip().startswith("[TEST]")
    assert draft_row(settings).status == "draft"  # a test sends nothing else and records nothing


def test_approve_what_was_reviewed(client, settings):
    login(client, EDITOR)
    build(client)
    page = client.get("/admin/draft").text
    version = re.search(r'name="version" value="([^"]*)"', page).group(1)
    # someone rebuilds the draft after this editor loaded it: approving the old view is refused
    with session_scope(settings.database_url) as s:
        issues.build_draft(settings, s, excluded=[issues.issue_of(draft_row(settings)).articles[0].key])
    r = client.post("/admin/draft/approve", data={"csrf_token": csrf_from(page), "number": "1", "version": version})
    assert r.status_code == 200 and "changed since you loaded it" in r.text
    assert draft_row(settings).status == "draft"
    page = r.text
    version = re.search(r'name="version" value="([^"]*)"', page).group(1)
    r = client.post("/admin/draft/approve", data={"csrf_token": csrf_from(page), "number": "1", "version": version})
    assert r.status_code == 200 and "Issue 1 approved" in r.text
    row = draft_row(settings)
    assert row.status == "approved" and row.approved_by == EDITOR[0]
    # a second approval is refused with the reason, not a trace
    r = client.post("/admin/draft/approve", data={"csrf_token": csrf_from(r.text), "number": "1", "version": ""})
    assert r.status_code == 200 and "only an issue that is" in r.text


def test_changing_an_approved_issue_needs_approval_again(client, settings):
    login(client, EDITOR)
    build(client)
    with session_scope(settings.database_url) as s:
        issues.approve(s, 1, by="someone")
    page = client.get("/admin/draft").text
    assert "Approve issue" not in page and "approved" in page
    r = client.post("/admin/draft/adjust", data={"csrf_token": csrf_from(page), "number": "1",
                                                 "exclude": [issues.issue_of(draft_row(settings)).articles[0].key]})
    assert r.status_code == 200 and "needs approving again" in r.text
    assert draft_row(settings).status == "draft"


def test_adjusting_an_issue_that_is_no_longer_open_is_refused(client, settings):
    login(client, EDITOR)
    build(client)
    token = csrf(client, "/admin/draft")
    r = client.post("/admin/draft/adjust", data={"csrf_token": token, "number": "7"})
    assert r.status_code == 200 and "can no longer be changed" in r.text


def test_dashboard_for_editors_and_admins(client, settings):
    login(client, EDITOR)
    build(client)
    page = client.get("/admin").text
    assert "Review the draft" in page and "Subscribers" not in page
    client.post("/logout", data={"csrf_token": csrf(client, "/admin")})
    login(client)
    page = client.get("/admin").text
    assert "Review the draft" in page and "Lists" in page and "Recent issues" in page
