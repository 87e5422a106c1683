"""Read-only views of issues and their articles, shared by the web pages and the command line.

Nothing here changes an issue: its status moves belong to digest.issues. Handlers and commands call
these instead of writing SQL of their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.errors import DigestError, NotFound
from digest.issue_status import IssueStatus
from digest.store import Delivery, IssueRow, SeenArticle

#: issues a reader may see in the archive (the view-in-browser link works from the first batch on)
PUBLIC_STATUSES = (IssueStatus.SENDING, IssueStatus.SENT)


@dataclass(frozen=True)
class ArchivedIssue:
    """One line of the public archive."""

    number: int
    subject: str
    sent_at: datetime | None
    approved_at: datetime | None


def archive(session: Session) -> list[ArchivedIssue]:
    """The issues readers may see, newest first."""
    return [ArchivedIssue(*r) for r in session.execute(
        select(IssueRow.number, IssueRow.subject, IssueRow.sent_at, IssueRow.approved_at)
        .where(IssueRow.status.in_(PUBLIC_STATUSES)).order_by(IssueRow.number.desc()))]


def archived_html(session: Session, number: int, public_url: str | None = None) -> str:
    """The HTML of a sent (or sending) issue, as the archive shows it; NotFound for any other.

    With `public_url`, the site's own links (view online, subscribe, unsubscribe, click tracking) point
    at it, not at the address the issue was rendered with: after a move to a new public_url the archive
    must not send its visitors to the old server."""
    html = session.scalar(select(IssueRow.html).where(IssueRow.number == number,
                                                      IssueRow.status.in_(PUBLIC_STATUSES)))
    if html is None:
        raise NotFound(f"there is no sent issue {number}")
    return rebase(html, number, public_url) if public_url else html


def rebase(html: str, number: int, public_url: str) -> str:
    """`html` with the site address it was rendered with (found from its own "view in your browser" link,
    `<base>/issues/<number>`, which every issue carries) replaced by `public_url`."""
    found = re.search(rf'href="(https?://[^"\s]+?)/issues/{number}"', html)
    old = found.group(1) if found else None
    new = public_url.rstrip("/")
    if not old or old == new:
        return html
    return html.replace(f'"{old}/', f'"{new}/').replace(f'"{old}"', f'"{new}"')


@dataclass(frozen=True)
class DeliveryLine:
    """What one issue's ledger says about one reader."""

    number: int
    subject: str
    status: str
    updated_at: datetime
    error: str | None


def deliveries_to(session: Session, subscriber_id: int, limit: int = 100) -> list[DeliveryLine]:
    """The issues sent (or tried) to one reader, newest first."""
    return [DeliveryLine(*r) for r in session.execute(
        select(IssueRow.number, IssueRow.subject, Delivery.status, Delivery.updated_at, Delivery.error)
        .join(IssueRow, IssueRow.id == Delivery.issue_id).where(Delivery.subscriber_id == subscriber_id)
        .order_by(IssueRow.number.desc()).limit(limit))]


def seen_articles(session: Session, keys: Iterable[str]) -> dict[str, SeenArticle]:
    """The collected articles with these keys, by key (keys never collected are absent)."""
    return {s.key: s for s in session.scalars(select(SeenArticle).where(SeenArticle.key.in_(list(keys))))}


def expand_keys(session: Session, keys: list[str] | None) -> list[str] | None:
    """Article keys may be given by a unique prefix, as `digest collect` shows them."""
    if keys is None:
        return None
    out = []
    for key in keys:
        found = session.scalars(select(SeenArticle.key).where(SeenArticle.key.startswith(key)).limit(2)).all()
        if len(found) != 1:
            raise DigestError(f"article {key!r}: {'no' if not found else 'more than one'} article has that key")
        out.append(found[0])
    return out
