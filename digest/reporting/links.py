"""Where a click went: a clicked URL mapped to the issue's article, listing, appeal button or other link.

SendGrid's click event carries the original URL the reader followed (its click tracking rewrites the
links, then reports the original: https://docs.sendgrid.com/for-developers/tracking-events/event#engagement-events),
and so does our own redirect (`/r/<token>`). The rendered issue's links come from its frozen content
(`Issue`): each article's link, each listing's URL, the appeal variants' URLs. A URL matches a link when
it is the same (scheme and host case ignored, a trailing slash ignored) or the link followed by a query or
fragment that tracking tools add (`?utm_source=...`). The reader's own links (unsubscribe, preferences)
carry a signed token: only their path is kept for showing, never the token.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from digest.models import Issue

ARTICLE, LISTING, APPEAL, OTHER = "article", "listing", "appeal", "other"
#: the reader pages a copy links to (digest.web.reader), shown by name
OWN_PAGES = {"/unsubscribe": "unsubscribe link", "/preferences": "preferences link", "/subscribe": "subscribe page",
             "/issues": "view in the browser"}


@dataclass(frozen=True)
class Target:
    """One link of an issue: what kind it is, its key (the article's or listing's key, the appeal variant's
    key, or the link shown for other links) and a label for people."""

    kind: str
    key: str
    label: str


def normalized(url: str) -> str:
    """The URL compared: scheme and host lower-cased (RFC 3986 §6.2.2.1), no fragment, no trailing slash."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return url.strip()
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))


def shown_form(url: str) -> str:
    """A link as shown in a report: host and path only (a query may hold a reader's token or id)."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "(not a URL)"
    return f"{parts.netloc.lower()}{parts.path}" or "(not a URL)"


class LinkMap:
    """The links of one issue, and the target of any clicked URL."""

    def __init__(self, issue: Issue, appeal_urls: dict[str, str], public_url: str = "") -> None:
        """`appeal_urls`: appeal variant key -> its URL (every variant the issue's editions could carry)."""
        self.links: list[tuple[str, Target]] = []
        for a in issue.all_articles:
            if a.link:
                self.links.append((normalized(a.link), Target(ARTICLE, a.key, a.title)))
        for x in issue.listings:
            if x.url:
                self.links.append((normalized(x.url), Target(LISTING, x.key, x.name)))
        if issue.appeal and issue.appeal.url:
            self.links.append((normalized(issue.appeal.url), Target(APPEAL, issue.appeal.key, issue.appeal.title)))
        for key, url in appeal_urls.items():
            if url:
                self.links.append((normalized(url), Target(APPEAL, key, key)))
        # the longest link first, so a listing's deeper page is not taken for its home page
        self.links.sort(key=lambda pair: -len(pair[0]))
        self.public = normalized(public_url) if public_url else ""
        self._cache: dict[str, Target] = {}

    def target(self, url: str | None) -> Target:
        if not url:
            return Target(OTHER, "(no URL)", "(no URL)")
        found = self._cache.get(url)
        if found is None:
            found = self._cache[url] = self._find(url)
        return found

    def _find(self, url: str) -> Target:
        clicked = normalized(url)
        for link, target in self.links:
            if clicked == link or clicked.startswith(link + ("&" if "?" in link else "?")):
                return target
        if self.public and clicked.startswith(self.public):
            path = urlsplit(clicked).path[len(urlsplit(self.public).path):]
            for prefix, label in OWN_PAGES.items():
                if path == prefix or path.startswith(prefix + "/"):
                    return Target(OTHER, label, label)
        shown = shown_form(url)
        return Target(OTHER, shown, shown)
