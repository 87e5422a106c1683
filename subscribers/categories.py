"""The categories a reader may prefer: the supplier directory's own, spelt as the directory spells them."""

from __future__ import annotations

import time
from pathlib import Path

from digest.config import Settings
from digest.errors import DigestError

_CACHE: dict[str, tuple[object, tuple[str, ...]]] = {}
_URL_SECONDS = 600


class UnknownCategory(DigestError):
    """A category that the directory does not have."""


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
    from digest.sources.directory import read_directory

    listings, _problems = read_directory(source, timeout=settings.sources.timeout_seconds)
    found = tuple(sorted({c for x in listings for c in x.categories}, key=str.casefold))
    _CACHE[source] = (stamp, found)
    return found or None


def canonical(categories: list[str] | tuple[str, ...], known: tuple[str, ...] | None) -> list[str]:
    """The given categories in the directory's spelling, without repeats; UnknownCategory names any other.

    With no directory to check against, the categories are kept as given (trimmed).
    """
    wanted = [c.strip() for c in categories if c and c.strip()]
    if known is None:
        return list(dict.fromkeys(wanted))
    by_key = {k.casefold(): k for k in known}
    out: list[str] = []
    for c in wanted:
        found = by_key.get(c.casefold())
        if found is None:
            raise UnknownCategory(f"unknown category {c!r} (the directory has: {', '.join(known[:12])}"
                                  f"{', ...' if len(known) > 12 else ''})")
        if found not in out:
            out.append(found)
    return out
