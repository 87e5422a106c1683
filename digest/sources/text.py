"""Feed HTML -> plain text. nh3 is the one sanitiser (feedparser's own is off, see parse.py): no feed
HTML reaches the email at all. Titles and summaries are plain text (nh3 with an empty tag allow-list;
scripts, styles, iframes, forms and the like removed with their content), and links must be http(s).
"""

from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

import nh3

#: Removed with everything inside them, not just their tags.
DROP_WITH_CONTENT = {"script", "style", "iframe", "noscript", "form", "object", "embed", "template", "svg",
                     "math", "textarea", "select", "button", "canvas", "audio", "video", "head", "title"}


_BLOCK_END = re.compile(r"<(?:/p|/div|/li|/h[1-6]|/blockquote|br\s*/?|/tr|/td|/th|/figcaption|hr\s*/?)\s*>", re.I)
_BOILERPLATE = [
    re.compile(r"\s*The post .{1,300}? appeared first on .{1,200}?\.?\s*$", re.I | re.S),  # WordPress (Yoast)
    re.compile(r"\s*(\[(…|\.\.\.|&hellip;)\]|(Continue|Keep) reading.{0,120}|Read (the )?(full|more).{0,80})$",
               re.I | re.S),
]


def plain_text(fragment: str) -> str:
    """HTML from a feed -> plain text: sanitised with nh3 to nothing but text, entities decoded."""
    spaced = _BLOCK_END.sub(" ", fragment or "")
    cleaned = nh3.clean(spaced, tags=set(), clean_content_tags=DROP_WITH_CONTENT, strip_comments=True)
    return re.sub(r"\s+", " ", html.unescape(cleaned)).strip()


_ESCAPED_TAG = re.compile(r"</?(p|br|div|span|a|b|i|em|strong|img|ul|li)\b[^>]*>", re.I)


def summary_text(fragment: str) -> str:
    """Plain text without the boilerplate that feed generators append ("The post X appeared first on Y").

    HTML escaped twice by a plugin shows its tags after one pass; they are taken out by a second.
    """
    text = plain_text(fragment)
    if _ESCAPED_TAG.search(text):
        text = plain_text(text)
    for pattern in _BOILERPLATE:
        text = pattern.sub("", text)
    return text.strip()


def cut(text: str, limit: int) -> str:
    """Cut at a word boundary, with an ellipsis, never mid-word."""
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    space = head.rfind(" ")
    head = head[:space] if space > limit // 2 else text[:limit]
    return head.rstrip(" ,.;:-–—") + "…"


def http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)
