"""The supplier directory's listings, for the editors' choice of featured listings.

Read through digest.sources.directory and kept for a few minutes per process, so a page view never
waits on a directory URL; a directory that cannot be read gives an empty list, never an error page.
"""

from __future__ import annotations

import threading
import time

from digest.config import Settings
from digest.models import Listing
from digest.sources.directory import read_directory

TTL_SECONDS = 600.0


class Catalog:
    def __init__(self, settings: Settings, ttl: float = TTL_SECONDS) -> None:
        self.settings = settings
        self.ttl = ttl
        self._at = -ttl
        self._listings: list[Listing] = []
        self._lock = threading.Lock()

    def listings(self) -> list[Listing]:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                source = self.settings.sources.directory
                found: list[Listing] = []
                if source:
                    found, _problems = read_directory(self.settings.resolve(source),
                                                      timeout=self.settings.sources.timeout_seconds)
                self._listings, self._at = found, time.monotonic()
            return self._listings
