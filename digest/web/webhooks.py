"""Provider webhooks: delivery events flowing back into the subscriber store.

`POST /webhooks/sendgrid` takes SendGrid's Event Webhook JSON. Only signed batches are accepted: SendGrid
signs timestamp + raw body with ECDSA P-256 / SHA-256 (Signed Event Webhook); the verification key is
`[delivery.sendgrid] webhook_public_key` (base64 DER, as SendGrid shows it). A missing, stale or wrong
signature is answered 403 and nothing is read. Events are recorded once per `sg_event_id`.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader

from digest.config import Settings
from digest.deliver.events import apply_batch
from digest.errors import ConfigError
from digest.store import session_factory
from digest.web.webhook_input import BadPayload, read_events, signed_timestamp

router = APIRouter()
log = logging.getLogger("digest.webhooks")
MAX_BODY = 5 * 1024 * 1024  # SendGrid posts batches well under this


@lru_cache(maxsize=4)
def verifier(public_key: str) -> EventWebhook:
    """The library's verifier for a configured key; ConfigError names the key when it is not one."""
    try:
        hook = EventWebhook(public_key.strip())
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"delivery.sendgrid.webhook_public_key is not a base64 DER public key: {e}") from None
    return hook


def check_signature(settings: Settings, body: bytes, signature: str | None, timestamp: str | None,
                    *, now: float | None = None) -> str | None:
    """None when the batch is SendGrid's, signed recently; otherwise why it is refused."""
    sg = settings.delivery.sendgrid
    if not sg.webhook_public_key:
        return "webhook_public_key is not configured: unsigned events are refused"
    if not signature or not timestamp:
        return "missing signature"
    sent = signed_timestamp(timestamp)  # digits only, checked before any arithmetic on them
    if sent is None:
        return "bad timestamp"
    if abs((now if now is not None else time.time()) - sent) > sg.webhook_max_age_seconds:
        return "stale signature"
    try:
        ok = verifier(sg.webhook_public_key).verify_signature(body.decode("utf-8"), signature, timestamp)
    except (ValueError, TypeError, UnicodeDecodeError):
        ok = False
    return None if ok else "bad signature"


async def _body(request: Request) -> bytes | None:
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_BODY:
        return None
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


#: the contract of SendGrid's Event Webhook, described for the OpenAPI schema the tests fuzz (schemathesis):
#: the route reads its raw body itself (the signature covers the exact bytes), so FastAPI cannot infer it
EVENTS_OPENAPI: dict[str, Any] = {
    "parameters": [{"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
                   for name in (EventWebhookHeader.SIGNATURE, EventWebhookHeader.TIMESTAMP)],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "array", "items": {"type": "object", "properties": {
            "email": {"type": "string"}, "timestamp": {"type": "integer"}, "event": {"type": "string"},
            "sg_event_id": {"type": "string"}, "sg_message_id": {"type": "string"},
            "type": {"type": "string"}, "reason": {"type": "string"}, "url": {"type": "string"},
            "digest_issue": {"type": "string"}, "digest_subscriber": {"type": "string"},
            "digest_list": {"type": "string"}}}}}}},
}


def receive(settings: Settings, body: bytes, signature: str | None,
            timestamp: str | None) -> tuple[int, dict[str, Any]]:
    """The whole of a batch's handling after its body is read: (HTTP status, JSON answer).

    Plain blocking code, run in the threadpool: the ECDSA check over the whole body, the parse of up to
    5 MB of JSON and the checks of each event take a few hundred milliseconds of CPU for a 20,000-event
    batch (measured in benchmarks/webhook_batch.py), and on the event loop they would hold up every other
    request of the worker meanwhile, such as a reader's one-click unsubscribe (RFC 8058), which must answer
    at once. The events are checked once, by digest.deliver.events (the door reads only the JSON)."""
    try:
        why = check_signature(settings, body, signature, timestamp)
    except ConfigError as e:
        log.error("%s", e)
        return 500, {"detail": "the webhook verification key is misconfigured"}
    if why is not None:
        log.warning("sendgrid webhook refused: %s", why)
        return 403, {"detail": why}
    try:
        events = read_events(body)
    except BadPayload as e:
        return 400, {"detail": str(e)}
    with session_factory(settings.database_url)() as session:
        r = apply_batch(session, events, mend=True)  # SendGrid's own signed batch: keep what can be kept
    return 200, {"received": r.received, "recorded": r.recorded, "duplicates": r.duplicates,
                 "applied": r.applied, "unmatched": r.unmatched, "invalid": r.invalid[:20],
                 "mended": r.mended[:20]}


@router.post("/webhooks/sendgrid", openapi_extra=EVENTS_OPENAPI)
async def sendgrid_events(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    body = await _body(request)  # streamed, so an oversized body is refused before it is all in memory
    if body is None:
        return JSONResponse({"detail": f"body over {MAX_BODY} bytes"}, status_code=413)
    status, answer = await run_in_threadpool(receive, settings, body,
                                             request.headers.get(EventWebhookHeader.SIGNATURE),
                                             request.headers.get(EventWebhookHeader.TIMESTAMP))
    return JSONResponse(answer, status_code=status)
