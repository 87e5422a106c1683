"""The picture of a feed item: media:content, media:thumbnail, an image enclosure, or the body's first
real <img>. Tracking pixels, emoji and avatars are never taken; only http(s) images are.
"""

from __future__ import annotations

import html
import re
from urllib.parse import urljoin, urlsplit

import feedparser
import nh3

from digest.sources.text import DROP_WITH_CONTENT, http_url

_IMG = re.compile(r"<img\b[^>]*>", re.I)
_ATTR = re.compile(r"\b([\w-]+)\s*=\s*\"([^\"]*)\"")
#: Images that are counters, not pictures: known tracker hosts, and pixel-ish names in the path.
_TRACKER_HOSTS = re.compile(r"(^|\.)(feeds\.feedburner\.com|feedproxy\.google\.com|stats\.wp\.com|pixel\.wp\.com|"
                            r"doubleclick\.net|google-analytics\.com|gravatar\.com|s\.w\.org)$", re.I)
_TRACKER_PATHS = re.compile(r"(/~r/|/~ff/|/pixel\b|\bpixel\.(gif|png)|/beacon\b|/track(ing)?/|/open\.gif|\b1x1\b|"
                            r"spacer\.gif|blank\.gif|/emoji/|/wf/open|\bmf\.gif|/avatar/)", re.I)
_IMAGE_EXT = re.compile(r"\.(jpe?g|png|gif|webp|avif)(\?|#|$)", re.I)


def _is_tracker_url(url: str) -> bool:
    try:
        parts = urlsplit(url or "")
    except ValueError:
        return True
    return bool(_TRACKER_HOSTS.search(parts.hostname or "") or _TRACKER_PATHS.search(parts.path + "?" + parts.query))


def _tiny(attrs: dict[str, str]) -> bool:
    for name in ("width", "height"):
        value = (attrs.get(name) or "").strip().lower().removesuffix("px")
        if value.isdigit() and int(value) <= 2:
            return True
    return False


def _usable_image(url: str, attrs: dict[str, str] | None = None) -> bool:
    return http_url(url) and not _is_tracker_url(url) and not _tiny(attrs or {})


def _body_image(body: str, base: str) -> tuple[str, str]:
    """The first real <img> of the body: lazy-load attributes read, pixels, emoji and avatars skipped."""
    tagged = nh3.clean(body or "", tags={"img"}, clean_content_tags=DROP_WITH_CONTENT, url_schemes={"http", "https"},
                       attributes={"img": {"src", "alt", "width", "height", "data-src", "data-lazy-src",
                                           "data-original", "srcset", "class"}})
    for tag in _IMG.findall(tagged):
        attrs = {k.lower(): html.unescape(v) for k, v in _ATTR.findall(tag)}
        if "wp-smiley" in attrs.get("class", "") or "emoji" in attrs.get("class", ""):
            continue
        candidates = [attrs.get("src", ""), attrs.get("data-src", ""), attrs.get("data-lazy-src", ""),
                      attrs.get("data-original", ""), attrs.get("srcset", "").split(" ")[0]]
        for candidate in candidates:
            url = urljoin(base, candidate.strip()) if candidate.strip() else ""
            if _usable_image(url, attrs):
                return url, attrs.get("alt", "").strip()
    return "", ""


def entry_image(entry: feedparser.FeedParserDict, body: str, base: str) -> tuple[str, str]:
    """media:content, then media:thumbnail, then an image enclosure, then the first <img> of the body."""
    for media in entry.get("media_content", []) or []:
        url = urljoin(base, media.get("url", "") or "")
        is_image = media.get("medium") == "image" or str(media.get("type", "")).startswith("image") \
            or (not media.get("medium") and not media.get("type") and _IMAGE_EXT.search(url))
        if is_image and _usable_image(url, media):
            return url, ""
    for thumb in entry.get("media_thumbnail", []) or []:
        url = urljoin(base, thumb.get("url", "") or "")
        if _usable_image(url, thumb):
            return url, ""
    for link in entry.get("links", []) or []:
        if link.get("rel") != "enclosure":
            continue
        url = urljoin(base, link.get("href", "") or "")
        kind = str(link.get("type", ""))
        if (kind.startswith("image") or (not kind and _IMAGE_EXT.search(url))) and _usable_image(url):
            return url, ""
    return _body_image(body, base)
