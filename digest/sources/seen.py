"""Articles used up: once in a sent issue, an article never appears in another (`collect` reads it)."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from digest.store import SeenArticle


def mark_sent(session: Session, issue_id: int, article_keys: list[str]) -> None:
    """Articles in a sent issue never appear again. (Apart from `collect`, so a send does not import the
    sources' fetchers: issue 16, the start-up of `digest send`.)"""
    session.execute(update(SeenArticle).where(SeenArticle.key.in_(article_keys)).values(sent_issue_id=issue_id))
