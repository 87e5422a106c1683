"""The email as a phone and a desktop client show it: headless Debian Chromium at 375 and 640 px."""

from __future__ import annotations

import re

import pytest

from digest.config import Settings
from digest.issues import build_draft
from digest.render import GMAIL_CLIP_BYTES
from digest.store import session_factory
from tests.conftest import screenshots

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
    page.screenshot(path=str(screenshots() / f"email-{width}.png"), full_page=True)
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


CONTRAST_JS = """() => {
  const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = el => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const low = [];
  for (const el of document.querySelectorAll('.page div, .page a, .page span, .page h1, .page h2, .page h3')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    const r = el.getBoundingClientRect();
    if (!own || r.width === 0 || r.height === 0) continue;
    const a = lum(rgb(getComputedStyle(el).color)), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) low.push(el.textContent.trim().slice(0, 30) + ' ' + ratio.toFixed(2));
  }
  return {low, body: getComputedStyle(document.body).backgroundColor};
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_text_of_the_email_is_readable_in_light_and_dark_mode(browser, settings: Settings,  # type: ignore[no-untyped-def]
                                                                    scheme: str) -> None:
    with session_factory(settings.database_url)() as s:
        draft = build_draft(settings, s)
        s.commit()
    page = browser.new_page(viewport={"width": 640, "height": 900}, color_scheme=scheme)
    page.route("**/*", lambda route: route.abort() if route.request.url.startswith("http") else route.continue_())
    page.set_content(draft.row.html, wait_until="load")
    result = page.evaluate(CONTRAST_JS)
    page.screenshot(path=str(screenshots() / f"email-{scheme}.png"), full_page=True)
    page.close()
    assert result["low"] == [], f"{scheme}: text under WCAG's 4.5:1 against its background: {result['low']}"
    assert (result["body"] == "rgb(13, 17, 23)") == (scheme == "dark"), result["body"]


HEADINGS_JS = """() => [...document.querySelectorAll('h1, h2, h3, h4, h5, h6, [role=heading]')]
  .map(h => [h.tagName.toLowerCase(), h.textContent.trim()])"""


def test_the_email_passes_axe_and_its_sections_are_headings_in_order(browser, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """Issue 17, point 17: axe-core (WCAG 2.1 A and AA) finds nothing serious or critical in the email, and
    a screen reader jumping by heading reaches every section, the appeal included, in a sensible order."""
    from tests.axe import describe, violations

    with session_factory(settings.database_url)() as s:
        draft = build_draft(settings, s)
        s.commit()
    issue = draft.issue
    assert issue.articles[1:] and issue.headlines and issue.appeal and issue.listings  # every section shows
    page = browser.new_page(viewport={"width": 640, "height": 900})
    page.route("**/*", lambda route: route.abort() if route.request.url.startswith("http") else route.continue_())
    page.set_content(draft.row.html, wait_until="load")
    found = violations(page)
    headings = page.evaluate(HEADINGS_JS)
    page.close()
    assert not found, describe(found)
    assert headings == [
        ["h1", settings.publication.name],
        ["h2", issue.articles[0].title],
        ["h2", "Latest news"], *[["h3", a.title] for a in issue.articles[1:]],
        ["h2", "More news"],
        ["h2", issue.appeal.title],
        ["h2", "Supplier directory"], *[["h3", x.name] for x in issue.listings],
    ], headings
    assert issue.appeal.title == "Asking a small favour"


@pytest.mark.nodb  # reads settings only: runs once
def test_the_confirmation_and_the_editors_notice_pass_axe(browser, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from digest.confirmations import confirmation_edition
    from digest.notices import Notice, render_notice
    from subscribers.models import MailingList
    from tests.axe import describe, violations

    emails = {"confirm": confirmation_edition(settings, MailingList(slug="weekly", name="Weekly")).html,
              "notice": render_notice(settings, Notice(kind="draft", headline="Issue 3 is ready for review",
                                                       message=("8 articles.",), actions=("Approve it.",))).html}
    for name, html in emails.items():
        page = browser.new_page(viewport={"width": 640, "height": 900})
        page.set_content(html, wait_until="load")
        found = violations(page)
        buttons = page.get_by_role("link", name=re.compile("Yes, subscribe me|Review the draft")).count()
        page.close()
        assert not found, f"{name}: {describe(found)}"
        assert buttons == 1, name
