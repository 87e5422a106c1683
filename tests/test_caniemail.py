"""Issue 17, point 6: nothing caniemail calls unsupported in Gmail, Outlook for Windows, Apple Mail or Yahoo
beyond what plain MJML output needs, except the features docs/email.md allows and explains.

Runs scripts/caniemail_check.py as a developer would (it runs `digest demo` and caniemail's analyser from
npm), so these are slow tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "scripts" / "caniemail_check.py"

pytestmark = pytest.mark.slow


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def test_the_demo_issue_uses_nothing_unsupported_beyond_plain_mjml_and_the_documented_list() -> None:
    done = run("--json")
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout)
    assert figures["not_allowed"] == []
    # the features the issue named are gone from the email, for every client
    for gone in ("overflow-wrap", "border-radius", "opacity", "display:none", "cursor", "target attribute"):
        assert gone not in figures["email"], (gone, figures["email"][gone])
    # the analyser really ran on both: plain MJML output has its own known gaps (a <style> element,
    # Gmail's mobile webmail)
    assert "<style> element" in figures["minimal"] and "<style> element" in figures["email"]


def test_a_feature_outside_the_allow_list_fails_the_check(tmp_path: Path) -> None:
    from mjml import mjml2html

    html = mjml2html('<mjml><mj-body><mj-section><mj-column><mj-text css-class="x">Hello</mj-text>'
                     '<mj-button href="https://example.com/">Go</mj-button></mj-column></mj-section>'
                     '<mj-raw><p style="overflow-wrap:anywhere">long</p></mj-raw></mj-body></mjml>',
                     disable_comments=True)
    page = tmp_path / "email.html"
    page.write_text(html, encoding="utf-8")
    done = run("--html", str(page))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for feature in ("overflow-wrap", "border-radius", "cursor"):
        assert any(line.split()[:2] == ["EXTRA", f"{feature}:"] for line in lines), (feature, done.stdout)
    assert "not in the allow-list of docs/email.md" in lines[-1]


def test_the_allow_list_is_read_from_the_docs() -> None:
    sys.path.insert(0, str(CHECK.parent))
    try:
        import caniemail_check
    finally:
        sys.path.remove(str(CHECK.parent))
    allowed = caniemail_check.allow_list()
    assert allowed == {"color-scheme meta tag", "color-scheme CSS property", "aria-label attribute", "border-spacing"}
    assert caniemail_check.extras({"a": ["x", "y"], "b": ["x"]}, {"a": ["x"], "b": ["x"]}) == {"a": ["y"]}


@pytest.mark.nodb  # reads settings only: runs once
def test_the_confirmation_and_the_editors_notice_use_nothing_more_either(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The other two emails share the base template and the button: the same check, same allow-list."""
    from digest.confirmations import confirmation_edition
    from digest.notices import Notice, render_notice
    from subscribers.models import MailingList

    confirm = confirmation_edition(settings, MailingList(slug="weekly", name="Weekly"))
    notice = render_notice(settings, Notice(kind="draft", headline="Issue 3 is ready for review",
                                            message=("8 articles, 6 headlines.",), actions=("Approve it.",)))
    for name, html in (("confirm", confirm.html), ("notice", notice.html)):
        page = tmp_path / f"{name}.html"
        page.write_text(html, encoding="utf-8")
        done = run("--html", str(page))
        assert done.returncode == 0, (name, done.stdout + done.stderr)
        assert "cursor" not in done.stdout and "border-radius" not in done.stdout
