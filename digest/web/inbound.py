"""SendGrid Inbound Parse: mail to the unsubscribe mailbox, posted to us, unsubscribes the reader it names.

Each copy's List-Unsubscribe offers `mailto:unsubscribe+TOKEN@<inbound domain>` (subscribers.links,
MailboxTokens) when `[delivery] unsubscribe_mailbox` and the Inbound Parse secret are configured. The
domain's MX points at SendGrid (mx.sendgrid.net), and SendGrid's Inbound Parse posts each message as
multipart/form-data (fields `to`, `from`, `envelope`, `headers`, `subject`, `text`, ...) to the URL set
for that domain: https://<public_url>/webhooks/inbound/<secret>.

Authentication: Inbound Parse signs nothing (unlike the Event Webhook), so the URL carries a secret of at
least 32 characters from the environment ($DIGEST_INBOUND_SECRET); it is compared in constant time before
a byte of the body is read, and a wrong one is refused 403. (SendGrid also allows basic auth written into
the Parse URL; a path secret needs no extra header handling and is just as strong over https.) The reader
is named by the signed token in the recipient address, never by the From address, which anyone can set.
A replay (SendGrid retries a post it did not see answered with 2xx) changes nothing the second time.
"""

from __future__ import annotations

import hmac
import json
import logging
from email.utils import getaddresses
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData

from digest.config import Settings
from digest.store import session_factory
from digest.web.bodyguard import MAX_INBOUND
from subscribers import optin
from subscribers.links import TokenError

router = APIRouter()
log = logging.getLogger("digest.webhooks")
SOURCE = "email to the unsubscribe mailbox (SendGrid Inbound Parse)"
#: the recipients looked at, at most (a message to more addresses is not an unsubscribe request)
MAX_RECIPIENTS = 50

#: the fields of SendGrid's Inbound Parse post this route reads, described for the OpenAPI schema
INBOUND_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": {name: {"type": "string"} for name in (
            "to", "from", "cc", "envelope", "headers", "subject", "text", "sender_ip", "SPF", "dkim")}}}}},
}


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def recipients(form: FormData) -> list[str]:
    """The addresses the message was delivered to: the SMTP envelope's (RCPT TO, what SendGrid's MX
    accepted), then the To and Cc headers; each once, in that order."""
    found: list[str] = []
    try:
        envelope = json.loads(_field(form, "envelope") or "{}")
    except (ValueError, RecursionError):
        envelope = {}
    to = envelope.get("to") if isinstance(envelope, dict) else None
    if isinstance(to, list):
        found += [a for a in to if isinstance(a, str)]
    for _name, address in getaddresses([_field(form, "to"), _field(form, "cc")]):
        found.append(address)
    return list(dict.fromkeys(a.strip().lower() for a in found if a.strip()))[:MAX_RECIPIENTS]


def _secret_ok(settings: Settings, given: str) -> bool:
    expected = settings.delivery.inbound_secret
    return bool(expected) and hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


@router.post("/webhooks/inbound/{secret}", openapi_extra=INBOUND_OPENAPI)
async def inbound_parse(request: Request, secret: str) -> JSONResponse:
    settings: Settings = request.app.state.settings
    if not settings.delivery.unsubscribe_mailbox or not settings.delivery.inbound_secret:
        return JSONResponse({"detail": "no unsubscribe mailbox is configured"}, status_code=404)
    if not _secret_ok(settings, secret):
        log.warning("inbound parse refused: wrong secret in the URL")
        return JSONResponse({"detail": "wrong secret"}, status_code=403)
    # a body that is not valid multipart is Starlette's 400 (HTTPException), answered as JSON by digest.web.app
    form = await request.form(max_part_size=MAX_INBOUND)
    addresses = recipients(form)

    def apply() -> tuple[list[str], list[str], int]:
        done, refused, changed = [], [], 0
        with session_factory(settings.database_url)() as session:
            for address in addresses:
                try:
                    changed += optin.unsubscribe_from_mailbox(settings, session, address, source=SOURCE)
                except TokenError as e:
                    if address.endswith("@" + settings.delivery.unsubscribe_mailbox.rsplit("@", 1)[1]):
                        refused.append(f"{address}: {e}")
                    continue
                done.append(address)
            session.commit()
        return done, refused, changed

    done, refused, changed = await run_in_threadpool(apply)
    if not done:
        log.warning("inbound parse: no valid unsubscribe address among %d recipient(s)", len(addresses))
        return JSONResponse({"detail": "no recipient is a valid unsubscribe address", "refused": refused[:10]},
                            status_code=400)
    # a replay names the same reader again and changes nothing: `changed` is 0 then
    return JSONResponse({"readers": len(done), "changed": changed, "refused": refused[:10]})
