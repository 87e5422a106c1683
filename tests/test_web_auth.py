"""Users, sessions and CSRF: no /admin route answers without a valid session and form token."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from itsdangerous import TimestampSigner
from sqlalchemy import select

from digest.store import User, session_scope
from digest.web.auth import SESSION_COOKIE
from digest.web.ratelimit import SlidingWindow
from digest.web.users import authenticate
from tests.conftest import SECRET
from tests.test_web_support import ADMIN, EDITOR, app_fixture, client_fixture, csrf, login  # noqa: F401 (fixtures)


def cli_with_input(*args: str, cwd, input_text: str) -> subprocess.CompletedProcess:
    """`digest ...` in a subprocess with text on its standard input (run_cli gives none)."""
    env = {**os.environ, "DIGEST_SECRET_KEY": SECRET}
    return subprocess.run([sys.executable, "-m", "digest", *args], cwd=cwd, env=env, input=input_text,
                          capture_output=True, text=True, timeout=120)


def admin_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) under /admin that the app serves, with path parameters filled."""
    fill = {"{subscriber_id}": "1", "{number}": "1", "{name}": "20250101T000000-abcdef-x.rejects.csv"}
    out = []
    for path, operations in app.openapi()["paths"].items():
        if path.startswith("/admin"):
            for key, value in fill.items():
                path = path.replace(key, value)
            out.extend((method.upper(), path) for method in operations)
    return out


@pytest.mark.slow  # the real command in a subprocess
def test_users_cli_add_list_remove(workdir, monkeypatch):
    # the real command once, in a subprocess, with the password on stdin as a script would give it
    r = cli_with_input("users", "add", "Ed@Example.com", "--role", "editor", "--password-stdin", cwd=workdir,
                       input_text="a long enough password\n")
    assert r.returncode == 0, r.stderr
    assert "added editor ed@example.com" in r.stdout
    assert "a long enough password" not in r.stdout + r.stderr
    # the rest in-process (each subprocess costs seconds of imports)
    from typer.testing import CliRunner

    from digest.cli.main import app as cli
    from digest.errors import DigestError

    monkeypatch.chdir(workdir)
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
        return runner.invoke(cli, list(args), input=stdin)

    r = run("users", "list")
    assert r.exit_code == 0 and "ed@example.com" in r.output and "editor" in r.output
    r = run("users", "add", "ed@example.com", "--role", "admin", "--password-stdin", stdin="another password 1\n")
    assert isinstance(r.exception, DigestError) and "already exists" in str(r.exception)
    r = run("users", "add", "x@example.com", "--role", "owner", "--password-stdin", stdin="a long password\n")
    assert isinstance(r.exception, DigestError) and "role 'owner'" in str(r.exception)
    r = run("users", "add", "x@example.com", "--role", "admin", "--password-stdin", stdin="short\n")
    assert isinstance(r.exception, DigestError) and "too short" in str(r.exception)
    r = run("users", "add", "x@example.com", "--role", "admin", stdin="typed password 1\ntyped password 1\n")
    assert r.exit_code == 0 and "added admin x@example.com" in r.output  # prompted twice, hidden
    r = run("users", "remove", "ED@example.com")
    assert r.exit_code == 0 and "removed editor ed@example.com" in r.output
    r = run("users", "remove", "ed@example.com")
    assert isinstance(r.exception, DigestError) and "no user" in str(r.exception)
    r = run("users", "list")
    assert "ed@example.com" not in r.output and "x@example.com" in r.output


def test_password_is_an_argon2_hash_and_checked(app, settings):
    with session_scope(settings.database_url) as s:
        user = s.scalar(select(User).where(User.email == ADMIN[0]))
        assert user.password_hash.startswith("$argon2id$") and ADMIN[1] not in user.password_hash
        assert authenticate(s, "Admin@Example.com", ADMIN[1]).id == user.id
        assert authenticate(s, ADMIN[0], ADMIN[1] + "x") is None
        assert authenticate(s, "nobody@example.com", ADMIN[1]) is None
        assert authenticate(s, "not an address", ADMIN[1]) is None


