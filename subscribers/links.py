"""Every link a reader gets, made and read here: signed (itsdangerous), expiring, carrying ids, never an address.

`ReaderLinks` builds the confirm (`/c/`), unsubscribe (`/u/`) and preferences (`/p/`) URLs from
`[publication] public_url` and reads their tokens back with the expiry the config gives each purpose;
`Tokens` signs and checks the tokens themselves.

A token is `<subscriber id hex>.<list id hex>.<timestamp>.<signature>`: the ids are readable but mean
nothing without the database, the address is not in it, and a change to any character breaks the
signature. One signer per purpose (the salt), so an unsubscribe token never confirms and vice versa; a
copy's unsubscribe and preferences links share one "reader" token (one signature per reader per send).
The signing time is kept in the token; `confirm` uses it to refuse links sent before an unsubscribe.

The unsubscribe mailbox (`[delivery] unsubscribe_mailbox`) gets an address per reader and list,
`unsubscribe+<sid hex>-<lid hex>-<mac>@inbound.example.org` (`MailboxTokens`): lower case only, since mail
systems may change the case of a local part (RFC 5321 §2.4 lets the receiver decide), and short enough
for the 64-character local part (§4.5.3.1.1). It never expires: a mailed unsubscribe must keep working.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from binascii import b2a_base64
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, want_bytes
from itsdangerous.encoding import base64_decode, base64_encode, int_to_bytes

from digest.config import Settings
from digest.errors import DigestError

_URLSAFE = bytes.maketrans(b"+/", b"-_")  # base64url (RFC 4648 §5), as itsdangerous writes its signatures
PURPOSES = ("confirm", "unsubscribe", "preferences", "reader", "click")
#: the reader part of a click link in a copy nobody in particular reads (the archive, a preview)
NO_READER = "-"
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
    The key is derived once (itsdangerous derives it per call) and each MAC is one `hmac.digest` call.
    `read` is itsdangerous's own verification.
    """

    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("a signing key is required")
        self._signers = {p: TimestampSigner(secret_key, salt=f"digest.{p}") for p in PURPOSES}
        # the derived key and digest name per purpose: `hmac.digest` (one C call, no HMAC object per token)
        self._keyed = {p: (s.derive_key(), s.digest_method().name) for p, s in self._signers.items()}
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
        mac = hmac.digest(keyed[0], value.encode("ascii"), keyed[1])
        return f"{value}.{b2a_base64(mac, newline=False).translate(_URLSAFE).rstrip(b'=').decode('ascii')}"

    def make_many(self, purpose: str, subscriber_ids: Iterable[int], list_id: int) -> list[str]:
        """`make` for many readers of one list at once (a send's claimed batch): the same tokens, with the
        parts every reader shares (key, list id, timestamp) prepared once and one `hmac.digest` per reader."""
        self._signer(purpose)  # a ValueError naming the purposes for an unknown one
        key, digest = self._keyed[purpose]
        now = int(time.time())
        tail = f".{list_id:x}.{base64_encode(int_to_bytes(now)).decode('ascii')}"
        # HMAC (RFC 2104 §2): H(K ^ opad, H(K ^ ipad, text)), the two keyed hash states made once and copied
        # per token (half the cost of a `hmac.digest` call, which keys both anew each time)
        block = hashlib.new(digest).block_size
        padded = (hashlib.new(digest, key).digest() if len(key) > block else key).ljust(block, b"\0")
        inner = hashlib.new(digest, bytes(b ^ 0x36 for b in padded))
        outer = hashlib.new(digest, bytes(b ^ 0x5C for b in padded))
        # every MAC has the digest's size: its base64 is that many characters before the "=" padding,
        # which itsdangerous drops (a slice, not an rstrip per token)
        chars = len(b2a_base64(bytes(inner.digest_size), newline=False).rstrip(b"="))
        b64 = b2a_base64
        out = []
        for sid in subscriber_ids:
            value = f"{sid:x}{tail}"
            h = inner.copy()
            h.update(value.encode("ascii"))
            mac = outer.copy()
            mac.update(h.digest())
            out.append(f"{value}.{b64(mac.digest())[:chars].translate(_URLSAFE).decode('ascii')}")
        return out

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


