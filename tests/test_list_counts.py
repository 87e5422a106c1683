"""The list counts of the admin's pages (subscribers.counts): a refresh counts exactly and replaces the
stored rows; a large database shows the stored counts with their age, a small one exact fresh counts; an
import and the scheduler refresh them."""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, select

from digest.config import Settings
from digest.schedule.jobs import COUNTS_JOB
from digest.schedule.runner import add_counts_job, build_scheduler
from digest.store import session_scope, utcnow
from subscribers import counts, csv_import, lifecycle
from subscribers.models import ListCount, MembershipStatus
from subscribers.queries import list_counts
from tests.test_schedule_scheduler import _serve_in_thread, wait_for
from tests.test_web_support import app_fixture, client_fixture, csrf_from, login  # noqa: F401 (fixtures)

A, P, U = MembershipStatus.ACTIVE, MembershipStatus.PENDING, MembershipStatus.UNSUBSCRIBED


def readers(settings: Settings, *emails: str, confirmed: bool = True, list_slug: str = "weekly") -> None:
    with session_scope(settings.database_url) as s:
        for e in emails:
            lifecycle.subscribe(s, e, source="test", confirmed=confirmed, list_slug=list_slug)


def as_dict(found: list) -> dict[str, dict[MembershipStatus, int]]:
    return {c.slug: {s: n for s, n in c.counts.items() if n} for c in found}


def stored_rows(settings: Settings) -> int:
    with session_scope(settings.database_url) as s:
        return s.scalar(select(func.count()).select_from(ListCount)) or 0


def test_a_refresh_counts_every_list_exactly_and_replaces_the_rows(settings: Settings) -> None:
    readers(settings, "ann@example.com", "bob@example.com", "cat@example.com")
    readers(settings, "dan@example.com", confirmed=False)
    readers(settings, "ann@example.com", "eve@example.com", list_slug="offers")
    with session_scope(settings.database_url) as s:
        lifecycle.create_list(s, "empty", "Nobody yet")
        assert counts.stored(s) is None, "nothing counted before the first refresh"
        done = counts.refresh(s)
        assert as_dict(done.lists) == as_dict(list_counts(s)) == {
            "empty": {}, "offers": {A: 2}, "weekly": {A: 3, P: 1}}
        assert [c.slug for c in done.lists] == ["empty", "offers", "weekly"]
        assert all(n == 0 for n in done.lists[0].counts.values()), "a list with no members: zeros"
        lifecycle.unsubscribe_address(s, "bob@example.com", "weekly", source="test")
        lifecycle.unsubscribe_address(s, "eve@example.com", "offers", source="test")
    with session_scope(settings.database_url) as s:
        kept = counts.stored(s)
        assert kept is not None and kept.stored and as_dict(kept.lists)["weekly"] == {A: 3, P: 1}, \
            "the stored counts are those of the refresh until the next one"
        again = counts.refresh(s)
        assert as_dict(again.lists) == as_dict(list_counts(s)) == {
            "empty": {}, "offers": {A: 1, U: 1}, "weekly": {A: 2, P: 1, U: 1}}
        assert again.counted_at >= kept.counted_at
    assert stored_rows(settings) == 5, "the old rows replaced, not added to"


def test_two_refreshes_at_once_both_succeed(settings: Settings) -> None:
    """The scheduler and a page may refresh at the same moment: the second waits, nobody fails."""
    readers(settings, *(f"r{i}@example.com" for i in range(20)))
    errors: list[BaseException] = []

    def one() -> None:
        try:
            for _ in range(5):
                with session_scope(settings.database_url) as s:
                    counts.refresh(s)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with session_scope(settings.database_url) as s:
        assert as_dict(counts.stored(s).lists) == {"weekly": {A: 20}}


def counts_table(page: str) -> dict[str, str]:
    """The status -> count cells of the weekly list's row."""
    return dict(re.findall(r'list=weekly&amp;status=(\w+)">([\d,]+)<', page))


