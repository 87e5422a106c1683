"""A reader's time zone, checked the same way at every door (import, `subscribers add`, the preferences page).

Names are IANA time zone names ("Australia/Perth"), as `zoneinfo` knows them (the system's zone files or the
`tzdata` package, a dependency so a slim container without /usr/share/zoneinfo knows them too). A name is
matched without regard to case and stored as IANA spells it; an empty value means "the publication's zone".
"""

from __future__ import annotations

from functools import cache
from typing import Protocol
from zoneinfo import available_timezones

from digest.errors import DigestError

ZONE_MAX = 64  # the column's width; the longest IANA name is 32 characters


class InvalidZone(DigestError, ValueError):
    """A value that is not an IANA time zone name; the message says which and gives an example."""


@cache
def known_zones() -> dict[str, str]:
    """Every IANA name zoneinfo can load, by its case-folded form. `available_timezones` reads the zone files
    once (tens of milliseconds), so it is cached for the process."""
    return {z.casefold(): z for z in available_timezones() if not z.startswith(("posix/", "right/"))
            and z not in ("localtime", "posixrules", "Factory")}


def parse_zone(text: str | None) -> str | None:
    """The IANA name for `text`, None for an empty value; InvalidZone naming the value otherwise."""
    value = (text or "").strip()
    if not value:
        return None
    zone = known_zones().get(value.casefold()) if len(value) <= ZONE_MAX else None
    if zone is None:
        raise InvalidZone(f"timezone {value[:80]!r} is not an IANA time zone name (like Australia/Perth or "
                          "Europe/London)")
    return zone


def zone_choices() -> list[str]:
    """The names a reader may pick, sorted (the preferences page's select)."""
    return sorted(known_zones().values())


class HasZone(Protocol):
    timezone: str | None


def set_zone(subscriber: HasZone, text: str | None) -> str | None:
    """Give a reader the zone `text` names (empty: the publication's again); InvalidZone if it is not one.
    The caller commits. Returns the stored name."""
    subscriber.timezone = parse_zone(text)
    return subscriber.timezone
