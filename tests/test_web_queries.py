"""The query modules the pages and commands share (no SQL in handlers), and the web's import shape."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from digest import issue_queries
from digest.errors import DigestError, NotFound
from digest.store import IssueRow, SeenArticle
from digest.web import pages, users
from subscribers import lifecycle
from subscribers.queries import list_choices, list_slugs, mailing_list_by_id, subscriber_by_id


def _issue(session: Session, number: int, status: str) -> IssueRow:
    row = IssueRow(number=number, subject=f"#{number}", content={}, status=status, html=f"<p>issue {number}</p>")
    session.add(row)
    session.flush()
    return row


def test_the_archive_shows_sending_and_sent_issues_only_newest_first(session: Session) -> None:
    for number, status in ((1, "sent"), (2, "sent"), (3, "sending"), (4, "draft"), (5, "skipped")):
        _issue(session, number, status)
    assert [i.number for i in issue_queries.archive(session)] == [3, 2, 1]
    assert issue_queries.archived_html(session, 2) == "<p>issue 2</p>"
    for hidden in (4, 5, 99):
        with pytest.raises(NotFound, match=f"no sent issue {hidden}"):
            issue_queries.archived_html(session, hidden)


def test_article_keys_expand_from_a_unique_prefix(session: Session) -> None:
    for key in ("abc123", "abd456", "xyz789"):
        session.add(SeenArticle(key=key, title=f"title {key}"))
    session.flush()
    assert issue_queries.expand_keys(session, ["abc", "x"]) == ["abc123", "xyz789"]
    assert issue_queries.expand_keys(session, None) is None
    with pytest.raises(DigestError, match="more than one"):
        issue_queries.expand_keys(session, ["ab"])
    with pytest.raises(DigestError, match="'q': no article"):
        issue_queries.expand_keys(session, ["q"])
    found = issue_queries.seen_articles(session, ["abc123", "never-seen"])
    assert list(found) == ["abc123"] and found["abc123"].title == "title abc123"


def test_a_session_names_its_user_until_the_password_or_the_user_changes(session: Session) -> None:
    user = users.add_user(session, "ed@example.com", "editor", "a long password 1")
    stamp = users.session_stamp(user)
    assert users.session_user(session, user.id, stamp) is user
    assert users.session_user(session, user.id, "0" * 16) is None
    user.password_hash = users.hash_password("another password 2")
    assert users.session_user(session, user.id, stamp) is None
    users.remove_user(session, "ed@example.com")
    assert users.session_user(session, user.id, users.session_stamp(user)) is None


def test_subscriber_lookups_for_the_pages(session: Session) -> None:
    member = lifecycle.subscribe(session, "reader@example.com", list_slug="weekly", source="test", confirmed=True)
    lifecycle.subscribe(session, "reader@example.com", list_slug="offers", source="test")
    assert list_slugs(session) == ["offers", "weekly"]
    assert subscriber_by_id(session, member.subscriber_id).email == "reader@example.com"
    assert subscriber_by_id(session, 10_000) is None
    assert mailing_list_by_id(session, member.list_id).slug == "weekly"
    assert mailing_list_by_id(session, 10_000) is None
    other = lifecycle.subscribe(session, "other@example.com", list_slug="weekly", source="test", confirmed=True)
    lifecycle.unsubscribe(session, subscriber_by_id(session, other.subscriber_id), "weekly", source="test")
    choices = {m.slug: status for m, status in list_choices(session, member.subscriber_id)}
    assert choices == {"offers": "pending", "weekly": "active"}
    assert {m.slug: s for m, s in list_choices(session, other.subscriber_id)} == {"offers": None,
                                                                                 "weekly": "unsubscribed"}


@pytest.mark.slow  # the real command in a subprocess
def test_digest_help_imports_no_web_framework() -> None:
    """`digest --help` stays cheap: the web stack loads in `digest serve` only."""
    code = ("import sys, digest.cli.main\n"
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pages_does_not_import_auth() -> None:
    """auth renders pages, so pages takes the CSRF token from digest.web.csrf (not even a late import of auth)."""
    tree = ast.parse(Path(pages.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "digest.web.csrf" in imported
    assert not {m for m in imported if m and m.startswith(("digest.web.auth", "digest.web.app"))}
