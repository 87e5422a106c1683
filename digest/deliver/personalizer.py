"""A reader's own part of a copy: signed unsubscribe / preferences links and the List-Unsubscribe headers.

Built here for every transport alike (RFC 8058 one-click unsubscribe: `List-Unsubscribe-Post`).
"""

from __future__ import annotations

from digest.config import Settings
from digest.render import token_values
from subscribers.links import ReaderLinks


class Personalizer:
    """Token values and headers for a reader, for every transport alike (the links: subscribers.links)."""

    def __init__(self, settings: Settings) -> None:
        self.links = ReaderLinks(settings)
        self.mailto = settings.publication.reply_to or settings.publication.from_email

    def unsubscribe_url(self, subscriber_id: int, list_id: int) -> str:
        return self.links.unsubscribe_url(subscriber_id, list_id)

    def preferences_url(self, subscriber_id: int, list_id: int) -> str:
        return self.links.preferences_url(subscriber_id, list_id)

    def for_reader(self, subscriber_id: int, list_id: int, name: str) -> tuple[dict[str, str], dict[str, str]]:
        unsub = self.unsubscribe_url(subscriber_id, list_id)
        values = token_values(name, unsub, self.preferences_url(subscriber_id, list_id))
        headers = {
            "List-Unsubscribe": f"<{unsub}>, <mailto:{self.mailto}?subject=unsubscribe>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
        return values, headers
