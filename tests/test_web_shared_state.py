"""`digest serve --workers N` and several web nodes share one database: a login throttled by one app
instance is throttled by the other, and a session opened on one is honoured by the other (the session is
a cookie signed with the shared secret; the user behind it is looked up in the database)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from digest.config import Settings, Web
from digest.store import RateHit, session_scope, utcnow
from digest.web.app import create_app
from digest.web.ratelimit import SharedWindow
from tests.conftest import SECRET
from tests.test_web_support import ADMIN, csrf, csrf_from, login, make_users


def wrong_login(client: TestClient) -> int:
    token = csrf(client, "/login")
    return client.post("/login", data={"csrf_token": token, "email": ADMIN[0], "password": "wrong password",
                                       "next": "/admin"}).status_code


def test_a_login_throttled_in_one_app_instance_is_throttled_in_the_other(settings: Settings) -> None:
    make_users(settings)
    limited = settings.model_copy(update={"web": Web(login_limit=3, login_window_seconds=600)})
    with TestClient(create_app(limited)) as one, TestClient(create_app(limited)) as two:
        codes = [wrong_login(one), wrong_login(two), wrong_login(one)]
        assert codes == [401, 401, 401]
        assert wrong_login(two) == 429, "the fourth attempt from the address, whichever worker answers it"
        assert wrong_login(one) == 429


def test_a_session_opened_on_one_instance_works_on_the_other(settings: Settings) -> None:
    make_users(settings)
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        login(one)
        two.cookies = one.cookies
        assert two.get("/admin", follow_redirects=False).status_code == 200


def test_the_shared_window_counts_exactly_under_concurrent_hits(settings: Settings) -> None:
    window = SharedWindow(settings.database_url, "test", 10, 60)
    results: list[bool] = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(5):
            ok = window.hit("203.0.113.9")
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 10 and results.count(False) == 20, "never more than the limit"
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(RateHit)) == 10, "refused hits are not counted"


def test_the_shared_window_slides_and_prunes_keys_that_stopped(settings: Settings) -> None:
    now = [utcnow()]
    window = SharedWindow(settings.database_url, "test", 2, 10, clock=lambda: now[0], prune_every=2)
    assert [window.hit("a"), window.hit("a"), window.hit("a")] == [True, True, False]
    assert window.hit("b")
    now[0] += timedelta(seconds=10.1)
    assert window.hit("a") and window.hit("a") and not window.hit("a")
    with session_scope(settings.database_url) as s:
        keys = set(s.scalars(select(RateHit.key)))
    assert keys == {"a"}, "the stale hits of b were pruned"


@pytest.mark.slow
def test_digest_serve_with_two_workers_shares_the_login_limit(settings: Settings, workdir: Path) -> None:
    make_users(settings)
    text = (workdir / "digest.toml").read_text()
    (workdir / "digest.toml").write_text(text.replace("[web]", "[web]\nlogin_limit = 4", 1))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DIGEST_SECRET_KEY": SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "digest", "serve", "--port", str(port), "--workers", "2"],
                            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/login", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "digest serve did not answer"
                time.sleep(0.2)
        codes = []
        for _ in range(8):  # a new connection each time: the two processes share the answers
            with httpx.Client(base_url=base, timeout=10) as c:
                page = c.get("/login")
                token = csrf_from(page.text)
                codes.append(c.post("/login", data={"csrf_token": token, "email": ADMIN[0],
                                                    "password": "wrong password", "next": "/admin"}).status_code)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    pids = set(re.findall(r"Started server process \[(\d+)\]", out))
    assert len(pids) == 2, out
    assert codes == [401] * 4 + [429] * 4, "the limit is 4 per address, whichever process answers"
