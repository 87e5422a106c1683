"""A strict local server for SendGrid's v3 `POST /v3/mail/send` contract, for tests and the benchmark.

It checks what SendGrid documents (auth, JSON, at most 1,000 personalizations and recipients, unique
addresses, text/plain before text/html, reserved headers, string-only substitutions / custom_args /
headers and their size limits, categories, the 30 MB cap), answers 202 with an X-Message-Id, and
records every recipient of every accepted request. Faults can be scripted per request: a status (429
with X-RateLimit-Reset, 5xx, 400...), a dropped connection, a delay. Written apart from the transport's
own checks, so one catches the other's mistakes.

Scheduled sends (https://www.twilio.com/docs/sendgrid/api-reference/cancel-scheduled-sends): `POST
/v3/mail/batch` hands out a batch id; mail/send takes `batch_id` (only one this server handed out) and
`send_at` (UNIX seconds, at most 72 hours ahead; also per personalization); `POST
/v3/user/scheduled_sends` `{"batch_id", "status": "cancel"|"pause"}` is honoured only 10 minutes or more
before the batch's earliest `send_at`, for a batch id it handed out, with at most 10 batches cancelled or
paused at one time. Each cancel or pause holds its slot until `DELETE /v3/user/scheduled_sends/{batch_id}`
deletes it, whether or not its send moment has passed; a delete while the batch still has mail waiting
(send_at ahead) lifts the cancel and that mail goes out after all, while a cancel still held at a send_at
has dropped that mail for good (a later delete only frees the slot). `recipients()` are who gets the
mail: a cancelled batch's readers are not among them. The server's clock is `time.time() +
clock_offset`: tests move it forward, or let every mail/send request move it `tick` seconds (a long send).

Faults scripted with `script()` meet mail/send requests only; `script_cancel()` scripts the cancel calls.

Concurrency is shown without timing: `hold_until(n)` keeps each mail/send request (read, not yet checked
or answered) waiting until `n` of them are held at once, then lets them all go on; `held_together` is the
most that were. A sleep-and-sample check (a delay, then `max_in_flight`) fails on a loaded machine when the
client takes longer to build its next request than the delay lasts; the hold cannot.

Run alone (the benchmark does): `python -m tests.fakes.sendgrid_server --key SG.x` prints its URL;
`GET /_stats` answers the counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BYTES = 30 * 1024 * 1024
MAX_SCHEDULE_AHEAD = 72 * 3600  # send_at: "up to 72 hours in advance"
CANCEL_NOTICE = 10 * 60  # a cancel or pause must be made at least 10 minutes before send_at
MAX_CANCELLED = 10  # "a maximum of 10 different batches paused or cancelled at one time"
RESERVED = {"x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type", "content-transfer-encoding",
            "to", "from", "subject", "reply-to", "cc", "bcc"}
TOP_KEYS = {"personalizations", "from", "reply_to", "reply_to_list", "subject", "content", "attachments",
            "template_id", "sections", "headers", "categories", "custom_args", "send_at", "batch_id", "asm",
            "ip_pool_name", "mail_settings", "tracking_settings"}
P_KEYS = {"to", "cc", "bcc", "from", "subject", "headers", "substitutions", "dynamic_template_data",
          "custom_args", "send_at"}
EMAIL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


@dataclass
class Fault:
    """What to do with one incoming request instead of (or before) accepting it."""

    kind: str  # "status" | "drop" | "accept_then_drop" | "delay" | "answer_then_close"
    status: int = 0
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def status(code: int, message: str = "", field_name: str | None = None, **headers: str) -> Fault:
    body = {"errors": [{"message": message or f"error {code}", "field": field_name, "help": None}]}
    return Fault("status", code, body, {k.replace("_", "-"): v for k, v in headers.items()})


def rate_limited(reset_in: float) -> Fault:
    return status(429, "too many requests", None, X_RateLimit_Limit="600", X_RateLimit_Remaining="0",
                  X_RateLimit_Reset=str(int(time.time() + reset_in + 0.999)))


def drop() -> Fault:
    """Read the request, then close the connection without answering or accepting it (the server died
    before processing it). The client cannot tell this from `accept_then_drop`."""
    return Fault("drop")


def accept_then_drop() -> Fault:
    """Accept and record the request, then close without answering: the client cannot know."""
    return Fault("accept_then_drop")


def answer_then_close() -> Fault:
    """Accept and answer the request, then close the connection (without `Connection: close`), as a server
    closes a keep-alive connection it holds idle: the client's next request must not be lost on it."""
    return Fault("answer_then_close")


