"""RSS/Atom -> Article: fetch (httpx, conditional GET) or read a file, parse (feedparser), clean (nh3).

A feed that fails is reported by name and skipped: one broken feed never stops the issue.
"""

from __future__ import annotations

import calendar
import hashlib
import html
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import feedparser
import httpx
import nh3

from digest import __version__
from digest.models import Article, SourceProblem

USER_AGENT = f"digest/{__version__} (+newsletter digest generator)"
TRACKING_PARAMS = re.compile(r"^(utm_.*|fbclid|gclid|mc_cid|mc_eid|ref|_hsenc|_hsmi|yclid|igshid)$", re.I)


@dataclass
class FeedResult:
    """What one feed gave: its articles, or why it gave none. `not_modified` means a 304."""

    source: str
    articles: list[Article]
    problem: SourceProblem | None = None
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False


@dataclass(frozen=True)
class Validators:
    etag: str | None = None
    last_modified: str | None = None


def canonical_link(link: str) -> str:
    """The link without tracking parameters, fragment, or case differences in scheme and host."""
    if not link:
        return ""
    parts = urlsplit(link.strip())
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if not TRACKING_PARAMS.match(k)])
    path = parts.path.rstrip("/") or "/"
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, query, ""))


def title_key(title: str, published: datetime | None) -> str:
    words = re.sub(r"[^\w]+", " ", title.casefold()).split()
    return " ".join(words) + ("|" + published.date().isoformat() if published else "")


def article_key(guid: str, link: str, title: str, published: datetime | None) -> str:
    """A stable identity: the GUID when the feed gives one, else the canonical link, else title + date."""
    basis = guid.strip() or canonical_link(link) or title_key(title, published)
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


_BLOCK_END = re.compile(r"<(?:/p|/div|/li|/h[1-6]|/blockquote|br\s*/?|/tr|/td)\s*>", re.I)


def plain_text(fragment: str) -> str:
    """HTML from a feed -> plain text: sanitised with nh3 to nothing but text, entities decoded."""
    spaced = _BLOCK_END.sub(" ", fragment or "")
    cleaned = nh3.clean(spaced, tags=set(), clean_content_tags={"script", "style", "iframe", "noscript"})
    return re.sub(r"\s+", " ", html.unescape(cleaned)).strip()


def cut(text: str, limit: int) -> str:
    """Cut at a word boundary, with an ellipsis, never mid-word."""
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    space = head.rfind(" ")
    head = head[:space] if space > limit // 2 else text[:limit]
    return head.rstrip(" ,.;:-–—") + "…"


def _entry_date(entry: feedparser.FeedParserDict) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(key)
        if value:
            return datetime.fromtimestamp(calendar.timegm(value), UTC)
    return None


_IMG = re.compile(r"<img\b[^>]*?\bsrc\s*=\s*['\"]([^'\"]+)['\"][^>]*>", re.I)
_ALT = re.compile(r"\balt\s*=\s*['\"]([^'\"]*)['\"]", re.I)


def _entry_image(entry: feedparser.FeedParserDict, body: str, base: str) -> tuple[str, str]:
    for media in entry.get("media_content", []) or []:
        url = media.get("url", "")
        if url and (media.get("medium") == "image" or media.get("type", "").startswith("image")
                    or re.search(r"\.(jpe?g|png|gif|webp)(\?|$)", url, re.I)):
            return urljoin(base, url), ""
    for thumb in entry.get("media_thumbnail", []) or []:
        if thumb.get("url"):
            return urljoin(base, thumb["url"]), ""
    for link in entry.get("links", []) or []:
        if link.get("rel") == "enclosure" and str(link.get("type", "")).startswith("image") and link.get("href"):
            return urljoin(base, link["href"]), ""
    match = _IMG.search(body)
    if match:
        tag = match.group(0)
        alt = _ALT.search(tag)
        src = html.unescape(match.group(1))
        if not _is_tracking_pixel(tag):
            return urljoin(base, src), html.unescape(alt.group(1)) if alt else ""
    return "", ""


def _is_tracking_pixel(tag: str) -> bool:
    return bool(re.search(r"\b(width|height)\s*=\s*['\"]?[01]['\"]?\b", tag))


