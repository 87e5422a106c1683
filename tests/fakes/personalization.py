"""What a reader's personalization must be, as a plain mapping: the reference `personalization_json`'s
text is held equal to (mail/send v3, personalizations[]). Only the reader's own headers: the others are the
request's (`common_headers`)."""

from __future__ import annotations

from typing import Any

from digest.deliver.protocol import Message
from digest.deliver.sendgrid import ARG_ISSUE, ARG_LIST, ARG_SUBSCRIBER, READER_HEADERS, ascii_address, display_name


def personalization(message: Message) -> dict[str, Any]:
    email = message.to_email
    to: dict[str, str] = {"email": email if email.isascii() else ascii_address(email)}
    if name := display_name(message.to_name):
        to["name"] = name
    out: dict[str, Any] = {"to": [to], "substitutions": message.values}
    if own := {k: v for k, v in message.headers.items() if k in READER_HEADERS}:
        out["headers"] = own
    out["custom_args"] = {ARG_ISSUE: str(message.issue_id), ARG_SUBSCRIBER: str(message.subscriber_id),
                          ARG_LIST: str(message.list_id)}
    if message.scheduled is not None:
        out["send_at"] = message.scheduled[1]
    return out
