"""Editions: readers who should see the same email share one render.

The key of a reader's edition is what changes the email's content for them (today: nothing, so one
render per issue). Rendering is lazy and cached per key, so the number of compiles equals the number of
distinct keys among the readers actually sent to, never the number of readers.
"""

from __future__ import annotations

from digest.config import Settings
from digest.models import Issue
from digest.render import Rendered, render_issue
from subscribers.models import Subscriber

DEFAULT = "default"


class Editions:
    def __init__(self, settings: Settings, issue: Issue) -> None:
        self.settings = settings
        self.issue = issue
        self._cache: dict[str, Rendered] = {}
        self.renders = 0

    def key(self, subscriber: Subscriber | None) -> str:
        return DEFAULT

    def issue_for(self, key: str) -> Issue:
        return self.issue

    def get(self, key: str = DEFAULT) -> Rendered:
        if key not in self._cache:
            self._cache[key] = render_issue(self.settings, self.issue_for(key), edition=key)
            self.renders += 1
        return self._cache[key]

    def __call__(self, subscriber: Subscriber) -> Rendered:
        return self.get(self.key(subscriber))