def parse_feed(data: bytes | str, source: str, *, summary_chars: int = 240,
               now: datetime | None = None) -> FeedResult:
    """Parse feed bytes into Articles. Malformed XML that feedparser could not recover is a problem."""
    parsed = feedparser.parse(data, sanitize_html=False, resolve_relative_uris=True,
                              response_headers={"content-location": source} if "://" in source else None)
    if parsed.get("bozo") and not parsed.entries:
        reason = parsed.get("bozo_exception")
        return FeedResult(source, [], SourceProblem(source, "", f"not a readable feed ({reason})"))
    if not parsed.entries and not parsed.feed:
        return FeedResult(source, [], SourceProblem(source, "", "not a feed (no channel and no items)"))
    base = parsed.feed.get("link", "") if "://" not in source else source
    articles = []
    for entry in parsed.entries:
        title = plain_text(entry.get("title", ""))
        link = entry.get("link", "") or ""
        if link and not urlsplit(link).scheme:
            link = urljoin(base, link)
        body = ""
        if entry.get("content"):
            body = entry["content"][0].get("value", "")
        body = body or entry.get("summary", "") or entry.get("description", "")
        if not title and not body:
            continue
        published = _entry_date(entry)
        guid = entry.get("id", "") or ""
        image, alt = _entry_image(entry, body, link or base)
        summary = cut(plain_text(entry.get("summary", "") or body), summary_chars)
        tags = tuple(t.get("term", "") for t in entry.get("tags", []) or [] if t.get("term"))
        articles.append(Article(
            key=article_key(guid, link, title, published),
            title=title or cut(plain_text(body), 80),
            link=link if urlsplit(link).scheme in ("http", "https") else "",
            published=published or (now or datetime.now(UTC)),
            summary=summary,
            image=image if urlsplit(image).scheme in ("http", "https") else "",
            image_alt=alt or title,
            feed=source,
            categories=tags,
            dated_by_feed=published is not None,
        ))
    return FeedResult(source, articles)


def read_feed(source: str, *, validators: Validators = Validators(), client: httpx.Client | None = None,
              timeout: float = 10.0, max_bytes: int = 5_000_000, retries: int = 2,
              summary_chars: int = 240) -> FeedResult:
    """Read one feed from a URL (conditional GET, size cap, retries) or a local file."""
    if "://" not in source or source.startswith("file://"):
        path = Path(source.removeprefix("file://"))
        try:
            data = path.read_bytes()
        except OSError as e:
            return FeedResult(source, [], SourceProblem(source, "", f"cannot read file: {e.strerror}"))
        return parse_feed(data, source, summary_chars=summary_chars)

    headers = {"User-Agent": USER_AGENT, "Accept": "application/rss+xml, application/atom+xml, */*;q=0.5"}
    if validators.etag:
        headers["If-None-Match"] = validators.etag
    if validators.last_modified:
        headers["If-Modified-Since"] = validators.last_modified
    own = client is None
    client = client or httpx.Client(timeout=timeout, follow_redirects=True)
    try:
        last_error = ""
        for attempt in range(retries + 1):
            try:
                with client.stream("GET", source, headers=headers, timeout=timeout) as response:
                    if response.status_code == 304:
                        return FeedResult(source, [], not_modified=True, etag=validators.etag,
                                          last_modified=validators.last_modified)
                    if response.status_code >= 500 or response.status_code == 429:
                        last_error = f"HTTP {response.status_code}"
                        raise httpx.TransportError(last_error)
                    if response.status_code >= 400:
                        return FeedResult(source, [], SourceProblem(source, "", f"HTTP {response.status_code}"))
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body.extend(chunk)
                        if len(body) > max_bytes:
                            return FeedResult(source, [], SourceProblem(
                                source, "", f"larger than the {max_bytes:,} byte cap"))
                    result = parse_feed(bytes(body), str(response.url), summary_chars=summary_chars)
                    result.source = source
                    result.etag = response.headers.get("ETag")
                    result.last_modified = response.headers.get("Last-Modified")
                    return result
            except httpx.TimeoutException:
                last_error = f"timed out after {timeout:g}s"
            except httpx.TransportError as e:
                last_error = last_error or f"connection failed ({e.__class__.__name__}: {e})"
            if attempt < retries:
                import time

                time.sleep(min(4.0, 0.25 * 2**attempt))
        return FeedResult(source, [], SourceProblem(source, "", last_error or "failed"))
    finally:
        if own:
            client.close()


def read_feeds(sources: Iterable[str], validators: dict[str, Validators] | None = None, *,
               timeout: float = 10.0, max_bytes: int = 5_000_000, summary_chars: int = 240,
               workers: int = 8) -> list[FeedResult]:
    """Read several feeds in parallel; results come back in the order of `sources`."""
    sources = list(sources)
    validators = validators or {}
    with httpx.Client(timeout=timeout, follow_redirects=True,
                      limits=httpx.Limits(max_connections=workers)) as client, \
            ThreadPoolExecutor(max_workers=max(1, min(workers, len(sources) or 1))) as pool:
        return list(pool.map(lambda s: read_feed(
            s, validators=validators.get(s, Validators()), client=client, timeout=timeout,
            max_bytes=max_bytes, summary_chars=summary_chars), sources))
