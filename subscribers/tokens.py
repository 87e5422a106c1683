"""Signed reader links (itsdangerous): unforgeable, expiring, and carrying ids, never an address."""

from __future__ import annotations

from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

from digest.errors import DigestError

PURPOSES = ("confirm", "unsubscribe", "preferences")


class TokenError(DigestError):
    """A link that is tampered, expired, signed with another key, or meant for something else."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True)
class ReaderRef:
    subscriber_id: int
    list_id: int


class Tokens:
    """One signer per purpose, so an unsubscribe token never confirms and vice versa."""

    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("a signing key is required")
        self._signers = {p: TimestampSigner(secret_key, salt=f"digest.{p}") for p in PURPOSES}

    def make(self, purpose: str, subscriber_id: int, list_id: int) -> str:
        return self._signers[purpose].sign(f"{subscriber_id:x}.{list_id:x}").decode("ascii")

    def read(self, purpose: str, token: str, max_age_days: float) -> ReaderRef:
        try:
            value = self._signers[purpose].unsign(token, max_age=max_age_days * 86400)
        except SignatureExpired:
            raise TokenError("this link has expired", expired=True) from None
        except (BadSignature, UnicodeError):
            raise TokenError("this link is not valid (it may have been changed or cut short)") from None
        try:
            sid, lid = value.decode("ascii").split(".")
            return ReaderRef(int(sid, 16), int(lid, 16))
        except ValueError:
            raise TokenError("this link is not valid") from None
