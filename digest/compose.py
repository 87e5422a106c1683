"""Compose: pick this week's articles, featured listings and appeal -> an Issue.

Pure functions over what was collected and what earlier issues featured; the store only supplies the
history, so rotation and ordering are testable without a database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from digest.config import Settings
from digest.models import Appeal, Article, Issue, Listing
from digest.sources.feeds import cut

SUBJECT_MAX = 78


@dataclass(frozen=True)
class FeatureHistory:
    """For each listing key, the issue numbers that featured it (newest last)."""

    featured_in: dict[str, list[int]]

    def last(self, key: str) -> int:
        return self.featured_in.get(key, [0])[-1] if self.featured_in.get(key) else -1


def order_articles(articles: Sequence[Article], pinned: Sequence[str] = (),
                   excluded: Sequence[str] = ()) -> list[Article]:
    """Pinned first (in pin order), then newest first; excluded removed."""
    by_key = {a.key: a for a in articles}
    pins = [by_key[k] for k in pinned if k in by_key and k not in excluded]
    rest = sorted((a for a in articles if a.key not in excluded and a.key not in pinned),
                  key=lambda a: a.published, reverse=True)
    return pins + rest


def choose_listings(listings: Sequence[Listing], count: int, number: int, history: FeatureHistory,
                    *, rotation_issues: int = 4, topics: Sequence[str] = (),
                    forced: Sequence[str] = ()) -> list[Listing]:
    """Featured tier first, then the least recently featured, preferring this week's topics.

    A supplier featured within the last `rotation_issues` issues waits, unless too few remain.
    """
    if count <= 0:
        return []
    by_key = {x.key: x for x in listings}
    chosen = [by_key[k] for k in (f.casefold().strip() for f in forced) if k in by_key][:count]
    topic_set = {t.casefold() for t in topics}

    def rank(x: Listing) -> tuple[int, int, int, int, str]:
        recent = history.last(x.key) > number - 1 - rotation_issues and history.last(x.key) >= 0
        matches = len({c.casefold() for c in x.categories} & topic_set)
        return (int(recent), 0 if x.tier == "featured" else 1, history.last(x.key), -matches, x.key)

    for listing in sorted(listings, key=rank):
        if len(chosen) >= count:
            break
        if listing not in chosen:
            chosen.append(listing)
    return chosen


def choose_appeal(settings: Settings, number: int) -> Appeal | None:
    variants = settings.appeal.all_variants()
    if not variants:
        return None
    v = variants[number % len(variants)]
    return Appeal(key=v.key, title=v.title, body=v.body, button=v.button, url=v.url)


def subject_for(settings: Settings, number: int, top: Article | None) -> str:
    name = settings.publication.name
    if top is None:
        return cut(f"{name} #{number}", SUBJECT_MAX)
    full = f"{top.title} | {name} #{number}"
    return full if len(full) <= SUBJECT_MAX else cut(top.title, SUBJECT_MAX)


def compose(settings: Settings, number: int, articles: Sequence[Article], listings: Sequence[Listing],
            history: FeatureHistory, now: datetime, *, pinned: Sequence[str] = (),
            excluded: Sequence[str] = (), featured: Sequence[str] = ()) -> Issue:
    """Build the Issue: top story + articles, 'more news' headlines, listings, appeal."""
    ordered = order_articles(articles, pinned, excluded)
    main = ordered[: settings.sources.max_articles]
    headlines = ordered[settings.sources.max_articles: settings.sources.max_articles + settings.sources.headlines]
    topics = [c for a in main for c in a.categories]
    chosen = choose_listings(listings, settings.sources.featured_listings, number, history,
                             rotation_issues=settings.sources.rotation_issues, topics=topics, forced=featured)
    top = main[0] if main else None
    preheader = cut(" · ".join(a.title for a in main[1:4]) or (top.summary if top else ""), 140)
    return Issue(
        number=number, subject=subject_for(settings, number, top), preheader=preheader, date=now,
        articles=main, headlines=headlines, listings=chosen, appeal=choose_appeal(settings, number),
        excluded=list(excluded), pinned=list(pinned), featured=list(featured),
    )
