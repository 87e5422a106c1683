"""The preferences page's time zone choice in headless Chromium (issue 15): a reader with no zone saved gets
their browser's own chosen (Intl.DateTimeFormat().resolvedOptions().timeZone), and without script the
publication's; what is saved is what the select showed."""

from __future__ import annotations

import pytest

from digest.store import session_scope
from subscribers import lifecycle
from tests.conftest import screenshots
from tests.test_browser_web import Live, live  # noqa: F401 (fixture)
from tests.test_reader_zones import _reader_page

pytestmark = pytest.mark.browser


def _zone(live: Live) -> str | None:  # noqa: F811
    with session_scope(live.settings.database_url) as s:
        return lifecycle.find(s, "ann@example.com").timezone


def test_the_browsers_zone_is_the_default_and_saved_with_the_form(browser, live: Live) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    path = _reader_page(live.settings)
    context = browser.new_context(base_url=live.url, timezone_id="Australia/Perth")
    try:
        page = context.new_page()
        page.goto(path)
        assert page.locator("#timezone").input_value() == "Australia/Perth"
        assert "Chosen from your browser: Australia/Perth" in page.locator("#timezone-note").inner_text()
        page.screenshot(path=str(screenshots() / "web-preferences-zone-1280.png"), full_page=True)
        assert _zone(live) is None, "nothing is saved until the reader saves"
        page.get_by_role("button", name="Save preferences").click()
        page.get_by_text("Saved.").wait_for()
        assert _zone(live) == "Australia/Perth"
        # a saved zone is shown as saved, whatever the browser's
        other = browser.new_context(base_url=live.url, timezone_id="Pacific/Auckland")
        try:
            again = other.new_page()
            again.goto(path)
            assert again.locator("#timezone").input_value() == "Australia/Perth"
        finally:
            other.close()
    finally:
        context.close()


def test_without_script_the_publications_zone_stays_chosen(browser, live: Live) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    path = _reader_page(live.settings)
    context = browser.new_context(base_url=live.url, timezone_id="Australia/Perth", java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(path)
        assert page.locator("#timezone").input_value() == ""
        page.get_by_role("button", name="Save preferences").click()
        page.get_by_text("Saved.").wait_for()
        assert _zone(live) is None
    finally:
        context.close()
