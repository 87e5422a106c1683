"""Feed bytes -> Articles (feedparser), with a note for every item that could not be used.

An item that cannot be used (no title and no body, no http(s) link, a date nobody can read) is named
in the feed's notes, never dropped in silence; a feed that cannot be read at all is a problem.
feedparser's own sanitiser is off (`sanitize_html=False`): nh3 (text.py) is the one sanitiser, so what
reaches a reader is decided there and tested there.
"""

from __future__ import annotations

import calendar
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from urllib.parse import urljoin, urlsplit
from xml.sax import SAXException

import feedparser

from digest.models import Article, SourceProblem
from digest.sources.dates import parse_date
from digest.sources.identity import article_key, canonical_link
from digest.sources.images import entry_image
from digest.sources.text import cut, http_url, plain_text, summary_text

log = logging.getLogger(__name__)

TITLE_CHARS = 200


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
            why = reason(parsed.get("bozo_exception"))
            return FeedResult(source, [], SourceProblem(source, "", f"not a readable feed ({why})"))
        return FeedResult(source, [], SourceProblem(
            source, "", "not an RSS or Atom feed (no channel and no items: a web page, or an error page?)"))
    if parsed.get("bozo") and not parsed.entries:
        error = parsed.get("bozo_exception")
        return FeedResult(source, [], SourceProblem(source, "", f"not a readable feed ({reason(error)})"))
    notes: list[SourceProblem] = []
    if parsed.get("bozo"):
        notes.append(SourceProblem(source, "", f"malformed feed, read as far as possible "
                                               f"({reason(parsed.get('bozo_exception'))})"))
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
        image, alt = entry_image(entry, body, link or base)
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


def reason(exc: object) -> str:
    text = str(exc or "unknown error").strip().splitlines()[0] if exc else "unknown error"
    return f"{exc.__class__.__name__}: {text}" if isinstance(exc, Exception) else text



def parse_safely(data: bytes, source: str, *, summary_chars: int, tz: tzinfo, now: datetime | None,
                 url: str | None = None, charset: str | None = None) -> FeedResult:
    """`parse_feed`, with any exception turned into the feed's problem."""
    try:
        return parse_feed(data, source, summary_chars=summary_chars, tz=tz, now=now, url=url, charset=charset)
    except Exception as e:  # a feed no one here wrote must never stop the others
        log.exception("parsing %s failed", source)
        return FeedResult(source, [], SourceProblem(source, "", f"could not be parsed ({reason(e)})"))
