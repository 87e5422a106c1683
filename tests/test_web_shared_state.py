"""`digest serve --workers N` and several web nodes share one database: a login throttled by one app
instance is throttled by the other, and a session opened on one is honoured by the other (the session is
a cookie signed with the shared secret; the user behind it is looked up in the database)."""

from __future__ import annotations

import threading
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from digest.config import Settings, Web
from digest.store import RateHit, session_scope, utcnow
from digest.web.app import create_app
from digest.web.ratelimit import SharedWindow
from tests.test_web_support import ADMIN, csrf, login, make_users


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
