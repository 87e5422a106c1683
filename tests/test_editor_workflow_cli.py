"""The editors' workflow end to end through the real `digest` command against SQLite: draft, adjust,
preview, approve (frozen; a change makes it a draft again), hold, send; and the link check against a
local HTTP server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from digest.config import Settings
from digest.render import check_links
from digest.store import IssueRow, SeenArticle, session_factory
from tests.conftest import edit_config, run_cli, run_main
from tests.test_schedule_jobs import READERS, reader_copies, subscribe


def cli(*args: str, cwd: Path, code: int = 0) -> str:
    """The real `digest` command in its own process."""
    result = run_cli(*args, cwd=cwd)
    assert result.returncode == code, (args, result.stdout, result.stderr)
    return " ".join((result.stdout + result.stderr).split())  # rich wraps long lines


@pytest.fixture
def digest(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
           ) -> Callable[..., str]:
    """`digest ARGS` through the same entry point (`digest.cli.main`: exit codes, one-line errors), in
    this process: the workflow's many steps without an interpreter start each."""
    monkeypatch.chdir(workdir)

    def run(*args: str, code: int = 0) -> str:
        returned, out = run_main(monkeypatch, capsys, *args)
        assert returned == code, (args, out)
        return " ".join(out.split())

    return run


def issue(settings: Settings) -> IssueRow:
    with session_factory(settings.database_url)() as s:
        row = s.scalar(select(IssueRow).order_by(IssueRow.number.desc()))
        assert row is not None
        return row


@pytest.mark.slow  # the real command in a subprocess
def test_the_editor_workflow_end_to_end(settings: Settings, workdir: Path, digest: Callable[..., str]
                                         ) -> None:
    subscribe(settings, *READERS)
    first = cli("draft", "--offline", cwd=workdir)  # a real process
    assert "Draft of issue 1" in first and "8 articles, 6 headlines, 3 listings" in first
    assert "send at Mon" in first and " UTC" in first
    assert "ok size" in first and "links not checked (--offline)" in first
    assert issue(settings).status == "draft"

    with session_factory(settings.database_url)() as s:
        articles = s.execute(select(SeenArticle.key, SeenArticle.title)
                             .order_by(SeenArticle.published_at.desc())).all()
    (top_key, top_title), (pin_key, pin_title) = articles[0], articles[5]
    adjusted = digest("draft", "--offline", "--exclude", top_key[:12], "--pin", pin_key[:12],
                      "--feature", "Cascade Slides & Play")
    assert "adjustments: excluded 1, pinned 1, featured Cascade Slides & Play" in adjusted
    shown = digest("preview", "--out", "p.html", "--text", "p.txt")
    assert "issue 1 (draft)" in shown
    text = (workdir / "p.txt").read_text()
    html = (workdir / "p.html").read_text()
    assert top_title not in text and top_title not in html, "the excluded article is gone"
    assert text.index(pin_title) < text.index(articles[1].title), "the pinned article is the top story"
    assert "Cascade Slides & Play" in text and "Cascade Slides &amp; Play" in html

    approved = digest("approve")
    assert "issue 1 approved" in approved and "digest send" in approved
    row = issue(settings)
    assert row.status == "approved" and (row.approved_by or "").startswith("cli")
    assert "issue 1 is approved: only an issue that is draft or held" in digest("approve", code=2)
    assert "only an issue that is draft or held can be approved" in digest("approve", "1", code=2)

    # a change to an approved issue makes it a draft again; the adjustments are kept
    changed = digest("draft", "--offline")
    assert "issue 1 was approved: rebuilt, it is a draft again" in changed
    assert "adjustments: excluded 1, pinned 1" in changed
    row = issue(settings)
    assert row.status == "draft" and row.approved_by is None and "approved -> draft: rebuilt by cli" in row.note

    # held: neither the schedule nor `digest send` sends it until it is approved
    assert "issue 1 held" in digest("hold", "--reason", "legal check")
    assert "issue 1 is held" in digest("send")
    assert not reader_copies(workdir)
    assert "issue 1 approved" in digest("approve")
    sent = cli("send", cwd=workdir)  # a real process
    assert "submitted 3" in sent and "status sent" in sent
    assert len(reader_copies(workdir)) == 3
    assert "nothing new" in digest("send")
    assert len(reader_copies(workdir)) == 3
    assert "there is no issue 99" in digest("approve", "99", code=2)


def test_skip_and_reset(settings: Settings, digest: Callable[..., str]) -> None:
    digest("draft", "--offline", "--feature", "Cascade Slides & Play")
    assert "issue 1 skipped" in digest("skip", "--reason", "public holiday")
    row = issue(settings)
    assert row.status == "skipped" and "skipped by cli" in row.note and "public holiday" in row.note
    again = digest("draft", "--offline", "--reset")
    assert "issue 1 was skipped: rebuilt, it is a draft again" in again and "adjustments" not in again
    assert "Draft of issue 1" in again


# --- links: HEAD with a short timeout, against a local server --------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:  # noqa: N802
        if self.path.startswith("/nohead"):
            self.send_response(405)
        elif self.path.startswith("/missing"):
            self.send_response(404)
        elif self.path.startswith("/slow"):
            time.sleep(2)
            self.send_response(200)
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(404 if self.path.startswith("/missing") else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_check_links_names_what_does_not_answer(site: str) -> None:
    check = check_links([f"{site}/ok", f"{site}/nohead", f"{site}/missing/x", f"{site}/slow",
                         "mailto:a@example.com"], timeout=0.5)
    assert check.level == "warn"
    assert "3 of 4 links" not in check.message and "2 of 4 links do not answer" in check.message
    assert f"{site}/missing/x (404)" in check.message and f"{site}/slow (ReadTimeout)" in check.message
    assert check_links([f"{site}/ok", f"{site}/nohead"]).level == "ok"


def test_draft_checks_links_unless_offline(workdir: Path, site: str, digest: Callable[..., str]) -> None:
    now = datetime.now(UTC)
    items = "".join(
        f"<item><title>Story {i}</title><link>{site}/{path}</link><guid>local-{i}</guid>"
        f"<pubDate>{format_datetime(now - timedelta(hours=3 + i))}</pubDate><description>Text {i}.</description></item>"
        for i, path in enumerate(["ok/1", "missing/2", "nohead/3"]))
    (workdir / "local.xml").write_text(f'<?xml version="1.0"?><rss version="2.0"><channel><title>Local</title>'
                                       f"<link>{site}/</link><description>d</description>{items}</channel></rss>")
    (workdir / "local.csv").write_text("name,url,summary,categories,logo,tier\n"
                                       f"Good Supplier,{site}/ok/supplier,Makes things.,Fitness,,\n")
    edit_config(workdir, 'feeds = ["sample/feed.xml"]', 'feeds = ["local.xml"]')
    edit_config(workdir, 'directory = "sample/directory.csv"', 'directory = "local.csv"')
    edit_config(workdir, 'url = "https://news.example.com/subscribe"', f'url = "{site}/ok/subscribe"')
    checked = digest("draft")
    assert "3 articles" in checked
    assert f"warn links: 1 of 5 links do not answer: {site}/missing/2 (404)" in checked
    assert "links not checked" not in checked
    offline = digest("draft", "--offline")
    assert "links not checked (--offline)" in offline and "do not answer" not in offline
