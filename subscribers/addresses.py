"""An email address as the subscriber store knows it: validated and normalised (email-validator, no DNS), with
its key, the identity a person is found by (case-folded). Kept apart from subscribers.lifecycle (which
re-exports these names) so that subscribers.email_key, which a read without SQLAlchemy uses, can fall back
on it (`digest subscribers show`, issue 16)."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import NamedTuple

from digest.errors import DigestError


class InvalidEmail(DigestError):
    pass


class Address(NamedTuple):
    """A validated address (a tuple: an import makes a million of them)."""

    email: str  # as given, with the domain normalised (IDN -> Unicode form, lower case)
    key: str  # the identity: case-folded

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.key.encode("utf-8")).hexdigest()


def normalize(raw: str) -> Address:
    """Validate syntax (no DNS) and normalise; raises InvalidEmail with the validator's reason.

    Most addresses take a fast path that gives exactly what email-validator gives (a plain ASCII local
    part and a domain validated once per import): a million-row import spends its time on rows, not
    on re-validating the same few thousand domains. Anything unusual goes through the validator itself.
    """
    text = raw.strip()
    fast = _fast_normalize(text)
    if fast is not None:
        return fast
    from email_validator import EmailNotValidError, validate_email  # see `_mailbox_names`

    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError as e:
        raise InvalidEmail(f"{text!r} is not a valid email address: {e}") from None
    email = result.normalized
    return Address(email, email.casefold())


_DOT_ATOM = re.compile(r"[a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~]+(?:\.[a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~]+)*\Z")
_PLAIN_DOMAIN = re.compile(r"[a-zA-Z0-9.\-\u0080-\U0010FFFF]+\Z")
_MAX_LENGTH = 254


@lru_cache(maxsize=1)
def _mailbox_names() -> frozenset[str]:
    """The local parts email-validator lowercases (postmaster, ...). email-validator is imported on first use:
    it compiles its patterns as it loads, 20 ms that `digest send`, which imports this module (through
    subscribers.lifecycle) but validates no address, paid at every start (issue 16)."""
    from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

    return frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


@lru_cache(maxsize=65536)
def _domain(domain: str) -> tuple[str, str] | None:
    """(normalised, ASCII) form of a domain as email-validator gives it, or None when it objects."""
    from email_validator import EmailNotValidError, validate_email  # see `_mailbox_names`

    try:
        result = validate_email("a@" + domain, check_deliverability=False)
    except EmailNotValidError:
        return None
    return result.domain, result.ascii_domain


def _fast_normalize(text: str) -> Address | None:
    local, at, domain = text.partition("@")
    if not at or "@" in domain or not _DOT_ATOM.match(local) or local.lower() in _mailbox_names() \
            or not _PLAIN_DOMAIN.match(domain):
        return None
    forms = _domain(domain)
    if forms is None:
        return None
    email = f"{local}@{forms[0]}"
    if text.isascii() and forms[0] == forms[1]:  # all three forms the validator measures are this long
        if len(text) > _MAX_LENGTH:
            return None
    elif max(len(text.encode()), len(email.encode()), len(local) + 1 + len(forms[1])) > _MAX_LENGTH:
        return None
    return Address(email, email.casefold())

