"""When: the send and draft moments of the weekly schedule, as APScheduler 3 triggers and plain maths.

The send moment is cron fields in the publication's zone; the draft moment is `review_hours` of elapsed
time before it. Kept out of `digest.schedule` and below the issue workflow, which asks for the next send
moment of a new draft (`next_send_at`) while the schedule's jobs call the workflow: a module of the
schedule package would make `issues` and `schedule` import each other. The job store pickles these
triggers by class path (`digest.moments.SendTrigger`): renaming them orphans the stored jobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import islice
from zoneinfo import ZoneInfo

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


def zone_moment(moment: datetime, home: tzinfo, zone: tzinfo) -> datetime:
    """Local delivery: `moment`'s clock time in `home` (its date, hour and minute) read in `zone`, in UTC.

    Mon 07:00 in Sydney is Mon 07:00 in Perth (3 h later) and in Auckland (2 h earlier); each zone's own
    daylight saving decides its offset that day, so Sydney and Brisbane differ by an hour only in summer. A
    clock time that a spring change skips in `zone` does not exist there: zoneinfo reads it with the offset
    before the change (PEP 495, fold=0), so it comes an hour later by that clock (02:30 -> 03:30), as
    SendTrigger does; one an autumn change repeats is its first occurrence, so nobody gets it twice.
    """
    wall = moment.astimezone(home).replace(tzinfo=None, fold=0)
    return wall.replace(tzinfo=zone).astimezone(UTC)


#: zone offsets span UTC-12 to UTC+14, so a clock time is read within 26 h either side of the home zone's
ZONE_SPREAD = timedelta(hours=27)


def zone_moments(settings: Settings, moment: datetime, zones: Iterable[str | None]) -> dict[str, datetime]:
    """Each zone's moment for the send `moment` (None: the publication's zone), earliest first."""
    home = settings.publication.tz
    out = {}
    for name in zones:
        name = name or settings.publication.timezone
        out[name] = zone_moment(moment, home, ZoneInfo(name))
    return dict(sorted(out.items(), key=lambda kv: (kv[1], kv[0])))


class LocalSendTrigger(BaseTrigger):
    """Local delivery's send job: it fires at every zone's moment of every send moment (or, `first_only`,
    at the earliest zone's). The zones are the readers' (`digest.schedule.runner` keeps them current); a
    reader whose zone is missing here is still sent at the next fire after their moment, as the send claims
    every reader whose moment has come."""

    def __init__(self, send: SendTrigger, zones: Iterable[str], first_only: bool = False) -> None:
        self.send = send
        self.zones = tuple(sorted(set(zones) | {str(send.cron.timezone)}))
        self.first_only = first_only

    def fires_for(self, moment: datetime) -> list[datetime]:
        home = self.send.cron.timezone
        fires = sorted({zone_moment(moment, home, ZoneInfo(z)) for z in self.zones})
        return fires[:1] if self.first_only else fires

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        after = previous_fire_time.astimezone(UTC) if previous_fire_time is not None else None
        now = now.astimezone(UTC)
        best: datetime | None = None
        for moment in islice(fire_times(self.send, now - ZONE_SPREAD), 1000):
            if best is not None and moment - ZONE_SPREAD > best:
                break
            for fire in self.fires_for(moment):
                if fire >= now and (after is None or fire > after) and (best is None or fire < best):
                    best = fire
        return best

    def moment_of(self, fire: datetime) -> datetime | None:
        """The send moment (the publication's) that `fire` is a zone's moment of."""
        fire = fire.astimezone(UTC)
        for moment in islice(fire_times(self.send, fire - ZONE_SPREAD), 1000):
            if moment - ZONE_SPREAD > fire:
                break
            if fire in self.fires_for(moment):
                return moment
        return None

    def __str__(self) -> str:
        return f"local[{'first of ' if self.first_only else ''}{', '.join(self.zones)} at {self.send}]"

    def __repr__(self) -> str:
        return f"<LocalSendTrigger (zones={self.zones!r}, first_only={self.first_only}, send={self.send!r})>"


def local_delivery(settings: Settings) -> bool:
    return settings.schedule.local_delivery


def send_moment_of(settings: Settings, fire: datetime, zones: Iterable[str] = ()) -> datetime:
    """The send moment a job that fired at `fire` (shifted back by its lead or review) is for: `fire` itself,
    or with local delivery the publication's moment whose zone moment `fire` is."""
    if not local_delivery(settings):
        return fire
    return LocalSendTrigger(send_trigger(settings), zones).moment_of(fire) or fire


class ReviewTrigger(BaseTrigger):
    """The send trigger moved earlier by `hours` of elapsed time: the editors get exactly `review_hours`
    to review, also when a daylight-saving change falls between the draft and the send."""

    def __init__(self, send: BaseTrigger, hours: int) -> None:
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


def draft_trigger(settings: Settings, zones: Iterable[str] = ()) -> ReviewTrigger:
    """The draft moments. The review window must be shorter than the shortest gap between two sends, or a
    draft would be built (and an approval dropped) before the previous send had gone out. With local
    delivery the window closes at the earliest zone's moment (`zones`: the readers')."""
    send = send_trigger(settings)
    hours = settings.schedule.review_hours
    fires = list(islice(fire_times(send, datetime(2024, 1, 1, tzinfo=UTC)), 60))
    gap = min((b - a for a, b in zip(fires, fires[1:], strict=False)), default=timedelta(days=7))
    if not 1 <= hours < gap.total_seconds() / 3600:
        raise ConfigError(f"{settings.path}: schedule.review_hours must be at least 1 and less than the "
                          f"{gap.total_seconds() / 3600:.0f} h between two sends, not {hours}")
    if local_delivery(settings):
        return ReviewTrigger(LocalSendTrigger(send, zones, first_only=True), hours)
    return ReviewTrigger(send, hours)


class SendEarlyTrigger(ReviewTrigger):
    """The send job's trigger when SendGrid schedules the batches (`send_at`): it fires `lead` before the send
    moment, so the whole list is handed over ahead and every reader gets the issue at the moment itself,
    not spread over the minutes the send takes."""

    def __init__(self, send: BaseTrigger, lead: timedelta) -> None:
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


def send_job_trigger(settings: Settings, zones: Iterable[str] = ()) -> BaseTrigger:
    """When the send job runs: at the send moment, or `send_lead` before it. With local delivery: at each
    zone's moment (each zone's group is sent at its own), or with SendGrid's scheduled batches once,
    `send_lead` before the earliest zone's moment (one pass schedules every reader at their own send_at)."""
    lead = send_lead(settings)
    send: BaseTrigger = send_trigger(settings)
    if local_delivery(settings):
        send = LocalSendTrigger(send_trigger(settings), zones, first_only=bool(lead))
    return SendEarlyTrigger(send, lead) if lead else send


#: a send started by hand this long (beyond the zones' spread and send_lead) before its moment goes to everyone
#: at once, as without local delivery: the editor chose "now", not "at the issue's moment"
LOCAL_WINDOW_MARGIN = timedelta(hours=1)


def local_home(settings: Settings, send_at: datetime | None, now: datetime) -> str | None:
    """The publication's zone when a send starting `now` for the moment `send_at` is delivered at each
    reader's local moment; None when it goes to everyone at once (local delivery off, no send moment, or a
    send started by hand well before the moment)."""
    if not local_delivery(settings) or send_at is None:
        return None
    if now < send_at - ZONE_SPREAD - send_lead(settings) - LOCAL_WINDOW_MARGIN:
        return None
    return settings.publication.timezone


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


def next_moments(settings: Settings, now: datetime | None = None, zones: Iterable[str] = ()) -> Moments:
    now = now or utcnow()
    zones = tuple(zones)
    send_at = next_send_at(settings, now)
    draft_at = next(fire_times(draft_trigger(settings, zones), now))
    first = min(zone_moments(settings, send_at, zones or [None]).values()) if local_delivery(settings) else send_at
    return Moments(draft_at, send_at, first - timedelta(hours=settings.schedule.review_hours))


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
