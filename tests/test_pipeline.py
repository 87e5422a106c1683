"""The spine end to end on the embedded default: sample sources -> SQLite -> outbox .eml files."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest
from sqlalchemy import func, select

from digest.config import Settings
from digest.issues import send
from digest.store import Delivery, IssueRow, SeenArticle, session_factory
from subscribers import lifecycle
from tests.conftest import edit_config, run_cli, run_main


def _readers(settings: Settings, *emails: str, confirmed: bool = True) -> None:
    with session_factory(settings.database_url)() as s:
        for i, address in enumerate(emails):
            lifecycle.subscribe(s, address, name=f"Reader {i}", source="test", confirmed=confirmed)
        s.commit()


def _emls(folder: Path) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
            for p in sorted((folder / "outbox").glob("*.eml"))]


@pytest.mark.slow  # the real command in a subprocess
def test_demo_sends_once_and_a_second_run_sends_nobody_anything(tmp_path: Path, database_url: str,
                                                                  backend: str) -> None:
    no_key = {"DIGEST_SECRET_KEY": ""}  # as on a fresh machine: the demo makes its own key
    if backend != "sqlite":  # the demo's own digest.toml names SQLite; the documented override points elsewhere
        no_key["DIGEST_DATABASE_URL"] = database_url
    first = run_cli("demo", cwd=tmp_path, env=no_key)
    assert first.returncode == 0, first.stderr
    assert "Issue 1" in first.stdout and "readers sent 5" in first.stdout and "KB" in first.stdout
    for name in ("digest.toml", "preview.html", "preview.txt", ".digest-secret"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "digest.db").exists() is (backend == "sqlite"), "the demo used another database"
    messages = _emls(tmp_path)
    assert len(messages) == 5
    assert len({m["To"].addresses[0].addr_spec for m in messages}) == 5

    # the next issue is left as a draft of the stories "published since", for an editor to review
    assert "issue 2 is a draft with 5 new articles" in " ".join(first.stdout.split())

    second = run_cli("demo", cwd=tmp_path, env=no_key)
    assert second.returncode == 0, second.stderr
    assert "issue 2 is a draft, not approved: not sent" in second.stdout  # the demo never approves it itself
    assert len(_emls(tmp_path)) == 5
    key = (tmp_path / ".digest-secret").read_text().strip()
    assert len(key) == 64 and key not in (tmp_path / "digest.toml").read_text()


def test_outbox_writes_valid_mime_with_one_click_unsubscribe(settings: Settings, workdir: Path) -> None:
    _readers(settings, "ann@example.com", "bob@example.com")
    outcome = send(settings)
    assert outcome.report is not None and outcome.report.submitted == 2 and outcome.report.ok
    messages = _emls(workdir)
    assert len(messages) == 2
    for msg in messages:
        assert msg.get_content_type() == "multipart/alternative"
        parts = list(msg.iter_parts())
        assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
        assert msg["Message-ID"] and msg["Date"] and msg["From"]
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        unsubscribe = msg["List-Unsubscribe"]
        assert unsubscribe.startswith("<http://127.0.0.1:8000/u/")
        assert "mailto:" not in unsubscribe  # no unsubscribe mailbox configured: nothing would act on a mailto:
        text, html = parts[0].get_content(), parts[1].get_content()
        assert "%%" not in text and "%%" not in html, "a reader token was left unfilled"
        name = "Reader 0" if "ann@" in msg["To"] else "Reader 1"
        assert f"Hi {name}," in text and f"Hi {name}," in html
        token_url = unsubscribe.split("<")[1].split(">")[0]
        assert token_url in html and token_url in text
        assert "PO Box 100, Sydney NSW 2000" in html and "PO Box 100, Sydney NSW 2000" in text
        assert "Asking a small favour" in html and "ASKING A SMALL FAVOUR" in text
        assert "/issues/1" in html  # view in browser
        assert "<script" not in html.lower()
    with session_factory(settings.database_url)() as s:
        assert s.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == "submitted")) == 2
        issue = s.scalar(select(IssueRow))
        assert issue.status == "sent" and issue.sent_at is not None
        sent_articles = s.scalar(select(func.count()).select_from(SeenArticle)
                                 .where(SeenArticle.sent_issue_id == issue.id))
        assert sent_articles == 14  # 8 articles + 6 headlines


def test_only_active_members_receive_and_sent_articles_never_return(settings: Settings, workdir: Path) -> None:
    _readers(settings, "active@example.com")
    _readers(settings, "pending@example.com", confirmed=False)
    with session_factory(settings.database_url)() as s:
        _readers(settings, "gone@example.com")
        lifecycle.unsubscribe(s, lifecycle.find(s, "gone@example.com"), source="test")
        s.commit()
    report = send(settings).report
    assert report is not None and report.submitted == 1
    assert [m["To"].addresses[0].addr_spec for m in _emls(workdir)] == ["active@example.com"]
    # the next run finds nothing new: already-sent articles never appear again
    assert send(settings).report is None


@pytest.mark.slow  # the real command in a subprocess
def test_a_broken_feed_is_reported_and_the_issue_is_built_from_the_rest(settings: Settings, workdir: Path) -> None:
    (workdir / "broken.xml").write_text("<html><body><p>404: this page is not a feed</p></body></html>")
    edit_config(workdir, 'feeds = ["sample/feed.xml"]', 'feeds = ["sample/feed.xml", "broken.xml", "missing.xml"]')
    result = run_cli("collect", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "broken.xml" in result.stderr and "missing.xml" in result.stderr
    assert "Harbourside Aquatic" in result.stdout
    assert "failing" in result.stdout


@pytest.mark.slow  # the real command in a subprocess
def test_bad_directory_rows_are_reported_with_row_numbers(settings: Settings, workdir: Path) -> None:
    directory = workdir / "sample" / "directory.csv"
    with directory.open("a", encoding="utf-8") as f:
        f.write(',https://x.example.com,No name,Fitness,,\n')
        f.write('Bad Link,ftp://x.example.com,Summary,Fitness,,\n')
        f.write('Odd Tier,https://y.example.com,Summary,Fitness,,gold\n')
    result = run_cli("collect", cwd=workdir)
    assert result.returncode == 0, result.stderr
    err = " ".join(result.stderr.split())
    assert "row 14: name is empty" in err
    assert "row 15: url 'ftp://x.example.com' is not an http(s) link" in err
    assert "row 16: tier 'gold'" in err


@pytest.mark.slow  # the real command in a subprocess
def test_dry_run_records_nothing_and_test_send_is_not_in_the_ledger(settings: Settings, workdir: Path) -> None:
    _readers(settings, "ann@example.com", "bob@example.com")
    dry = run_cli("send", "--dry-run", cwd=workdir)
    assert dry.returncode == 0, dry.stderr
    assert "would send to 2" in dry.stdout and "ann@example.com" in dry.stdout
    assert not (workdir / "outbox").exists() or not list((workdir / "outbox").glob("*.eml"))
    test = run_cli("send", "--to", "editor@example.com", cwd=workdir)
    assert test.returncode == 0, test.stderr
    messages = _emls(workdir)
    assert [m["To"].addresses[0].addr_spec for m in messages] == ["editor@example.com"]
    assert str(messages[0]["Subject"]).strip().startswith("[TEST] ")
    with session_factory(settings.database_url)() as s:
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0
    real = run_cli("send", cwd=workdir)
    assert real.returncode == 0, real.stderr
    assert len(_emls(workdir)) == 3


@pytest.mark.slow  # the real command in a subprocess
def test_every_command_has_help(tmp_path: Path) -> None:
    for command in ("init", "collect", "preview", "send", "demo", "status", "draft", "approve"):
        result = run_cli(command, "--help", cwd=tmp_path)
        assert result.returncode == 0, (command, result.stderr)
        assert "Usage" in result.stdout
        if command not in ("init", "demo"):
            assert "--config" in result.stdout, command


@pytest.mark.slow  # the real command in a subprocess
def test_init_and_preview_write_files(tmp_path: Path) -> None:
    assert run_cli("init", str(tmp_path / "pub"), cwd=tmp_path).returncode == 0
    again = run_cli("init", str(tmp_path / "pub"), cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    result = run_cli("preview", "--offline", "--out", "p.html", "--text", "p.txt", cwd=tmp_path / "pub")
    assert result.returncode == 0, result.stderr
    html = (tmp_path / "pub" / "p.html").read_text()
    text = (tmp_path / "pub" / "p.txt").read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "Harbourside Aquatic and Wellness Centre" in html and "Harbourside Aquatic and Wellness Centre" in text
    assert "%%" not in html and "%%" not in text


def test_demo_leaves_a_draft_to_review_and_serves_its_own_pictures(tmp_path: Path, database_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A new user's first look: after `digest demo`, the editor's page has a draft of new stories, and every
    picture and logo of both issues is served by `digest serve` itself (no broken image in the preview)."""
    import re

    from fastapi.testclient import TestClient

    from digest.config import load_settings
    from digest.web.app import create_app

    folder = tmp_path / "demo"
    if not database_url.startswith("sqlite"):
        monkeypatch.setenv("DIGEST_DATABASE_URL", database_url)
    code, out = run_main(monkeypatch, capsys, "demo", str(folder))
    assert code == 0, out
    settings = load_settings(folder / "digest.toml")
    with session_factory(settings.database_url)() as session:
        rows = {r.number: r for r in session.scalars(select(IssueRow))}
    assert rows[1].status == "sent" and rows[2].status == "draft"
    sent_titles = {a["title"] for a in rows[1].content["articles"]}
    draft_titles = [a["title"] for a in rows[2].content["articles"]]
    assert len(draft_titles) == 5 and not sent_titles & set(draft_titles)
    pictures = set(re.findall(r'src="(http://127\.0\.0\.1:8000/media/[^"]+)"', rows[1].html + rows[2].html))
    assert len(pictures) >= 3, pictures  # the top stories' pictures and the featured suppliers' logos
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as client:
        for url in pictures:
            answer = client.get(url)
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("image/"), url
        assert client.get("/media/../digest.toml").status_code == 404
