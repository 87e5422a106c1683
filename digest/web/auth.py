"""Sessions and login for editors and admins (the CSRF token itself is digest.web.csrf's).

The session is a signed cookie (Starlette's SessionMiddleware, which signs with itsdangerous) keyed by a
key derived from settings.secret_key for this one purpose, so a reader link can never pass for a session
and the other way round. It carries the user id, a stamp of the password hash (a new password ends old
sessions) and the CSRF token. Every POST under /admin, the login, and the reader forms check that token;
the RFC 8058 one-click unsubscribe POST is the one exception (its signed URL is the authority).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.store import User
from digest.web import csrf, users
from digest.web.csrf import check_csrf
from digest.web.deps import client_ip, get_db, get_settings
from digest.web.errors import Forbidden, LoginRequired
from digest.web.pages import flash, render

SESSION_COOKIE = "digest_session"

router = APIRouter()


def session_key(secret_key: str) -> str:
    """The session cookie's own key, derived from the one secret with a distinct purpose."""
    return hmac.new(secret_key.encode("utf-8"), b"digest.web.session", hashlib.sha256).hexdigest()


def current_user(request: Request, db: Session) -> User | None:
    uid = request.session.get("uid")
    if not isinstance(uid, int):
        return None
    return users.session_user(db, uid, request.session.get("stamp", ""))


def require_user(request: Request, db: Annotated[Session, Depends(get_db)]) -> User:
    user = current_user(request, db)
    if user is None:
        raise LoginRequired()
    request.state.user = user
    return user


def require_admin(user: Annotated[User, Depends(require_user)]) -> User:
    if user.role != "admin":
        raise Forbidden("This page is for admins.")
    return user


def login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def _safe_next(value: str | None) -> str:
    """Only a path on this site: never an open redirect to somewhere else."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/admin"
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unclosed IPv6 bracket: not a path of ours either
        return "/admin"
    if parts.scheme or parts.netloc:
        return "/admin"
    return value


@router.get("/login")
def login_form(request: Request, next: str = "/admin") -> Response:  # noqa: A002 (the query name)
    return render(request, "login.html", {"next": _safe_next(next), "email": ""})


@router.post("/login", dependencies=[Depends(check_csrf)])
def login(request: Request, db: Annotated[Session, Depends(get_db)],
          settings: Annotated[Settings, Depends(get_settings)],
          email: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
          next: Annotated[str, Form()] = "/admin") -> Response:  # noqa: A002
    limiter = request.app.state.login_limiter
    if not limiter.hit(client_ip(request)):
        return render(request, "login.html", {"next": _safe_next(next), "email": email,
                                              "error": "Too many attempts from your address. Wait a few "
                                                       "minutes and try again."}, status_code=429)
    user = users.authenticate(db, email, password)
    if user is None:
        return render(request, "login.html", {"next": _safe_next(next), "email": email,
                                              "error": "That email and password do not match a user."},
                      status_code=401)
    db.commit()  # a rehashed password
    request.session.clear()  # a fresh session (and CSRF token) on every login
    request.session.update(uid=user.id, stamp=users.session_stamp(user))
    csrf.renew(request)
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/logout", dependencies=[Depends(check_csrf)])
def logout(request: Request) -> Response:
    request.session.clear()
    csrf.renew(request)
    flash(request, "You are logged out.")
    return RedirectResponse("/login", status_code=303)
