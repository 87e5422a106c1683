"""Compose: pick this week's articles, featured listings and appeal -> an Issue.

Pure functions over what was collected and what earlier issues featured; the store only supplies the
history, so rotation and ordering are testable without a database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from digest.config import AppealVariant, Settings
from digest.models import Appeal, Article, Issue, Listing
from digest.sources.text import cut

SUBJECT_MAX = 78


@dataclass(frozen=True)
class FeatureHistory:
    """For each listing key, the issue numbers that featured it (newest last)."""

    featured_in: dict[str, list[int]]

    def last(self, key: str) -> int:
        """The last issue that featured this supplier, or -1 if none ever did."""
        numbers = self.featured_in.get(key)
        return numbers[-1] if numbers else -1

    def count(self, key: str) -> int:
        return len(self.featured_in.get(key, ()))

    @property
    def newest(self) -> int:
        return max((n[-1] for n in self.featured_in.values() if n), default=0)


def folded(categories: Iterable[str]) -> frozenset[str]:
    """Categories compared as readers, feeds and the directory spell them: case and spaces ignored."""
    return frozenset(c.strip().casefold() for c in categories if isinstance(c, str) and c.strip())


def order_articles(articles: Sequence[Article], pinned: Sequence[str] = (),
                   excluded: Sequence[str] = ()) -> list[Article]:
    """Pinned first (in pin order), then newest first; excluded removed."""
    by_key = {a.key: a for a in articles}
    pins = [by_key[k] for k in pinned if k in by_key and k not in excluded]
    rest = sorted((a for a in articles if a.key not in excluded and a.key not in pinned),
                  key=lambda a: a.published, reverse=True)
    return pins + rest


def choose_listings(listings: Sequence[Listing], count: int, number: int, history: FeatureHistory,
                    *, rotation_issues: int = 4, topics: Iterable[str] = (),
                    forced: Sequence[str] = ()) -> list[Listing]:
    """The suppliers this issue features: the editor's picks, then by rank.

    Rank: a supplier featured in the last `rotation_issues` - 1 issues waits, so no supplier appears
    twice in any `rotation_issues` consecutive issues (one that waits is used only when too few others
    remain); then the `featured` tier before the rest; then the least recently featured (never
    featured first); among those featured together last, the less often featured (this keeps the
    counts within one of each other over a year); then the one whose categories match more of this
    week's article topics; then by name, so the choice is reproducible.
    `number` <= 0 (a preview before any draft) means the issue after the newest in the history.
    """
    if count <= 0:
        return []
    if number <= 0:
        number = history.newest + 1
    by_key = {x.key: x for x in listings}
    chosen = list(dict.fromkeys(by_key[k] for k in (f.casefold().strip() for f in forced) if k in by_key))[:count]
    topic_set = folded(topics)

    def rank(x: Listing) -> tuple[int, int, int, int, int, str]:
        last = history.last(x.key)
        recent = last >= 0 and number - last < rotation_issues
        matches = len(folded(x.categories) & topic_set)
        return (int(recent), 0 if x.tier == "featured" else 1, last, history.count(x.key), -matches, x.key)

    for listing in sorted(listings, key=rank):
        if len(chosen) >= count:
            break
        if listing not in chosen:
            chosen.append(listing)
    return chosen


def _appeal(v: AppealVariant) -> Appeal:
    return Appeal(key=v.key, title=v.title, body=v.body, button=v.button, url=v.url)


def choose_appeal(settings: Settings, number: int) -> Appeal | None:
    """The issue's appeal (the editor's edition): the variants in turn, one per issue."""
    variants = settings.appeal.all_variants()
    if not variants:
        return None
    return _appeal(variants[(number - 1) % len(variants)])


def is_print_subscriber(attributes: object) -> bool:
    """The reader's `print_subscriber` attribute, as imports spell it: true, "yes", "1", "Y"..."""
    if not isinstance(attributes, dict):
        return False
    value = attributes.get("print_subscriber")
    if isinstance(value, str):
        return value.strip().casefold() in ("1", "true", "yes", "y", "t", "on")
    return bool(value)


def appeal_for_reader(settings: Settings, issue: Issue, reader_id: int | None, *, print_subscriber: bool,
                      clicked: bool) -> Appeal | None:
    """What this reader is asked: print subscribers are thanked instead (or asked nothing, if there is no
    thank-you variant); a reader who followed the appeal link lately is not asked; with `rotate =
    "reader"` the variants are split across readers (and turn each issue), else the issue's appeal."""
    if print_subscriber:
        thanks = settings.appeal.thank_you
        return _appeal(thanks) if thanks else None
    if clicked:
        return None
    variants = settings.appeal.all_variants()
    if settings.appeal.rotate == "reader" and variants and reader_id is not None:
        return _appeal(variants[(reader_id + issue.number) % len(variants)])
    return issue.appeal


def for_reader(issue: Issue, categories: frozenset[str] | None, appeal: Appeal | None) -> Issue:
    """The issue as a reader with these (folded) category preferences sees it.

    None: the editor's order and every listing. Otherwise the editor's pinned stories stay first, then
    the reader's categories' articles, then the rest, each in the editor's order, split again into
    articles and headlines at the same place; and only the listings in the reader's categories.
    """
    if categories is None:
        return replace(issue, appeal=appeal)
    everything = issue.all_articles
    pinned = [a for a in everything if a.key in issue.pinned]
    theirs = [a for a in everything if a not in pinned and folded(a.categories) & categories]
    rest = [a for a in everything if a not in pinned and a not in theirs]
    ordered = pinned + theirs + rest
    split = len(issue.articles)
    listings = [x for x in issue.listings if folded(x.categories) & categories]
    return replace(issue, articles=ordered[:split], headlines=ordered[split:], listings=listings, appeal=appeal)


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
