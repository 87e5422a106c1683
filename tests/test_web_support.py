"""Shared helpers of the web tests: the app over a tmp workdir, logins, CSRF tokens, the outbox.

Imported by tests/test_web_*.py and tests/test_browser_web*.py (it holds no tests of its own).
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from digest.config import Settings
from digest.store import session_scope
from digest.web.app import create_app
from digest.web.users import add_user

ADMIN = ("admin@example.com", "admin password 1")
EDITOR = ("editor@example.com", "editor password 1")
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_users(settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        add_user(session, ADMIN[0], "admin", ADMIN[1])
        add_user(session, EDITOR[0], "editor", EDITOR[1])


@pytest.fixture(name="app")
def app_fixture(settings: Settings) -> FastAPI:
    make_users(settings)
    return create_app(settings)


@pytest.fixture(name="client")
def client_fixture(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        yield c


def csrf_from(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def csrf(client: TestClient, page: str = "/subscribe") -> str:
    response = client.get(page)
    assert response.status_code == 200, (page, response.status_code)
    return csrf_from(response.text)


def login(client: TestClient, who: tuple[str, str] = ADMIN) -> None:
    token = csrf(client, "/login")
    r = client.post("/login", data={"csrf_token": token, "email": who[0], "password": who[1], "next": "/admin"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin", r.text


def outbox(settings: Settings) -> Path:
    return Path(settings.resolve(settings.delivery.outbox_dir))


def messages(settings: Settings, to: str | None = None) -> list[EmailMessage]:
    """Every .eml in the outbox (to one address when given), oldest first."""
    folder = outbox(settings)
    found = []
    for path in sorted(folder.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns) if folder.exists() else []:
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if to is None or to.casefold() in str(msg["To"]).casefold():
            found.append(msg)
    return found


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


def link(msg: EmailMessage, kind: str) -> str:
    """The first link of a kind (`c`, `u`, `p`) in a message's plain-text part."""
    found = re.search(rf"https?://[^\s<>\"]+/{kind}/[A-Za-z0-9._\-]+", text_of(msg))
    assert found, f"no /{kind}/ link in the message"
    return found.group(0)


def path_of(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]
