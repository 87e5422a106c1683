"""Every link a reader gets, made and read here: signed (itsdangerous), expiring, carrying ids, never an address.

`ReaderLinks` builds the confirm (`/c/`), unsubscribe (`/u/`) and preferences (`/p/`) URLs from
`[publication] public_url` and reads their tokens back with the expiry the config gives each purpose;
`Tokens` signs and checks the tokens themselves.

A token is `<subscriber id hex>.<list id hex>.<timestamp>.<signature>`: the ids are readable but mean
nothing without the database, the address is not in it, and a change to any character breaks the
signature. One signer per purpose (the salt), so an unsubscribe token never confirms and vice versa; a
copy's unsubscribe and preferences links share one "reader" token (one signature per reader per send).
The signing time is kept in the token; `confirm` uses it to refuse links sent before an unsubscribe.
"""

from __future__ import annotations

import hmac
import time
from base64 import urlsafe_b64encode
from dataclasses import dataclass
from datetime import datetime

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, want_bytes
from itsdangerous.encoding import base64_decode, base64_encode, int_to_bytes

from digest.config import Settings
from digest.errors import DigestError

PURPOSES = ("confirm", "unsubscribe", "preferences", "reader")
#: the links a "reader" token serves: one signature per reader and send for both links of a copy (issue
#: 16: signing was a quarter of a send's CPU). The preferences page can already leave every list, so one
#: token for both grants nothing the preferences link alone did not; a confirmation stays its own purpose.
#: Tokens of the older, per-link purposes (in every copy sent before) are read as before.
READER_LINKS = ("unsubscribe", "preferences")


class TokenError(DigestError):
    """A link that is tampered, expired, signed with another key, or meant for something else."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True)
class ReaderRef:
    subscriber_id: int
    list_id: int
    #: when the link was signed (UTC, whole seconds); None only for refs built by hand
    issued_at: datetime | None = None


class Tokens:
    """One signer per purpose, so an unsubscribe token never confirms and vice versa.

    `make` writes exactly what itsdangerous's `TimestampSigner.sign` writes (a test holds it to that),
    at a third of the cost: a send signs two links per reader, which is most of its per-reader work.
    The key is derived once (itsdangerous derives it per call) and the keyed HMAC state is copied, not
    rebuilt. `read` is itsdangerous's own verification.
    """

    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("a signing key is required")
        self._signers = {p: TimestampSigner(secret_key, salt=f"digest.{p}") for p in PURPOSES}
        self._keyed = {p: hmac.new(s.derive_key(), digestmod=s.digest_method().name) for p, s in self._signers.items()}
        self._stamp: tuple[int, str] = (0, "")
        assert all(want_bytes(s.sep) == b"." for s in self._signers.values())

    def _signer(self, purpose: str) -> TimestampSigner:
        try:
            return self._signers[purpose]
        except KeyError:
            raise ValueError(f"unknown token purpose {purpose!r} (one of {', '.join(PURPOSES)})") from None

    def make(self, purpose: str, subscriber_id: int, list_id: int) -> str:
        try:
            keyed = self._keyed[purpose]
        except KeyError:
            self._signer(purpose)  # raises the ValueError naming the purposes
            raise
        now = int(time.time())  # TimestampSigner.get_timestamp
        if self._stamp[0] != now:
            self._stamp = (now, "." + base64_encode(int_to_bytes(now)).decode("ascii"))
        # the separator is itsdangerous's default "." (every signer here uses it; checked in __init__)
        value = f"{subscriber_id:x}.{list_id:x}{self._stamp[1]}"
        mac = keyed.copy()
        mac.update(value.encode("ascii"))
        return f"{value}.{urlsafe_b64encode(mac.digest()).rstrip(b'=').decode('ascii')}"

    def read(self, purpose: str, token: str, max_age_days: float) -> ReaderRef:
        """The ids in a token; TokenError when it is tampered, expired, of another key or purpose."""
        signer = self._signer(purpose)
        token = token.strip()
        try:
            value, signed_at = signer.unsign(token, max_age=round(max_age_days * 86400), return_timestamp=True)
        except SignatureExpired:
            raise TokenError("this link has expired", expired=True) from None
        except (BadSignature, UnicodeError):
            raise TokenError("this link is not valid (it may have been changed or cut short)") from None
        # base64 leaves spare bits in the last character: only the one canonical spelling is accepted,
        # so a link differs from the one we sent in no character at all
        signature = token.rsplit(".", 1)[-1].encode("ascii")
        if base64_encode(base64_decode(signature)) != signature:
            raise TokenError("this link is not valid (it may have been changed or cut short)")
        try:
            sid, lid = value.decode("ascii").split(".")
            return ReaderRef(int(sid, 16), int(lid, 16), signed_at)
        except ValueError:
            raise TokenError("this link is not valid") from None


class ReaderLinks:
    """The reader's URLs for one publication, and the check of a token that comes back on one.

    Confirmation links expire after `[subscribers] confirm_expiry_days`; unsubscribe and preferences
    links after `link_expiry_days` (an unsubscribe link must keep working long after its issue).
    """

    def __init__(self, settings: Settings) -> None:
        self.public_url = settings.publication.public_url
        self.tokens = Tokens(settings.secret_key)
        self._max_age_days = {"confirm": settings.subscribers.confirm_expiry_days,
                              "unsubscribe": settings.subscribers.link_expiry_days,
                              "preferences": settings.subscribers.link_expiry_days}

    def confirm_url(self, subscriber_id: int, list_id: int) -> str:
        return f"{self.public_url}/c/{self.tokens.make('confirm', subscriber_id, list_id)}"

    def unsubscribe_url(self, subscriber_id: int, list_id: int) -> str:
        return f"{self.public_url}/u/{self.tokens.make('reader', subscriber_id, list_id)}"

    def preferences_url(self, subscriber_id: int, list_id: int) -> str:
        return f"{self.public_url}/p/{self.tokens.make('reader', subscriber_id, list_id)}"

    def reader_urls(self, subscriber_id: int, list_id: int) -> tuple[str, str]:
        """The unsubscribe and preferences URLs of a copy, from one signature."""
        token = self.tokens.make("reader", subscriber_id, list_id)
        return f"{self.public_url}/u/{token}", f"{self.public_url}/p/{token}"

    def read(self, purpose: str, token: str) -> ReaderRef:
        """The ids in a link's token; TokenError when it is tampered, expired or meant for another purpose."""
        if purpose not in self._max_age_days:
            raise ValueError(f"unknown token purpose {purpose!r} (one of {', '.join(PURPOSES)})")
        max_age = self._max_age_days[purpose]
        if purpose in READER_LINKS:
            try:
                return self.tokens.read("reader", token, max_age)
            except TokenError as e:
                if e.expired:  # signed by us as a reader token: too old, whatever else it might be
                    raise
            # a link of a copy sent before reader tokens: its own purpose's signature
        return self.tokens.read(purpose, token, max_age)
