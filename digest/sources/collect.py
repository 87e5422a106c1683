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
from digest.issue_status import IssueStatus
from digest.models import Article, Collected
from digest.sources.directory import read_directory
from digest.sources.fetch import Validators, read_feeds
from digest.sources.identity import canonical_link, title_key
from digest.sources.parse import FeedResult
from digest.store import FeedState, IssueRow, SeenArticle
from digest.wording import plural


def _match(session: Session, article: Article) -> SeenArticle | None:
    """The stored article this one is, by GUID key, canonical link, or title + date (dated items only).

    If several match (a republished item with a new GUID whose link matches an older row), a row
    that was already sent wins: an updated article must never become a candidate again.
    """
    link_key = canonical_link(article.link) or None
    tkey = title_key(article.title, article.published if article.dated_by_feed else None)
    conditions = [SeenArticle.key == article.key]
    if link_key:
        conditions.append(SeenArticle.link_key == link_key)
    if article.dated_by_feed:
        conditions.append(SeenArticle.title_key == tkey)
    rows = session.scalars(select(SeenArticle).where(or_(*conditions)).order_by(SeenArticle.id)).all()
    if not rows:
        return None
    best = min(rows, key=lambda r: (r.sent_issue_id is None, r.key != article.key, r.id))
    if best.sent_issue_id is not None:
        for other in rows:  # they were all this one article: what was sent is used up for all of them
            if other.sent_issue_id is None:
                other.sent_issue_id = best.sent_issue_id
    return best


def remember(session: Session, result: FeedResult, now: datetime) -> int:
    """Store the feed's articles; returns how many were new. Undated items keep their first-seen date."""
    new = 0
    for article in result.articles:
        row = _match(session, article)
        if row is None:
            new += 1
            row = SeenArticle(key=article.key, first_seen_at=now, feed=result.source)
            session.add(row)
            if not article.dated_by_feed:
                article = dataclasses.replace(article, published=now)
        elif not article.dated_by_feed:
            # an undated item is dated by when it was first seen, not by every later fetch
            article = dataclasses.replace(article, published=row.published_at or row.first_seen_at, key=row.key)
        else:
            article = dataclasses.replace(article, key=row.key)
        # the identities are those first seen: copies elsewhere are made of the original, not the edit
        row.link_key = row.link_key or canonical_link(article.link) or None
        row.title_key = row.title_key or title_key(article.title, article.published if article.dated_by_feed
                                                   else None)
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
    last = session.scalar(select(func.max(IssueRow.sent_at)).where(IssueRow.status == IssueStatus.SENT))
    return max(floor, last) if last else floor


def candidates(session: Session, settings: Settings, now: datetime) -> list[Article]:
    """Unsent articles of the window, newest first; future-dated (embargoed) ones wait for their date.

    The window is since the last issue sent, at most `window_days` back. An article published before
    that send but first seen after the last issue was drafted (a feed that was down, or a late
    backdated post) was never offered, so it is offered now, unless the editor left it out of that issue.
    """
    floor = now - timedelta(days=settings.sources.window_days)
    start = window_start(session, settings, now)
    last = session.scalar(select(IssueRow).where(IssueRow.status == IssueStatus.SENT).order_by(IssueRow.sent_at.desc())
                          .limit(1))
    fresh = SeenArticle.published_at >= start
    if last is not None:
        fresh = or_(fresh, SeenArticle.first_seen_at >= last.created_at)
    rows = session.scalars(
        select(SeenArticle)
        .where(SeenArticle.sent_issue_id.is_(None), SeenArticle.published_at >= floor,
               SeenArticle.published_at <= now, fresh)
        .order_by(SeenArticle.published_at.desc(), SeenArticle.id)
    ).all()
    left_out = set((last.content or {}).get("excluded", [])) if last is not None else set()
    return [_article(r.data) for r in rows if r.data and r.key not in left_out]


def health_of(state: FeedState, stale_runs: int) -> dict:
    """One feed's health for `digest collect` and the editors: failing, quiet or ok, and whether it has
    been so for `stale_runs` runs (then editors are told)."""
    failures, quiet = state.failures or 0, state.quiet_runs or 0
    health = "failing" if failures else "quiet" if quiet >= stale_runs else "ok"
    return {"feed": state.url, "health": health, "failures": failures, "quiet_runs": quiet,
            "error": state.last_error or "", "stale": failures >= stale_runs or quiet >= stale_runs,
            "last_new_at": state.last_new_at.isoformat() if state.last_new_at else ""}


def health_summary(feed_health: list[dict], stale_runs: int) -> tuple[str, str]:
    """(level, message) for the editors' checks: fail when every feed failed this run; warn when a feed
    has failed or given nothing new for `stale_runs` runs, naming each such feed and why."""
    stale = [h for h in feed_health if h.get("stale")]
    failing_now = [h for h in feed_health if h["health"] == "failing" and not h.get("stale")]
    parts = [f"{h['feed']} failed {plural(h['failures'], 'run')} in a row ({h['error']})" if h["failures"]
             else f"{h['feed']} gave nothing new for {plural(h['quiet_runs'], 'run')}" for h in stale]
    parts += [f"{h['feed']} failed this run ({h['error']})" for h in failing_now]
    if not feed_health:
        return "ok", "no feeds configured"
    if all(h["health"] == "failing" for h in feed_health):
        # nothing came in at all: the draft holds only what earlier runs left, so an editor must look
        what = "the only feed" if len(feed_health) == 1 else f"every feed ({len(feed_health)})"
        return "fail", f"{what} failed this run, no new articles came in: " + "; ".join(
            f"{h['feed']}: {h['error']}" for h in feed_health)
    if stale:
        return "warn", f"{len(stale)} of {plural(len(feed_health), 'feed')} need attention: " + "; ".join(parts)
    if failing_now:
        return "ok", f"{plural(len(feed_health), 'feed')}; " + "; ".join(parts)
    return "ok", f"all {plural(len(feed_health), 'feed')} healthy" if len(feed_health) > 1 else "the feed is healthy"


def collect(session: Session, settings: Settings, now: datetime | None = None) -> Collected:
    """Read all feeds and the directory; every problem is reported in `Collected.problems`."""
    now = now or datetime.now(UTC)
    sources = [settings.resolve(f) for f in settings.sources.feeds]
    states = {s.url: s for s in session.scalars(select(FeedState).where(FeedState.url.in_(sources)))}
    validators = {url: Validators(s.etag, s.last_modified) for url, s in states.items()}
    results = read_feeds(sources, validators, timeout=settings.sources.timeout_seconds,
                         max_bytes=settings.sources.max_feed_bytes,
                         summary_chars=settings.sources.summary_chars, tz=settings.publication.tz, now=now)
    collected = Collected()
    for result in results:
        new = remember(session, result, now)
        state = update_state(session, result, new, now)
        if result.problem:
            collected.problems.append(result.problem)
        collected.problems.extend(result.notes)
        collected.feed_health.append({**health_of(state, settings.sources.stale_runs),
                                      "feed": result.source, "items": len(result.articles), "new": new})
    session.flush()
    collected.articles = candidates(session, settings, now)
    if settings.sources.directory:
        listings, problems = read_directory(settings.resolve(settings.sources.directory),
                                            timeout=settings.sources.timeout_seconds)
        collected.listings = listings
        collected.problems.extend(problems)
    return collected