class MailboxTokens:
    """The reader's address at the unsubscribe mailbox, and the reader an address of that form names."""

    #: 26 base32 characters of HMAC-SHA256: 130 bits
    MAC_CHARS = 26

    def __init__(self, secret_key: str, mailbox: str) -> None:
        if not secret_key:
            raise ValueError("a signing key is required")
        self._key = hmac.new(secret_key.encode("utf-8"), b"digest.unsubscribe-mailbox", hashlib.sha256).digest()
        local, _, domain = mailbox.rpartition("@")
        self.local, self.domain = local.lower(), domain.lower()
        self._address = re.compile(rf"{re.escape(self.local)}\+([0-9a-f]{{1,15}})-([0-9a-f]{{1,15}})-([a-z2-7]+)"
                                   rf"@{re.escape(self.domain)}")

    def _mac(self, ids: str) -> str:
        digest = hmac.new(self._key, ids.encode("ascii"), hashlib.sha256).digest()
        return base64.b32encode(digest).decode("ascii").lower()[:self.MAC_CHARS]

    def address(self, subscriber_id: int, list_id: int) -> str:
        ids = f"{subscriber_id:x}-{list_id:x}"
        return f"{self.local}+{ids}-{self._mac(ids)}@{self.domain}"

    def read(self, address: str) -> ReaderRef:
        """The ids an address of the mailbox carries; TokenError when it is not one of ours or is forged."""
        found = self._address.fullmatch(address.strip().lower())
        if found is None:
            raise TokenError("not an address of the unsubscribe mailbox")
        sid, lid, mac = found.groups()
        if not hmac.compare_digest(mac.encode("ascii"), self._mac(f"{sid}-{lid}").encode("ascii")):
            raise TokenError("the unsubscribe address is not valid (it may have been changed)")
        return ReaderRef(int(sid, 16), int(lid, 16))


class ReaderLinks:
    """The reader's URLs for one publication, and the check of a token that comes back on one.

    Confirmation links expire after `[subscribers] confirm_expiry_days`; unsubscribe and preferences
    links after `link_expiry_days` (an unsubscribe link must keep working long after its issue).
    """

    def __init__(self, settings: Settings) -> None:
        self.public_url = settings.publication.public_url
        self.tokens = Tokens(settings.secret_key)
        mailbox, secret = settings.delivery.unsubscribe_mailbox, settings.delivery.inbound_secret
        # a mailbox without the Inbound Parse secret has nothing acting on it: no address is offered then
        self.mailbox = MailboxTokens(settings.secret_key, mailbox) if mailbox and secret else None
        self._max_age_days = {"confirm": settings.subscribers.confirm_expiry_days,
                              "unsubscribe": settings.subscribers.link_expiry_days,
                              "preferences": settings.subscribers.link_expiry_days,
                              "click": settings.subscribers.link_expiry_days}
        self._link_key = hashlib.sha256(f"digest.click-link\0{settings.secret_key}".encode()).digest()

    def confirm_url(self, subscriber_id: int, list_id: int) -> str:
        return f"{self.public_url}/c/{self.tokens.make('confirm', subscriber_id, list_id)}"

    def unsubscribe_url(self, subscriber_id: int, list_id: int) -> str:
        return f"{self.public_url}/u/{self.tokens.make('reader', subscriber_id, list_id)}"

    def preferences_url(self, subscriber_id: int, list_id: int) -> str:
        return f"{self.public_url}/p/{self.tokens.make('reader', subscriber_id, list_id)}"

    def reader_urls(self, subscriber_id: int, list_id: int) -> tuple[str, str]:
        """The unsubscribe and preferences URLs of a copy, from one signature."""
        return self.urls_of(self.tokens.make("reader", subscriber_id, list_id))

    def reader_tokens(self, subscriber_ids: Iterable[int], list_id: int) -> list[str]:
        """The "reader" tokens of many readers of one list (their unsubscribe and preferences links)."""
        return self.tokens.make_many("reader", subscriber_ids, list_id)

    def urls_of(self, token: str) -> tuple[str, str]:
        """The unsubscribe and preferences URLs a "reader" token makes."""
        return f"{self.public_url}/u/{token}", f"{self.public_url}/p/{token}"

    def click_url(self, subscriber_id: int, issue_number: int) -> str:
        """The reader's part of their click links (`/r/<token>`): the token carries the subscriber and the
        issue number (in the list id's place), signed for clicks only."""
        return f"{self.public_url}/r/{self.tokens.make('click', subscriber_id, issue_number)}"

    def link_mac(self, url: str) -> str:
        """The link's part of a click link: a MAC of the target URL, so /r/ redirects only to URLs we put
        in an issue (no open redirect), made once per edition, not per reader."""
        return hmac.new(self._link_key, url.encode("utf-8"), hashlib.sha256).hexdigest()[:24]

    def link_ok(self, url: str, mac: str) -> bool:
        return hmac.compare_digest(self.link_mac(url), mac)

    def unsubscribe_mailto(self, subscriber_id: int, list_id: int) -> str | None:
        """The reader's `mailto:` for List-Unsubscribe (RFC 2369), or None when no mailbox acts on it."""
        if self.mailbox is None:
            return None
        return f"mailto:{self.mailbox.address(subscriber_id, list_id)}?subject=unsubscribe"

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