def test_login_sets_a_signed_httponly_lax_cookie_and_logout_ends_it(client):
    token = csrf(client, "/login")
    r = client.post("/login", data={"csrf_token": token, "email": ADMIN[0], "password": "wrong password!",
                                    "next": "/admin"}, follow_redirects=False)
    assert r.status_code == 401 and "do not match" in r.text
    assert client.get("/admin", follow_redirects=False).status_code == 303
    r = client.post("/login", data={"csrf_token": token, "email": ADMIN[0], "password": ADMIN[1],
                                    "next": "/admin"}, follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "httponly" in cookie and "samesite=lax" in cookie
    assert ADMIN[1] not in r.headers["set-cookie"]
    assert client.get("/admin").status_code == 200
    page = client.get("/admin")
    r = client.post("/logout", data={"csrf_token": csrf(client, "/admin")}, follow_redirects=False)
    assert r.status_code == 303 and page.status_code == 200
    assert client.get("/admin", follow_redirects=False).status_code == 303


def test_login_never_redirects_off_site(client):
    token = csrf(client, "/login")
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"):
        r = client.post("/login", data={"csrf_token": token, "email": ADMIN[0], "password": ADMIN[1],
                                        "next": target}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/admin", target
        token = csrf(client, "/login")


def test_every_admin_route_refuses_without_a_session(app):
    routes = admin_routes(app)
    assert len(routes) >= 15, routes
    with TestClient(app) as anonymous:
        for method, path in routes:
            r = anonymous.request(method, path, follow_redirects=False)
            if method == "GET":
                assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), (method, path)
            else:
                assert r.status_code == 401, (method, path, r.status_code)


def test_every_admin_route_refuses_a_forged_cookie(app, settings):
    forged_payloads = [
        # signed with a guessed key
        TimestampSigner("guess").sign(base64.b64encode(json.dumps({"uid": 1, "csrf": "x"}).encode())).decode(),
        # signed with the reader-link key itself (the session key is derived for its own purpose)
        TimestampSigner(settings.secret_key).sign(
            base64.b64encode(json.dumps({"uid": 1, "csrf": "x"}).encode())).decode(),
        "eyJ1aWQiOiAxfQ==.garbage.garbage",
    ]
    with TestClient(app) as c:
        for value in forged_payloads:
            c.cookies.set(SESSION_COOKIE, value)
            for method, path in admin_routes(app):
                r = c.request(method, path, data={"csrf_token": "x"}, follow_redirects=False)
                assert r.status_code in (303, 401), (method, path, r.status_code)


def test_a_session_for_a_removed_user_or_old_password_stops_working(client, settings):
    login(client)
    assert client.get("/admin").status_code == 200
    with session_scope(settings.database_url) as s:
        user = s.scalar(select(User).where(User.email == ADMIN[0]))
        from digest.web.users import hash_password

        user.password_hash = hash_password("a brand new password")
    assert client.get("/admin", follow_redirects=False).status_code == 303


def test_every_admin_post_refuses_a_missing_or_wrong_csrf_token(client, app):
    login(client)
    posts = [(m, p) for m, p in admin_routes(app) if m == "POST"]
    assert len(posts) >= 6
    for _method, path in posts:
        for data in ({}, {"csrf_token": "not the session's token"}):
            r = client.post(path, data=data, follow_redirects=False)
            assert r.status_code == 403 and "did not come from this site" in r.text, (path, r.status_code)
    r = client.post("/logout", data={}, follow_redirects=False)
    assert r.status_code == 403
    assert client.get("/admin").status_code == 200  # still logged in: the refused logout changed nothing


def test_editors_are_kept_out_of_admin_pages(client, app):
    login(client, EDITOR)
    assert client.get("/admin/draft").status_code == 200
    token = csrf(client, "/admin/draft")
    #: editors see one issue's report (issue 14: "editors and admins"); every other issues route is admins'
    shared = {("GET", "/admin/issues/1")}
    for method, path in admin_routes(app):
        if path.startswith(("/admin/subscribers", "/admin/import", "/admin/export", "/admin/lists",
                            "/admin/issues")) and (method, path) not in shared:
            r = client.request(method, path, data={"csrf_token": token}, follow_redirects=False)
            assert r.status_code == 403, (method, path, r.status_code)
    assert client.get("/admin/issues/1").status_code == 404  # let in: there is no issue #1 here


def test_login_is_rate_limited(client):
    token = csrf(client, "/login")
    codes = [client.post("/login", data={"csrf_token": token, "email": ADMIN[0], "password": "wrong password",
                                         "next": "/admin"}).status_code for _ in range(11)]
    assert codes[:10] == [401] * 10 and codes[10] == 429
    r = client.post("/login", data={"csrf_token": token, "email": ADMIN[0], "password": ADMIN[1], "next": "/admin"})
    assert r.status_code == 429  # even the right password waits out the window


def test_sliding_window_forgets_old_hits():
    now = [0.0]
    window = SlidingWindow(2, 10, clock=lambda: now[0], max_keys=3)
    assert [window.hit("a"), window.hit("a"), window.hit("a")] == [True, True, False]
    assert window.hit("b")
    now[0] = 9.9
    assert not window.hit("a")
    now[0] = 10.1
    assert window.hit("a") and window.hit("a") and not window.hit("a")
    for key in ("c", "d", "e", "f"):  # more keys than max_keys: stale ones are forgotten, memory stays bounded
        now[0] += 20
        assert window.hit(key)
    assert len(window._hits) <= 3


@pytest.mark.parametrize("path", ["/admin", "/login", "/subscribe"])
def test_pages_send_security_headers(client, path):
    login(client)
    r = client.get(path)
    assert r.status_code == 200
    assert "script-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "SAMEORIGIN"


def test_access_log_never_holds_a_reader_token():
    import logging

    from digest.web.app import RedactTokens

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "POST", "/u/MS4x.aBcD.eFgH?x=1", "1.1", 200), None)
    assert RedactTokens().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "POST /u/[token]?x=1 HTTP/1.1" 200'
    other = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                              ("127.0.0.1:5000", "GET", "/issues/3", "1.1", 200), None)
    RedactTokens().filter(other)
    assert "/issues/3" in other.getMessage()