def delay(seconds: float) -> Fault:
    return Fault("delay", seconds=seconds)


@dataclass
class Received:
    """One accepted request."""

    number: int
    message_id: str
    recipients: list[str]
    subscriber_ids: list[str]
    at: float
    payload: dict[str, Any] | None = None  # kept unless keep_payloads=False (the benchmark)
    batch_id: str | None = None
    send_at: float | None = None


def copy_headers(payload: dict[str, Any], personalization: dict[str, Any]) -> dict[str, str]:
    """The headers one reader's copy gets: the message's `headers` with the personalization's own added
    over them (mail/send: personalization fields override the message-level fields of the same name)."""
    return {**payload.get("headers", {}), **personalization.get("headers", {})}


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _map_bytes(value: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in value.items())


def _address_errors(value: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, dict) or not isinstance(value.get("email"), str):
        return [(where, "Each email object must at least have an email address and may also contain a name.")]
    errors = []
    email = value["email"]
    if len(email) > 320:
        errors.append((f"{where}.email", "The email exceeds the maximum total length of 320 characters"))
    if not email.isascii() or not EMAIL.match(email):
        errors.append((f"{where}.email", "Does not contain a valid address."))
    name = value.get("name")
    if name is not None and (not isinstance(name, str) or ";" in name or "," in name):
        errors.append((f"{where}.name", "The name cannot include either the ; or , characters."))
    if set(value) - {"email", "name"}:
        errors.append((where, f"Unknown keys {sorted(set(value) - {'email', 'name'})}"))
    return errors


def _header_errors(headers: Any, where: str) -> list[tuple[str, str]]:
    if not _is_str_map(headers):
        return [(where, "All values of the headers object must be strings.")]
    errors = []
    seen: set[str] = set()
    for key in headers:
        if not key.isascii() or " " in key or not key:
            errors.append((where, "Header keys cannot contain non-ASCII characters or empty spaces."))
        if key.lower() in RESERVED:
            errors.append((where, f"Header cannot be one of the reserved keys: {key}"))
        if key.lower() in seen:
            errors.append((where, "The headers cannot contain duplicate keys."))
        seen.add(key.lower())
        if "\n" in headers[key] or "\r" in headers[key]:
            errors.append((where, f"Header {key} value contains a line break."))
    return errors


