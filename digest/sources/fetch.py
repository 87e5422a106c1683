"""Where feed bytes come from: a URL (httpx; conditional GET, a size cap, a timeout over the whole
response, retries by digest.retry) or a local file. A feed that fails is reported by name and skipped:
one broken feed never stops the issue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path

import httpx

from digest import __version__, retry
from digest.models import SourceProblem
from digest.sources.parse import FeedResult, parse_safely

USER_AGENT = f"digest/{__version__} (+newsletter digest generator)"


@dataclass(frozen=True)
class Validators:
    etag: str | None = None
    last_modified: str | None = None


class _Transient(Exception):
    """A failure worth another try; its message is the feed's problem if no try is left."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (RFC 9110 §10.2.3); its HTTP-date form is left to the backoff."""
    value = response.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def _server_delay(error: BaseException) -> float | None:
    return error.retry_after if isinstance(error, _Transient) else None


def _get(client: httpx.Client, source: str, headers: dict[str, str], validators: Validators, timeout: float,
         max_bytes: int, summary_chars: int, tz: tzinfo, now: datetime | None) -> FeedResult:
    """One GET: the feed, or why not. A failure worth another try raises _Transient instead."""
    deadline = time.monotonic() + timeout
    try:
        with client.stream("GET", source, headers=headers, timeout=timeout) as response:
            if response.status_code == 304:
                return FeedResult(source, [], not_modified=True, etag=validators.etag,
                                  last_modified=validators.last_modified)
            if response.status_code >= 500 or response.status_code in (408, 429):
                raise _Transient(f"HTTP {response.status_code} {response.reason_phrase}".strip(),
                                 _retry_after(response))
            if response.status_code >= 400:
                gone = " (the feed was removed: take it out of sources.feeds)" if response.status_code == 410 else ""
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
                    return FeedResult(source, [], SourceProblem(source, "", f"larger than the {max_bytes:,} byte cap"))
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the whole response took too long")
            result = parse_safely(bytes(body), source, summary_chars=summary_chars, tz=tz, now=now,
                                  url=str(response.url), charset=response.charset_encoding)
            if any(r.status_code in (301, 308) for r in response.history):
                result.notes.append(SourceProblem(source, "", f"moved permanently to {response.url}: "
                                                              "update sources.feeds"))
            result.etag = response.headers.get("ETag")
            result.last_modified = response.headers.get("Last-Modified")
            return result
    except httpx.TimeoutException:
        raise _Transient(f"timed out after {timeout:g}s") from None
    except httpx.TransportError as e:
        raise _Transient(f"connection failed ({e.__class__.__name__}: {e})") from None
    except (httpx.InvalidURL, httpx.RequestError) as e:  # too many redirects, bad encoding, bad URL
        return FeedResult(source, [], SourceProblem(source, "", f"{e.__class__.__name__}: {e}"))


def read_feed(source: str, *, validators: Validators = Validators(), client: httpx.Client | None = None,
              timeout: float = 10.0, max_bytes: int = 5_000_000, retries: int = 2, backoff: float = 0.5,
              summary_chars: int = 240, tz: tzinfo = UTC, now: datetime | None = None,
              sleep: Callable[[float], None] = time.sleep) -> FeedResult:
    """Read one feed from a URL (conditional GET, size cap, retries with backoff) or a local file.

    `timeout` bounds the whole attempt (a server that drips bytes is cut off too), not just each read.
    Server errors, 408, 429 and network failures are tried `retries` more times, with digest.retry's
    backoff from `backoff` seconds (or the server's Retry-After, up to `timeout`); other 4xx are final.
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
        return parse_safely(data, source, summary_chars=summary_chars, tz=tz, now=now)

    headers = {"User-Agent": USER_AGENT,
               "Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5"}
    if validators.etag:
        headers["If-None-Match"] = validators.etag
    if validators.last_modified:
        headers["If-Modified-Since"] = validators.last_modified
    policy = retry.policy(attempts=retries + 1, first=backoff, retry_on=lambda e: isinstance(e, _Transient),
                          server_delay=_server_delay, max_server_delay=timeout, sleep=sleep)
    own = client is None
    client = client or httpx.Client(timeout=timeout, follow_redirects=True)
    try:
        return policy(_get, client, source, headers, validators, timeout, max_bytes, summary_chars, tz, now)
    except _Transient as e:
        tries = f" (after {retries + 1} tries)" if retries else ""
        return FeedResult(source, [], SourceProblem(source, "", f"{e}{tries}"))
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
