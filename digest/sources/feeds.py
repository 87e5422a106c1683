"""RSS/Atom -> Article: fetch (httpx, conditional GET) or read a file, parse (feedparser), clean (nh3).

A feed that fails is reported by name and skipped: one broken feed never stops the issue. An item
that cannot be used (no title and no body, no http(s) link, a date nobody can read) is named in the
feed's notes, never dropped in silence.

feedparser's own sanitiser is off (`sanitize_html=False`): nh3 is the one sanitiser, so what reaches a
reader is decided here and tested here. No feed HTML reaches the email at all: titles and summaries are
plain text (nh3 with an empty tag allow-list; scripts, styles, iframes, forms and the like removed with
their content), links and images must be http(s), and tracking pixels are never taken as images.
"""

from __future__ import annotations

import calendar
import hashlib
import html
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit
from xml.sax import SAXException

import feedparser
import httpx
import nh3

from digest import __version__
from digest.models import Article, SourceProblem
from digest.sources.dates import parse_date

log = logging.getLogger(__name__)

USER_AGENT = f"digest/{__version__} (+newsletter digest generator)"
TRACKING_PARAMS = re.compile(
    r"^(utm_.*|fbclid|gclid|dclid|msclkid|mc_cid|mc_eid|ref|ref_src|_hsenc|_hsmi|yclid|igshid|mkt_tok|"
    r"oly_enc_id|oly_anon_id|vero_id|wickedid|__s|s_cid|cmpid|ncid|sr_share|rss|feed|source)$", re.I)
TITLE_CHARS = 200

#: Removed with everything inside them, not just their tags.
DROP_WITH_CONTENT = {"script", "style", "iframe", "noscript", "form", "object", "embed", "template", "svg",
                     "math", "textarea", "select", "button", "canvas", "audio", "video", "head", "title"}


@dataclass
class FeedResult:
    """What one feed gave: its articles, or why it gave none. `not_modified` means a 304.

    `notes` name the items that could not be used (or were used only in part) in a feed that worked.
    """

    source: str
    articles: list[Article]
    problem: SourceProblem | None = None
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False
    notes: list[SourceProblem] = field(default_factory=list)


@dataclass(frozen=True)
class Validators:
    etag: str | None = None
    last_modified: str | None = None


# ---------------------------------------------------------------------------------------------------
# identity


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


# ---------------------------------------------------------------------------------------------------
# cleaning


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


# ---------------------------------------------------------------------------------------------------
# images


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


def _entry_image(entry: feedparser.FeedParserDict, body: str, base: str) -> tuple[str, str]:
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


# ---------------------------------------------------------------------------------------------------
# parsing


def _entry_date(entry: feedparser.FeedParserDict, tz: tzinfo) -> tuple[datetime | None, str]:
    """(date, the raw text if it could not be read). Our reader first, feedparser's as the fallback."""
    for raw_key, parsed_key in (("published", "published_parsed"), ("updated", "updated_parsed"),
                                ("created", "created_parsed")):
        raw = str(entry.get(raw_key) or "").strip()
        value = parse_date(raw, tz) if raw else None
        if value is None and entry.get(parsed_key):
            value = datetime.fromtimestamp(calendar.timegm(entry[parsed_key]), UTC)
        if value is not None:
            return value, ""
        if raw:
            return None, raw
    return None, ""


def _entry_body(entry: feedparser.FeedParserDict) -> str:
    contents = entry.get("content") or []
    html_first = sorted(contents, key=lambda c: 0 if "html" in str(c.get("type", "")) else 1)
    body = html_first[0].get("value", "") if html_first else ""
    return body or entry.get("summary", "") or entry.get("description", "") or ""


def _describe(index: int, title: str) -> str:
    return f"item {index}" + (f" ({cut(title, 60)!r})" if title else "")


