"""Why a request is refused before its handler runs; digest.web.app turns each into a page."""

from __future__ import annotations


class LoginRequired(Exception):
    """No valid session: a page asked for is sent to the login form, anything else is refused."""


class Forbidden(Exception):
    """A session without the right (an editor on an admin page, a missing or wrong CSRF token)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
