"""The pages a person uses, in headless Debian Chromium (Playwright) against the real app under uvicorn.

Screenshots at 375 px and 1280 px go to $DIGEST_SCREENSHOTS (default test-artifacts/screenshots), which
CI keeps in its log.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from digest import issues
from digest.config import Settings, load_settings
from digest.store import IssueRow, migrate, session_scope
from digest.web.app import create_app
from subscribers import lifecycle
from tests.conftest import edit_config, screenshots
from tests.test_web_support import ADMIN, EDITOR, make_users, messages

pytestmark = pytest.mark.browser

WIDTHS = (375, 1280)




def shoot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """The page at phone and desktop width, full length."""
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(screenshots() / f"web-{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


@dataclass
class Live:
    url: str
    settings: Settings


@pytest.fixture
def live(workdir: Path) -> Iterator[Live]:
    """The real app served by uvicorn on a free port, with public_url pointing at it (links in emails work)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    edit_config(workdir, 'public_url = "http://127.0.0.1:8000"', f'public_url = "http://127.0.0.1:{port}"')
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    make_users(settings)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Live(f"http://127.0.0.1:{port}", settings)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def page(browser, live: Live) -> Iterator:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live.url)
    context.set_default_timeout(10_000)
    pg = context.new_page()
    yield pg
    context.close()


def status_of(settings: Settings, email: str) -> str:
    with session_scope(settings.database_url) as s:
        sub = lifecycle.find(s, email)
        assert sub is not None
        return sub.memberships[0].status


def log_in(page, who: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    page.goto("/admin")
    assert "/login" in page.url  # no session: sent to the login form
    page.get_by_label("Email").fill(who[0])
    page.get_by_label("Password").fill(who[1])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/admin")


def test_subscribe_then_confirm_from_the_email(page, live):
    page.goto("/subscribe")
    shoot(page, "subscribe")
    page.get_by_label("Email address").fill("Reader.One@Example.com")
    page.get_by_label("Name").fill("Reader One")
    page.get_by_label("Aquatics").check()
    page.get_by_role("button", name="Subscribe").click()
    page.get_by_role("heading", name="Check your inbox").wait_for()
    shoot(page, "subscribe-sent")
    assert status_of(live.settings, "reader.one@example.com") == "pending"

    (msg,) = messages(live.settings, "reader.one@example.com")
    html = msg.get_body(preferencelist=("html",)).get_content()
    confirm = re.search(r'href="([^"]+/c/[^"]+)"', html).group(1)
    assert confirm.startswith(live.url)
    page.goto(confirm)
    shoot(page, "confirm")
    page.get_by_role("button", name="Yes, subscribe me").click()
    page.get_by_role("heading", name="You are subscribed").wait_for()
    shoot(page, "confirmed")
    assert status_of(live.settings, "reader.one@example.com") == "active"


def test_unsubscribe_in_one_click_from_a_sent_eml(page, live):
    with session_scope(live.settings.database_url) as s:
        for e in ("ann@example.com", "bob@example.com"):
            lifecycle.subscribe(s, e, source="test", confirmed=True, list_slug=live.settings.delivery.list)
    assert issues.send(live.settings).report.submitted == 2
    (msg,) = messages(live.settings, "ann@example.com")
    html = msg.get_body(preferencelist=("html",)).get_content()
    unsubscribe = re.search(r'href="([^"]+/u/[^"]+)"[^>]*>\s*Unsubscribe', html).group(1)
    page.goto(unsubscribe)
    shoot(page, "unsubscribe")
    page.get_by_role("button", name="Unsubscribe").click()
    page.get_by_role("heading", name="You are unsubscribed").wait_for()
    shoot(page, "unsubscribed")
    assert status_of(live.settings, "ann@example.com") == "unsubscribed"
    assert status_of(live.settings, "bob@example.com") == "active"
    # the view-in-browser link of the same email lands on the public archive copy
    view = re.search(r'href="([^"]+/issues/1)"', html).group(1)
    page.goto(view)
    assert "/u/" not in page.content()
    shoot(page, "archive-issue")


def test_editor_previews_excludes_an_article_and_approves(page, live):
    log_in(page, EDITOR)
    page.goto("/admin/draft")
    page.get_by_role("button", name="Build the draft").click()
    page.get_by_role("heading", name=re.compile(r"Issue #1")).wait_for()
    with session_scope(live.settings.database_url) as s:
        first = issues.issue_of(issues.current_issue(s)).articles[0]
    # both previews show the draft, the phone one at 375 px
    frames = page.locator("iframe")
    assert frames.count() == 2
    phone = page.locator(".preview.phone iframe").bounding_box()
    assert round(phone["width"]) == 375
    assert first.title in page.frame_locator(".preview.desktop iframe").locator("body").inner_text()
    shoot(page, "draft")
    page.get_by_label(f"Exclude {first.title}").check()
    page.get_by_role("button", name="Save and rebuild the draft").click()
    page.get_by_text("1 excluded").wait_for()
    assert first.title not in page.frame_locator(".preview.desktop iframe").locator("body").inner_text()
    page.get_by_role("button", name="Approve issue #1").click()
    page.get_by_text("Issue 1 approved").wait_for()
    shoot(page, "draft-approved")
    # the previews are sandboxed (cross-origin) frames, which a full-page capture leaves blank below the
    # fold: capture them where they are on screen as well
    for width, part in ((375, ".preview.phone"), (1280, ".previews")):
        page.set_viewport_size({"width": width, "height": 900})
        page.locator(part).screenshot(path=str(screenshots() / f"web-draft-previews-{width}.png"))
    with session_scope(live.settings.database_url) as s:
        row = s.query(IssueRow).filter_by(number=1).one()
        assert row.status == "approved" and row.approved_by == EDITOR[0]
        assert first.key in issues.issue_of(row).excluded


def test_admin_imports_a_csv_with_bad_rows_and_sees_the_report(page, live, tmp_path):
    log_in(page, ADMIN)
    csv_file = tmp_path / "readers.csv"
    csv_file.write_text("email;name\r\nann@example.com;Ann\r\nnot an address;Bad\r\nbob@example.com;Bob\r\n"
                        "ANN@example.com;Ann again\r\n", encoding="utf-8-sig")
    page.goto("/admin/import")
    page.get_by_label("CSV file").set_input_files(str(csv_file))
    page.get_by_role("button", name="Import").click()
    page.get_by_role("heading", name="Import of readers.csv").wait_for()
    assert page.locator('[data-count="added"]').inner_text() == "2"
    assert page.locator('[data-count="rejected"]').inner_text() == "2"
    rejects = page.locator("table.rejects tbody tr")
    assert rejects.count() == 2
    assert "not an address" in rejects.all_inner_texts()[0] + rejects.all_inner_texts()[1]
    shoot(page, "import-report")
    page.goto("/admin/subscribers?q=example.com")
    assert page.get_by_role("link", name="ann@example.com").count() == 1
    shoot(page, "subscribers")
