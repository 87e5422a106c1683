"""The list's growth per week (digest.reporting.trends.list_growth) is counted by the database, each event
put in its week by the week's first instant in UTC: the same weeks as the local date of each event
(weeks starting Monday in the publication's zone), across DST changes and at the edges of a week."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from digest.config import Settings
from digest.reporting.trends import list_growth, week_start
from digest.store import session_scope
from subscribers import lifecycle
from subscribers.models import Event, MembershipStatus

S = MembershipStatus
MOVES = [(None, S.PENDING), (None, S.ACTIVE), (S.PENDING, S.ACTIVE), (S.ACTIVE, S.UNSUBSCRIBED),
         (S.ACTIVE, S.BOUNCED), (S.ACTIVE, S.ACTIVE), (S.ACTIVE, None), (S.ACTIVE, S.COMPLAINED)]


def expected(events: list[tuple[datetime, S | None, S | None, str]], tz: ZoneInfo, now: datetime, weeks: int,
             slug: str | None) -> dict[date, dict[str, int]]:
    """What the weeks must say, event by event in Python (the local date of each event)."""
    current = week_start(now, tz)
    out = {current - timedelta(weeks=weeks - 1 - i): {"new": 0, "confirmed": 0, "unsubscribed": 0, "bounced": 0}
           for i in range(weeks)}
    for at, old, new, where in events:
        if new is None or old == new or (slug is not None and where != slug):
            continue
        bucket = out.get(week_start(at, tz))
        if bucket is None or at > now + timedelta(days=7):
            continue
        if old is None:
            bucket["new"] += 1
        for status, name in ((S.ACTIVE, "confirmed"), (S.UNSUBSCRIBED, "unsubscribed"), (S.BOUNCED, "bounced")):
            if new == status:
                bucket[name] += 1
    return out


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/Santiago", "Asia/Kolkata", "Australia/Lord_Howe"])
def test_weeks_counted_by_the_database_match_each_events_local_week(settings: Settings, zone: str) -> None:
    tz = ZoneInfo(zone)
    now = datetime(2024, 4, 10, 12, 0, tzinfo=UTC)  # a few weeks after DST changes in both hemispheres
    rng = random.Random(zone)
    events: list[tuple[datetime, S | None, S | None, str]] = []
    # the edges of every week (a second before and at local Monday 00:00) and random moments in between
    mondays = [week_start(now, tz) - timedelta(weeks=i) for i in range(14)]
    for monday in mondays:
        edge = datetime.combine(monday, datetime.min.time(), tz).astimezone(UTC)
        for at in (edge - timedelta(seconds=1), edge, edge + timedelta(minutes=30)):
            events.append((at, *rng.choice(MOVES), rng.choice(["weekly", "offers"])))
    for _ in range(300):
        at = now - timedelta(seconds=rng.randrange(0, 14 * 7 * 86400))
        events.append((at, *rng.choice(MOVES), rng.choice(["weekly", "offers"])))
    with session_scope(settings.database_url) as s:
        lists = {slug: lifecycle.ensure_list(s, slug).id for slug in ("weekly", "offers")}
        s.add_all(Event(list_id=lists[where], kind="test", old_status=old, new_status=new, source="test", at=at)
                  for at, old, new, where in events)
    with session_scope(settings.database_url) as s:
        for slug in (None, "weekly"):
            found = {w.start: {"new": w.new, "confirmed": w.confirmed, "unsubscribed": w.unsubscribed,
                               "bounced": w.bounced} for w in list_growth(s, tz, list_slug=slug, now=now)}
            assert found == expected(events, tz, now, 12, slug), (zone, slug)
            assert sum(sum(w.values()) for w in found.values()) > 50, "the test counts something"
        one = list_growth(s, tz, weeks=1, now=now)
        assert [w.start for w in one] == [week_start(now, tz)]
