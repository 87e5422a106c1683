"""CSRF tokens: one per session, kept in the signed session cookie and sent back in every form.

Kept apart from digest.web.auth so the page renderer (which puts the token in forms) and the login
routes (which check it) both import it without importing each other.
"""

from __future__ import annotations

import hmac
import secrets

from fastapi import Request

from digest.web.errors import Forbidden

CSRF_FIELD = "csrf_token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def csrf_token(request: Request) -> str:
    """This session's CSRF token, created on first use."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def renew(request: Request) -> None:
    """A fresh token (at login and logout), so a token seen before no longer passes."""
    request.session["csrf"] = secrets.token_urlsafe(32)


async def check_csrf(request: Request) -> None:
    """Refuse a form whose token is missing or is not this session's."""
    if request.method in SAFE_METHODS:
        return
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    expected = request.session.get("csrf")
    # compared as bytes: hmac.compare_digest refuses str holding non-ASCII characters with TypeError
    if not isinstance(sent, str) or not isinstance(expected, str) or not expected \
            or not hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode("utf-8")):
        raise Forbidden("This form has expired or did not come from this site. Go back, reload the page and "
                        "try again (this site needs its cookie to accept a form).")
