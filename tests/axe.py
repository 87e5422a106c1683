"""axe-core in the browser tests: WCAG 2.1 A and AA rules on a page, and the focus-ring check axe has not.

axe-core comes from npm (pinned in scripts/npm/package-lock.json, installed by scripts/npm_package.py into
.cache/npm): the engine the issue's figures were measured with, fetched through the package registry and
nothing else. It is injected with Playwright's init script (before any page script, and regardless of
the app's Content-Security-Policy, which forbids scripts: the CSP itself stays under test).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: the WCAG 2.1 A and AA rules (axe's tags); best practices are not asked for
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
FAILING = ("serious", "critical")


@cache
def axe_script() -> Path:
    spec = importlib.util.spec_from_file_location("npm_package", ROOT / "scripts" / "npm_package.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path: Path = module.package("axe-core") / "axe.min.js"
    return path


def inject(context: Any) -> None:
    """axe in every page the context opens from now on."""
    context.add_init_script(path=str(axe_script()))


RUN_JS = """async (tags) => {
  const result = await axe.run(document, {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations'],
                                          iframes: false});
  return {version: axe.version, violations: result.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map(n => n.target.join(' ') + ' ' + (n.failureSummary || '').replace(/\\s+/g, ' '))}))};
}"""


def violations(page: Any) -> list[dict[str, Any]]:
    """axe's violations of the page as it is now, serious and critical ones only.

    The previews' frames are not entered (`iframes: false`): they hold the email, which
    tests/test_email_browser.py checks on its own."""
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.add_script_tag(path=str(axe_script()))  # a page set with set_content, which has no CSP
    result = page.evaluate(RUN_JS, TAGS)
    assert result["version"].startswith("4.14"), result["version"]
    return [v for v in result["violations"] if v["impact"] in FAILING]


def describe(found: list[dict[str, Any]]) -> str:
    return "\n".join(f"{v['impact']} {v['id']} ({v['help']}): " + " | ".join(v["nodes"][:4]) for v in found)


def assert_accessible(page: Any, where: str) -> None:
    found = violations(page)
    assert not found, f"axe-core, {where} ({page.url}):\n{describe(found)}"


FOCUS_JS = """() => {
  const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  // what the ring is drawn on: the nearest ancestor with an opaque background whose box holds the whole
  // ring (the ring is drawn outside the element, offset from it: a button's own cell is not behind it)
  const behind = (el, reach) => {
    const r = el.getBoundingClientRect();
    for (el = el.parentElement; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      const b = el.getBoundingClientRect();
      const holds = b.left <= r.left - reach && b.top <= r.top - reach && b.right >= r.right + reach
                    && b.bottom >= r.bottom + reach;
      if ((c.length === 3 || (c.length === 4 && c[3] > 0.5)) && (holds || el === document.body)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  // iframes are left out: Tab goes through a frame's own links, which the frame's page answers for
  const focusable = 'a[href], button, input:not([type=hidden]), select, textarea, summary, [tabindex]';
  const out = [];
  for (const el of document.querySelectorAll(focusable)) {
    if (el.disabled || el.tabIndex < 0 || el.closest('.hp') || !el.getClientRects().length) continue;
    el.focus();
    if (document.activeElement !== el) continue;
    const style = getComputedStyle(el);
    const width = parseFloat(style.outlineWidth) || 0;
    const reach = width + Math.max(0, parseFloat(style.outlineOffset) || 0);
    const a = lum(rgb(style.outlineColor)), b = lum(behind(el, reach));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    out.push({what: el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + ' ' +
                    (el.textContent || el.getAttribute('aria-label') || el.name || '').trim().slice(0, 40),
              visible: el.matches(':focus-visible'), style: style.outlineStyle, width, ratio});
  }
  return out;
}"""


def weak_focus_rings(page: Any) -> list[str]:
    """Every focusable element of the page whose keyboard focus ring is missing, thinner than 2 px or under
    3:1 against what it is drawn on (WCAG 2.1, 1.4.11 non-text contrast; 2.4.7 focus visible)."""
    page.keyboard.press("Tab")  # keyboard modality: focus() from here on shows :focus-visible rings
    rings = page.evaluate(FOCUS_JS)
    assert rings, f"no focusable element on {page.url}"
    return [f"{r['what']!r}: {r['style']} {r['width']}px, {r['ratio']:.2f}:1" for r in rings
            if not r["visible"] or r["style"] == "none" or r["width"] < 2 or r["ratio"] < 3]
