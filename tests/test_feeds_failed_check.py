"""When every feed fails in a run the feeds check is a failure, first among the checks, and the editors'
notice leads with it; counts read "1 feed", "2 feeds"."""

from __future__ import annotations

from pathlib import Path

from digest.config import Settings
from digest.schedule.jobs import run_draft
from digest.sources.collect import health_summary
from digest.wording import plural
from tests.test_schedule_jobs import DRAFT_AT, SEND_AT, issue_row, notices, text_of, week  # noqa: F401


def _health(feed: str, health: str, failures: int = 0, error: str = "") -> dict:
    return {"feed": feed, "health": health, "failures": failures, "quiet_runs": 0, "error": error, "stale": False}


def test_every_feed_failing_is_a_failure_one_failing_is_not() -> None:
    level, message = health_summary([_health("a.xml", "failing", 1, "timed out")], 3)
    assert level == "fail" and message == "the only feed failed this run, no new articles came in: a.xml: timed out"
    both = [_health("a.xml", "failing", 1, "404"), _health("b.xml", "failing", 2, "DNS")]
    level, message = health_summary(both, 3)
    assert level == "fail" and message.startswith("every feed (2) failed this run") and "b.xml: DNS" in message
    level, message = health_summary([_health("a.xml", "failing", 1, "404"), _health("b.xml", "ok")], 3)
    assert level == "ok" and message.startswith("2 feeds; a.xml failed this run")
    assert health_summary([_health("a.xml", "ok")], 3) == ("ok", "the feed is healthy")
    assert health_summary([_health("a.xml", "ok"), _health("b.xml", "ok")], 3) == ("ok", "all 2 feeds healthy")


def test_plural_counts() -> None:
    assert [plural(n, "feed") for n in (0, 1, 2, 1000)] == ["0 feeds", "1 feed", "2 feeds", "1,000 feeds"]
    assert plural(1, "entry", "entries") == "1 entry" and plural(3, "entry", "entries") == "3 entries"


def test_the_draft_of_a_run_where_every_feed_failed_leads_with_it(week: Settings, workdir: Path) -> None:  # noqa: F811
    (workdir / "sample" / "feed.xml").unlink()
    run_draft(week, send_at=SEND_AT, now=DRAFT_AT)
    first = issue_row(week).checks[0]
    assert first["name"] == "feeds" and first["level"] == "fail", issue_row(week).checks
    [notice] = notices(workdir)
    assert "Every feed failed: issue 1 needs a look" in notice["Subject"]
    text = text_of(notice)
    lead = text.index("Feeds: the only feed failed this run")
    assert lead < text.index("new article"), "the feeds failure comes before everything else said"
    assert "FAIL feeds" in text
