"""Issue 17, point 17: every reader, editor and admin page passes axe-core's WCAG 2.1 A and AA rules (no
serious or critical violation) and shows a focus ring of at least 3:1 on every focusable element; the
draft page has a skip link past its two previews; /issues/N sits in the site's header and a main landmark.

Headless Debian Chromium against the real app under uvicorn (the `live` fixture of test_browser_web.py);
axe-core 4.14 from npm (tests/axe.py). Screenshots go where the other browser tests put theirs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest

from digest import issues
from digest.store import session_scope, utcnow
from subscribers import counts, lifecycle
from tests import test_browser_web
from tests.axe import assert_accessible, describe, inject, violations, weak_focus_rings
from tests.conftest import screenshots
from tests.fakes.readers import seed_readers
from tests.test_browser_web import Live, log_in, shoot
from tests.test_web_support import ADMIN, EDITOR, messages

pytestmark = pytest.mark.browser

live = test_browser_web.live  # the real app under uvicorn on a free port (the same fixture)


@pytest.fixture
def page(browser, live: Live) -> Iterator:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live.url)
    context.set_default_timeout(10_000)
    inject(context)
    pg = context.new_page()
    yield pg
    context.close()


def audit(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """axe on the page, then its focus rings, then screenshots at both widths."""
    assert_accessible(page, name)
    weak = weak_focus_rings(page)
    assert not weak, f"{name}: focus rings under 3:1 or missing: {weak}"
    shoot(page, f"a11y-{name}")


def link_in(html: str, pattern: str) -> str:
    found = re.search(rf'href="([^"]*{pattern}[^"]*)"', html)
    assert found, pattern
    return found.group(1)


def sent_issue(live: Live) -> str:
    """Two readers and issue 1 sent to them; Ann's HTML part."""
    with session_scope(live.settings.database_url) as s:
        for e in ("ann@example.com", "bob@example.com"):
            lifecycle.subscribe(s, e, name=e[:3].title(), source="test", confirmed=True,
                                list_slug=live.settings.delivery.list)
    assert issues.send(live.settings).report.submitted == 2
    (msg,) = messages(live.settings, "ann@example.com")
    return msg.get_body(preferencelist=("html",)).get_content()


def test_every_reader_page_passes_axe(page, live: Live) -> None:  # type: ignore[no-untyped-def]
    html = sent_issue(live)
    page.goto("/subscribe")
    audit(page, "subscribe")
    page.get_by_label("Email address").fill("carol@example.com")
    page.get_by_role("button", name="Subscribe").click()
    page.get_by_role("heading", name="Check your inbox").wait_for()
    audit(page, "subscribe-sent")
    (confirmation,) = messages(live.settings, "carol@example.com")
    page.goto(link_in(confirmation.get_body(preferencelist=("html",)).get_content(), "/c/"))
    audit(page, "confirm")
    page.get_by_role("button", name="Yes, subscribe me").click()
    page.get_by_role("heading", name="You are subscribed").wait_for()
    audit(page, "confirmed")

    page.goto(link_in(html, "/p/"))
    audit(page, "preferences")
    page.goto(link_in(html, "/u/"))
    audit(page, "unsubscribe")
    page.get_by_role("button", name="Unsubscribe").click()
    page.get_by_role("heading", name="You are unsubscribed").wait_for()
    audit(page, "unsubscribed")
    page.goto("/u/not-a-token")
    audit(page, "bad-link")
    page.goto("/unsubscribe")
    audit(page, "leave")
    page.goto("/login")
    audit(page, "login")
    page.goto("/issues/999")  # the message page every error shows
    page.get_by_role("heading", name="Not found").wait_for()
    audit(page, "not-found")

    page.goto("/issues")
    audit(page, "archive")
    page.goto(link_in(html, "/issues/1"))
    audit(page, "archive-issue")
    # the issue sits inside the site: its header (with the way back to the archive) and a main landmark
    # holding the email, not a bare email document
    assert page.get_by_role("banner").get_by_role("link", name="Archive").is_visible()
    main = page.get_by_role("main")
    assert main.count() == 1
    assert "Asking a small favour" in main.inner_text()
    assert "/u/" not in page.content()


