"""Jinja2 pages from templates/web: one environment, one `render` that adds what every page shows."""

from __future__ import annotations

import re
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


_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.I)


def email_page(request: Request, html: str) -> HTMLResponse:
    """An email document (an archived issue) as a page of the site: the site's header above it and the
    email's body in the main landmark (WCAG 2.1, 1.3.1 and 2.4.1: one way round every page), while the
    email keeps its own styles. The parts come from templates/web/archive_issue.html."""
    parts = templates.env.get_template("archive_issue.html").make_module(
        {"publication": request.app.state.settings.publication})
    head, header = str(parts.head()), str(parts.header())  # type: ignore[attr-defined]
    body = _BODY_OPEN.search(html)
    end = html.lower().rfind("</body>")
    if body is None or end < body.end():  # not a whole document: the fragment goes into the site's frame
        return HTMLResponse(f"<!doctype html><html lang=\"en\"><head>{head}</head><body>{header}"
                            f"<main id=\"main\">{html}</main></body></html>")
    start = body.end()
    at = html.lower().find("</head>")
    top = html[:at] + head + html[at:start] if 0 <= at < start else html[:start]
    return HTMLResponse(f"{top}{header}<main id=\"main\">{html[start:end]}</main>{html[end:]}")
