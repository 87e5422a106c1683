"""SendGrid's webhook body read at the door: what arrives is untrusted until the signature is checked, and
even a signed batch is read only as far as its shape. The timestamp header must be a Unix time (not 400
digits that overflow a float), and the body a JSON array not nested deeper than an event's fields go
(100,000 levels overflow the parser's stack). The events themselves are checked in one place,
digest.deliver.events (`check`), which the route asks to mend the fields the store cannot hold.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: a Unix time in seconds: SendGrid sends 10 digits; 12 is beyond the year 33000
_UNIX_TIME = re.compile(r"[0-9]{1,12}")
#: an event is an object whose values are scalars, lists of scalars (`category`) or small objects (`pool`):
#: depth 3 with the batch's array; 8 leaves room and still stops a body nested to overflow the parser
MAX_DEPTH = 8


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


def read_events(body: bytes) -> list[Any]:
    """The batch's events as parsed, unchecked (digest.deliver.events checks each); BadPayload when the
    body is not a JSON array nested at most MAX_DEPTH deep."""
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
    return events