def validate(body: Any) -> list[tuple[str, str]]:
    """Every documented rule of mail/send that a request from us could break: [(field, message)]."""
    if not isinstance(body, dict):
        return [("", "The request body must be a JSON object.")]
    errors: list[tuple[str, str]] = []
    unknown = set(body) - TOP_KEYS
    if unknown:
        errors.append(("", f"Unknown keys {sorted(unknown)}"))
    ps = body.get("personalizations")
    if not isinstance(ps, list) or not ps:
        return errors + [("personalizations", "You must have at least one personalization.")]
    if len(ps) > 1000:
        errors.append(("personalizations", "The personalization block is limited to 1000 personalizations per "
                                           f"API request. You have provided {len(ps)} personalizations."))
    recipients = 0
    seen: set[str] = set()
    global_args = body.get("custom_args", {})
    if "custom_args" in body and (not _is_str_map(global_args) or not global_args):
        errors.append(("custom_args", "custom_args must be a non-empty object of strings."))
        global_args = {}
    for i, p in enumerate(ps):
        where = f"personalizations.{i}"
        if not isinstance(p, dict):
            errors.append((where, "A personalization must be an object."))
            continue
        if set(p) - P_KEYS:
            errors.append((where, f"Unknown keys {sorted(set(p) - P_KEYS)}"))
        to = p.get("to")
        if not isinstance(to, list) or not to:
            errors.append((f"{where}.to", "The to parameter is required for all personalization objects."))
            to = []
        for kind in ("to", "cc", "bcc"):
            for j, addr in enumerate(p.get(kind, []) if isinstance(p.get(kind, []), list) else [None]):
                errors += _address_errors(addr, f"{where}.{kind}.{j}")
                recipients += 1
                if isinstance(addr, dict) and isinstance(addr.get("email"), str):
                    key = addr["email"].lower()
                    if key in seen:
                        errors.append((f"{where}.{kind}", "Each unique email address in the personalizations "
                                                          f"array should only be included once. You have included "
                                                          f"{addr['email']} more than once."))
                    seen.add(key)
        if "substitutions" in p:
            subs = p["substitutions"]
            if not _is_str_map(subs):
                errors.append((f"{where}.substitutions", "The substitution values must be an object of key/value "
                                                         "pairs, where the values are all strings."))
            elif _map_bytes(subs) > 10_000:
                errors.append((f"{where}.substitutions", "Substitutions may not exceed 10,000 bytes per "
                                                         "personalization."))
        if "headers" in p:
            errors += _header_errors(p["headers"], f"{where}.headers")
        if "custom_args" in p:
            args = p["custom_args"]
            if not _is_str_map(args) or not args:
                errors.append((f"{where}.custom_args", "All values of custom arguments object must be strings "
                                                       "and it cannot be empty."))
            elif _map_bytes({**global_args, **args}) > 10_000:
                errors.append((f"{where}.custom_args", "The combined size of both global and personalization "
                                                       "custom arguments may not exceed 10,000 bytes."))
        if "subject" in p and (not isinstance(p["subject"], str) or not p["subject"]):
            errors.append((f"{where}.subject", "The subject of your email must be a string at least one "
                                               "character in length."))
        if not body.get("subject") and not p.get("subject") and "template_id" not in body:
            errors.append(("subject", "The subject is required."))
    if recipients > 1000:
        errors.append(("personalizations", "There is a limit of 1000 total recipients (to + cc + bcc) per request."))
    sender = body.get("from")
    if sender is None:
        errors.append(("from", "The from object must be provided for every email send."))
    else:
        errors += _address_errors(sender, "from")
    if "reply_to" in body:
        errors += _address_errors(body["reply_to"], "reply_to")
    if "subject" in body and (not isinstance(body["subject"], str) or not body["subject"]):
        errors.append(("subject", "The subject of your email must be a string at least one character in length."))
    content = body.get("content")
    if "template_id" not in body:
        if not isinstance(content, list) or not content:
            errors.append(("content", "There must be at least one defined content block."))
            content = []
        types = []
        for i, c in enumerate(content):
            if not isinstance(c, dict) or not isinstance(c.get("type"), str) or not c["type"] \
                    or any(ch in c["type"] for ch in ";\r\n"):
                errors.append((f"content.{i}.type", "A content type is required."))
                continue
            if not isinstance(c.get("value"), str) or not c["value"]:
                errors.append((f"content.{i}.value", "The content value must be a string at least one character "
                                                     "in length."))
            types.append(c["type"])
        plain_first = "text/plain" not in types or types.index("text/plain") == 0
        html_next = "text/html" not in types or types.index("text/html") == int("text/plain" in types)
        if not plain_first or not html_next or len(set(types)) != len(types):
            errors.append(("content", "text/plain needs to be first, followed by text/html, followed by any other "
                                      "content."))
    if "headers" in body:
        errors += _header_errors(body["headers"], "headers")
    if "categories" in body:
        cats = body["categories"]
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            errors.append(("categories", "Categories must be an array of strings."))
        else:
            if len(cats) > 10:
                errors.append(("categories", f"There is a limit of 10 categories. You provided {len(cats)}."))
            if len(set(cats)) != len(cats):
                errors.append(("categories", "The categories must be a unique list."))
            for c in cats:
                if len(c) > 255:
                    errors.append(("categories", f"Each category must not be longer than 255 characters. {c[:20]}..."))
                if not c.isascii():
                    errors.append(("categories", "Categories can not contain non-ASCII characters."))
    return errors


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out) is the client's business, not a server error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class SendGridServer:
    """The contract on 127.0.0.1:<free port>, in a thread. Use as a context manager."""

    def __init__(self, api_key: str = "SG.test-key", *, delay: float = 0.0, keep_payloads: bool = True,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_key = api_key
        self.delay = delay
        self.keep_payloads = keep_payloads
        self.faults: deque[Fault] = deque()
        self.received: list[Received] = []
        self.refused: list[tuple[int, list[tuple[str, str]]]] = []  # (status, errors) answered
        self.requests = 0
        self.in_flight = self.max_in_flight = 0
        self.connections = 0  # TCP connections accepted (keep-alive: one per client thread)
        self.lock = threading.Lock()
        self.recipient_count = 0
        self.unique: set[str] = set()
        self.clock_offset = 0.0
        self.batches: set[str] = set()  # handed out by POST /v3/mail/batch
        self.scheduled: dict[str, str] = {}  # batch id -> "cancel" | "pause": one slot each until deleted
        self.dropped: set[str] = set()  # batches whose mail a cancel dropped at its send_at
        self.lifted_early: list[str] = []  # cancels deleted while mail was waiting: that mail went out
        self.tick = 0.0  # seconds the clock moves forward with each mail/send request
        self.cancel_faults: deque[Fault] = deque()
        self.hold_for = 0  # hold_until(): mail/send requests wait until this many are held at once (0: none)
        self.hold_timeout = 0.0
        self.holding = self.held_together = 0
        self._released = threading.Condition(self.lock)
        self._server = _Quiet((host, port), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="sendgrid-contract", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> SendGridServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SendGridServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, *faults: Fault) -> None:
        """The next requests meet these faults, in order, one each."""
        with self.lock:
            self.faults.extend(faults)

    def hold_until(self, n: int, timeout: float = 20.0) -> None:
        """Hold each mail/send request until `n` are held at once (then all go on, and later ones too).

        `timeout` is generous and below the transport's read timeout (60 s by default): a client that never
        has `n` requests out at once gets its answers that much later, and `held_together` says how many it
        did have, for the test's message."""
        with self.lock:
            self.hold_for, self.hold_timeout, self.held_together = n, timeout, 0

    def hold(self) -> None:
        """Called by the handler for each mail/send request: wait at the barrier `hold_until` set, if any."""
        with self.lock:
            if not self.hold_for:
                return
            self.holding += 1
            self.held_together = max(self.held_together, self.holding)
            if self.holding >= self.hold_for:
                self.hold_for = 0  # met: these go on, and so does every request after them
                self._released.notify_all()
            else:
                self._released.wait_for(lambda: not self.hold_for, timeout=self.hold_timeout)
                self.hold_for = 0  # met, or timed out: the test reads held_together, nothing waits again
            self.holding -= 1

    def script_cancel(self, *faults: Fault) -> None:
        """The next POST /v3/user/scheduled_sends calls meet these faults, in order, one each."""
        with self.lock:
            self.cancel_faults.extend(faults)

    def now(self) -> float:
        return time.time() + self.clock_offset

    def recipients(self) -> list[str]:
        """Who gets the mail: every recipient of an accepted request whose batch was not cancelled."""
        with self.lock:
            return [r for rec in self.received if self.scheduled.get(rec.batch_id or "") != "cancel"
                    and rec.batch_id not in self.dropped for r in rec.recipients]

    def new_batch(self) -> str:
        with self.lock:
            batch = secrets.token_hex(16)
            self.batches.add(batch)
            return batch

    def waiting(self, batch: str) -> list[Received]:
        """The batch's accepted requests not yet sent (their send_at is still ahead)."""
        now = self.now()
        return [r for r in self.received if r.batch_id == batch and r.send_at is not None and r.send_at > now]

    def cancel(self, batch: Any, what: Any) -> tuple[int, list[tuple[str, str]]]:
        """POST /v3/user/scheduled_sends: the answer's status and errors."""
        if not isinstance(batch, str) or what not in ("cancel", "pause"):
            return 400, [("", "batch_id (string) and status (cancel or pause) are required")]
        with self.lock:
            if batch not in self.batches:
                return 400, [("batch_id", "invalid batch id")]
            if batch in self.scheduled:
                return 400, [("batch_id", "a cancel or pause already exists for this batch id")]
            sends = [r.send_at for r in self.received if r.batch_id == batch and r.send_at is not None]
            if sends and min(sends) - self.now() < CANCEL_NOTICE:
                return 400, [("batch_id", "scheduled sends can only be cancelled or paused at least 10 minutes "
                                          "before their send_at")]
            if len(self.scheduled) >= MAX_CANCELLED:  # held until deleted, send_at passed or not
                return 400, [("", f"the maximum of {MAX_CANCELLED} batches paused or cancelled at one time "
                                  "is reached")]
            self.scheduled[batch] = what
            return 201, []

    def lift(self, batch: str) -> bool:
        """DELETE /v3/user/scheduled_sends/{batch_id}: False if there is no such cancel or pause."""
        with self.lock:
            held = self.scheduled.pop(batch, None)
            if held is None:
                return False
            if self.waiting(batch):
                self.lifted_early.append(batch)  # un-cancelled: the waiting mail goes out at its send_at
            elif held == "cancel":
                self.dropped.add(batch)  # the cancel was held at send_at: that mail is gone for good
            return True

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {"requests": self.requests, "accepted": len(self.received), "refused": len(self.refused),
                    "connections": self.connections,
                    "recipients": self.recipient_count, "unique": len(self.unique),
                    "max_in_flight": self.max_in_flight, "cpu": time.process_time()}

    # called by the handler
    def next_fault(self) -> Fault | None:
        with self.lock:
            self.requests += 1
            self.clock_offset += self.tick
            return self.faults.popleft() if self.faults else None

    def schedule_errors(self, payload: dict[str, Any]) -> list[tuple[str, str]]:
        """batch_id must be one handed out here; send_at UNIX seconds, not more than 72 hours ahead."""
        errors = []
        batch = payload.get("batch_id")
        if batch is not None and (not isinstance(batch, str) or batch not in self.batches):
            errors.append(("batch_id", "invalid batch id"))
        now = self.now()
        places = [("send_at", payload)] + [(f"personalizations.{i}.send_at", p) for i, p in
                                           enumerate(payload["personalizations"])]
        for where, holder in places:
            if "send_at" in holder:
                at = holder["send_at"]
                if not isinstance(at, int) or isinstance(at, bool):
                    errors.append((where, "send_at must be a UNIX timestamp (integer)"))
                elif at > now + MAX_SCHEDULE_AHEAD:
                    errors.append((where, "send_at cannot be more than 72 hours in the future"))
        return errors

    def accept(self, payload: dict[str, Any]) -> Received:
        emails, ids = [], []
        for p in payload["personalizations"]:
            for kind in ("to", "cc", "bcc"):
                emails += [a["email"] for a in p.get(kind, [])]
            ids.append(p.get("custom_args", {}).get("digest_subscriber", ""))
        with self.lock:
            sends = [p["send_at"] for p in payload["personalizations"] if "send_at" in p]
            send_at = min(sends) if sends else payload.get("send_at")
            rec = Received(len(self.received) + 1, secrets.token_urlsafe(16), emails, ids, time.time(),
                           payload if self.keep_payloads else None, payload.get("batch_id"), send_at)
            self.received.append(rec)
            self.recipient_count += len(emails)
            self.unique.update(e.lower() for e in emails)
        return rec


def _handler(server: SendGridServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # persistent connections, as SendGrid's API keeps them (RFC 9112 §9.3): every answer has its
        # Content-Length, and a request whose body is left unread closes its connection
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def setup(self) -> None:
            super().setup()
            with server.lock:
                server.connections += 1

        def _answer(self, code: int, body: dict[str, Any] | list[Any] | None = None,
                    headers: dict[str, str] | None = None, errors: list[tuple[str, str]] | None = None) -> None:
            if errors is not None:
                body = {"errors": [{"message": m, "field": f or None, "help": None} for f, m in errors]}
            data = json.dumps(body).encode() if body is not None else b""
            if code >= 400:
                with server.lock:
                    errs = body.get("errors", []) if isinstance(body, dict) else []
                server.refused.append((code, [(e.get("field"), e.get("message")) for e in errs]))
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _drop(self) -> None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def do_GET(self) -> None:
            prefix = "/v3/user/scheduled_sends/"
            if self.path == "/_stats":
                self._answer(200, server.stats())
            elif self.path.startswith(prefix) and self._authorized():
                batch = self.path[len(prefix):]
                with server.lock:
                    held = server.scheduled.get(batch)
                self._answer(200, [{"batch_id": batch, "status": held}] if held else [])
            else:
                self._answer(404, errors=[("", "not found")])

        def do_POST(self) -> None:
            with server.lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                self._post()
            finally:
                with server.lock:
                    server.in_flight -= 1

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") != f"Bearer {server.api_key}":
                self._answer(401, errors=[("", "The provided authorization grant is invalid, expired, or revoked")])
                return False
            return True

        def do_DELETE(self) -> None:
            prefix = "/v3/user/scheduled_sends/"
            if not self.path.startswith(prefix):
                return self._answer(404, errors=[("", "not found")])
            if self._authorized():
                if server.lift(self.path[len(prefix):]):
                    self._answer(204)
                else:
                    self._answer(404, errors=[("", "not found")])

        def _scheduling(self, path: str, raw: bytes) -> None:
            if not self._authorized():
                return
            if path == "/v3/mail/batch":
                return self._answer(201, {"batch_id": server.new_batch()})
            with server.lock:
                fault = server.cancel_faults.popleft() if server.cancel_faults else None
            if fault is not None and fault.kind == "drop":
                return self._drop()
            if fault is not None and fault.kind == "status":
                return self._answer(fault.status, fault.body, fault.headers)
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return self._answer(400, errors=[("", "Bad Request: the body is not JSON")])
            code, errors = server.cancel(body.get("batch_id"), body.get("status"))
            if code != 201:
                return self._answer(code, errors=errors)
            if fault is not None and fault.kind == "accept_then_drop":
                return self._drop()
            self._answer(201, {"batch_id": body["batch_id"], "status": body["status"]})

        def _post(self) -> None:
            path = self.path.split("?")[0]
            if path in ("/v3/mail/batch", "/v3/user/scheduled_sends"):
                length = int(self.headers.get("Content-Length") or 0)
                return self._scheduling(path, self.rfile.read(length) if length else b"")
            fault = server.next_fault()
            length = self.headers.get("Content-Length")
            if length is None:
                self.close_connection = True  # a body of unknown length: the connection cannot go on
                return self._answer(411, errors=[("", "Content-Length required")])
            raw = self.rfile.read(int(length)) if int(length) <= MAX_BYTES + 1 else b""
            if int(length) > MAX_BYTES + 1:
                self.close_connection = True  # the body is left unread
            if len(raw) < int(length) and int(length) <= MAX_BYTES + 1:
                return  # the client went away mid-request: nothing was received
            if fault is not None and fault.kind == "drop":
                return self._drop()
            if fault is not None and fault.kind == "delay":
                time.sleep(fault.seconds)
                fault = None
            if path == "/v3/mail/send":
                server.hold()
            if server.delay:
                time.sleep(server.delay)
            if self.path.split("?")[0] != "/v3/mail/send":
                return self._answer(404, errors=[("", "not found")])
            if self.headers.get("Authorization") != f"Bearer {server.api_key}":
                return self._answer(401, errors=[("", "The provided authorization grant is invalid, expired, or "
                                                      "revoked")])
            if fault is not None and fault.kind == "status":
                return self._answer(fault.status, fault.body, fault.headers)
            if int(length) > MAX_BYTES:
                return self._answer(413, errors=[("", "The JSON payload you have included in your request is too "
                                                      "large.")])
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if ctype != "application/json":
                return self._answer(415, errors=[("", f"Content-Type must be application/json, not {ctype!r}")])
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                return self._answer(415, errors=[("", "Invalid UTF8 in request")])
            try:
                payload = json.loads(text)
            except ValueError:
                return self._answer(400, errors=[("", "Bad Request: the body is not JSON")])
            errors = validate(payload)
            if not errors:
                errors = server.schedule_errors(payload)
            if errors:
                return self._answer(400, errors=errors)
            rec = server.accept(payload)
            if fault is not None and fault.kind == "accept_then_drop":
                return self._drop()
            self._answer(202, None, {"X-Message-Id": rec.message_id})
            if fault is not None and fault.kind == "answer_then_close":
                self.wfile.flush()
                self._drop()

    return Handler


def _serve(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", default="SG.test-key")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    server = SendGridServer(args.key, delay=args.delay, keep_payloads=False, port=args.port).start()
    print(server.url, flush=True)
    try:
        for _line in _stdin_lines():
            pass  # serve until stdin closes (the parent exits or closes the pipe)
    finally:
        server.stop()


def _stdin_lines() -> Iterator[str]:
    yield from sys.stdin


if __name__ == "__main__":
    _serve()
