"""Collect: read every source, remember what was seen, and offer the articles not yet sent.

Articles are kept in the `articles` table with their identities (GUID, canonical link, title + date),
so a feed that answers 304, republishes an item under a new GUID, or edits it, offers nothing twice.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.models import Article, Collected
from digest.sources.directory import read_directory
from digest.sources.feeds import FeedResult, Validators, canonical_link, read_feeds, title_key
from digest.store import FeedState, IssueRow, SeenArticle


def _match(session: Session, article: Article) -> SeenArticle | None:
    link_key = canonical_link(article.link) or None
    tkey = title_key(article.title, article.published if article.dated_by_feed else None)
    conditions = [SeenArticle.key == article.key]
    if link_key:
        conditions.append(SeenArticle.link_key == link_key)
    if article.dated_by_feed:
        conditions.append(SeenArticle.title_key == tkey)
    return session.scalars(select(SeenArticle).where(or_(*conditions)).limit(1)).first()


def remember(session: Session, result: FeedResult, now: datetime) -> int:
    """Store the feed's articles; returns how many were new. Undated items keep their first-seen date."""
    new = 0
    for article in result.articles:
        row = _match(session, article)
        if row is None:
            new += 1
            row = SeenArticle(key=article.key, first_seen_at=now, feed=result.source)
            session.add(row)
        elif not article.dated_by_feed:
            # an undated item is dated by when it was first seen, not by every later fetch
            article = dataclasses.replace(article, published=row.published_at, key=row.key)
        else:
            article = dataclasses.replace(article, key=row.key)
        row.link_key = canonical_link(article.link) or row.link_key
        row.title_key = title_key(article.title, article.published if article.dated_by_feed else None)
        row.title = article.title
        row.published_at = article.published
        row.data = _article_json(article)
        session.flush()
    return new


def _article_json(article: Article) -> dict:
    data = dataclasses.asdict(article)
    data["published"] = article.published.isoformat()
    data["categories"] = list(article.categories)
    return data


def _article(data: dict) -> Article:
    return Article(**{**data, "published": datetime.fromisoformat(data["published"]),
                      "categories": tuple(data.get("categories", ()))})


def update_state(session: Session, result: FeedResult, new: int, now: datetime) -> FeedState:
    state = session.get(FeedState, result.source) or FeedState(url=result.source, failures=0, quiet_runs=0)
    session.add(state)
    state.last_fetched_at = now
    if result.problem:
        state.failures = (state.failures or 0) + 1
        state.last_error = result.problem.message
    else:
        state.failures = 0
        state.last_error = None
        state.last_ok_at = now
        if not result.not_modified:
            state.etag, state.last_modified = result.etag, result.last_modified
        if new:
            state.quiet_runs, state.last_new_at = 0, now
        else:
            state.quiet_runs = (state.quiet_runs or 0) + 1
    return state


def window_start(session: Session, settings: Settings, now: datetime) -> datetime:
    """Since the last issue sent, and at most `window_days` back."""
    floor = now - timedelta(days=settings.sources.window_days)
    last = session.scalar(select(func.max(IssueRow.sent_at)).where(IssueRow.status == "sent"))
    return max(floor, last) if last else floor


def candidates(session: Session, settings: Settings, now: datetime) -> list[Article]:
    """Unsent articles published inside the window, newest first; future-dated ones wait."""
    start = window_start(session, settings, now)
    rows = session.scalars(
        select(SeenArticle)
        .where(SeenArticle.sent_issue_id.is_(None), SeenArticle.published_at >= start,
               SeenArticle.published_at <= now)
        .order_by(SeenArticle.published_at.desc(), SeenArticle.id)
    ).all()
    return [_article(r.data) for r in rows if r.data]


def collect(session: Session, settings: Settings, now: datetime | None = None) -> Collected:
    """Read all feeds and the directory; every problem is reported in `Collected.problems`."""
    now = now or datetime.now(UTC)
    sources = [settings.resolve(f) for f in settings.sources.feeds]
    states = {s.url: s for s in session.scalars(select(FeedState).where(FeedState.url.in_(sources)))}
    validators = {url: Validators(s.etag, s.last_modified) for url, s in states.items()}
    results = read_feeds(sources, validators, timeout=settings.sources.timeout_seconds,
                         max_bytes=settings.sources.max_feed_bytes,
                         summary_chars=settings.sources.summary_chars)
    collected = Collected()
    for result in results:
        new = remember(session, result, now)
        state = update_state(session, result, new, now)
        if result.problem:
            collected.problems.append(result.problem)
        health = "failing" if state.failures else "quiet" if state.quiet_runs >= settings.sources.stale_runs \
            else "ok"
        collected.feed_health.append({
            "feed": result.source, "health": health, "items": len(result.articles), "new": new,
            "failures": state.failures, "quiet_runs": state.quiet_runs, "error": state.last_error or "",
        })
    session.flush()
    collected.articles = candidates(session, settings, now)
    if settings.sources.directory:
        listings, problems = read_directory(settings.resolve(settings.sources.directory),
                                            timeout=settings.sources.timeout_seconds)
        collected.listings = listings
        collected.problems.extend(problems)
    return collected


def mark_sent(session: Session, issue_id: int, article_keys: list[str]) -> None:
    """Articles in a sent issue never appear again."""
    for row in session.scalars(select(SeenArticle).where(SeenArticle.key.in_(article_keys))):
        row.sent_issue_id = issue_id
