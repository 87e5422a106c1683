"""Where a person stands on one list: the statuses a membership row stores. Declared here, apart from the
tables (subscribers.models, which re-exports it), so a read that does not load SQLAlchemy has the same enum
(`digest subscribers show`, issue 16). Only subscribers.lifecycle changes a membership's status."""

from __future__ import annotations

from enum import StrEnum


class MembershipStatus(StrEnum):
    """Where a person stands on one list; stored as these strings. Only `active` members receive it."""

    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"

    @classmethod
    def parse(cls, text: str) -> MembershipStatus:
        """The status a form, file or command line names; ValueError names the known ones."""
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"unknown status {text!r} (one of {', '.join(cls)})") from None
