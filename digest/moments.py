"""When: the send and draft moments of the weekly schedule, as APScheduler 3 triggers and plain maths.

The send moment is cron fields in the publication's zone; the draft moment is `review_hours` of elapsed
time before it. Kept out of `digest.schedule` and below the issue workflow, which asks for the next send
moment of a new draft (`next_send_at`) while the schedule's jobs call the workflow: a module of the
schedule package would make `issues` and `schedule` import each other. The job store pickles these
triggers by class path (`digest.moments.SendTrigger`): renaming them orphans the stored jobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import islice

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from digest.config import Settings
from digest.errors import ConfigError
from digest.store import utcnow


class SendTrigger(BaseTrigger):
    """The send moments: cron fields in the publication's zone, firing once per local wall-clock moment.

    APScheduler 3's CronTrigger fires twice when an autumn change repeats an hour (02:30 summer time,
    then 02:30 standard time an hour later); the repeat is skipped, so an issue is never sent twice that
    night. A time that a spring change skips fires an hour later by the local clock (02:30 -> 03:30).
    """

    def __init__(self, cron: CronTrigger) -> None:
        self.cron = cron

    def _repeat(self, fire: datetime) -> bool:
        local = fire.astimezone(UTC).astimezone(self.cron.timezone)
        return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()

    def _local(self, moment: datetime) -> datetime:
        """The instant in the zone, with the right `fold` (CronTrigger misreads a UTC time in a repeated hour)."""
        return moment.astimezone(UTC).astimezone(self.cron.timezone)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        previous = self._local(previous_fire_time) if previous_fire_time is not None else None
        fire = self.cron.get_next_fire_time(previous, self._local(now))
        for _ in range(4):  # a repeat is skipped once a year; the bound only guards against a loop
            if fire is None or not (self._repeat(fire) or (previous is not None
                                                           and fire.timestamp() <= previous.timestamp())):
                break
            fire = self.cron.get_next_fire_time(self._local(fire), self._local(fire))
        # in UTC: aware times in one zone compare by wall clock, ignoring `fold`, in a repeated hour
        return None if fire is None else fire.astimezone(UTC)

    def __str__(self) -> str:
        return str(self.cron)

    def __repr__(self) -> str:
        return f"<SendTrigger {self.cron!r}>"


def send_trigger(settings: Settings) -> SendTrigger:
    """The send moment as cron fields in the publication's time zone (DST handled by the zone)."""
    sc = settings.schedule
    for key, value, top in (("hour", sc.hour, 23), ("minute", sc.minute, 59)):
        if not 0 <= value <= top:
            raise ConfigError(f"{settings.path}: schedule.{key} must be 0..{top}, not {value}")
    try:
        return SendTrigger(CronTrigger(day_of_week=sc.day_of_week, hour=sc.hour, minute=sc.minute,
                                       timezone=settings.publication.tz))
    except ValueError as e:
        raise ConfigError(f"{settings.path}: schedule.day_of_week {sc.day_of_week!r} is not valid: {e}") from None


class ReviewTrigger(BaseTrigger):
    """The send trigger moved earlier by `hours` of elapsed time: the editors get exactly `review_hours`
    to review, also when a daylight-saving change falls between the draft and the send."""

    def __init__(self, send: SendTrigger, hours: int) -> None:
        self.send = send
        self.hours = hours

    @property
    def offset(self) -> timedelta:
        return timedelta(hours=self.hours)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        # shift in UTC: aware-datetime arithmetic in a zone with DST is wall-clock, not elapsed, time
        previous = previous_fire_time.astimezone(UTC) + self.offset if previous_fire_time else None
        fire = self.send.get_next_fire_time(previous, now.astimezone(UTC) + self.offset)
        return None if fire is None else fire.astimezone(UTC) - self.offset

    def __str__(self) -> str:
        return f"review[{self.hours} h before {self.send}]"

    def __repr__(self) -> str:
        return f"<ReviewTrigger (hours={self.hours}, send={self.send!r})>"


def draft_trigger(settings: Settings) -> ReviewTrigger:
    """The draft moments. The review window must be shorter than the shortest gap between two sends, or a
    draft would be built (and an approval dropped) before the previous send had gone out."""
    send = send_trigger(settings)
    hours = settings.schedule.review_hours
    fires = list(islice(fire_times(send, datetime(2024, 1, 1, tzinfo=UTC)), 60))
    gap = min((b - a for a, b in zip(fires, fires[1:], strict=False)), default=timedelta(days=7))
    if not 1 <= hours < gap.total_seconds() / 3600:
        raise ConfigError(f"{settings.path}: schedule.review_hours must be at least 1 and less than the "
                          f"{gap.total_seconds() / 3600:.0f} h between two sends, not {hours}")
    return ReviewTrigger(send, hours)


