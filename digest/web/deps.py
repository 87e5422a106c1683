"""What every route needs: the settings and a database session for this request."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from sqlalchemy.orm import Session

from digest.config import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    """One session per request; routes commit what they change, anything else is rolled back."""
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def client_ip(request: Request) -> str:
    """The peer address (uvicorn puts the forwarded one here when the proxy is trusted)."""
    return request.client.host if request.client else "unknown"
