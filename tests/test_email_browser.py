"""The email as a phone and a desktop client show it: headless Debian Chromium at 375 and 640 px."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from digest.config import Settings
from digest.issues import build_draft
from digest.render import GMAIL_CLIP_BYTES
from digest.store import session_factory

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
SHOTS = Path(os.environ.get("DIGEST_SCREENSHOTS", Path(__file__).resolve().parent.parent / "test-artifacts"
                            / "screenshots"))

pytestmark = pytest.mark.browser

OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > width + 1) wide.push(el.tagName + ' ' + Math.round(r.right));
  }
  return {scroll: document.documentElement.scrollWidth, width, wide: wide.slice(0, 10)};
}"""


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed: scripts/test.sh installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.mark.parametrize("width", [375, 640])
def test_digest_fits_the_screen_without_horizontal_scroll(browser, settings: Settings, width: int) -> None:  # type: ignore[no-untyped-def]
    with session_factory(settings.database_url)() as s:
        draft = build_draft(settings, s)
        s.commit()
    html = draft.row.html
    assert len(html.encode()) < GMAIL_CLIP_BYTES
    page = browser.new_page(viewport={"width": width, "height": 900})
    # no network here: images from the feed's host cannot load; the layout must hold anyway
    page.route("**/*", lambda route: route.abort() if route.request.url.startswith("http") else route.continue_())
    page.set_content(html, wait_until="load")
    result = page.evaluate(OVERFLOW_JS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"email-{width}.png"), full_page=True)
    assert result["scroll"] <= width, result
    assert result["wide"] == [], f"elements wider than {width}px: {result['wide']}"
    # the content a reader needs is visible, not just present in the source
    assert page.get_by_text("Asking a small favour").is_visible()
    assert page.get_by_role("link", name="Unsubscribe in one click").is_visible()
    top = draft.issue.articles[0].title
    assert page.get_by_role("heading", name=top).is_visible()
    page.close()


def test_the_overflow_check_catches_a_layout_that_is_too_wide(browser) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": 375, "height": 600})
    page.set_content('<html><body style="margin:0"><table width="640"><tr><td>wide</td></tr></table></body></html>')
    result = page.evaluate(OVERFLOW_JS)
    page.close()
    assert result["scroll"] > 375 and result["wide"], result