def parse_feed(data: bytes | str, source: str, *, summary_chars: int = 240, now: datetime | None = None,
               tz: tzinfo = UTC, url: str | None = None, charset: str | None = None) -> FeedResult:
    """Parse feed bytes into Articles. Malformed XML that feedparser could not recover is a problem.

    `source` names the feed in reports; `url` (where it was finally fetched from, after redirects)
    resolves relative links. `tz` is the zone for dates that name none (the publication's); undated
    items get `now` and `dated_by_feed=False`, and collect dates them by when they were first seen.
    """
    now = now or datetime.now(UTC)
    head = (data.encode() if isinstance(data, str) else data)[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        return FeedResult(source, [], SourceProblem(source, "", "empty: the feed has no content at all"))
    if head.startswith((b"{", b"[")):
        return FeedResult(source, [], SourceProblem(
            source, "", "JSON, not RSS or Atom (a JSON Feed? give the site's RSS or Atom feed instead)"))
    url = url or (source if source.startswith(("http://", "https://")) else None)
    # servers label feeds text/html or nothing at all; the XML declaration decides, with the charset if sent
    headers = {"content-location": url, "content-type": "application/xml" + (
        f"; charset={charset}" if charset else "")} if url else None
    parsed = feedparser.parse(data, sanitize_html=False, resolve_relative_uris=True, response_headers=headers)
    if not parsed.entries and not parsed.get("version"):
        if isinstance(parsed.get("bozo_exception"), SAXException):
            reason = _reason(parsed.get("bozo_exception"))
            return FeedResult(source, [], SourceProblem(source, "", f"not a readable feed ({reason})"))
        return FeedResult(source, [], SourceProblem(
            source, "", "not an RSS or Atom feed (no channel and no items: a web page, or an error page?)"))
    if parsed.get("bozo") and not parsed.entries:
        reason = parsed.get("bozo_exception")
        return FeedResult(source, [], SourceProblem(source, "", f"not a readable feed ({_reason(reason)})"))
    notes: list[SourceProblem] = []
    if parsed.get("bozo"):
        notes.append(SourceProblem(source, "", f"malformed feed, read as far as possible "
                                               f"({_reason(parsed.get('bozo_exception'))})"))
    feed_link = parsed.feed.get("link", "") or ""
    base = url or feed_link
    guids = Counter(str(e.get("id", "") or "").strip() for e in parsed.entries)
    shared = {g for g, n in guids.items() if g and n > 1}
    if shared:
        notes.append(SourceProblem(source, "", f"{sum(guids[g] for g in shared)} items share GUIDs "
                                               f"(e.g. {next(iter(sorted(shared)))!r}): they are told apart by link"))
    scope = canonical_link(feed_link) or source
    articles: list[Article] = []
    for index, entry in enumerate(parsed.entries, start=1):
        raw_title = entry.get("title", "") or ""
        title = plain_text(raw_title)
        body = _entry_body(entry)
        where = _describe(index, title)
        if not title and not plain_text(body):
            notes.append(SourceProblem(source, where, "no title and no text: skipped"))
            continue
        link = (entry.get("link", "") or "").strip()
        if not link and str(entry.get("id", "")).startswith(("http://", "https://")) \
                and entry.get("guidislink", True):
            link = entry["id"]
        if link and not urlsplit(link).scheme:
            link = urljoin(entry.get("title_detail", {}).get("base", "") or base, link)
        if not http_url(link):
            notes.append(SourceProblem(source, where, f"no http(s) link ({cut(link, 60)!r}): skipped"
                                       if link else "no link: skipped"))
            continue
        published, bad_date = _entry_date(entry, tz)
        if bad_date:
            notes.append(SourceProblem(source, where, f"date {cut(bad_date, 60)!r} not understood: "
                                                      "dated by when it was first seen"))
        guid = str(entry.get("id", "") or "")
        if guid.strip() in shared:
            guid = ""
        image, alt = _entry_image(entry, body, link or base)
        summary_source = entry.get("summary", "") or body
        summary = cut(summary_text(summary_source), summary_chars)
        if not title:
            title = cut(summary_text(body), 80)
        tags = tuple(dict.fromkeys(plain_text(t.get("term", "") or "") for t in entry.get("tags", []) or []
                                   if plain_text(t.get("term", "") or "")))
        articles.append(Article(
            key=article_key(guid, link, title, published, scope),
            title=cut(title, TITLE_CHARS),
            link=link,
            published=published or now,
            summary=summary,
            image=image,
            image_alt=alt or title,
            feed=source,
            categories=tags,
            dated_by_feed=published is not None,
        ))
    return FeedResult(source, articles, notes=notes)


def _reason(exc: object) -> str:
    text = str(exc or "unknown error").strip().splitlines()[0] if exc else "unknown error"
    return f"{exc.__class__.__name__}: {text}" if isinstance(exc, Exception) else text


# ---------------------------------------------------------------------------------------------------
# fetching


def _retry_after(response: httpx.Response, cap: float) -> float | None:
    value = response.headers.get("Retry-After", "")
    return min(cap, float(value)) if value.strip().isdigit() else None


def _safe_parse(data: bytes, source: str, summary_chars: int, tz: tzinfo, now: datetime | None,
                url: str | None = None, charset: str | None = None) -> FeedResult:
    try:
        return parse_feed(data, source, summary_chars=summary_chars, tz=tz, now=now, url=url, charset=charset)
    except Exception as e:  # a feed no one here wrote must never stop the others
        log.exception("parsing %s failed", source)
        return FeedResult(source, [], SourceProblem(source, "", f"could not be parsed ({_reason(e)})"))


def read_feed(source: str, *, validators: Validators = Validators(), client: httpx.Client | None = None,
              timeout: float = 10.0, max_bytes: int = 5_000_000, retries: int = 2, backoff: float = 0.5,
              summary_chars: int = 240, tz: tzinfo = UTC, now: datetime | None = None) -> FeedResult:
    """Read one feed from a URL (conditional GET, size cap, retries with backoff) or a local file.

    `timeout` bounds the whole attempt (a server that drips bytes is cut off too), not just each read.
    Server errors, 429 and network failures are retried `retries` times, waiting `backoff` * 2^n seconds
    (or the server's Retry-After, up to `timeout`); other 4xx answers are final.
    """
    if "://" not in source or source.startswith("file://"):
        path = Path(source.removeprefix("file://"))
        try:
            size = path.stat().st_size
            if size > max_bytes:
                return FeedResult(source, [], SourceProblem(source, "", f"larger than the {max_bytes:,} byte cap"))
            data = path.read_bytes()
        except OSError as e:
            return FeedResult(source, [], SourceProblem(source, "", f"cannot read file: {e.strerror or e}"))
        return _safe_parse(data, source, summary_chars, tz, now)

    headers = {"User-Agent": USER_AGENT,
               "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5"}
    if validators.etag:
        headers["If-None-Match"] = validators.etag
    if validators.last_modified:
        headers["If-Modified-Since"] = validators.last_modified
    own = client is None
    client = client or httpx.Client(timeout=timeout, follow_redirects=True)
    try:
        last_error = ""
        for attempt in range(retries + 1):
            wait, last_error = backoff * 2**attempt, ""
            deadline = time.monotonic() + timeout
            try:
                with client.stream("GET", source, headers=headers, timeout=timeout) as response:
                    if response.status_code == 304:
                        return FeedResult(source, [], not_modified=True, etag=validators.etag,
                                          last_modified=validators.last_modified)
                    if response.status_code >= 500 or response.status_code in (408, 429):
                        last_error = f"HTTP {response.status_code} {response.reason_phrase}".strip()
                        wait = _retry_after(response, timeout) or wait
                        raise httpx.TransportError(last_error)
                    if response.status_code >= 400:
                        gone = " (the feed was removed: take it out of sources.feeds)" \
                            if response.status_code == 410 else ""
                        return FeedResult(source, [], SourceProblem(
                            source, "", f"HTTP {response.status_code} {response.reason_phrase}{gone}".strip()))
                    declared = response.headers.get("Content-Length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        return FeedResult(source, [], SourceProblem(
                            source, "", f"larger than the {max_bytes:,} byte cap ({int(declared):,} bytes)"))
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body.extend(chunk)
                        if len(body) > max_bytes:
                            return FeedResult(source, [], SourceProblem(
                                source, "", f"larger than the {max_bytes:,} byte cap"))
                        if time.monotonic() > deadline:
                            raise httpx.ReadTimeout("the whole response took too long")
                    result = _safe_parse(bytes(body), source, summary_chars, tz, now, url=str(response.url),
                                         charset=response.charset_encoding)
                    moved = [r for r in response.history if r.status_code in (301, 308)]
                    if moved:
                        result.notes.append(SourceProblem(source, "", f"moved permanently to {response.url}: "
                                                                      "update sources.feeds"))
                    result.etag = response.headers.get("ETag")
                    result.last_modified = response.headers.get("Last-Modified")
                    return result
            except httpx.TimeoutException:
                last_error = f"timed out after {timeout:g}s"
            except httpx.TransportError as e:
                last_error = last_error or f"connection failed ({e.__class__.__name__}: {e})"
            except (httpx.InvalidURL, httpx.RequestError) as e:  # too many redirects, bad encoding, bad URL
                return FeedResult(source, [], SourceProblem(source, "", f"{e.__class__.__name__}: {e}"))
            if attempt < retries:
                time.sleep(wait)
        tries = f" (after {retries + 1} tries)" if retries else ""
        return FeedResult(source, [], SourceProblem(source, "", (last_error or "failed") + tries))
    finally:
        if own:
            client.close()


def read_feeds(sources: Iterable[str], validators: dict[str, Validators] | None = None, *,
               timeout: float = 10.0, max_bytes: int = 5_000_000, summary_chars: int = 240,
               workers: int = 8, retries: int = 2, backoff: float = 0.5, tz: tzinfo = UTC,
               now: datetime | None = None) -> list[FeedResult]:
    """Read several feeds in parallel; results come back in the order of `sources`."""
    sources = list(sources)
    validators = validators or {}
    with httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=5,
                      limits=httpx.Limits(max_connections=workers)) as client, \
            ThreadPoolExecutor(max_workers=max(1, min(workers, len(sources) or 1))) as pool:
        return list(pool.map(lambda s: read_feed(
            s, validators=validators.get(s, Validators()), client=client, timeout=timeout,
            max_bytes=max_bytes, summary_chars=summary_chars, retries=retries, backoff=backoff, tz=tz,
            now=now), sources))
