"""Keep-alive HTTPS (or HTTP) calls to SendGrid's v3 API: one persistent connection per thread.

The sendgrid package's client (python_http_client) is built on urllib, which opens a new connection (TCP
and TLS handshakes) for every request: at a thousand readers a request, a send of 100,000 readers pays a
hundred handshakes for its mail/send calls and a hundred more for its POST /v3/mail/batch calls, serially
in the sending loop (issue 16). Here each thread keeps one `http.client` connection open (HTTP/1.1
persistent connections, RFC 9112 §9.3) and sends the same request as the library would (its headers,
its `Authorization: Bearer`), and answers with the library's own error type (`python_http_client`'s
HTTPError, status/reason/body/headers), so the retry policy and the refusal messages read as before.

What a failure means for exactly-once is kept exactly as urllib reported it:
- `urllib.error.URLError`: the request never went out whole (no connection, or writing it failed: the
  server cannot act on a request whose body it did not get in full, Content-Length says how long).
- `OSError` / `http.client.HTTPException` while waiting for the answer: the request was out, the
  answer was lost; SendGrid may have accepted it (the caller cancels its batch or leaves it unknown).
A connection the server closed while idle (an idle timeout, RFC 9112 §9.6) is noticed before it is
reused (readable with nothing asked: its FIN), and a fresh one is opened, so a stale connection does
not turn a request into one of unknown fate; one idle longer than `IDLE_SECONDS` is not reused at all.
"""

from __future__ import annotations

import http.client
import select
import threading
import time
import urllib.error
from dataclasses import dataclass
from email.message import Message as Headers
from urllib.parse import urlsplit

from python_http_client.exceptions import HTTPError

IDLE_SECONDS = 30.0  # a connection idle longer is closed rather than reused (servers drop idle ones)


@dataclass(frozen=True)
class Response:
    """A 2xx answer: what the library's Response offers that we read."""

    status_code: int
    body: bytes
    headers: Headers


class _Conn:
    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn
        self.used = 0.0


class Wire:
    """Requests to one API host, each thread over its own persistent connection."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")
        self.headers = headers
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[_Conn] = []
        self._lock = threading.Lock()

    def _connection(self) -> _Conn:
        held: _Conn | None = getattr(self._local, "conn", None)
        if held is not None and held.conn.sock is not None and not _fresh(held):
            held.conn.close()  # closed by the server while idle, or idle too long: not reused
        if held is None:
            conn = (http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout) if self.https
                    else http.client.HTTPConnection(self.host, self.port, timeout=self.timeout))
            held = self._local.conn = _Conn(conn)
            with self._lock:
                self._all.append(held)
        return held

    def request(self, method: str, path: str, body: str | bytes | None = None) -> Response:
        """One call; 2xx answered as a Response, any other status raised as HTTPError (see the module doc for
        what URLError and the other errors mean)."""
        held = self._connection()
        conn = held.conn
        data = body.encode("utf-8") if isinstance(body, str) else body
        try:
            if conn.sock is None:
                conn.connect()
            conn.request(method, self.prefix + path, data, self.headers)
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise urllib.error.URLError(e) from e  # the request did not go out whole: nothing was sent
        try:
            answer = conn.getresponse()
            content = answer.read()
        except BaseException:
            conn.close()
            raise
        held.used = time.monotonic()
        if answer.will_close:
            conn.close()
        if not 200 <= answer.status < 300:
            raise HTTPError(answer.status, answer.reason, content, answer.headers)
        return Response(answer.status, content, answer.headers)

    def close(self) -> None:
        with self._lock:
            held, self._all = self._all, []
        for c in held:
            c.conn.close()
        self._local = threading.local()


def _fresh(held: _Conn) -> bool:
    """An idle connection still fit to reuse: not idle too long, and nothing to read (a FIN or stray bytes
    from the server mean it is closing or out of step)."""
    if time.monotonic() - held.used > IDLE_SECONDS:
        return False
    sock = held.conn.sock
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
