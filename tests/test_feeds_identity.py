"""Collect against a real SQLite store: identity that survives republishing, sent articles that stay
sent, undated and embargoed items, conditional GET across runs, and feed health told to editors."""

from __future__ import annotations

import functools
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from digest.config import Settings, load_settings
from digest.sources.collect import candidates, collect, health_summary
from digest.sources.seen import mark_sent
from digest.store import FeedState, IssueRow, SeenArticle
from tests.conftest import edit_config, run_cli

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def rss(*items: dict[str, str], link: str = "https://pub.example.com/") -> str:
    """A small RSS 2.0 feed; each item's keys are its element names (title, link, guid, pubDate...)."""
    body = "".join("<item>" + "".join(f"<{k}>{v}</{k}>" for k, v in item.items()) + "</item>" for item in items)
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Pub</title>'
            f"<link>{link}</link>{body}</channel></rss>")


def date(dt: datetime) -> str:
    return format_datetime(dt)


@pytest.fixture
def feeds(workdir: Path) -> tuple[Path, Path]:
    """Two feed files the config points at, written by each test."""
    a, b = workdir / "a.xml", workdir / "b.xml"
    a.write_text(rss())
    b.write_text(rss())
    edit_config(workdir, 'feeds = ["sample/feed.xml"]', 'feeds = ["a.xml", "b.xml"]')
    return a, b


@pytest.fixture
def cfg(feeds: tuple[Path, Path], settings: Settings) -> Settings:
    """conftest's settings, read after `feeds` has pointed the config at the two test feeds."""
    return settings


@pytest.fixture
def db(cfg: Settings, session):  # type: ignore[no-untyped-def]
    return session


def titles(collected) -> list[str]:  # type: ignore[no-untyped-def]
    return [a.title for a in collected.articles]


def send_issue(db, number: int, keys: list[str], at: datetime, excluded: list[str] | None = None,  # type: ignore[no-untyped-def]
               drafted: datetime | None = None) -> IssueRow:
    """An issue sent at `at`, drafted at `drafted` (default: a day before), that used up `keys`."""
    row = IssueRow(number=number, subject=f"#{number}", content={"excluded": excluded or []}, status="sent",
                   sent_at=at, created_at=drafted or at - timedelta(days=1))
    db.add(row)
    db.flush()
    mark_sent(db, row.id, keys)
    db.flush()
    return row


def test_a_republished_article_is_the_same_by_guid_link_or_title_and_date(cfg, db, feeds) -> None:  # type: ignore[no-untyped-def]
    a, b = feeds
    a.write_text(rss({"title": "Pool opens", "link": "https://pub.example.com/pool", "guid": "p-1",
                      "pubDate": date(T0)}))
    first = collect(db, cfg, T0 + timedelta(hours=1))
    assert titles(first) == ["Pool opens"]
    key = first.articles[0].key
    # new GUID, same link with tracking parameters and a trailing slash: the same article
    a.write_text(rss({"title": "Pool opens (updated)", "link": "https://PUB.example.com/pool/?utm_source=rss",
                      "guid": "p-1-v2", "pubDate": date(T0 + timedelta(hours=2))}))
    # another feed syndicates it: new GUID, new link, same title and day
    b.write_text(rss({"title": "Pool Opens!", "link": "https://syndicate.example.net/x/99", "guid": "s-99",
                      "pubDate": date(T0 + timedelta(hours=3))}))
    second = collect(db, cfg, T0 + timedelta(hours=4))
    assert [(a.title, a.key) for a in second.articles] == [("Pool Opens!", key)]
    assert {h["feed"].rsplit("/", 1)[1]: h["new"] for h in second.feed_health} == {"a.xml": 0, "b.xml": 0}
    assert db.scalar(select(SeenArticle.id).where(SeenArticle.key != key)) is None


