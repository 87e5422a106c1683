"""A reader's own part of a copy: signed unsubscribe / preferences links and the List-Unsubscribe headers.

Built here for every transport alike (RFC 8058 one-click unsubscribe: `List-Unsubscribe-Post`), with the
list's own headers: List-Id (RFC 2919), Precedence: bulk and Gmail's Feedback-ID.
"""

from __future__ import annotations

import re
import unicodedata

from digest.config import Settings
from digest.render import token_values, tracks_clicks
from subscribers.links import ReaderLinks


def _label(value: str) -> str:
    """A dot-atom-text piece (RFC 5322 §3.2.3) for List-Id and Feedback-ID: no colons, no spaces."""
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^A-Za-z0-9-]+", "-", folded).strip("-").lower() or "digest"


def _phrase(value: str) -> str:
    """The List-Id's description as a plain phrase of ASCII atext words (RFC 5322 §3.2.3): no quoting and
    no encoded words needed, so it reads the same in every transport (SendGrid takes headers as given)."""
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    return " ".join(re.sub(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+", " ", folded).split()) or "digest"


def list_headers(settings: Settings, list_slug: str, issue_number: int) -> dict[str, str]:
    """The headers every copy of one issue to one list carries.

    - List-Id (RFC 2919): a phrase and `<list-label.domain>`, the label unique per list, so filters and
      Gmail's bulk-sender rules see each list as its own.
    - Precedence: bulk: auto-responders (RFC 3834 §2) stay quiet for bulk mail.
    - Feedback-ID: Gmail's feedback loop, "issue:list:publication:sender" (fields without colons), so
      complaint rates show per issue and list in Google Postmaster Tools.
    """
    pub = settings.publication
    domain = pub.from_email.rsplit("@", 1)[-1].lower()
    if not domain.isascii():  # an internationalized domain in its ASCII (IDNA) form: header text is ASCII
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            domain = _label(domain)
    slug = _label(list_slug or settings.delivery.list)
    return {
        "List-Id": f"{_phrase(pub.name)} - {slug} <{slug}.{domain}>",
        "Precedence": "bulk",
        "Feedback-ID": f"{issue_number}:{slug}:{_label(pub.name)}:{_label(domain)}",
    }


class Personalizer:
    """Token values and headers for a reader, for every transport alike (the links: subscribers.links)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.links = ReaderLinks(settings)
        self.clicks = tracks_clicks(settings)  # one more signature per reader only when it is used
        self._list_headers: dict[tuple[str, int], dict[str, str]] = {}  # the same for every reader of a send

    def unsubscribe_url(self, subscriber_id: int, list_id: int) -> str:
        return self.links.unsubscribe_url(subscriber_id, list_id)

    def preferences_url(self, subscriber_id: int, list_id: int) -> str:
        return self.links.preferences_url(subscriber_id, list_id)

    def for_reader(self, subscriber_id: int, list_id: int, name: str, *, list_slug: str = "",
                   issue_number: int = 0) -> tuple[dict[str, str], dict[str, str]]:
        mailto = self.links.unsubscribe_mailto(subscriber_id, list_id)
        click = self.links.click_url(subscriber_id, issue_number) if self.clicks else ""
        return self.assemble(name, self.links.tokens.make("reader", subscriber_id, list_id), mailto, click,
                             list_slug=list_slug, issue_number=issue_number)

    def assemble(self, name: str, token: str, mailto: str | None, click: str = "", *, list_slug: str = "",
                 issue_number: int = 0) -> tuple[dict[str, str], dict[str, str]]:
        """A reader's values and headers from their own parts: name, "reader" token, mailto (or None) and
        click URL. One code for every reader, and for the templates a batch is filled from (`columnar`)."""
        unsub, preferences = self.links.urls_of(token)
        values = token_values(name, unsub, preferences, click)
        shared = self._list_headers.get((list_slug, issue_number))
        if shared is None:
            shared = self._list_headers[list_slug, issue_number] = {
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                **list_headers(self.settings, list_slug, issue_number)}
        # the mailto: only when the unsubscribe mailbox acts on it (its address carries the reader's token and
        # SendGrid Inbound Parse posts it to /webhooks/inbound/...); a mailto: nothing reads is a broken promise
        headers = {"List-Unsubscribe": f"<{unsub}>" + (f", <{mailto}>" if mailto else ""), **shared}
        return values, headers

    @property
    def columnar(self) -> bool:
        """A batch's readers can be filled from templates: a token (and a mailto) per reader is all that
        differs beyond name and address. Not with our click redirect: a second signature per reader."""
        return not self.clicks

    @property
    def mails(self) -> bool:
        """Each reader's List-Unsubscribe has a mailto: (the unsubscribe mailbox acts on it)."""
        return self.links.mailbox is not None

    def batch_parts(self, subscriber_ids: list[int], list_id: int) -> tuple[list[str], list[str | None]]:
        """The "reader" tokens and mailto addresses (None when no mailbox acts on them) of a batch."""
        tokens = self.links.reader_tokens(subscriber_ids, list_id)
        if self.links.mailbox is None:
            return tokens, [None] * len(tokens)
        return tokens, [self.links.unsubscribe_mailto(sid, list_id) for sid in subscriber_ids]
