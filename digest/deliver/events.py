"""Provider events back into the store: recorded once per provider event id, consent changes applied.

SendGrid's Event Webhook posts batches of events (up to 5 MB, some 20,000 events); each carries the
custom_args we sent (issue, subscriber and list ids). Those ids are trusted only when the ledger agrees: a
delivery of that issue to that subscriber at that address. Otherwise the event is matched by its address.

A batch is applied in chunks of `CHUNK` events, each chunk its own short transaction: its reads first
(which take no write lock), then one bulk insert and the few consent changes, then commit. So no lock is
held for more than a moment whatever the batch size, and a reader's one-click unsubscribe (RFC 8058) is
never queued behind a whole batch. Replays (SendGrid retries a batch it did not see answered with a 2xx)
change nothing twice: an event id already stored is skipped, so a batch that stopped half way is simply
finished by the retry.

This module is the one place an event is checked (`check`), once, before it touches the database; the
webhook route only reads the body as a JSON array (digest/web/webhook_input.py). An event that does not
follow SendGrid's event format (not an object, no `sg_event_id` or `event`, a text field that is not a
string or holds a NUL) is skipped and logged with its index, and the rest are applied. A field the store
cannot hold (a timestamp that is not Unix seconds, an id that is not a 64-bit integer, an `sg_event_id`
over 128 characters) skips the event too, unless the caller asks to mend it (`mend=True`, the webhook: a
signed batch is SendGrid's own, and a bounce is worth keeping without its timestamp): then the time
received stands in for the timestamp, the reader is matched by address instead of the ids, the long id is
stored as its sha256 (the same every time, so a retried batch is still a duplicate), and the answer lists
what was mended, with the same words a skip would have used.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import insert, select, tuple_
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from digest.deliver.sendgrid import ARG_ISSUE, ARG_LIST, ARG_SUBSCRIBER
from digest.errors import NotFound
from digest.store import Delivery, DeliveryEvent, IssueRow, core_table, utcnow
from subscribers import lifecycle
from subscribers.email_key import email_key
from subscribers.models import Subscriber

log = logging.getLogger("digest.events")

SOURCE = "sendgrid event webhook"
#: what an event does to the reader's memberships (the lifecycle kind to apply), when it does anything
DROPPED_REASONS = {"bounced address": "dropped", "invalid": "dropped", "spam reporting address": "spamreport",
                   "unsubscribed address": "unsubscribe"}
#: kept from the provider's event; the address, IP and user agent are not (we hold the subscriber id)
KEPT_FIELDS = ("event", "type", "reason", "status", "response", "url", "sg_message_id", "category",
               "bounce_classification", "attempt")
#: events per transaction: a chunk's writes (one bulk insert and a few membership changes) take a few
#: milliseconds, so a lock is held briefly however large the batch; measured in benchmarks/webhook_batch.py
CHUNK = 500
#: ids are BIGINT on PostgreSQL and 64-bit INTEGER on SQLite; a larger one cannot be ours (and the driver
#: would refuse it as a parameter, failing the whole statement)
MAX_ID = 2**63 - 1
#: the `provider_event_id` column; a longer id is not SendGrid's (theirs are 22-character base64 strings)
MAX_EVENT_ID = 128
#: SendGrid's `timestamp` is Unix seconds (Event Webhook reference); 253402300799 is 9999-12-31T23:59:59Z,
#: the last moment a datetime can hold, so 1e12 (milliseconds sent by mistake) is refused, not crashed on
MAX_TIMESTAMP = 253402300799
#: strings stored as text: PostgreSQL text cannot hold NUL, so an event carrying one is refused on both
TEXT_FIELDS = ("sg_event_id", "event", "email", "url", "sg_message_id")
#: a batch is CPU work in the web server's process: every this many events it gives up the GIL
#: (`time.sleep(0)`), so a reader's request in another thread of the same server is not held behind it
#: for Python's whole switch interval at each of its steps (the "convoy effect")
YIELD_EVERY = 50


@dataclass
class EventsResult:
    received: int = 0
    recorded: int = 0
    duplicates: int = 0
    applied: int = 0  # memberships whose status changed
    unmatched: int = 0  # no reader found for the event
    invalid: list[str] = field(default_factory=list)  # "event <index>: why", in batch order
    mended: list[str] = field(default_factory=list)  # "event <index>: why; what stood in" (mend=True)


class BadEvent(ValueError):
    """An event that does not follow SendGrid's format; the message says which field and why."""