def test_an_updated_article_that_was_sent_is_never_a_candidate_again(cfg, db, feeds) -> None:  # type: ignore[no-untyped-def]
    a, _ = feeds
    a.write_text(rss({"title": "Gym results", "link": "https://pub.example.com/gym", "guid": "g-1",
                      "pubDate": date(T0)},
                     {"title": "Stadium deal", "link": "https://pub.example.com/stadium", "guid": "s-1",
                      "pubDate": date(T0)}))
    first = collect(db, cfg, T0 + timedelta(hours=1))
    # issue 1 was drafted after both were seen, and sent only the gym story (the stadium one was left over)
    send_issue(db, 1, [x.key for x in first.articles if x.title == "Gym results"], T0 + timedelta(hours=2),
               drafted=T0 + timedelta(hours=1, minutes=30))
    # edited after sending: new title, new GUID and new date, same link; and an edit by GUID only
    a.write_text(rss({"title": "Gym results: corrected", "link": "https://pub.example.com/gym?ref=feed",
                      "guid": "g-1-rev", "pubDate": date(T0 + timedelta(days=1))},
                     {"title": "Stadium deal", "link": "https://pub.example.com/stadium", "guid": "s-1",
                      "pubDate": date(T0)}))
    later = collect(db, cfg, T0 + timedelta(days=1, hours=1))
    assert titles(later) == []  # the stadium story was seen before issue 1 was drafted: old news now


def test_a_sent_row_wins_when_an_item_matches_two_rows(cfg, db, feeds) -> None:  # type: ignore[no-untyped-def]
    a, _ = feeds
    a.write_text(rss({"title": "One", "link": "https://pub.example.com/one", "guid": "k-1", "pubDate": date(T0)},
                     {"title": "Two", "link": "https://pub.example.com/two", "guid": "k-2", "pubDate": date(T0)}))
    first = collect(db, cfg, T0 + timedelta(hours=1))
    two = next(x.key for x in first.articles if x.title == "Two")
    send_issue(db, 1, [two], T0 + timedelta(hours=1, minutes=30))
    # the feed now gives item k-1 the link of the sent item "Two"
    a.write_text(rss({"title": "One", "link": "https://pub.example.com/two", "guid": "k-1",
                      "pubDate": date(T0 + timedelta(hours=2))}))
    assert titles(collect(db, cfg, T0 + timedelta(hours=3))) == []


def test_undated_items_are_dated_by_when_they_were_first_seen(cfg, db, feeds) -> None:  # type: ignore[no-untyped-def]
    a, _ = feeds
    a.write_text(rss({"title": "No date here", "link": "https://pub.example.com/nodate"}))
    first = collect(db, cfg, T0)
    assert [(x.title, x.published, x.dated_by_feed) for x in first.articles] == [("No date here", T0, False)]
    again = collect(db, cfg, T0 + timedelta(days=2))
    assert [(x.title, x.published) for x in again.articles] == [("No date here", T0)]
    assert collect(db, cfg, T0 + timedelta(days=20)).articles == []  # out of the window, never "new" again


def test_future_dated_items_wait_for_their_date(cfg, db, feeds) -> None:  # type: ignore[no-untyped-def]
    a, _ = feeds
    release = T0 + timedelta(days=3)
    a.write_text(rss({"title": "Embargoed", "link": "https://pub.example.com/emb", "pubDate": date(release)},
                     {"title": "Public", "link": "https://pub.example.com/pub", "pubDate": date(T0)}))
    assert titles(collect(db, cfg, T0 + timedelta(hours=1))) == ["Public"]
    assert titles(collect(db, cfg, release + timedelta(minutes=1))) == ["Embargoed", "Public"]


def test_late_arrivals_are_offered_but_what_the_editor_left_out_is_not(cfg, db, feeds) -> None:  # type: ignore[no-untyped-def]
    a, _ = feeds
    a.write_text(rss({"title": "Left out", "link": "https://pub.example.com/out", "pubDate": date(T0)}))
    out_key = collect(db, cfg, T0 + timedelta(hours=1)).articles[0].key
    sent_at = T0 + timedelta(days=1)
    send_issue(db, 1, [], sent_at, excluded=[out_key])
    # a feed that was down comes back with a story dated before the send, first seen after it
    a.write_text(rss({"title": "Left out", "link": "https://pub.example.com/out", "pubDate": date(T0)},
                     {"title": "Late arrival", "link": "https://pub.example.com/late",
                      "pubDate": date(sent_at - timedelta(hours=2))}))
    assert titles(collect(db, cfg, sent_at + timedelta(days=1))) == ["Late arrival"]


