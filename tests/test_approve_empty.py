"""Approving an issue with fewer than `min_articles` new articles needs `--allow-empty` (CLI) or a second,
explicit confirmation (web); left unapproved it follows `when_empty` (tests/test_schedule_jobs.py,
test_too_few_new_articles_applies_when_empty)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from digest.config import Settings
from tests.conftest import run_main
from tests.test_web_editor import build, draft_row
from tests.test_web_support import EDITOR, app_fixture, client_fixture, csrf_from, login  # noqa: F401 (fixtures)


def _no_feed(settings: Settings) -> None:
    Path(settings.resolve(settings.sources.feeds[0])).unlink()


def _digest(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code, out = run_main(monkeypatch, capsys, *args)
    return code, " ".join(out.split())


def test_the_cli_approves_an_empty_issue_only_with_allow_empty(settings: Settings, workdir: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(workdir)
    _no_feed(settings)
    assert _digest(monkeypatch, capsys, "draft", "--offline")[0] == 0
    code, out = _digest(monkeypatch, capsys, "approve")
    assert code == 2 and out.startswith("error: issue 1 has 0 new articles, fewer than min_articles = "), out
    assert "--allow-empty" in out and draft_row(settings).status == "draft"
    code, out = _digest(monkeypatch, capsys, "approve", "--allow-empty")
    assert code == 0 and "issue 1 approved" in out and draft_row(settings).status == "approved"


def test_an_issue_with_enough_articles_needs_no_flag(settings: Settings, workdir: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(workdir)
    assert _digest(monkeypatch, capsys, "draft", "--offline")[0] == 0
    assert _digest(monkeypatch, capsys, "approve")[0] == 0


def test_the_web_asks_a_second_confirmation_for_an_empty_issue(client, settings):  # type: ignore[no-untyped-def]
    _no_feed(settings)
    login(client, EDITOR)
    build(client)
    page = client.get("/admin/draft").text
    assert 'class="primary">Approve issue' not in page, "approving is not the main button of an empty issue"
    assert 'name="allow_empty"' in page and "fewer than" in page and "when_empty" in page
    version = re.search(r'name="version" value="([^"]*)"', page).group(1)  # type: ignore[union-attr]
    form = {"csrf_token": csrf_from(page), "number": "1", "version": version}
    r = client.post("/admin/draft/approve", data=form)  # one click, without the confirmation
    assert r.status_code == 200 and "confirm below" in r.text and draft_row(settings).status == "draft"
    r = client.post("/admin/draft/approve", data={**form, "csrf_token": csrf_from(r.text), "allow_empty": "true"})
    assert r.status_code == 200 and "Issue 1 approved" in r.text and draft_row(settings).status == "approved"