class SendEarlyTrigger(ReviewTrigger):
    """The send job's trigger when SendGrid schedules the batches (`send_at`): it fires `lead` before the send
    moment, so the whole list is handed over ahead and every reader gets the issue at the moment itself,
    not spread over the minutes the send takes."""

    def __init__(self, send: SendTrigger, lead: timedelta) -> None:
        super().__init__(send, 0)
        self.lead = lead

    @property
    def offset(self) -> timedelta:
        return self.lead

    def __str__(self) -> str:
        return f"send[{self.lead.total_seconds() / 60:.0f} min before {self.send}]"

    def __repr__(self) -> str:
        return f"<SendEarlyTrigger (lead={self.lead}, send={self.send!r})>"


#: beyond schedule_ahead_minutes, the time a send may take and still land at the send moment
SEND_LEAD_EXTRA = timedelta(minutes=30)


def send_lead(settings: Settings) -> timedelta:
    """How long before the send moment the send job starts: 0, or with SendGrid's scheduled batches
    schedule_ahead_minutes + 30 min (each request's send_at is max(moment, now + ahead))."""
    sg = settings.delivery.sendgrid
    if settings.delivery.transport != "sendgrid" or not sg.schedule_ahead_minutes:
        return timedelta(0)
    return timedelta(minutes=sg.schedule_ahead_minutes) + SEND_LEAD_EXTRA


def send_job_trigger(settings: Settings) -> BaseTrigger:
    """When the send job runs: at the send moment, or `send_lead` before it."""
    lead = send_lead(settings)
    return SendEarlyTrigger(send_trigger(settings), lead) if lead else send_trigger(settings)


def send_grace(settings: Settings) -> int:
    return settings.schedule.misfire_grace_seconds


def draft_grace(settings: Settings) -> int:
    """A late draft harms nobody (nothing goes out), so it may run until the send it is for."""
    return max(settings.schedule.misfire_grace_seconds, settings.schedule.review_hours * 3600)


def fire_times(trigger: BaseTrigger, after: datetime) -> Iterator[datetime]:
    """The trigger's fire times from `after` on, as UTC datetimes."""
    fire = trigger.get_next_fire_time(None, after)
    while fire is not None:
        yield fire.astimezone(UTC)
        fire = trigger.get_next_fire_time(fire, fire)


def last_fire(trigger: BaseTrigger, now: datetime, lookback: timedelta) -> datetime | None:
    """The latest fire time at or before `now`, looking back at most `lookback`: the moment a job that
    runs now was scheduled for (APScheduler 3 does not pass it to the job)."""
    last = None
    for fire in fire_times(trigger, now - lookback):
        if fire > now:
            break
        last = fire
    return last


def next_send_at(settings: Settings, now: datetime | None = None) -> datetime:
    fire = send_trigger(settings).get_next_fire_time(None, now or utcnow())
    if fire is None:
        raise ConfigError(f"{settings.path}: [schedule] never fires")
    return fire.astimezone(UTC)


@dataclass(frozen=True)
class Moments:
    draft_at: datetime  # the next time a draft is built
    send_at: datetime  # the next send
    review_from: datetime  # when the draft for that next send is (or was) built


def next_moments(settings: Settings, now: datetime | None = None) -> Moments:
    now = now or utcnow()
    send_at = next_send_at(settings, now)
    draft_at = next(fire_times(draft_trigger(settings), now))
    return Moments(draft_at, send_at, send_at - timedelta(hours=settings.schedule.review_hours))


def describe(settings: Settings, moment: datetime) -> str:
    local, utc = local_and_utc(settings, moment)
    return f"{local} = {utc}"


def stamp(settings: Settings, moment: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A stored (UTC) moment as people read it: in the publication's zone, the zone named ("AEDT")."""
    return in_zone(moment, settings.publication.tz, fmt)


def in_zone(moment: datetime | None, tz: tzinfo, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """`stamp` for a zone at hand (the web's template filter): "09:00" alone could be any zone's."""
    if moment is None:
        return ""
    local = moment.astimezone(tz)
    return f"{local.strftime(fmt)} {local.tzname()}"


def local_and_utc(settings: Settings, moment: datetime) -> tuple[str, str]:
    local = moment.astimezone(settings.publication.tz)
    return f"{local:%a %d %b %Y %H:%M} {local.tzname()}", f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
