"""SendGrid's webhook payloads checked at the door, before anything is verified against them or stored.

What arrives is untrusted until the signature is checked, and even a signed batch is checked for shape:
the timestamp header must be a Unix time (not 400 digits that overflow a float), the JSON must be an
array of flat event objects (not nested 100,000 deep, which overflows the parser's stack), and the
fields the store uses must fit it: a Unix timestamp a datetime can hold, custom-arg ids that fit a
64-bit column, and an `sg_event_id` that fits its 128-character column unchanged (so a replayed batch
finds the ids it stored the first time). Fields that do not fit are treated as absent, exactly as
digest.deliver.events already treats fields that are not numbers; the event itself is kept.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from digest.deliver.sendgrid import ARG_ISSUE, ARG_LIST, ARG_SUBSCRIBER
from digest.web.numbers import parse_id

#: a Unix time in seconds: SendGrid sends 10 digits; 12 is beyond the year 33000
_UNIX_TIME = re.compile(r"[0-9]{1,12}")
#: the largest Unix time a datetime can hold (9999-12-31T23:59:59Z)
MAX_UNIX_TIME = 253_402_300_799
#: an event is an object whose values are scalars, lists of scalars (`category`) or small objects (`pool`):
#: depth 3 with the batch's array; 8 leaves room and still stops a body nested to overflow the parser
MAX_DEPTH = 8
#: the delivery_events.provider_event_id column's size
EVENT_ID_MAX = 128


class BadPayload(ValueError):
    """A body that is not a batch of events we can read; the message says what is wrong."""


def signed_timestamp(value: str | None) -> int | None:
    """The signature timestamp header as a Unix time, or None when it is not one."""
    if value is None or not _UNIX_TIME.fullmatch(value):
        return None
    return int(value)


def _depth(value: Any) -> int:
    """How deep containers nest (a scalar is 0), walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _unix_time(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _UNIX_TIME.fullmatch(value):
        number = int(value)
    else:
        return None
    return number if 0 <= number <= MAX_UNIX_TIME else None


def clean_event(event: Any) -> Any:
    """The event with the fields the store uses made to fit it (see the module's note); not an object:
    unchanged (digest.deliver.events reports it as invalid)."""
    if not isinstance(event, dict):
        return event
    out = dict(event)
    if "timestamp" in out and _unix_time(out["timestamp"]) is None:
        del out["timestamp"]  # the time we received it stands in, as for any timestamp that is no number
    for arg in (ARG_ISSUE, ARG_SUBSCRIBER, ARG_LIST):
        if arg in out and parse_id(str(out[arg]) if isinstance(out[arg], int | str) else None) is None:
            del out[arg]  # matched by address instead, as for any id that is no number
    event_id = out.get("sg_event_id")
    if event_id is not None and len(str(event_id)) > EVENT_ID_MAX:
        # the same long id always gives the same short one, so a retried batch is still seen as a duplicate
        out["sg_event_id"] = "sha256:" + hashlib.sha256(str(event_id).encode("utf-8", "surrogatepass")).hexdigest()
    return out


def read_events(body: bytes) -> list[Any]:
    """The batch's events, each cleaned; BadPayload when the body is not a JSON array of events."""
    try:
        events: Any = json.loads(body)
    except RecursionError:
        raise BadPayload(f"the JSON nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise BadPayload("the body is not JSON") from None
    if not isinstance(events, list):
        raise BadPayload("expected a JSON array of events")
    if _depth(events) > MAX_DEPTH:
        raise BadPayload(f"the JSON nests deeper than {MAX_DEPTH} levels")
    return [clean_event(e) for e in events]
