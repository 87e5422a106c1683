"""Editions: readers who should see the same email share one render.

An edition's key is what changes the email's content for a reader: their category preferences (only
as far as this issue has articles or listings in them) and the appeal they get (the issue's, another
variant, the print subscribers' thank-you, or none after a recent click on the appeal). Rendering is
lazy and cached per key, so the number of compiles equals the number of distinct keys among the readers
actually sent to (a handful), never the number of readers. `key()` runs once per reader in the send
loop, so it is a few set operations, with the appeal clickers fetched once per send by one query.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from digest.compose import appeal_for_reader, folded, for_reader, is_print_subscriber
from digest.config import Settings
from digest.models import Appeal, Issue, Listing
from digest.render import Rendered, render_issue
from digest.store import DeliveryEvent, IssueRow

DEFAULT = "default"
NO_APPEAL = "-"


def appeal_clickers(session: Session, settings: Settings, number: int) -> set[int]:
    """Readers who followed an appeal link in the `quiet_issues_after_click` issues before `number`.

    A click counts when its URL is an appeal variant's URL or starts with it (tracking parameters added).
    """
    quiet = settings.appeal.quiet_issues_after_click
    urls = sorted({v.url for v in settings.appeal.all_variants() if v.url})
    if quiet <= 0 or not urls:
        return set()
    query = (select(DeliveryEvent.subscriber_id).join(IssueRow, IssueRow.id == DeliveryEvent.issue_id)
             .where(DeliveryEvent.kind == "click", DeliveryEvent.subscriber_id.is_not(None),
                    IssueRow.number >= number - quiet, IssueRow.number < number,
                    or_(*(DeliveryEvent.url.startswith(u, autoescape=True) for u in urls)))
             .distinct())
    return set(session.scalars(query))


def shown_in(issue: Issue, key: str | None) -> tuple[list[Listing], str | None]:
    """What the edition `key` (as `Editions.key` made it, stored on the delivery) showed of `issue`: its
    listings and its appeal's key (None: no appeal). A delivery without a key (sent before editions were
    recorded) is taken as the editor's edition; the reports say how many readers that was."""
    if key is None or key == DEFAULT:
        return list(issue.listings), issue.appeal.key if issue.appeal else None
    categories, appeal_key = json.loads(key)
    wanted = folded(categories) if categories is not None else None
    listings = [x for x in issue.listings if wanted is None or folded(x.categories) & wanted]
    return listings, None if appeal_key == NO_APPEAL else str(appeal_key)