@dataclass(frozen=True)
class Checked:
    """An event that passed `check`: its fields in the types we store."""

    index: int
    event_id: str
    raw: dict[str, Any]
    email: str
    issue_id: int | None
    subscriber_id: int | None
    list_id: int | None
    at: datetime | None
    message: str  # sg_message_id up to its first dot: the X-Message-Id SendGrid answered the send with


def _shown(value: Any) -> str:
    """A value for a message, at most 40 characters; a huge int is not turned into its digits (str() refuses
    one of over 4,300 digits, and is slow well before that)."""
    if isinstance(value, int) and not -(10**40) < value < 10**40:
        return "a number of over 40 digits"
    return str(value)[:40]


def _id(event: dict[str, Any], key: str) -> int | None:
    """One of our custom_args: SendGrid hands them back as strings; absent or empty is None."""
    value = event.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadEvent(f"{key} is a {type(value).__name__}, not an id")
    if isinstance(value, int):  # compared as a number: str() of a huge int is refused (or slow)
        if not 0 < value <= MAX_ID:
            raise BadEvent(f"{key} {_shown(value)!r} is not an id (1 to 2**63-1)")
        return value
    text = value.strip()
    # at most 19 digits before int(): 2**63-1 has 19, and int() of a long string is slow
    if not text.isascii() or not text.isdigit() or len(text) > 19 or not 0 < int(text) <= MAX_ID:
        raise BadEvent(f"{key} {text[:40]!r} is not an id (1 to 2**63-1)")
    return int(text)


def _timestamp(event: dict[str, Any]) -> datetime | None:
    value = event.get("timestamp")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadEvent(f"timestamp is a {type(value).__name__}, not Unix seconds")
    try:
        seconds = float(value)
    except ValueError:
        raise BadEvent(f"timestamp {str(value)[:40]!r} is not a number") from None
    except OverflowError:  # an int past a float's range (JSON numbers may have hundreds of digits)
        seconds = math.inf
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_TIMESTAMP:
        raise BadEvent(f"timestamp {_shown(value)} is not Unix seconds (0 to {MAX_TIMESTAMP})")
    return datetime.fromtimestamp(seconds, UTC)


def _mended(parse: Any, event: dict[str, Any], key: str, mended: list[str] | None, instead: str) -> Any:
    """`parse(event, key)`; with `mended` (a list), a BadEvent leaves the field out (None) and says so."""
    try:
        return parse(event, key)
    except BadEvent as e:
        if mended is None:
            raise
        mended.append(f"{e}; {instead}")
        return None


def _long_id(event_id: str) -> str:
    """A stand-in for an sg_event_id over MAX_EVENT_ID characters: the same long id always gives the same
    short one, so a retried batch is still seen as a duplicate."""
    return "sha256:" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()


def check(index: int, event: Any, mended: list[str] | None = None) -> Checked:
    """The event's fields, checked; BadEvent says what is wrong with it.

    Given `mended` (a list), a field the store cannot hold (timestamp, our ids, an sg_event_id over 128
    characters) does not refuse the event: it is left out or replaced (see the module's note) and why is
    appended to `mended`."""
    if not isinstance(event, dict):
        raise BadEvent(f"a JSON {type(event).__name__}, not an object")
    for key in TEXT_FIELDS:
        value = event.get(key)
        if value is not None and not isinstance(value, str):
            raise BadEvent(f"{key} is a {type(value).__name__}, not a string")
        if value and "\x00" in value:
            raise BadEvent(f"{key} holds a NUL character")
    event_id, name = event.get("sg_event_id"), event.get("event")
    if not event_id or not name:
        raise BadEvent("not an object with sg_event_id and event")
    if len(event_id) > MAX_EVENT_ID:
        why = f"sg_event_id is {len(event_id)} characters, over {MAX_EVENT_ID}"
        if mended is None:
            raise BadEvent(why)
        event_id = _long_id(event_id)
        mended.append(f"{why}; stored as its sha256")
    by_address = "matched by address"
    return Checked(index=index, event_id=event_id, raw=event, email=(event.get("email") or "").strip(),
                   issue_id=_mended(_id, event, ARG_ISSUE, mended, by_address),
                   subscriber_id=_mended(_id, event, ARG_SUBSCRIBER, mended, by_address),
                   list_id=_mended(_id, event, ARG_LIST, mended, by_address),
                   at=_mended(lambda e, _k: _timestamp(e), event, "timestamp", mended, "the time received stands in"),
                   message=(event.get("sg_message_id") or "").split(".")[0])


