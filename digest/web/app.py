"""The FastAPI application: one factory, routers per audience (readers, editors, admins, webhooks).

Errors a user can cause (a bad link, a missing issue, a refused form) answer with a page that says
what happened; a bug answers with a plain 500 page and its traceback goes to the server log only.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import sys
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from digest.config import Settings
from digest.deliver.personalizer import Personalizer
from digest.errors import DigestError, NotFound
from digest.store import migrate, session_factory
from digest.web.auth import SESSION_COOKIE, login_redirect, session_key
from digest.web.bodyguard import BodyGuard
from digest.web.catalog import Catalog
from digest.web.errors import Forbidden, LoginRequired
from digest.web.pages import WEB_TEMPLATES, flash, render
from digest.web.ratelimit import SharedWindow
from subscribers.links import TokenError

log = logging.getLogger("digest.web")

#: our own pages run no script at all; issue HTML (the archive) needs inline styles and remote images
CSP = ("default-src 'self'; script-src 'none'; img-src * data:; style-src 'self' 'unsafe-inline' https:; "
       "font-src 'self' https: data:; frame-src 'self'; frame-ancestors 'self'; form-action 'self'; "
       "base-uri 'none'; object-src 'none'")


class RedactTokens(logging.Filter):
    """Access logs keep the page, never a reader's signed token (it acts for that reader)."""

    _TOKEN_PATH = re.compile(r"^(/(?:c|u|p)/)[^/?\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], self._TOKEN_PATH.sub(r"\1[token]", args[2]), *args[3:])
        return True


#: the config file of `digest serve --workers N`, for the app each worker process builds
ENV_APP_CONFIG = "DIGEST_SERVE_CONFIG"


def from_environment() -> FastAPI:
    """The app of one `digest serve --workers N` process (uvicorn's factory), its access log redacted."""
    from digest.config import load_settings

    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    app = create_app(load_settings(os.environ[ENV_APP_CONFIG]))
    prepare_to_serve()
    return app


#: the GIL's switch interval in a server process (Python's default is 5 ms): see prepare_to_serve
SWITCH_INTERVAL = 0.001


def prepare_to_serve() -> None:
    """Before a server process starts serving, two settings so that a CPU-heavy request in one thread (a
    20,000-event webhook batch: a few seconds of parsing, checking and matching) does not hold up the
    short requests of the others (a reader's one-click unsubscribe, RFC 8058), measured with
    benchmarks/webhook_batch.py:

    - what the start-up built (modules, the app, its templates, some 170,000 objects) is moved out of the
      cyclic garbage collector's sight (`gc.freeze`, Python's gc docs). Otherwise each full collection
      walks all of it while holding the GIL, and the batch triggers a few: 100-270 ms stalls of every
      thread each.
    - the GIL's switch interval goes from 5 ms to 1 ms (`sys.setswitchinterval`). A request that waits
      on the database or the socket gives the GIL up at each call and then waits up to the interval to
      get it back from a thread that is computing (the "convoy effect", CPython issue 7946); an
      unsubscribe makes some twenty such calls. Measured in one process with a 20,000-event batch
      running: the slowest of such requests 98-102 ms instead of 160-245 ms; the batch no slower.

    Production doors only (`digest serve`): a test process creates many apps and must keep collecting them."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.collect()  # what is garbage already is freed, not frozen
    gc.freeze()


def create_app(settings: Settings) -> FastAPI:
    migrate(settings.database_url)
    app = FastAPI(title=f"{settings.publication.name} digest", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.sessions = session_factory(settings.database_url)
    app.state.catalog = Catalog(settings)
    app.state.personalizer = Personalizer(settings)
    # in the database, shared by every worker and node (`digest serve --workers N`, several web nodes)
    url, web = settings.database_url, settings.web
    app.state.subscribe_limiter = SharedWindow(url, "subscribe", web.subscribe_limit, web.subscribe_window_seconds)
    app.state.login_limiter = SharedWindow(url, "login", web.login_limit, web.login_window_seconds)

    # the innermost middleware: inside the session (it needs it to see who is logged in) and inside the
    # security headers (its refusals carry them too)
    app.add_middleware(BodyGuard)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        if request.url.path.startswith(("/admin", "/login", "/c/", "/u/", "/p/")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    app.add_middleware(SessionMiddleware, secret_key=session_key(settings.secret_key), session_cookie=SESSION_COOKIE,
                       max_age=settings.web.session_hours * 3600, same_site="lax",
                       https_only=settings.publication.public_url.startswith("https://"))
    app.mount("/static", StaticFiles(directory=WEB_TEMPLATES / "static"), name="static")
    if settings.web.media_dir:  # the demo's pictures and logos (production images live on the site itself)
        media = Path(settings.resolve(settings.web.media_dir))
        if not media.is_dir():
            raise DigestError(f"[web] media_dir: {media} is not a folder")
        app.mount("/media", StaticFiles(directory=media), name="media")

    from digest.web import admin, auth, clicks, editor, inbound, reader, reports, webhooks

    app.include_router(auth.router)
    app.include_router(reader.router)
    app.include_router(clicks.router)
    app.include_router(editor.router)
    app.include_router(admin.router)
    app.include_router(reports.router)
    app.include_router(webhooks.router)
    app.include_router(inbound.router)
    _error_pages(app)
    return app


def _for_machines(request: Request) -> bool:
    """Provider webhooks get JSON errors; people get pages."""
    return request.url.path.startswith("/webhooks/")


def _error_pages(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        if request.method == "GET":
            return login_redirect(request)
        return render(request, "message.html", {"title": "Please log in",
                                                "message": "Your session has ended. Log in and try again."},
                      status_code=401)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return render(request, "message.html", {"title": "Not allowed", "message": exc.message}, status_code=403)

    @app.exception_handler(TokenError)
    async def bad_link(request: Request, exc: TokenError) -> Response:
        return render(request, "bad_link.html", {"expired": exc.expired, "message": str(exc)}, status_code=400)

    @app.exception_handler(DigestError)
    async def user_error(request: Request, exc: DigestError) -> Response:
        status = 404 if isinstance(exc, NotFound) else 400
        if _for_machines(request):
            return JSONResponse({"detail": str(exc)}, status_code=status)
        title = "Not found" if status == 404 else "That did not work"
        if request.url.path.startswith("/admin/") and request.method == "POST" and status == 400:
            # an action refused: back to the page it came from, with the reason on top
            flash(request, str(exc), "error")
            return RedirectResponse(request.url.path.rsplit("/", 1)[0], status_code=303)
        return render(request, "message.html", {"title": title, "message": str(exc)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _for_machines(request):
            return await http_exception_handler(request, exc)
        titles = {404: "Not found", 405: "Not allowed"}
        message = "There is no page here." if exc.status_code == 404 else str(exc.detail)
        return render(request, "message.html", {"title": titles.get(exc.status_code, "Error"), "message": message},
                      status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        if _for_machines(request):
            return await request_validation_exception_handler(request, exc)
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) or "request" for e in exc.errors())
        return render(request, "message.html", {"title": "Bad request",
                                                "message": f"Something in the form was missing or wrong: {fields}."},
                      status_code=422)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> Response:
        log.exception("error on %s %s", request.method, request.url.path)
        message = "Sorry: this is a fault on our side and it has been logged. Please try again later."
        try:
            return render(request, "message.html", {"title": "Something went wrong", "message": message},
                          status_code=500)
        except Exception:  # the page itself failed: still no traceback for the visitor
            return HTMLResponse(f"<!doctype html><title>Error</title><p>{message}</p>", status_code=500)