class Editions:
    """The renders of one issue, one per distinct edition key, made on first use and counted."""

    def __init__(self, settings: Settings, issue: Issue, *, appeal_clicked: Iterable[int] = ()) -> None:
        self.settings = settings
        self.issue = issue
        self.clicked = frozenset(appeal_clicked)
        self._cache: dict[str, Rendered] = {}
        self._warmed: dict[str, Rendered] = {}  # made ahead (`warm`), counted when first used
        self._specs: dict[str, tuple[frozenset[str] | None, Appeal | None]] = {}
        self._lock = threading.Lock()
        self.renders = 0
        articles = issue.all_articles
        self._topics = frozenset().union(*(folded(a.categories) for a in articles), *(folded(x.categories)
                                                                                       for x in issue.listings))
        self._issue_appeal = issue.appeal.key if issue.appeal else NO_APPEAL
        # the appeal depends on the reader only through these (compose.appeal_for_reader): being a print
        # subscriber, a recent click, and with rotate = "reader" the variant's slot (id + issue number)
        # modulo the variants; decided once per combination, not once per reader (it builds the variants)
        variants = len(settings.appeal.all_variants())
        self._slots = variants if settings.appeal.rotate == "reader" else 0
        self._appeals: dict[tuple[bool, bool, int | None], tuple[Appeal | None, str]] = {}
        self._keys: dict[tuple[tuple[Any, ...], str], str] = {}

    def key(self, reader: Any | None) -> str:
        """The edition key of a reader (a Subscriber, or a row with id, attributes and categories).

        Readers without preferences who get the issue's appeal share DEFAULT, the editor's edition.
        """
        if reader is None:
            return DEFAULT
        reader_id = getattr(reader, "id", None)
        print_subscriber = is_print_subscriber(getattr(reader, "attributes", None))
        clicked = reader_id in self.clicked
        slot = (reader_id + self.issue.number) % self._slots if self._slots and reader_id is not None else None
        decided = self._appeals.get((print_subscriber, clicked, slot))
        if decided is None:
            appeal = appeal_for_reader(self.settings, self.issue, reader_id, print_subscriber=print_subscriber,
                                       clicked=clicked)
            decided = self._appeals[print_subscriber, clicked, slot] = (appeal, appeal.key if appeal else NO_APPEAL)
        appeal, appeal_key = decided
        prefs = getattr(reader, "categories", None)
        if not prefs and appeal_key == self._issue_appeal:
            return DEFAULT
        raw = tuple(prefs) if isinstance(prefs, list | tuple) else ()
        known = self._keys.get((raw, appeal_key))  # readers share a handful of preference sets
        if known is not None:
            return known
        wanted = folded(raw)
        matched: frozenset[str] | None = (wanted & self._topics) if wanted else None
        if matched is None and appeal_key == self._issue_appeal:
            self._keys[raw, appeal_key] = DEFAULT
            return DEFAULT
        key = json.dumps([sorted(matched) if matched is not None else None, appeal_key], ensure_ascii=False)
        if key not in self._specs:
            self._specs[key] = (matched, appeal)
        if len(self._keys) < 4096:
            self._keys[raw, appeal_key] = key
        return key

    def issue_for(self, key: str) -> Issue:
        """The issue as the readers of this edition see it."""
        if key == DEFAULT:
            return self.issue
        if key not in self._specs:
            raise KeyError(f"unknown edition {key!r}: editions are made by key()")
        categories, appeal = self._specs[key]
        return for_reader(self.issue, categories, appeal)

    def get(self, key: str = DEFAULT) -> Rendered:
        rendered = self._cache.get(key)
        if rendered is None:
            with self._lock:
                rendered = self._cache.get(key)
                if rendered is None:
                    rendered = self._cache[key] = self._warmed.pop(key) if key in self._warmed else self._render(key)
                    self.renders += 1
        return rendered

    def _render(self, key: str) -> Rendered:
        return render_issue(self.settings, self.issue_for(key), edition=key)

    def warm(self) -> None:
        """Render the editor's edition ahead, while the send's snapshot is written (`deliver.loop`): most
        readers get it. Counted in `renders` only once a reader does."""
        with self._lock:
            if DEFAULT not in self._cache and DEFAULT not in self._warmed:
                self._warmed[DEFAULT] = self._render(DEFAULT)

    @property
    def keys(self) -> list[str]:
        """The editions rendered so far."""
        return list(self._cache)

    def __call__(self, reader: Any) -> Rendered:
        return self.get(self.key(reader))

    def each(self, readers: Sequence[Any]) -> list[Rendered]:
        """The edition of every reader of a batch (claimed rows: id, attributes, categories), the key made
        once per distinct (attributes, categories) in it: the claim decodes each stored JSON text once, so
        readers with the same preferences share those very objects (and while the batch holds them, an
        object's id is its own). The reader's id counts only when it can change the appeal (a recent
        appeal click, or a variant rotated per reader): then it is `key` per reader."""
        if self.clicked or self._slots:
            return [self.get(self.key(r)) for r in readers]
        seen: dict[tuple[int, int], Rendered] = {}
        out = []
        for r in readers:
            # empty preferences are alike whatever object holds them (the claim makes a new `{}` for a NULL)
            attributes, categories = r.attributes, r.categories
            pair = (id(attributes) if attributes else 0, id(categories) if categories else 0)
            edition = seen.get(pair)
            if edition is None:
                edition = seen[pair] = self.get(self.key(r))
            out.append(edition)
        return out
