"""Figures for people: per-issue delivery and engagement counts (CLI `status`, the admin pages), and how
often each supplier was featured (`digest listings report`).

The ledger gives who was submitted, failed, skipped or is of unknown fate; provider events give who was
delivered, bounced, complained, opened and clicked. Event figures count readers, not events: a reader
who opens twice is one opener, and a reader both bounced and dropped is one bounce.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from digest import dbapi

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from digest.dbapi import Reader
    from digest.models import Listing

#: stored event kind -> column. `dropped` is stored only for a bad address (see deliver/events.py);
#: `blocked` (a soft bounce) and other drops are kept but counted nowhere.
EVENT_COLUMNS = {"delivered": "delivered", "bounce": "bounced", "dropped": "bounced",
                 "spamreport": "complained", "open": "opened", "click": "clicked"}
EVENT_FIGURES = ("delivered", "bounced", "complained", "opened", "clicked")
LEDGER = {"submitted": "submitted", "failed": "failed", "skipped": "skipped", "claimed": "unknown",
          "queued": "queued"}

# The queries, as SQL text valid on SQLite and PostgreSQL (digest.dbapi runs them over a connection of its
# own for `digest status`, which must start within 2x of `import typer` without SQLAlchemy (issue 16), and
# over a session's connection for the admin pages and the tests): one definition each.
ISSUES = """SELECT id, number, status, subject, sent_at, recalled_at, recalled_by
FROM issues ORDER BY number DESC LIMIT :limit"""

LEDGER_COUNTS = """SELECT issue_id, status, count(*) FROM deliveries
WHERE issue_id IN (:ids) GROUP BY issue_id, status"""

_EVENT_COLUMN = "CASE kind " + " ".join(f"WHEN '{k}' THEN '{c}'" for k, c in EVENT_COLUMNS.items()) + " END"
#: readers, not events: a reader who opens twice is one opener, one both bounced and dropped one bounce
EVENT_COUNTS = f"""SELECT issue_id, {_EVENT_COLUMN} AS figure, count(DISTINCT subscriber_id) FROM delivery_events
WHERE issue_id IN (:ids) AND kind IN (:kinds) GROUP BY issue_id, {_EVENT_COLUMN}"""

#: a reader's send moment: its row's own, else its claimed batch's (migration 0015_batch_schedule)
_SEND_AT = "coalesce(d.send_at, b.send_at)"
_WITH_BATCHES = "deliveries d LEFT JOIN send_batches b ON b.batch = d.batch"

#: SendGrid's scheduled batches: readers whose copy waits at SendGrid for its send_at, and the moment the
#: issue reaches (reached) the readers
SCHEDULED = f"""SELECT d.issue_id, sum(CASE WHEN {_SEND_AT} > :now THEN 1 ELSE 0 END), max({_SEND_AT})
FROM {_WITH_BATCHES} WHERE d.issue_id IN (:ids) AND d.status = 'submitted' GROUP BY d.issue_id"""


@dataclass(frozen=True)
class IssueFigures:
    """One issue's figures: the ledger's (readers, submitted, failed, skipped, unknown: claimed by a batch
    of unknown fate, queued) and the provider events' (delivered ... clicked, in readers)."""

    issue: int
    status: str
    subject: str
    readers: int
    submitted: int
    failed: int
    skipped: int
    unknown: int
    queued: int
    delivered: int
    bounced: int
    complained: int
    opened: int
    clicked: int
    scheduled: int  # readers whose copy waits at SendGrid for a send_at still ahead
    delivered_at: datetime | None  # the last send_at, else when the issue was sent
    recalled_at: datetime | None
    recalled_by: str | None


def issue_figures(db: Reader | Session, limit: int = 52, now: datetime | None = None) -> list[IssueFigures]:
    """The newest `limit` issues, newest first, with their figures."""
    read = dbapi.reader(db)
    issues = read.rows(ISSUES, limit=limit)
    ids = [row[0] for row in issues]
    ledger: dict[int, dict[str, int]] = {}
    for issue_id, status, n in read.rows(LEDGER_COUNTS, ids=ids):
        ledger.setdefault(issue_id, {})[status] = int(n)
    events: dict[int, dict[str, int]] = {}
    for issue_id, figure, n in read.rows(EVENT_COUNTS, ids=ids, kinds=list(EVENT_COLUMNS)):
        events.setdefault(issue_id, {})[figure] = int(n)
    scheduled: dict[int, tuple[int, datetime | None]] = {}
    for issue_id, waiting, last in read.rows(SCHEDULED, ids=ids, now=now or datetime.now(UTC)):
        scheduled[issue_id] = (int(waiting or 0), dbapi.utc(last))
    rows = []
    for issue_id, number, status, subject, sent_at, recalled_at, recalled_by in issues:
        led, ev = ledger.get(issue_id, {}), events.get(issue_id, {})
        waiting, last = scheduled.get(issue_id, (0, None))
        counts = {name: led.get(status_, 0) for status_, name in LEDGER.items()}
        rows.append(IssueFigures(
            issue=number, status=status, subject=subject, readers=sum(led.values()), **counts,
            **{c: ev.get(c, 0) for c in EVENT_FIGURES}, scheduled=waiting,
            delivered_at=last or dbapi.utc(sent_at), recalled_at=dbapi.utc(recalled_at), recalled_by=recalled_by))
    return rows


