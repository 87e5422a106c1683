"""The schedule's trigger maths: cron fields in the publication's zone, across daylight-saving changes."""

from __future__ import annotations

import io
import pickle
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from rich.console import Console

from digest.cli.schedule import show
from digest.config import Settings, load_settings
from digest.errors import ConfigError
from digest.moments import (
    ReviewTrigger,
    draft_trigger,
    fire_times,
    last_fire,
    next_moments,
    send_trigger,
)
from tests.conftest import edit_config

SYDNEY = ZoneInfo("Australia/Sydney")


def local(moment: datetime) -> datetime:
    """Sydney time of the instant (via UTC: astimezone to the zone a datetime already has is a no-op)."""
    return moment.astimezone(UTC).astimezone(SYDNEY)


def test_a_sydney_0700_send_stays_0700_local_across_april_and_october(settings: Settings) -> None:
    trigger = send_trigger(settings)  # mon 07:00 Australia/Sydney
    april = list(islice(fire_times(trigger, datetime(2024, 3, 24, tzinfo=UTC)), 3))
    assert [local(f).strftime("%a %d %b %H:%M %Z") for f in april] == [
        "Mon 25 Mar 07:00 AEDT", "Mon 01 Apr 07:00 AEDT", "Mon 08 Apr 07:00 AEST"]  # DST ended Sun 7 Apr
    assert [f.strftime("%d %H:%M") for f in april] == ["24 20:00", "31 20:00", "07 21:00"]  # UTC moves
    october = list(islice(fire_times(trigger, datetime(2024, 9, 25, tzinfo=UTC)), 2))
    assert [local(f).strftime("%a %d %b %H:%M %Z") for f in october] == [
        "Mon 30 Sep 07:00 AEST", "Mon 07 Oct 07:00 AEDT"]  # DST began Sun 6 Oct
    assert [f.astimezone(UTC).strftime("%d %H:%M") for f in october] == ["29 21:00", "06 20:00"]
    # APScheduler's own maths agrees with ours, fire by fire
    cron = CronTrigger(day_of_week="mon", hour=7, minute=0, timezone=SYDNEY)
    assert cron.get_next_fire_time(None, datetime(2024, 4, 2, tzinfo=UTC)) == april[2]


@pytest.mark.nodb  # reads settings only: runs once
def test_the_draft_is_review_hours_of_elapsed_time_before_the_send_even_over_a_dst_change(
        workdir: Path) -> None:
    edit_config(workdir, 'day_of_week = "mon"', 'day_of_week = "sun"')
    settings = load_settings(workdir / "digest.toml")
    drafts = list(islice(fire_times(draft_trigger(settings), datetime(2024, 3, 29, tzinfo=UTC)), 3))
    sends = list(islice(fire_times(send_trigger(settings), datetime(2024, 3, 30, tzinfo=UTC)), 3))
    assert all(s - d == timedelta(hours=24) for d, s in zip(drafts, sends, strict=True))
    # DST ends at 03:00 on Sunday 7 April, between the Saturday draft and the Sunday send: the editors
    # still get 24 hours, so the draft is built at 08:00 summer time rather than 07:00
    assert local(sends[1]).strftime("%a %d %H:%M %Z") == "Sun 07 07:00 AEST"
    assert local(drafts[1]).strftime("%a %d %H:%M %Z") == "Sat 06 08:00 AEDT"
    assert local(drafts[0]).strftime("%a %d %H:%M %Z") == "Sat 30 07:00 AEDT"


def test_the_review_trigger_is_stored_and_restored_by_the_job_store(settings: Settings) -> None:
    trigger = draft_trigger(settings)
    again = pickle.loads(pickle.dumps(trigger))
    assert isinstance(again, ReviewTrigger) and repr(again) == repr(trigger)
    now = datetime(2024, 4, 1, tzinfo=UTC)
    assert again.get_next_fire_time(None, now) == trigger.get_next_fire_time(None, now)


def test_missed_fire_times_are_enumerated_as_apscheduler_does(settings: Settings) -> None:
    trigger = send_trigger(settings)
    first = trigger.get_next_fire_time(None, datetime(2024, 3, 1, tzinfo=UTC))
    assert first is not None
    now = first + timedelta(days=15)
    # APScheduler's misfire loop: next fire after the previous one, while not after now
    missed, fire = [], first
    while fire is not None and fire <= now:
        missed.append(fire)
        fire = trigger.get_next_fire_time(fire, now)
    assert len(missed) == 3 and missed[-1] == last_fire(trigger, now, timedelta(days=30))
    assert last_fire(trigger, now, timedelta(hours=1)) is None, "nothing fired in the last hour"


