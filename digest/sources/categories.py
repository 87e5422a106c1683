"""The categories a reader may prefer: the supplier directory's own, spelt as the directory spells them.

Read here, in the sources layer, and handed to `subscribers` as data (`subscribers.categories.canonical`
checks a reader's choice against them), so the subscriber store never reads a source itself.
"""

from __future__ import annotations

import time
from pathlib import Path

from digest.config import Settings
from digest.sources.directory import read_directory

_CACHE: dict[str, tuple[object, tuple[str, ...]]] = {}
_URL_SECONDS = 600


def known_categories(settings: Settings) -> tuple[str, ...] | None:
    """The directory's categories, sorted; None when there is no directory or it cannot be read.

    Cached per file modification time (per 10 minutes for a URL), so a preferences page or an import
    does not re-read the directory for every reader.
    """
    source = settings.sources.directory
    if not source:
        return None
    source = settings.resolve(source)
    if "://" in source and not source.startswith("file://"):
        stamp: object = int(time.monotonic() // _URL_SECONDS)
    else:
        try:
            stamp = Path(source.removeprefix("file://")).stat().st_mtime_ns
        except OSError:
            return None
    cached = _CACHE.get(source)
    if cached is not None and cached[0] == stamp:
        return cached[1] or None
    listings, _problems = read_directory(source, timeout=settings.sources.timeout_seconds)
    found = tuple(sorted({c for x in listings for c in x.categories}, key=str.casefold))
    _CACHE[source] = (stamp, found)
    return found or None