@dataclass
class ZoneProgress:
    """Local delivery: one zone's group of an issue. `due_at` is the zone's moment; `scheduled` readers are
    held for it (queued for the scheduler, or submitted to SendGrid with a send_at still ahead); `out_at` is
    when their copies were (or are to be) handed to the reader's mail server: the send_at, else when the
    transport took them; `delivered` readers have a delivered event, the last at `delivered_at`."""

    zone: str
    due_at: datetime | None
    readers: int = 0
    queued: int = 0
    submitted: int = 0
    failed: int = 0
    skipped: int = 0
    unknown: int = 0
    scheduled: int = 0
    out_at: datetime | None = None
    delivered: int = 0
    delivered_at: datetime | None = None

    @property
    def due_there(self) -> str:
        """The zone's moment by its own clock ("Mon 07 Oct 07:00 NZDT")."""
        if self.due_at is None:
            return ""
        local = self.due_at.astimezone(ZoneInfo(self.zone))
        return f"{local:%a %d %b %H:%M} {local.tzname()}"


ISSUE_IDS = "SELECT id, number FROM issues WHERE number IN (:numbers)"

ZONE_GROUPS = f"""SELECT d.issue_id, d.zone, d.due_at, d.status, count(*),
sum(CASE WHEN {_SEND_AT} > :now THEN 1 ELSE 0 END), max(coalesce({_SEND_AT}, d.updated_at)) FROM {_WITH_BATCHES}
WHERE d.issue_id IN (:ids) AND d.zone IS NOT NULL GROUP BY d.issue_id, d.zone, d.due_at, d.status"""

ZONE_DELIVERED = """SELECT d.issue_id, d.zone, count(DISTINCT e.subscriber_id), max(e.at)
FROM deliveries d JOIN delivery_events e ON e.issue_id = d.issue_id AND e.subscriber_id = d.subscriber_id
WHERE d.issue_id IN (:ids) AND d.zone IS NOT NULL AND e.kind = 'delivered' GROUP BY d.issue_id, d.zone"""


def zone_progress(db: Reader | Session, numbers: list[int], now: datetime | None = None
                  ) -> dict[int, list[ZoneProgress]]:
    """Per issue number, its zones' progress (earliest moment first); an issue sent without local delivery
    has none."""
    read = dbapi.reader(db)
    now = now or datetime.now(UTC)
    ids = {int(i): int(n) for i, n in read.rows(ISSUE_IDS, numbers=numbers)}
    groups: dict[tuple[int, str], ZoneProgress] = {}
    for issue_id, zone, due, status, n, ahead, last_out in read.rows(ZONE_GROUPS, ids=list(ids), now=now):
        due_at, out_at, n = dbapi.utc(due), dbapi.utc(last_out), int(n)
        g = groups.setdefault((issue_id, zone or ""), ZoneProgress(zone or "", due_at))
        g.readers += n
        name = LEDGER.get(status, status)
        setattr(g, name, getattr(g, name, 0) + n)
        if status == "queued":
            g.scheduled += n if due_at is not None and due_at > now else 0
        if status == "submitted":
            g.scheduled += int(ahead or 0)
            g.out_at = out_at if g.out_at is None or (out_at and out_at > g.out_at) else g.out_at
    for issue_id, zone, n, last in read.rows(ZONE_DELIVERED, ids=list(ids)):
        group = groups.get((issue_id, zone or ""))
        if group is not None:
            group.delivered, group.delivered_at = int(n), dbapi.utc(last)
    out: dict[int, list[ZoneProgress]] = {}
    for (issue_id, _), g in sorted(groups.items(), key=lambda kv: (kv[1].due_at or now, kv[1].zone)):
        out.setdefault(ids[issue_id], []).append(g)
    return out


@dataclass(frozen=True)
class FeatureCount:
    """How often one supplier was featured: what an advertiser asks about."""

    name: str
    tier: str
    categories: str
    featured: int
    issues: tuple[int, ...]
    in_directory: bool

    @property
    def last(self) -> int | None:
        return self.issues[-1] if self.issues else None


NEWEST_FEATURED = "SELECT max(issue_number) FROM listing_features"
FEATURES = "SELECT issue_number, listing_key, name FROM listing_features ORDER BY issue_number, id"
FEATURES_SINCE = """SELECT issue_number, listing_key, name FROM listing_features WHERE issue_number > :after
ORDER BY issue_number, id"""


def feature_report(db: Reader | Session, listings: list[Listing], *, last: int | None = None
                   ) -> tuple[list[FeatureCount], list[int]]:
    """Every supplier in the directory (and any featured earlier but gone from it) with the issues that
    featured it, over all issues or the `last` N; and the issue numbers considered. Most featured first."""
    read = dbapi.reader(db)
    newest = read.rows(NEWEST_FEATURED)[0][0] or 0
    found = read.rows(FEATURES_SINCE, after=newest - last) if last else read.rows(FEATURES)
    features: dict[str, list[int]] = {}
    names: dict[str, str] = {}
    considered: set[int] = set()
    for number, key, name in found:
        features.setdefault(key, []).append(number)
        names.setdefault(key, name)
        considered.add(number)
    rows = [FeatureCount(x.name, x.tier or "standard", " / ".join(x.categories), len(features.get(x.key, [])),
                         tuple(features.get(x.key, [])), True) for x in listings]
    known = {x.key for x in listings}
    rows += [FeatureCount(names[k], "", "", len(n), tuple(n), False) for k, n in features.items() if k not in known]
    rows.sort(key=lambda r: (-r.featured, r.tier != "featured", r.name.casefold()))
    return rows, sorted(considered)
