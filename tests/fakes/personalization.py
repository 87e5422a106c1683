"""What a reader's personalization must be, as a plain mapping: the reference `personalization_json`'s
text is held equal to (mail/send v3, personalizations[])."""

from __future__ import annotations

from typing import Any

from digest.deliver.protocol import Message
from digest.deliver.sendgrid import ARG_ISSUE, ARG_LIST, ARG_SUBSCRIBER, ascii_address, display_name


def personalization(message: Message) -> dict[str, Any]:
    email = message.to_email
    to: dict[str, str] = {"email": email if email.isascii() else ascii_address(email)}
    if name := display_name(message.to_name):
        to["name"] = name
    out: dict[str, Any] = {"to": [to], "substitutions": message.values, "headers": message.headers,
                           "custom_args": {ARG_ISSUE: str(message.issue_id), ARG_SUBSCRIBER: str(message.subscriber_id),
                                           ARG_LIST: str(message.list_id)}}
    if message.scheduled is not None:
        out["send_at"] = message.scheduled[1]
    return out