def test_every_editor_and_admin_page_passes_axe(page, live: Live, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sent_issue(live)
    log_in(page, ADMIN)
    audit(page, "dashboard")
    page.goto("/admin/draft")
    audit(page, "no-draft")
    page.get_by_role("button", name="Build the draft").click()
    page.get_by_role("heading", name=re.compile(r"Issue #2")).wait_for()
    audit(page, "draft")
    for where in ("/admin/subscribers", "/admin/lists", "/admin/issues", "/admin/issues/1/recall", "/admin/import",
                  "/admin/issues/1", "/admin/suppliers", "/admin/lists/weekly"):  # the reports too
        page.goto(where)
        audit(page, where.strip("/").replace("/", "-"))
    page.goto("/admin/subscribers")
    page.get_by_role("link", name="ann@example.com").click()
    page.get_by_role("heading", name=re.compile("ann@example.com")).wait_for()
    audit(page, "subscriber")
    csv_file = tmp_path / "readers.csv"
    csv_file.write_text("email,name\r\ndee@example.com,Dee\r\nnot an address,Bad\r\n", encoding="utf-8")
    page.goto("/admin/import")
    page.get_by_label("CSV file").set_input_files(str(csv_file))
    page.get_by_role("button", name="Import").click()
    page.get_by_role("heading", name="Import of readers.csv").wait_for()
    audit(page, "import-result")


def test_the_lists_page_of_a_large_database_and_its_count_now_button_pass_axe(  # type: ignore[no-untyped-def]
        page, live: Live) -> None:
    """Above EXACT_UP_TO memberships the lists page shows the stored counts, their age and a "Count now"
    button (subscribers/counts.py), a state the audit of the other admin pages (a few readers) never
    reaches. The database is really that large (bulk rows, about a second), so the page is the real one."""
    large = counts.EXACT_UP_TO + 1
    seed_readers(live.settings, large)
    with session_scope(live.settings.database_url) as s:
        counts.refresh(s, now=utcnow() - timedelta(minutes=7))
    seed_readers(live.settings, 2)  # joined after that count: not in the stored figures until a recount
    log_in(page, ADMIN)
    page.goto("/admin/lists")
    button = page.get_by_role("button", name="Count now")
    button.wait_for()
    hint = page.locator("form[action='/admin/lists/count'] .hint")
    assert hint.inner_text().startswith("Counted 7 min ago"), hint.inner_text()
    active = page.locator("table.counts tbody a[href$='status=active']")
    assert active.inner_text() == f"{large:,}"
    audit(page, "lists-stored-counts")  # axe, and the button's focus ring with the rest
    button.click()
    page.wait_for_url("**/admin/lists")
    page.get_by_text("Counted less than a minute ago").wait_for()
    assert active.inner_text() == f"{large + 2:,}", "the recount shows the two who joined after the last count"
    audit(page, "lists-counted-now")


def test_the_editor_skips_the_previews_to_the_adjust_form(page, live: Live) -> None:  # type: ignore[no-untyped-def]
    log_in(page, EDITOR)
    audit(page, "dashboard-editor")
    page.goto("/admin/subscribers")  # an admin's page: the editor is told so
    page.get_by_role("heading", name="Not allowed").wait_for()
    audit(page, "not-allowed")
    page.goto("/admin/draft")
    page.get_by_role("button", name="Build the draft").click()
    skip = page.get_by_role("link", name=re.compile("Skip the previews"))
    skip.wait_for()
    # the skip link comes before the previews in the tab order: Tab from the actions reaches it first
    order = page.evaluate("""() => [...document.querySelectorAll('a[href], button, iframe, input:not([type=hidden])')]
                               .map(e => e.tagName === 'IFRAME' ? 'iframe' : (e.textContent || '').trim())""")
    assert order.index(next(o for o in order if o.startswith("Skip the previews"))) < order.index("iframe")
    skip.focus()
    page.keyboard.press("Enter")
    # focus lands on the form's heading; the next Tab is the form's first control, not an email link
    assert page.evaluate("document.activeElement.id") == "adjust"
    page.keyboard.press("Tab")  # the articles' scroll box (a named region), then its first checkbox
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Articles: pin or exclude"
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.getAttribute('aria-label') || ''")
    assert focused.startswith("Pin "), focused
    page.screenshot(path=str(screenshots() / "web-a11y-skip-link.png"))


def test_axe_and_the_focus_check_catch_what_they_should(page, live: Live) -> None:  # type: ignore[no-untyped-def]
    page.set_content("""<html><head><title>bad</title><style>a:focus-visible { outline: 3px solid #7fb2ec; }</style>
      </head><body><main><h1>A bad page</h1><img src="x.png">
      <div style="overflow:auto;height:40px;width:200px"><p>one</p><p>two</p><p>three</p><p>four</p></div>
      <a href="#x">a link with the old ring</a></main></body></html>""")
    found = {v["id"] for v in violations(page)}
    assert {"image-alt", "scrollable-region-focusable"} <= found, describe(violations(page))
    weak = weak_focus_rings(page)
    assert any("the old ring" in w and "2.2" in w for w in weak), weak
