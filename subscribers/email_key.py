"""The key a person is found by, as subscribers.lifecycle.find and `digest subscribers show` look them up.

The key of a valid address is its normalised form case-folded (subscribers.addresses.normalize, through
email-validator); text that is not a valid address cannot have been stored as one, and is looked up as it
is, trimmed and case-folded. Importing email-validator costs more than a third of `import typer` (its
Unicode patterns are compiled at import), more than `subscribers show` may spend on its start-up (issue
16), so the common case is answered without it: for ASCII text with no quoted local part (`"`, `\\`), no
domain literal (`[`) and no IDNA label (`xn--`), normalising changes nothing that case-folding does not
(the domain's case; a mailbox name such as POSTMASTER; RFC 5321 §2.4 and email-validator's normalisation),
and an invalid address keeps the same key by the rule above: the key is the text trimmed and case-folded
either way. tests/test_subscribers_lifecycle.py holds the shortcut to the validator on random addresses.
"""

from __future__ import annotations

#: what the validator may rewrite in ASCII text beyond its case: quoted local parts and their escapes
#: (unquoted when the quotes are not needed), domain literals (an IPv6 address compressed), IDNA labels
#: (given back in Unicode)
_REWRITTEN = ('"', "\\", "[")


def plain_key(text: str) -> str | None:
    """The key of trimmed text when normalising it can only change its case; None otherwise."""
    if text.isascii() and not any(c in text for c in _REWRITTEN) and "xn--" not in text.casefold():
        return text.casefold()
    return None


def email_key(raw: str) -> str:
    """The key a person with this address is stored under (subscribers.models.Subscriber.email_key)."""
    text = raw.strip()
    key = plain_key(text)
    if key is not None:
        return key
    from subscribers.addresses import InvalidEmail, normalize  # email-validator: only for unusual text

    try:
        return normalize(text).key
    except InvalidEmail:
        return text.casefold()