def kind_of(event: dict[str, Any]) -> str:
    """The kind we store: SendGrid's event name, except a soft bounce (`type: blocked`) is `blocked`, and
    `dropped` is kept for a bad address only (other drops are `dropped_suppressed` or `dropped_other`), so
    the figures count as bounced exactly the readers whose address failed."""
    name = str(event.get("event", ""))
    if name == "bounce" and str(event.get("type", "bounce")).lower() == "blocked":
        return "blocked"
    if name == "dropped":
        applies = DROPPED_REASONS.get(str(event.get("reason", "")).strip().lower())
        return "dropped" if applies == "dropped" else "dropped_suppressed" if applies else "dropped_other"
    return name


def consent_change(event: dict[str, Any]) -> str | None:
    """The lifecycle event kind this provider event applies, if any."""
    kind = kind_of(event)
    if kind in ("bounce", "spamreport", "unsubscribe", "group_unsubscribe"):
        return kind
    if kind.startswith("dropped"):
        return DROPPED_REASONS.get(str(event.get("reason", "")).strip().lower())
    return None


# the key a reader is stored under; a batch names the same few thousand readers many times over
_key = lru_cache(maxsize=65_536)(email_key)


class _Readers:
    """Who each event of a chunk is about, looked up for the whole chunk in a few queries (reads only)."""

    def __init__(self, session: Session, events: list[Checked]) -> None:
        pairs = {(e.issue_id, e.subscriber_id) for e in events if e.issue_id and e.subscriber_id}
        self.ledger: dict[tuple[int | None, int | None], set[str]] = {}
        if pairs:
            rows = session.execute(select(Delivery.issue_id, Delivery.subscriber_id, Delivery.email,
                                          Subscriber.email_key)
                                   .join(Subscriber, Subscriber.id == Delivery.subscriber_id, isouter=True)
                                   .where(tuple_(Delivery.issue_id, Delivery.subscriber_id).in_(sorted(pairs))))
            for issue, sub, email, key in rows:
                self.ledger[(issue, sub)] = {(email or "").casefold(), (key or "").casefold()}
        keys = {_key(e.email) for e in events if e.email}
        self.by_key: dict[str, int] = {key: sub for key, sub in session.execute(
            select(Subscriber.email_key, Subscriber.id).where(Subscriber.email_key.in_(sorted(keys))))} \
            if keys else {}
        # one SendGrid message (X-Message-Id) covers up to 1000 readers: look up (reader, message) pairs
        wanted_messages = {(self.by_key[k], e.message) for e in events if e.email and e.message
                           for k in [_key(e.email)] if k in self.by_key}
        self.by_message: dict[tuple[int | None, str | None], int] = {}
        if wanted_messages:
            for sub, message, issue in session.execute(
                    select(Delivery.subscriber_id, Delivery.message_id, Delivery.issue_id)
                    .where(tuple_(Delivery.subscriber_id, Delivery.message_id).in_(sorted(wanted_messages)))
                    .order_by(Delivery.id)):
                self.by_message.setdefault((sub, message), issue)
        wanted = {e.issue_id for e in events if e.issue_id}
        self.issues = set(session.scalars(select(IssueRow.id).where(IssueRow.id.in_(sorted(wanted))))) \
            if wanted else set()

    def of(self, e: Checked) -> tuple[int | None, int | None, int | None]:
        """(issue id, subscriber id, list id), trusting our custom_args only if the ledger agrees."""
        email = e.email.casefold()
        if e.issue_id and e.subscriber_id and email in self.ledger.get((e.issue_id, e.subscriber_id), ()):
            return e.issue_id, e.subscriber_id, e.list_id
        sub = self.by_key.get(_key(e.email)) if e.email else None
        if sub is None:
            return None, None, None
        issue = self.by_message.get((sub, e.message)) if e.message else None
        if issue is None and e.issue_id in self.issues:
            issue = e.issue_id
        return issue, sub, None