def test_a_304_still_offers_the_unsent_articles_and_sends_the_validators(cfg, db, workdir) -> None:  # type: ignore[no-untyped-def]
    site = workdir / "site"
    site.mkdir()
    (site / "feed.xml").write_text(rss({"title": "Served", "link": "https://pub.example.com/served",
                                        "pubDate": date(T0)}))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/feed.xml"
        edit_config(workdir, 'feeds = ["a.xml", "b.xml"]', f'feeds = ["{url}"]')
        s = load_settings(workdir / "digest.toml")
        assert titles(collect(db, s, T0 + timedelta(hours=1))) == ["Served"]
        state = db.get(FeedState, url)
        assert state.last_modified
        second = collect(db, s, T0 + timedelta(hours=2))
        assert titles(second) == ["Served"]
        assert second.feed_health[0]["items"] == 0 and second.feed_health[0]["health"] == "ok"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_feed_health_names_failing_and_quiet_feeds_after_n_runs(cfg, db, feeds, workdir) -> None:  # type: ignore[no-untyped-def]
    a, b = feeds
    a.write_text(rss({"title": "Steady", "link": "https://pub.example.com/steady", "pubDate": date(T0)}))
    b.write_text("<html>we broke the feed</html>")
    n = cfg.sources.stale_runs
    runs = [collect(db, cfg, T0 + timedelta(hours=h)) for h in range(1, n + 2)]  # 1 new, then n quiet
    first, before, last = runs[0].feed_health, runs[n - 1].feed_health, runs[-1].feed_health
    assert [h["health"] for h in first] == ["ok", "failing"] and not any(h["stale"] for h in first)
    assert health_summary(first, n)[0] == "ok"
    assert [(h["health"], h["stale"]) for h in before] == [("ok", False), ("failing", True)]
    assert [(h["health"], h["stale"]) for h in last] == [("quiet", True), ("failing", True)]
    assert last[1]["failures"] == n + 1 and "not an RSS or Atom feed" in last[1]["error"]
    level, message = health_summary(last, n)
    assert level == "warn" and message.startswith("2 of 2 feeds need attention")
    assert f"b.xml failed {n + 1} runs in a row (not an RSS or Atom feed" in message
    assert f"a.xml gave nothing new for {n} runs" in message
    assert any("b.xml" in p.source and "not an RSS or Atom feed" in p.message for p in runs[-1].problems)
    # the feed recovers: its failures are forgotten
    b.write_text(rss({"title": "Back", "link": "https://pub.example.com/back", "pubDate": date(T0)}))
    back = collect(db, cfg, T0 + timedelta(hours=10)).feed_health[1]
    assert (back["health"], back["failures"], back["new"]) == ("ok", 0, 1)


def test_drafts_tell_editors_about_feed_health(cfg, db, feeds) -> None:  # type: ignore[no-untyped-def]
    from digest.issues import build_draft

    a, b = feeds
    a.write_text(rss({"title": "News", "link": "https://pub.example.com/n", "pubDate": date(T0)}))
    b.unlink()
    for h in range(cfg.sources.stale_runs):
        draft = build_draft(cfg, db, now=T0 + timedelta(hours=h + 1))
    feeds_check = next(c for c in draft.row.checks if c["name"] == "feeds")
    assert feeds_check["level"] == "warn" and "b.xml failed" in feeds_check["message"]
    assert "cannot read file" in feeds_check["message"]


@pytest.mark.slow  # the real command in a subprocess
def test_collect_command_shows_feed_health_and_problems(workdir, feeds) -> None:  # type: ignore[no-untyped-def]
    a, b = feeds
    now = datetime.now(UTC)
    a.write_text(rss({"title": "Fresh", "link": "https://pub.example.com/fresh", "pubDate": date(now)},
                     {"title": "Script", "link": "javascript:alert(1)", "pubDate": date(now)}))
    b.write_text("")
    result = run_cli("collect", cwd=workdir, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "Fresh" in result.stdout and "Feed health" in result.stdout and "failing" in result.stdout
    assert "b.xml: empty: the feed has no content at all" in " ".join(result.stderr.split())
    assert "no http(s) link ('javascript:alert(1)'): skipped" in " ".join(result.stderr.split())


def test_candidates_are_newest_first_within_the_window(cfg, db, feeds) -> None:  # type: ignore[no-untyped-def]
    a, _ = feeds
    a.write_text(rss(*({"title": f"Day {d}", "link": f"https://pub.example.com/{d}",
                        "pubDate": date(T0 - timedelta(days=d))} for d in (1, 3, 30))))
    collect(db, cfg, T0)
    assert [x.title for x in candidates(db, cfg, T0)] == ["Day 1", "Day 3"]
