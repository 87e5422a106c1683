"""Fetching feeds over real HTTP (a local server on port 0): conditional GET, size cap, whole-response
timeout, retries with backoff, redirects, and several feeds in parallel. Every failure is named."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from digest.sources.fetch import Validators, read_feed, read_feeds

FEED = (Path(__file__).parent / "feeds" / "wordpress_rss2.xml").read_bytes()
RELATIVE = b"""<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
<item><title>Relative</title><link>/news/relative</link><description>x</description></item></channel></rss>"""


class Server:
    """A tiny feed host whose paths misbehave on purpose; it counts hits and concurrent requests."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.headers_seen: dict[str, dict[str, str]] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        # /parallel*: each request waits until this many are held at once (or HOLD_TIMEOUT passes), so
        # "read in parallel" is shown without a sleep-and-sample that a loaded machine can defeat
        self.hold_for = 0
        self.holding = self.held_together = 0
        self.released = threading.Condition(self.lock)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                with server.lock:
                    server.hits[path] = server.hits.get(path, 0) + 1
                    server.headers_seen[path] = dict(self.headers)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    hit = server.hits[path]
                try:
                    server.route(self, path, hit)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
             ) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if "Content-Length" not in (headers or {}) and "Transfer-Encoding" not in (headers or {}):
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if body:
            h.wfile.write(body)

    def route(self, h: BaseHTTPRequestHandler, path: str, hit: int) -> None:
        rss = {"Content-Type": "application/rss+xml"}
        if path == "/ok":
            if h.headers.get("If-None-Match") == '"v1"':
                return self.send(h, 304, headers={"ETag": '"v1"'})
            return self.send(h, 200, FEED, {**rss, "ETag": '"v1"', "Last-Modified": "Mon, 03 Mar 2025 04:00:00 GMT"})
        if path == "/since":
            if h.headers.get("If-Modified-Since") == "Mon, 03 Mar 2025 04:00:00 GMT":
                return self.send(h, 304)
            return self.send(h, 200, FEED, {**rss, "Last-Modified": "Mon, 03 Mar 2025 04:00:00 GMT"})
        if path == "/flaky":
            return self.send(h, 503, b"busy") if hit <= 2 else self.send(h, 200, FEED, rss)
        if path == "/down":
            return self.send(h, 500, b"broken")
        if path == "/rate":
            return self.send(h, 429, b"", {"Retry-After": "0"}) if hit == 1 else self.send(h, 200, FEED, rss)
        if path == "/busy":
            return self.send(h, 503, b"", {"Retry-After": "2"}) if hit == 1 else self.send(h, 200, FEED, rss)
        if path == "/later":
            return self.send(h, 429, b"", {"Retry-After": "3600"}) if hit == 1 else self.send(h, 200, FEED, rss)
        if path in ("/missing", "/gone"):
            return self.send(h, 404 if path == "/missing" else 410, b"no")
        if path == "/big":
            return self.send(h, 200, FEED * 50, rss)
        if path == "/big-chunked":
            h.send_response(200)
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for _ in range(50):
                h.wfile.write(f"{len(FEED):x}\r\n".encode() + FEED + b"\r\n")
            h.wfile.write(b"0\r\n\r\n")
            return None
        if path == "/slow":
            time.sleep(1.5)
            return self.send(h, 200, FEED, rss)
        if path == "/drip":
            h.send_response(200)
            h.send_header("Content-Length", str(len(FEED)))
            h.end_headers()
            try:
                for i in range(0, len(FEED), 200):
                    h.wfile.write(FEED[i:i + 200])
                    h.wfile.flush()
                    time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return None
        if path == "/moved":
            return self.send(h, 301, b"", {"Location": "/ok"})
        if path == "/loop":
            return self.send(h, 302, b"", {"Location": "/loop"})
        if path == "/html":
            page = b"<html><body><h1>Our news moved</h1></body></html>"
            return self.send(h, 200, page, {"Content-Type": "text/html"})
        if path == "/relative":
            return self.send(h, 200, RELATIVE, rss)
        if path.startswith("/parallel"):
            self.hold()
            return self.send(h, 200, FEED, rss)
        return self.send(h, 404, b"unknown")


    def hold(self) -> None:
        """Wait until `hold_for` requests are held at once; then they, and every later one, go on."""
        with self.lock:
            self.holding += 1
            self.held_together = max(self.held_together, self.holding)
            if self.holding >= self.hold_for:
                self.hold_for = 0
                self.released.notify_all()
            else:
                self.released.wait_for(lambda: not self.hold_for, timeout=HOLD_TIMEOUT)
                self.hold_for = 0  # timed out: nothing waits again, held_together tells the test
            self.holding -= 1


#: below read_feeds' whole-response timeout (10 s), so a client reading one feed at a time is answered
#: (and the test fails on its count) rather than timed out
HOLD_TIMEOUT = 8.0


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def fetch(server: Server, path: str, **kw: object):  # type: ignore[no-untyped-def]
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5.0)
    return read_feed(server.url + path, **kw)  # type: ignore[arg-type]


def test_a_feed_is_read_and_its_validators_kept(server: Server) -> None:
    result = fetch(server, "/ok")
    assert result.problem is None and len(result.articles) == 2
    assert result.etag == '"v1"' and result.last_modified == "Mon, 03 Mar 2025 04:00:00 GMT"
    assert server.headers_seen["/ok"]["User-Agent"].startswith("digest/")


