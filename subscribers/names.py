"""A reader's name, made safe once at every door (CSV import, /subscribe, `subscribers add`, the admin).

A name ends up in a header (`To: "Name" <address>`), where a line break would start a new header (RFC
5322 §2.2: header fields are one line, folded only at whitespace) and the email package refuses it; NUL
and the other control characters have no place in a name either. So line breaks (CR, LF, U+2028/U+2029),
tabs, NUL and every other control character (Unicode category Cc) become spaces, runs of spaces become
one, and the ends are trimmed. Format characters (Cf, such as the zero-width joiner some scripts and
emoji need) are kept.
"""

from __future__ import annotations

import re
import unicodedata

from digest.errors import DigestError

NAME_MAX = 255

_SPACES = re.compile(r"\s+")


class InvalidName(DigestError):
    """A name refused as it is (too long): the message says why."""


def _space(ch: str) -> str:
    return " " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch


def clean_name(raw: str) -> str:
    """The name with control characters and line breaks as single spaces, trimmed."""
    if raw.isprintable():  # the common case: nothing to replace
        return _SPACES.sub(" ", raw).strip() if "  " in raw else raw.strip()
    return _SPACES.sub(" ", "".join(_space(ch) for ch in raw)).strip()


def checked_name(raw: str) -> str:
    """clean_name, or InvalidName when the cleaned name is longer than NAME_MAX characters."""
    name = clean_name(raw)
    if len(name) > NAME_MAX:
        raise InvalidName(f"name is {len(name)} characters (at most {NAME_MAX})")
    return name