def _apply_chunk(session: Session, chunk: list[Checked], seen: set[str], result: EventsResult) -> None:
    """One chunk in one transaction (the caller commits): reads, then the writes."""
    fresh = [e for e in chunk if e.event_id not in seen]
    stored = set(session.scalars(select(DeliveryEvent.provider_event_id).where(
        DeliveryEvent.provider_event_id.in_(sorted({e.event_id for e in fresh}))))) if fresh else set()
    todo: list[Checked] = []
    for e in chunk:
        if e.event_id in seen or e.event_id in stored:
            result.duplicates += 1
        else:
            seen.add(e.event_id)
            todo.append(e)
    readers = _Readers(session, todo)
    rows, changes = [], []
    now = utcnow()
    for n, e in enumerate(todo):
        if n % YIELD_EVERY == 0:
            time.sleep(0)
        issue_id, sub_id, list_id = readers.of(e)
        if sub_id is None:
            result.unmatched += 1
        url = e.raw.get("url")
        rows.append({"provider_event_id": e.event_id, "issue_id": issue_id, "subscriber_id": sub_id,
                     "kind": kind_of(e.raw)[:32], "url": url or None, "at": e.at or now,
                     "payload": {k: e.raw[k] for k in KEPT_FIELDS if k in e.raw}})
        change = consent_change(e.raw)
        if change and sub_id is not None:
            changes.append((e, sub_id, list_id, change))
    # the writes: from here SQLite holds its write lock, PostgreSQL the rows changed, until the commit
    if rows:
        session.execute(insert(core_table(DeliveryEvent)), rows)
    result.recorded += len(rows)
    for e, sub_id, list_id, change in changes:
        detail = "; ".join(str(e.raw[k]) for k in ("reason", "status", "type") if e.raw.get(k))
        with contextlib.suppress(NotFound):  # erased meanwhile: nothing left to change
            result.applied += lifecycle.apply_event(
                session, sub_id, change, source=SOURCE, list_id=list_id,
                detail=f"sendgrid {e.raw['event']}: {detail}".replace("\x00", "")[:2000])


def _chunks(items: list[Checked], size: int) -> Iterable[list[Checked]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _skip(result: EventsResult, index: int, why: str) -> None:
    log.warning("sendgrid event %d skipped: %s", index, why)
    result.invalid.append(f"event {index}: {why}")


def apply_batch(session: Session, events: list[Any], *, chunk_size: int = CHUNK, mend: bool = False) -> EventsResult:
    """Check every event, then store and apply the good ones, chunk by chunk, committing each chunk.

    `mend`: a field the store cannot hold is mended rather than the event skipped (the module's note);
    each such event is listed in `mended`.

    A chunk that collides with a concurrent delivery of the same batch (SendGrid may retry while the first
    delivery is still being applied) is retried once: it then sees the other's rows and skips them. A
    chunk the database refuses for its data is applied event by event, so only the offending event is
    skipped. Anything else (the database gone) propagates: the webhook answers 5xx and SendGrid retries,
    and the retry stores only what was not stored yet.
    """
    result = EventsResult(received=len(events))
    good: list[Checked] = []
    for i, raw in enumerate(events):
        if i % YIELD_EVERY == 0:
            time.sleep(0)
        notes: list[str] | None = [] if mend else None
        try:
            good.append(check(i, raw, notes))
        except BadEvent as e:
            _skip(result, i, str(e))
            continue
        if notes:
            log.warning("sendgrid event %d mended: %s", i, "; ".join(notes))
            result.mended.append(f"event {i}: " + "; ".join(notes))
    seen: set[str] = set()
    for chunk in _chunks(good, chunk_size):
        _commit_chunk(session, chunk, seen, result)
        time.sleep(0)
    result.invalid.sort(key=lambda line: int(line.split(":")[0].split()[1]))
    return result


def _commit_chunk(session: Session, chunk: list[Checked], seen: set[str], result: EventsResult) -> None:
    for attempt in (1, 2):
        before, seen_before = _snapshot(result), set(seen)
        try:
            _apply_chunk(session, chunk, seen, result)
            session.commit()
            return
        except IntegrityError:
            session.rollback()
            _restore(result, before)
            seen.clear()
            seen.update(seen_before)
            if attempt == 2:
                break
        except (DataError, ValueError, OverflowError):
            session.rollback()
            _restore(result, before)
            seen.clear()
            seen.update(seen_before)
            break
    if len(chunk) == 1:
        _skip(result, chunk[0].index, "the database refused it")
        return
    for one in chunk:  # find the event the database refuses; the others go in, one transaction each
        _commit_chunk(session, [one], seen, result)


def _snapshot(result: EventsResult) -> tuple[int, int, int, int]:
    return result.recorded, result.duplicates, result.applied, result.unmatched


def _restore(result: EventsResult, before: tuple[int, int, int, int]) -> None:
    result.recorded, result.duplicates, result.applied, result.unmatched = before
