"""The report pages in headless Chromium at 375 and 1280 px: the issue report, the dashboard and the supplier
report fit the window (no horizontal page scroll), their charts are SVG images with names, and the page
runs no script. Screenshots go to $DIGEST_SCREENSHOTS (see tests/test_browser_web.py)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, update

from digest import issues
from digest.deliver.events import apply_batch
from digest.models import Issue
from digest.store import IssueRow, session_factory
from subscribers.models import Subscriber
from tests.conftest import screenshots
from tests.fakes.readers import seed_readers
from tests.test_browser_web import WIDTHS, live, log_in, page  # noqa: F401  (fixtures)
from tests.test_web_support import ADMIN

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def sent_with_events(live) -> Issue:  # type: ignore[no-untyped-def]  # noqa: F811
    """Issue #1 sent to 40 readers, some with preferences, and a week of opens and clicks."""
    settings = live.settings
    seed_readers(settings, 40)
    with session_factory(settings.database_url)() as s:
        s.execute(update(Subscriber).where(Subscriber.id <= 8).values(categories=["Fitness"]))
        s.commit()
    outcome = issues.send(settings)
    assert outcome.report is not None and outcome.report.submitted == 40
    with session_factory(settings.database_url)() as s:
        row = s.scalar(select(IssueRow).where(IssueRow.number == 1))
        assert row is not None
        issue = Issue.from_json(row.content)
        now = int(time.time())
        links = [a.link for a in issue.all_articles] + [x.url for x in issue.listings] + [issue.appeal.url
                                                                                          if issue.appeal else ""]
        events = []
        for r in range(1, 41):
            base = {"email": f"reader{r}@example.com", "digest_issue": str(row.id), "digest_subscriber": str(r),
                    "sg_message_id": "m.filter"}
            events.append({**base, "event": "delivered", "sg_event_id": f"d{r}", "timestamp": now})
            if r % 2:
                events.append({**base, "event": "open", "sg_event_id": f"o{r}", "timestamp": now + r * 9000})
            if r % 3 == 0:
                events.append({**base, "event": "click", "sg_event_id": f"c{r}", "timestamp": now + r * 9000,
                               "url": links[r % len(links)]})
        result = apply_batch(s, events)
        assert not result.invalid and result.unmatched == 0
    return issue


def no_page_scroll(pg) -> None:  # type: ignore[no-untyped-def]
    wide = pg.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert wide <= 0, f"the page scrolls sideways by {wide}px at {pg.viewport_size['width']}px"


def check(pg, path: str, name: str, *, chart: bool = True) -> None:  # type: ignore[no-untyped-def]
    pg.goto(path)
    assert pg.locator("script").count() == 0
    charts = pg.locator("svg[role=img]")
    assert not chart or (charts.count() >= 1 and charts.first.get_attribute("aria-label"))
    for width in WIDTHS:
        pg.set_viewport_size({"width": width, "height": 900})
        no_page_scroll(pg)
        if chart:
            shown = pg.locator(".chart-narrow" if width < 600 else ".chart-wide").first
            assert shown.is_visible(), f"{name}: the chart for {width}px is hidden"
            box = shown.bounding_box()
            assert box is not None and box["width"] <= width
        pg.screenshot(path=str(screenshots() / f"web-report-{name}-{width}.png"), full_page=True)
        if width < 600:  # what a phone shows first, at its real size
            pg.screenshot(path=str(screenshots() / f"web-report-{name}-{width}-first-screen.png"))
    pg.set_viewport_size({"width": 1280, "height": 900})


def test_report_pages_fit_phone_and_desktop(page, live) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    issue = sent_with_events(live)
    log_in(page, ADMIN)
    check(page, "/admin/issues/1", "issue")
    assert page.get_by_role("heading", name="Clicks per article").is_visible()
    assert page.get_by_text(issue.all_articles[0].title).first.is_visible()
    check(page, "/admin", "dashboard")
    assert page.get_by_role("heading", name="The appeal over time").is_visible()
    check(page, "/admin/suppliers", "suppliers")
    page.emulate_media(media="print")  # the sales meeting's printout: no navigation, no form
    assert not page.locator("header.site").is_visible() and not page.locator("form.filters").is_visible()
    page.screenshot(path=str(screenshots() / "web-report-suppliers-print.png"), full_page=True)
    page.emulate_media(media="screen")
    check(page, "/admin/issues", "issues", chart=False)  # the wide table of every issue fits too
    # at 1280 px the figures table fits its card whole: no column cut off, no scrolling inside it
    inner = page.evaluate("(() => { const s = document.querySelector('.scroll');"
                          " return s.scrollWidth - s.clientWidth })()")
    assert inner <= 0, f"the issues table overflows its card by {inner}px at 1280px"
