"""Jinja2 pages from templates/web: one environment, one `render` that adds what every page shows."""

from __future__ import annotations

from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from digest.moments import in_zone
from digest.render import TEMPLATES
from digest.web.csrf import csrf_token

WEB_TEMPLATES = TEMPLATES / "web"


def _number(value: int | None) -> str:
    return f"{value or 0:,}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(WEB_TEMPLATES)),
        autoescape=jinja2.select_autoescape(("html",), default_for_string=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(when=in_zone, number=_number)  # every page has `tz`: the publication's zone
    return env


templates = Jinja2Templates(env=_environment())


def flash(request: Request, message: str, level: str = "ok") -> None:
    """A message shown once on the next page (kept in the signed session)."""
    request.session["flash"] = [*request.session.get("flash", []), [level, message]]


def render(request: Request, name: str, context: dict[str, Any] | None = None, *,
           status_code: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    settings = request.app.state.settings
    has_session = "session" in request.scope  # not for errors caught outside the session middleware
    flashes = request.session.pop("flash", []) if has_session and "flash" in request.session else []
    base = {
        "publication": settings.publication,
        "tz": settings.publication.tz,
        # a callable, so only pages with a form give the visitor a session cookie
        "csrf_token": (lambda: csrf_token(request)) if has_session else (lambda: ""),
        "user": getattr(request.state, "user", None),
        "flashes": flashes,
        "path": request.url.path,
    }
    return templates.TemplateResponse(request, name, {**base, **(context or {})}, status_code=status_code,
                                      headers=headers)
