"""A reader's categories, checked against the directory's (which the caller reads and passes in:
`digest.sources.categories.known_categories`), and spelt as the directory spells them."""

from __future__ import annotations

from digest.errors import DigestError


class UnknownCategory(DigestError):
    """A category that the directory does not have."""


def canonical(categories: list[str] | tuple[str, ...], known: tuple[str, ...] | None) -> list[str]:
    """The given categories in the directory's spelling, without repeats; UnknownCategory names any other.

    With no directory to check against (`known` None), the categories are kept as given (trimmed).
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
