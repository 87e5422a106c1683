"""Request bodies bounded at the door, before any parser or handler sees them (ASGI middleware).

FastAPI reads and parses a route's form before it runs the route's dependencies, so without this a
stranger could make the server parse any body on a login-only route, and a form body of nothing but
`&` separators costs python-multipart seconds per megabyte (49 s for 20 MB, holding up other requests).
So, in this order and before a byte of the body is read:

1. a body must declare its size (Content-Length; a chunked body is refused 411, RFC 9110 §15.5.12)
   and that size must be within the route's bound (413, RFC 9110 §15.5.14);
2. a POST under /admin needs a logged-in user (401), so authentication comes before reading a body;
3. a urlencoded form is read (it is small by 1.) and refused (413) when it holds more separators than
   Starlette's own field limit, so its parse cost is bounded too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.requests import Request

from digest.web.auth import current_user
from digest.web.pages import render

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KIB, MIB = 1024, 1024 * 1024
#: our own forms (subscribe, login, the draft's adjust form with every article's key) stay far below this
MAX_FORM = 256 * KIB
#: Starlette's default field limit for a form (Request.form(max_fields=1000)); a urlencoded body with
#: more separators than this is refused before it is parsed
MAX_FIELDS = 1000
#: a subscriber CSV upload (/admin/import)
MAX_UPLOAD = 100 * MIB
#: SendGrid's Event Webhook batches (a few hundred KB at most)
MAX_EVENTS = 5 * MIB
#: SendGrid Inbound Parse: a whole email, which SendGrid caps at 30 MB including attachments
MAX_INBOUND = 30 * MIB
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def body_limit(path: str) -> int:
    """The largest body a path accepts."""
    if path == "/admin/import":
        return MAX_UPLOAD
    if path == "/webhooks/sendgrid":
        return MAX_EVENTS
    if path.startswith("/webhooks/inbound/"):
        return MAX_INBOUND
    return MAX_FORM


class BodyGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = scope["path"]
        refused = self._refuse_size(request, path) or await self._refuse_anonymous(request, path)
        if refused is None and _media_type(request) == "application/x-www-form-urlencoded":
            body = await _read_body(receive)
            # python-multipart's query-string parser splits on both `&` and `;`
            if body.count(b"&") + body.count(b";") >= MAX_FIELDS:
                refused = _answer(request, 413, "Too large", f"the form has more than {MAX_FIELDS:,} fields")
            receive = _replay(body, receive)
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _refuse_size(request: Request, path: str) -> Response | None:
        declared = request.headers.get("content-length")
        if declared is None:
            if "chunked" in request.headers.get("transfer-encoding", "").lower():
                return _answer(request, 411, "Length required", "send the body with a Content-Length")
            return None  # no body at all
        limit = body_limit(path)
        if not declared.isascii() or not declared.isdigit() or len(declared) > 12 or int(declared) > limit:
            return _answer(request, 413, "Too large", f"the body is over {limit // KIB:,} KB, the most this page takes")
        return None

    @staticmethod
    async def _refuse_anonymous(request: Request, path: str) -> Response | None:
        if not path.startswith("/admin"):
            return None

        def logged_in() -> bool:
            with request.app.state.sessions() as db:
                return current_user(request, db) is not None

        if await run_in_threadpool(logged_in):
            return None
        return _answer(request, 401, "Please log in", "Your session has ended. Log in and try again.")


async def _read_body(receive: Receive) -> bytes:
    """The whole body (bounded by its Content-Length, checked before)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _answer(request: Request, status: int, title: str, message: str) -> Response:
    """JSON for machines (webhooks), a page for people."""
    if request.url.path.startswith("/webhooks/"):
        return JSONResponse({"detail": message}, status_code=status)
    return render(request, "message.html", {"title": title, "message": message}, status_code=status)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body already read, then whatever the server sends next (a disconnect)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
