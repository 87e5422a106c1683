"""Identity of a feed item: its GUID, else its canonical link, else its title and day.

rss2email's lesson: feeds change GUIDs, add tracking parameters, and republish; an item is recognised
by the strongest identity it offers, and collect also matches the weaker ones against what was seen.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

TRACKING_PARAMS = re.compile(
    r"^(utm_.*|fbclid|gclid|dclid|msclkid|mc_cid|mc_eid|ref|ref_src|_hsenc|_hsmi|yclid|igshid|mkt_tok|"
    r"oly_enc_id|oly_anon_id|vero_id|wickedid|__s|s_cid|cmpid|ncid|sr_share|rss|feed|source)$", re.I)


def canonical_link(link: str) -> str:
    """The link without tracking parameters, fragment, default port, or case differences in scheme/host."""
    if not link:
        return ""
    try:
        parts = urlsplit(link.strip())
        netloc = parts.netloc.lower()
        if (parts.scheme.lower(), parts.port) in (("http", 80), ("https", 443)):
            netloc = netloc.rsplit(":", 1)[0]
    except ValueError:
        return link.strip()
    query = urlencode(sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                             if not TRACKING_PARAMS.match(k)))
    path = parts.path.rstrip("/") or "/"
    return urlunsplit((parts.scheme.lower(), netloc, path, query, ""))


def title_key(title: str, published: datetime | None) -> str:
    """The title case-folded to its words, with the day it was published (if the feed gave one)."""
    words = re.sub(r"[^\w]+", " ", title.casefold()).split()
    return " ".join(words) + ("|" + published.date().isoformat() if published else "")


def guid_basis(guid: str, scope: str) -> str:
    """A GUID as an identity: a URL, tag: or urn: is unique everywhere; '42' only within its feed."""
    guid = guid.strip()
    if not guid:
        return ""
    if re.match(r"^(https?://|tag:|urn:)", guid, re.I) or " at http" in guid:
        return guid
    return f"{scope}#{guid}"


def article_key(guid: str, link: str, title: str, published: datetime | None, scope: str = "") -> str:
    """A stable identity: the GUID when the feed gives one, else the canonical link, else title + date."""
    basis = guid_basis(guid, scope) or canonical_link(link) or title_key(title, published)
    return hashlib.sha256(basis.encode()).hexdigest()[:32]