def test_conditional_get_sends_the_validators_and_a_304_is_not_a_failure(server: Server) -> None:
    result = fetch(server, "/ok", validators=Validators(etag='"v1"'))
    assert result.not_modified and result.problem is None and result.articles == []
    assert server.headers_seen["/ok"]["If-None-Match"] == '"v1"'
    since = fetch(server, "/since", validators=Validators(last_modified="Mon, 03 Mar 2025 04:00:00 GMT"))
    assert since.not_modified and since.last_modified == "Mon, 03 Mar 2025 04:00:00 GMT"


def test_server_errors_are_retried_with_backoff_then_named(server: Server) -> None:
    assert fetch(server, "/flaky", retries=2).problem is None
    assert server.hits["/flaky"] == 3
    down = fetch(server, "/down", retries=2)
    assert down.problem is not None and down.problem.message == "HTTP 500 Internal Server Error (after 3 tries)"
    assert server.hits["/down"] == 3
    assert fetch(server, "/rate", retries=1).problem is None  # 429 honours Retry-After, then succeeds


def test_the_waits_follow_the_backoff_or_the_servers_retry_after(server: Server) -> None:
    slept: list[float] = []
    down = fetch(server, "/down", retries=2, backoff=0.4, sleep=slept.append)
    assert down.problem is not None and server.hits["/down"] == 3
    assert len(slept) == 2 and 0.2 <= slept[0] <= 0.4 and 0.4 <= slept[1] <= 0.8, slept
    slept.clear()
    assert fetch(server, "/busy", retries=1, sleep=slept.append).problem is None
    assert slept == [2.0]  # Retry-After, not the backoff
    slept.clear()
    assert fetch(server, "/later", retries=1, timeout=3.0, sleep=slept.append).problem is None
    assert slept == [3.0]  # an hour is more than a feed is worth: no longer than the timeout


def test_client_errors_are_final_and_named(server: Server) -> None:
    missing = fetch(server, "/missing", retries=3)
    assert missing.problem is not None and missing.problem.message == "HTTP 404 Not Found"
    assert server.hits["/missing"] == 1
    gone = fetch(server, "/gone")
    assert gone.problem is not None and "410" in gone.problem.message and "take it out" in gone.problem.message


def test_the_size_cap_holds_with_and_without_a_content_length(server: Server) -> None:
    for path in ("/big", "/big-chunked"):
        result = fetch(server, path, max_bytes=len(FEED) * 2)
        assert result.problem is not None and "byte cap" in result.problem.message, path
        assert result.articles == []


def test_the_timeout_covers_the_whole_response_not_just_each_read(server: Server) -> None:
    slow = fetch(server, "/slow", timeout=0.5, retries=0)
    assert slow.problem is not None and slow.problem.message == "timed out after 0.5s"
    drip = fetch(server, "/drip", timeout=0.5, retries=0)  # every read is quick, the whole is not
    assert drip.problem is not None and "timed out" in drip.problem.message


def test_redirects_are_followed_and_a_permanent_move_is_noted(server: Server) -> None:
    moved = fetch(server, "/moved")
    assert moved.problem is None and len(moved.articles) == 2
    assert any("moved permanently" in n.message and n.message.endswith("update sources.feeds") for n in moved.notes)
    loop = fetch(server, "/loop")
    assert loop.problem is not None and "TooManyRedirects" in loop.problem.message


def test_a_web_page_instead_of_a_feed_is_named(server: Server) -> None:
    result = fetch(server, "/html")
    assert result.problem is not None and "not an RSS or Atom feed" in result.problem.message


def test_relative_links_resolve_against_the_address_fetched(server: Server) -> None:
    result = fetch(server, "/relative")
    assert [a.link for a in result.articles] == [server.url + "/news/relative"]
    assert result.articles[0].dated_by_feed is False


def test_unreachable_and_malformed_addresses_are_named_not_raised(server: Server) -> None:
    port = server.httpd.server_address[1]
    server.close()
    refused = read_feed(f"http://127.0.0.1:{port}/ok", retries=1, backoff=0.01, timeout=2)
    assert refused.problem is not None and refused.problem.message.startswith("connection failed (ConnectError")
    assert refused.problem.message.endswith("(after 2 tries)")
    bad = read_feed("http://exa mple.com/feed", retries=0)
    assert bad.problem is not None
    nofile = read_feed("/nonexistent/feed.xml")
    assert nofile.problem is not None and nofile.problem.message.startswith("cannot read file")


def test_several_feeds_are_read_in_parallel_in_order(server: Server) -> None:
    paths = [f"/parallel{i}" for i in range(4)] + ["/missing"]
    server.hold_for = 4  # the four /parallel feeds wait for each other: all four workers busy at once
    results = read_feeds([server.url + p for p in paths], workers=4, backoff=0.01,
                         now=datetime(2025, 3, 10, tzinfo=UTC))
    assert [r.source for r in results] == [server.url + p for p in paths]
    assert [bool(r.problem) for r in results] == [False] * 4 + [True]
    assert server.held_together == 4, f"only {server.held_together} feed(s) were read at once (workers=4)"