def test_next_moments_and_show_print_local_time_and_utc(settings: Settings) -> None:
    now = datetime(2024, 4, 3, 12, 0, tzinfo=UTC)
    moments = next_moments(settings, now)
    assert moments.send_at == datetime(2024, 4, 7, 21, 0, tzinfo=UTC)
    assert moments.draft_at == datetime(2024, 4, 6, 21, 0, tzinfo=UTC)
    out = io.StringIO()
    show(settings, Console(file=out, width=200), now=now)
    text = out.getvalue()
    assert "next draft: Sun 07 Apr 2024 07:00 AEST = 2024-04-06 21:00 UTC" in text
    assert "next send:  Mon 08 Apr 2024 07:00 AEST = 2024-04-07 21:00 UTC" in text
    assert "not running" in text and "editor@news.example.com" in text
    # inside the review window the next draft is the following week's; show says the window is open
    inside = io.StringIO()
    show(settings, Console(file=inside, width=200), now=datetime(2024, 4, 7, 12, 0, tzinfo=UTC))
    assert "next draft: Sun 14 Apr 2024 07:00 AEST" in inside.getvalue()
    assert "the review window is open" in inside.getvalue()


@pytest.mark.nodb  # reads settings only: runs once
@pytest.mark.parametrize("old, new, message", [
    ('day_of_week = "mon"', 'day_of_week = "funday"', "schedule.day_of_week 'funday' is not valid"),
    ("hour = 7", "hour = 24", "schedule.hour must be 0..23, not 24"),
    ("minute = 0", "minute = 75", "schedule.minute must be 0..59, not 75"),
    ("review_hours = 24", "review_hours = 200", "schedule.review_hours must be at least 1 and less than the 167 h"),
    ('day_of_week = "mon"', 'day_of_week = "mon,tue"', None),
])
def test_bad_schedule_fields_name_the_key_and_the_file(workdir: Path, old: str, new: str,
                                                       message: str | None) -> None:
    edit_config(workdir, old, new)
    settings = load_settings(workdir / "digest.toml")
    if message is None:  # two sends a day apart: a 24-hour review window no longer fits
        message = "less than the 24 h between two sends, not 24"
    with pytest.raises(ConfigError) as e:
        draft_trigger(settings)
    assert message in str(e.value) and str(workdir / "digest.toml") in str(e.value)


@pytest.mark.nodb  # reads settings only: runs once
def test_editors_must_be_email_addresses(workdir: Path) -> None:
    edit_config(workdir, 'editors = ["editor@news.example.com"]', 'editors = ["editor@news.example.com", "bob"]')
    with pytest.raises(ConfigError, match=r"schedule.editors\[1\] 'bob' is not an email address"):
        load_settings(workdir / "digest.toml")


@pytest.mark.nodb  # reads settings only: runs once
def test_a_send_in_the_hour_dst_skips_or_repeats_goes_out_once(workdir: Path) -> None:
    edit_config(workdir, 'day_of_week = "mon"', 'day_of_week = "sun"')
    edit_config(workdir, "hour = 7", "hour = 2")
    edit_config(workdir, "minute = 0", "minute = 30")
    trigger = send_trigger(load_settings(workdir / "digest.toml"))
    # 6 October 2024: 02:00 -> 03:00 in Sydney, so 02:30 does not exist; it goes out at 03:30 AEDT
    spring = trigger.get_next_fire_time(None, datetime(2024, 10, 1, tzinfo=UTC))
    assert spring is not None and spring.astimezone(UTC) == datetime(2024, 10, 5, 16, 30, tzinfo=UTC)
    assert local(spring).strftime("%H:%M %Z") == "03:30 AEDT"
    # 7 April 2024: 03:00 -> 02:00, so 02:30 happens twice; it goes out at the first, once
    autumn = list(islice(fire_times(trigger, datetime(2024, 4, 6, tzinfo=UTC)), 2))
    assert autumn[0] == datetime(2024, 4, 6, 15, 30, tzinfo=UTC)
    assert autumn[1] == datetime(2024, 4, 13, 16, 30, tzinfo=UTC), "not a second time an hour later"
    # (APScheduler's bare CronTrigger would fire again at 02:30 AEST, an hour after the first)
    cron, first = trigger.cron, local(autumn[0])
    repeat = cron.get_next_fire_time(first, first)
    assert repeat is not None and repeat.astimezone(UTC) == datetime(2024, 4, 6, 16, 30, tzinfo=UTC)
    # whichever zone the previous fire time comes in (the job store keeps it as given, ours are UTC)
    assert trigger.get_next_fire_time(autumn[0], autumn[0]) == autumn[1]
    assert trigger.get_next_fire_time(first, first) == autumn[1]
    # and a scheduler (re)started inside the repeated hour does not fire at the repeat either
    assert trigger.get_next_fire_time(None, datetime(2024, 4, 6, 16, 0, tzinfo=UTC)) == autumn[1]
