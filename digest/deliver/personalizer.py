"""A reader's own part of a copy: signed unsubscribe / preferences links and the List-Unsubscribe headers.

Built here for every transport alike (RFC 8058 one-click unsubscribe: `List-Unsubscribe-Post`).
"""

from __future__ import annotations

from digest.config import Settings
from digest.render import token_values
from subscribers.tokens import Tokens


class Personalizer:
    """Token values and headers for a reader: signed links built here, for every transport alike."""

    def __init__(self, settings: Settings) -> None:
        self.public_url = settings.publication.public_url
        self.tokens = Tokens(settings.secret_key)
        self.mailto = settings.publication.reply_to or settings.publication.from_email

    def _token(self, purpose: str, subscriber_id: int, list_id: int) -> str:
        return self.tokens.make(purpose, subscriber_id, list_id)

    def unsubscribe_url(self, subscriber_id: int, list_id: int) -> str:
        return f"{self.public_url}/u/{self._token('unsubscribe', subscriber_id, list_id)}"

    def preferences_url(self, subscriber_id: int, list_id: int) -> str:
        return f"{self.public_url}/p/{self._token('preferences', subscriber_id, list_id)}"

    def for_reader(self, subscriber_id: int, list_id: int, name: str) -> tuple[dict[str, str], dict[str, str]]:
        unsub = self.unsubscribe_url(subscriber_id, list_id)
        values = token_values(name, unsub, self.preferences_url(subscriber_id, list_id))
        headers = {
            "List-Unsubscribe": f"<{unsub}>, <mailto:{self.mailto}?subject=unsubscribe>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
        return values, headers
