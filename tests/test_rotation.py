"""Featured listings rotate fairly: checked over 52 simulated weekly issues, in pure functions and then
through the store (the choice recorded when each issue starts sending) and `digest listings report`."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from digest.compose import FeatureHistory, choose_listings, compose
from digest.issues import feature_history, start_sending
from digest.models import Article, Listing
from digest.sources.directory import read_directory
from digest.store import IssueRow
from tests.conftest import run_cli

WEEKS = 52
TOPICS = ("Aquatics", "Fitness", "Venues")


def suppliers(n: int, featured: int) -> list[Listing]:
    return [Listing(f"Supplier {i:02d}", f"https://dir.example.com/{i}", categories=(TOPICS[i % 3],),
                    tier="featured" if i < featured else "") for i in range(n)]


def simulate(listings: list[Listing], count: int, rotation: int) -> tuple[dict[str, list[int]], list[list[str]]]:
    history: dict[str, list[int]] = {}
    chosen_per_issue = []
    for number in range(1, WEEKS + 1):
        chosen = choose_listings(listings, count, number, FeatureHistory({k: list(v) for k, v in history.items()}),
                                 rotation_issues=rotation, topics=[TOPICS[number % 3]])
        chosen_per_issue.append([x.key for x in chosen])
        for x in chosen:
            history.setdefault(x.key, []).append(number)
    return history, chosen_per_issue


def test_fair_rotation_over_52_issues_with_enough_suppliers() -> None:
    listings = suppliers(20, featured=3)
    history, per_issue = simulate(listings, count=3, rotation=4)
    assert all(len(set(keys)) == 3 for keys in per_issue)
    for numbers in history.values():  # never twice in any 4 consecutive issues
        assert all(b - a >= 4 for a, b in zip(numbers, numbers[1:], strict=False))
    counts = Counter({x.key: len(history.get(x.key, [])) for x in listings})
    paid = [counts[x.key] for x in listings if x.tier == "featured"]
    standard = [counts[x.key] for x in listings if x.tier != "featured"]
    assert paid == [WEEKS // 4] * 3  # the featured tier as often as the rotation allows
    assert min(standard) >= 1 and max(standard) - min(standard) <= 1  # the rest share what is left evenly
    assert min(paid) > max(standard)
    assert sum(counts.values()) == 3 * WEEKS


def test_with_too_few_suppliers_repeats_only_when_it_must() -> None:
    listings = suppliers(5, featured=0)
    history, per_issue = simulate(listings, count=3, rotation=4)
    assert all(len(set(keys)) == 3 for keys in per_issue)
    counts = [len(history[x.key]) for x in listings]
    assert max(counts) - min(counts) <= 1
    for number, keys in enumerate(per_issue, start=1):
        earlier = {k: [n for n in v if n < number] for k, v in history.items()}
        rested = [x.key for x in listings if not earlier.get(x.key) or number - earlier[x.key][-1] >= 4]
        if len(rested) >= 3:
            assert set(keys) <= set(rested)  # nobody recent while enough have rested
        else:
            assert set(rested) <= set(keys)  # everyone rested goes first; the rest are the least recent


def test_among_equally_due_suppliers_this_weeks_topics_win() -> None:
    listings = suppliers(9, featured=0)
    chosen = choose_listings(listings, 3, 1, FeatureHistory({}), topics=["venues", "Aquatics"])
    assert sorted(x.categories[0] for x in chosen) == ["Aquatics", "Aquatics", "Venues"]
    # but the least recently featured still goes first: topics only break ties
    history = FeatureHistory({x.key: [1] for x in listings if x.categories[0] != "Fitness"})
    chosen = choose_listings(listings, 3, 10, history, topics=["Aquatics"])
    assert [x.categories[0] for x in chosen] == ["Fitness"] * 3


def test_editor_picks_come_first_and_previews_use_the_next_number() -> None:
    listings = suppliers(6, featured=1)
    picked = choose_listings(listings, 2, 5, FeatureHistory({}), forced=["SUPPLIER 04 ", "nobody"])
    assert [x.name for x in picked] == ["Supplier 04", "Supplier 00"]
    history = FeatureHistory({"supplier 00": [7], "supplier 01": [7]})
    assert [x.name for x in choose_listings(listings, 2, 0, history)] == ["Supplier 02", "Supplier 03"]


@pytest.mark.slow  # the real command in a subprocess
def test_52_weekly_issues_through_the_store_and_the_report(settings, session, workdir) -> None:  # type: ignore[no-untyped-def]
    listings, problems = read_directory(settings.resolve(settings.sources.directory))
    assert len(listings) == 12 and not problems
    start = datetime(2025, 1, 6, 7, tzinfo=UTC)
    for week in range(WEEKS):
        number, now = week + 1, start + timedelta(weeks=week)
        articles = [Article(f"k{number}-{i}", f"Story {number}.{i}", f"https://news.example.com/{number}/{i}",
                            now - timedelta(hours=i), categories=(TOPICS[(number + i) % 3],)) for i in range(3)]
        issue = compose(settings, number, articles, listings, feature_history(session), now)
        row = IssueRow(number=number, subject=issue.subject, content=issue.to_json(), status="sending")
        session.add(row)
        session.flush()
        start_sending(session, row)  # records the featured suppliers, as a real send does
        row.status, row.sent_at = "sent", now
    session.commit()
    history = feature_history(session)
    for numbers in history.featured_in.values():
        assert all(b - a >= settings.sources.rotation_issues for a, b in zip(numbers, numbers[1:], strict=False))
    # 12 suppliers, 3 an issue, no repeat within 4 issues: everyone exactly once every 4 weeks
    assert sorted(len(v) for v in history.featured_in.values()) == [13] * 12

    out = workdir / "features.csv"
    result = run_cli("listings", "report", "--csv", str(out), cwd=workdir, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "52 issues (issues 1–52)" in result.stdout and "Tidewell Systems" in result.stdout
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 12
    assert {r["featured"] for r in rows} == {"13"} and {r["issues_considered"] for r in rows} == {"52"}
    tidewell = next(r for r in rows if r["supplier"] == "Tidewell Systems")
    assert tidewell["tier"] == "featured" and tidewell["in_directory"] == "yes"
    assert len(tidewell["issues"].split()) == 13

    last8 = run_cli("listings", "report", "--last", "8", "--csv", str(out), cwd=workdir)
    assert last8.returncode == 0, last8.stderr
    assert {r["featured"] for r in csv.DictReader(out.open(encoding="utf-8"))} == {"2"}