def test_a_large_database_shows_the_stored_counts_and_their_age(client, settings: Settings,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(counts, "EXACT_UP_TO", 2)  # "large": more than 2 memberships
    readers(settings, "ann@example.com", "bob@example.com", "cat@example.com")
    login(client)
    first = client.get("/admin/lists").text
    assert counts_table(first)["active"] == "3", "no counts yet: the page counts once"
    assert "Counted" not in first
    with session_scope(settings.database_url) as s:
        counts.refresh(s, now=utcnow() - timedelta(minutes=3, seconds=10))
    readers(settings, "dan@example.com")  # after the count: not in the stored figures yet
    page = " ".join(client.get("/admin/lists").text.split())
    assert counts_table(page)["active"] == "3"
    assert "Counted 3 min ago" in page and "every 5 min" in page
    dashboard = " ".join(client.get("/admin").text.split())
    assert counts_table(dashboard)["active"] == "3" and "Counted 3 min ago" in dashboard
    # an hour later, the scheduler not running: still the stored figures, and the page says how old
    with session_scope(settings.database_url) as s:
        counts.refresh(s, now=utcnow() - timedelta(hours=2, minutes=5))
    readers(settings, "eve@example.com")
    page = " ".join(client.get("/admin/lists").text.split())
    assert counts_table(page)["active"] == "4" and "Counted 2 h 5 min ago" in page
    # the admin asks for a recount
    r = client.post("/admin/lists/count", data={"csrf_token": csrf_from(page)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/lists"
    page = " ".join(client.get("/admin/lists").text.split())
    assert counts_table(page)["active"] == "5" and "Counted less than a minute ago" in page


def test_a_small_database_always_shows_exact_fresh_counts(client, settings: Settings) -> None:
    readers(settings, "ann@example.com", "bob@example.com")
    with session_scope(settings.database_url) as s:
        counts.refresh(s)  # fresh stored counts ...
    readers(settings, "cat@example.com")  # ... that no longer hold
    readers(settings, "dan@example.com", confirmed=False)
    login(client)
    page = client.get("/admin/lists").text
    assert counts_table(page) == {"pending": "1", "active": "3", "unsubscribed": "0", "bounced": "0",
                                  "complained": "0"}
    assert "Counted" not in page
    assert counts_table(client.get("/admin").text)["active"] == "3"


def test_a_small_database_refreshes_stale_stored_counts_on_the_way(settings: Settings) -> None:
    readers(settings, "ann@example.com")
    with session_scope(settings.database_url) as s:
        counts.refresh(s, now=utcnow() - timedelta(minutes=10))
    readers(settings, "bob@example.com")
    with session_scope(settings.database_url) as s:
        shown = counts.current(s, timedelta(minutes=5))
        assert not shown.stored and as_dict(shown.lists) == {"weekly": {A: 2}}
        kept = counts.stored(s)
        assert kept is not None and as_dict(kept.lists) == {"weekly": {A: 2}} and kept.age() < timedelta(minutes=1)
        # the threshold is a parameter: 0 makes this database "large", and the stored counts are shown
        readers(settings, "cat@example.com")
        big = counts.current(s, timedelta(minutes=5), exact_up_to=0)
        assert big.stored and as_dict(big.lists) == {"weekly": {A: 2}}


def test_an_import_refreshes_the_counts(settings: Settings, tmp_path: Path) -> None:
    readers(settings, "ann@example.com")
    with session_scope(settings.database_url) as s:
        counts.refresh(s)
    csv = tmp_path / "readers.csv"
    csv.write_text("email\nbob@example.com\ncat@example.com\n")
    with session_scope(settings.database_url) as s:
        csv_import.import_csv(s, csv, list_slug="weekly", dry_run=True)
        assert as_dict(counts.stored(s).lists) == {"weekly": {A: 1}}, "a dry run changes nothing"
        csv_import.import_csv(s, csv, list_slug="weekly", preconfirmed=True, source="test file")
        assert as_dict(counts.stored(s).lists) == {"weekly": {A: 3}}


def test_the_scheduler_refreshes_the_counts_now_and_every_interval(settings: Settings, workdir: Path) -> None:
    assert "counts_refresh_minutes = 5" in (workdir / "digest.toml").read_text(), "`digest init` writes the key"
    scheduler = build_scheduler(settings)
    add_counts_job(scheduler, settings, str(settings.path))
    job = scheduler.get_job(COUNTS_JOB)
    assert isinstance(job.trigger, IntervalTrigger) and job.trigger.interval == timedelta(minutes=5)
    assert job.executor == "counts", "a thread of its own: a send may run for hours on the default one"
    # `digest schedule` registers it and counts at once
    readers(settings, "ann@example.com", "bob@example.com")
    stop = threading.Event()
    thread, result, out = _serve_in_thread(settings, stop)
    try:
        assert "list counts: recounted now and every 5 min" in out.getvalue()

        def counted() -> bool:
            with session_scope(settings.database_url) as s:
                kept = counts.stored(s)
                return kept is not None and as_dict(kept.lists) == {"weekly": {A: 2}}

        wait_for(counted)
    finally:
        stop.set()
        thread.join(10)
    assert result == {"code": 0}
