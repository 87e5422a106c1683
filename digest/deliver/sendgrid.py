"""SendGrid Web API v3 `mail/send`: one HTML and one text body per request, up to 1,000 readers in it.

Each reader is a personalization: their own `to`, substitutions for their tokens (greeting, signed
unsubscribe and preference links), List-Unsubscribe headers, and custom_args with the issue, subscriber
and list ids so webhook events can be matched back. The shared part (from, subject, content, categories)
is built with `sendgrid.helpers.mail` and serialized once per edition; each reader's personalization is
written straight as its JSON text (`personalization_json`: only the reader's own strings are encoded, the
keys and the shared pieces are constants), so a request body is the shared text and the readers' pieces
joined, its size their lengths (issue 16: per-reader dicts, a JSON encoding of them and a size walk were a
third of a send's CPU). The requests go over keep-alive connections (`digest.deliver.wire`).

Every documented limit of mail/send is checked here before sending: a violation is a bug or bad reader
data found on our side, never a 400 from SendGrid.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import threading
import time
import unicodedata
import urllib.error
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

from python_http_client.exceptions import HTTPError

from digest import retry
from digest.config import ENV_SENDGRID_API_KEY, Settings
from digest.deliver.protocol import Message, Outcome, Rows, SendStopped
from digest.deliver.wire import Wire
from digest.errors import ConfigError
from digest.render import PLAIN_NAME, Rendered

if TYPE_CHECKING:
    from tenacity import RetryCallState

_NO_EDITION = Rendered("", "", "", "")  # a pattern's stand-in reader: personalization_json reads no edition

#: The one header of a copy that is the reader's own (their signed unsubscribe link, RFC 8058). The others
#: (List-Unsubscribe-Post, List-Id, Precedence, Feedback-ID) are the list's and the issue's, the same for
#: every reader: sent once per request as the message's `headers`, which each personalization's `headers`
#: add to (mail/send: "personalizations[].headers"; django-anymail's SendGrid backend spells its common and
#: per-recipient `merge_headers` the same way). 190 bytes less per reader in every request (issue 16).
READER_HEADERS = frozenset({"List-Unsubscribe"})

Common = tuple[tuple[str, str], ...]  # a copy's headers that are not the reader's own, in order


def common_headers(headers: dict[str, str]) -> Common:
    """The headers a request sends once for all its readers: those not in `READER_HEADERS`. Requests are
    grouped by them, so readers whose common headers differ never share a request."""
    return tuple((k, v) for k, v in headers.items() if k not in READER_HEADERS)

MAX_PERSONALIZATIONS = 1000  # and at most 1,000 recipients (to + cc + bcc) per request
MAX_REQUEST_BYTES = 30 * 1024 * 1024  # "the total size of your email ... must be less than 30MB"
MAX_SUBSTITUTION_BYTES = 10_000  # per personalization
MAX_CUSTOM_ARGS_BYTES = 10_000  # global and personalization custom_args merged, per personalization
MAX_CATEGORIES, MAX_CATEGORY_CHARS = 10, 255
MAX_ADDRESS_CHARS = 320
RESERVED_HEADERS = frozenset({"x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
                              "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc"})
ARG_ISSUE, ARG_SUBSCRIBER, ARG_LIST = "digest_issue", "digest_subscriber", "digest_list"
#: the body is JSON text we serialized, sent as UTF-8 (RFC 8259 §8.1); the charset says so. All of it ASCII
#: (non-ASCII characters escaped, §7): see `shared_json`
CONTENT_TYPE = "application/json; charset=utf-8"
JSON: dict[str, Any] = {"ensure_ascii": True, "separators": (",", ":")}
# batch ids asked for ahead of their claims (one per claim; a claim split in two takes two), each on its own
# connection at once: asked for one at a time, each waited behind the mail/send requests the server was
# answering, and the send waited for its ids (100,000 readers: 4.9 s, 3.3 s with 4 ahead, 5 at once)
BATCHES_AHEAD = 4
MAX_THROTTLED = 100  # 429s in a row for one request before giving up
MAX_RATE_WAIT = 300.0  # seconds: never trust a reset further away than this
# Scheduled sends (https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send, send_at;
# https://www.twilio.com/docs/sendgrid/api-reference/cancel-scheduled-sends): send_at at most 72 hours
# ahead; a batch can be cancelled only 10 minutes or more before its send_at; at most 10 batches
# cancelled or paused at one time. A cancel holds its slot until it is deleted (DELETE
# /v3/user/scheduled_sends/{batch_id}), and deleting it while send_at is still ahead un-cancels the
# batch: so a slot is freed only once send_at has passed (the cancelled mail was dropped), with a margin.
MAX_SCHEDULE_AHEAD = 72 * 3600
CANCEL_NOTICE = 10 * 60
MAX_CANCELS = 10  # SendGrid's slots: batches cancelled or paused at one time
LIFT_AFTER = 10 * 60  # seconds after a cancelled batch's send_at before its cancel is deleted (slot freed)


@dataclass
class Prepared:
    """A batch made ready to send: (JSON body, its messages, its provider batch id or None) per request, and
    readers refused here. `batches`: the provider batches made here for the requests after the first (one
    claim became several requests: editions, or the 30 MB cap), as (batch id, send_at, delivery ids), for
    the loop to record in the ledger before `submit` sends anything."""

    requests: list[tuple[str, list[Any], str | None]]  # the readers: Messages, or claimed rows (`prepare_rows`)
    refused: list[Outcome]
    batches: list[tuple[str, int, list[int]]] = field(default_factory=list)
    send_at: dict[str, int] = field(default_factory=dict)  # each scheduled request's batch -> its send_at
    issue_number: int = 0


class BatchCancelled(SendStopped):
    """A request's answer was lost, and its batch (that request alone: each has its own) was cancelled in
    time: none of it will go out, so its readers go back to the queue and are sent again in a new batch."""


class PayloadError(SendStopped):
    """The request we built breaks a documented mail/send limit: a bug, stopped before sending."""


class RequestTooLarge(PayloadError):
    """A request over the 30 MB cap: split in two (each half its own request and batch) while it has more
    than one reader; a single reader's copy that large is a bug."""


def ascii_text(value: str) -> str:
    """Categories must be ASCII: accents folded, anything else dropped."""
    folded = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    return " ".join(folded.split())


_NAME_BREAKERS = frozenset(";,\r\n\t")


def display_name(name: str) -> str:
    """`to.name` may not contain ';' or ',' (SendGrid rejects the request) nor line breaks."""
    if _NAME_BREAKERS.isdisjoint(name) and name == name.strip():
        return name
    return " ".join(name.replace(";", " ").replace(",", " ").split())


def ascii_address(email: str) -> str:
    """The address with an internationalized domain in its ASCII (IDNA) form. ValueError if the local
    part is not ASCII: SendGrid's v3 API does not take SMTPUTF8 addresses."""
    local, _, domain = email.rpartition("@")
    if not local or not local.isascii():
        raise ValueError(f"{email!r}: SendGrid does not accept a non-ASCII local part")
    if not domain.isascii():
        domain = domain.encode("idna").decode("ascii")
    address = f"{local}@{domain}"
    if len(address) > MAX_ADDRESS_CHARS:
        raise ValueError(f"{email!r} is longer than {MAX_ADDRESS_CHARS} characters")
    return address


def _size(mapping: dict[str, str]) -> int:
    """UTF-8 bytes of keys and values; the exact count only when the cheap bound is near the limit."""
    chars = sum(len(k) + len(v) for k, v in mapping.items())
    if chars * 4 <= MAX_SUBSTITUTION_BYTES:
        return chars * 4
    return sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in mapping.items())


_GOOD_HEADER_NAMES: set[str] = set()  # names already checked: the same two for every reader


def check_headers(headers: dict[str, str], where: str) -> None:
    for key, value in headers.items():
        if key not in _GOOD_HEADER_NAMES:
            if not isinstance(key, str) or not key or not key.isascii() or any(c.isspace() for c in key) \
                    or ":" in key:
                raise ValueError(f"{where}: header name {key!r} must be ASCII without spaces")
            if key.lower() in RESERVED_HEADERS:
                raise ValueError(f"{where}: header {key!r} is reserved by SendGrid")
            _GOOD_HEADER_NAMES.add(key)
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise ValueError(f"{where}: header {key!r} must be a one-line string")


def categories_for(settings: Settings, issue_number: int) -> list[str]:
    name = ascii_text(settings.publication.name)[:MAX_CATEGORY_CHARS] or "digest"
    issue = f"{name} issue {issue_number}"[-MAX_CATEGORY_CHARS:]
    return list(dict.fromkeys([name, issue]))[:MAX_CATEGORIES]


_TEMPLATES: dict[tuple[str, ...], str] = {}  # a mapping's JSON text with its values left out, per key tuple


def _json_strings(mapping: dict[str, str]) -> str:
    """A mapping of strings as compact JSON text (what json.dumps writes, ASCII): its keys are encoded once
    per set of keys (every reader has the same few), its values by the C encoder; ValueError for a value
    that is not a string (mail/send takes strings only: substitutions, headers, custom_args)."""
    keys = tuple(mapping)
    template = _TEMPLATES.get(keys)
    if template is None:
        if not all(isinstance(k, str) for k in keys):
            raise ValueError("every key must be a string")
        template = "{" + ",".join(encode_basestring_ascii(k).replace("%", "%%") + ":%s" for k in keys) + "}"
        if len(_TEMPLATES) < 64:
            _TEMPLATES[keys] = template
    try:
        return template % tuple(map(encode_basestring_ascii, mapping.values()))
    except TypeError:
        raise ValueError("every value must be a string") from None


#: stand-ins for a reader's own parts in the personalization a batch's plain readers are filled from (`Pattern`):
#: letters and digits only, so nothing on their way (JSON, HTML escaping, wrapping) changes them
_MARKS = ("Zq7EMAILq7Z", "Zq7NAMEq7Z", "Zq7TOKENq7Z", "987654321987654321", "Zq7MAILTOq7Z")
#: an address (or mailto) JSON writes as it is (printable ASCII, no '"' or '\\'), within the 320 characters
_PLAIN_ADDRESS = re.compile(rf"[\x21\x23-\x5b\x5d-\x7e]{{1,{MAX_ADDRESS_CHARS}}}")


class Pattern:
    """The personalization JSON of a batch's plain readers as the constant pieces around each reader's own
    parts (for a reader with a name, and one without), made by `personalization_json` itself from a reader
    of stand-ins (`_MARKS`): a plain reader's text is exactly what the per-reader code writes, at the cost
    of one join (issue 16). A reader is plain when their name is (`render.PLAIN_NAME`: written unchanged
    everywhere, so no line break can reach a header) and their address and mailto need no escaping; any
    other reader takes `personalization_json`, which names the problem. `make` gives None when the
    stand-ins do not come out where expected (then every reader takes that path)."""

    __slots__ = ("named", "unnamed", "mailbox", "common")

    def __init__(self, named: tuple[str, ...], unnamed: tuple[str, ...], mailbox: bool, common: Common) -> None:
        self.named, self.unnamed, self.mailbox, self.common = named, unnamed, mailbox, common

    @classmethod
    def make(cls, assemble: Callable[[str, str, str | None], tuple[dict[str, str], dict[str, str]]], *,
             issue_id: int, issue_number: int, list_id: int, scheduled: tuple[str, int] | None,
             mailbox: bool) -> Pattern | None:
        email, name, token, sid, mailto = _MARKS
        find = re.compile("|".join(_MARKS))
        patterns, common = [], set()
        for who in (name, ""):
            values, headers = assemble(who, token, mailto if mailbox else None)
            common.add(common_headers(headers))
            text = personalization_json(Message(0, int(sid), issue_id, issue_number, email, who,
                                                _NO_EDITION, values, headers, list_id, scheduled))
            # to.email, to.name, the two greetings, the two links and List-Unsubscribe (its mailto), the id
            expected = [email, *[who] * (3 if who else 0), token, token, token, *[mailto] * mailbox, sid]
            # the reader's own parts at most this much longer than their stand-ins: far from the 10,000 bytes
            if find.findall(text) != expected or len(text) + 1000 > MAX_SUBSTITUTION_BYTES:
                return None
            patterns.append(tuple(find.split(text)))  # the constant pieces between the reader's parts
        named, unnamed = patterns
        return cls(named, unnamed, mailbox, common.pop()) if len(common) == 1 else None

    def fill(self, email: str, name: str, token: str, sid: int, mailto: str | None) -> str:
        """One plain reader's text: the constant pieces and their parts joined in the order `make` checked
        (a join copies; a `%` or `format` would scan the whole pattern for every reader)."""
        if self.mailbox:
            if name:
                c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 = self.named
                return "".join((c0, email, c1, name, c2, name, c3, name, c4, token, c5, token, c6, token, c7,
                                mailto or "", c8, str(sid), c9))
            c0, c1, c2, c3, c4, c5, c6 = self.unnamed
            return "".join((c0, email, c1, token, c2, token, c3, token, c4, mailto or "", c5, str(sid), c6))
        if name:
            c0, c1, c2, c3, c4, c5, c6, c7, c8 = self.named
            return "".join((c0, email, c1, name, c2, name, c3, name, c4, token, c5, token, c6, token, c7,
                            str(sid), c8))
        c0, c1, c2, c3, c4, c5 = self.unnamed
        return "".join((c0, email, c1, token, c2, token, c3, token, c4, str(sid), c5))


def personalization_json(message: Message) -> str:
    """One reader's personalization (to, substitutions, headers, custom_args, and send_at when scheduled) as
    its compact JSON text, ASCII (non-ASCII escaped), so its length is its size in bytes. ValueError names
    what in the reader's data breaks a limit."""
    email = message.to_email
    to = email if email.isascii() and len(email) <= MAX_ADDRESS_CHARS else ascii_address(email)
    name = display_name(message.to_name)
    to_json = (f'[{{"email":{encode_basestring_ascii(to)},"name":{encode_basestring_ascii(name)}}}]' if name
               else f'[{{"email":{encode_basestring_ascii(to)}}}]')
    try:
        substitutions = _json_strings(message.values)
    except ValueError as e:
        raise ValueError(f"{email}: substitutions: {e}") from None
    # the JSON text is at least as long as the UTF-8 bytes of its keys and values (quotes, colons, and a
    # non-ASCII character, escaped as `\u` and four hex digits, is 6 characters for at most 4 bytes):
    # the exact size is computed only near the limit
    if len(substitutions) > MAX_SUBSTITUTION_BYTES and _size(message.values) > MAX_SUBSTITUTION_BYTES:
        raise ValueError(f"{message.to_email}: substitutions are over {MAX_SUBSTITUTION_BYTES} bytes")
    headers = message.headers
    if not _GOOD_HEADER_NAMES.issuperset(headers):  # the names: checked once (check_headers remembers them)
        check_headers(headers, email)
    try:  # the values: one line each, so a line break in a reader's data can never start a header of its own
        joined = "".join(headers.values())
    except TypeError:
        joined = "\n"  # a value that is not a string
    if "\r" in joined or "\n" in joined:
        check_headers(headers, email)  # raises, naming the header
        raise ValueError(f"{email}: a header must be a one-line string")
    own = {k: v for k, v in headers.items() if k in READER_HEADERS}  # the rest: the request's (`common_headers`)
    out = (f'{{"to":{to_json},"substitutions":{substitutions},'
           + (f'"headers":{_json_strings(own)},' if own else "") +
           f'"custom_args":{{"{ARG_ISSUE}":"{message.issue_id:d}","{ARG_SUBSCRIBER}":"{message.subscriber_id:d}",'
           f'"{ARG_LIST}":"{message.list_id:d}"}}')
    if message.scheduled is not None:
        # the reader's own send_at (mail/send: personalizations[].send_at, at most 72 h ahead); with local
        # delivery a request holds one zone moment, so it equals the request's, which the batch is cancelled by
        return f'{out},"send_at":{message.scheduled[1]:d}}}'
    return out + "}"


class SendGridTransport:
    name = "sendgrid"

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        sg = settings.delivery.sendgrid
        if not sg.api_key:
            raise ConfigError(f"{ENV_SENDGRID_API_KEY} is not set: {settings.path} has delivery.transport = "
                              f"\"sendgrid\"; export {ENV_SENDGRID_API_KEY}=... or choose another transport")
        if not settings.publication.from_email.isascii():
            raise ConfigError(f"{settings.path}: publication.from_email must be ASCII for SendGrid")
        self.settings = settings
        self.batch_size = min(MAX_PERSONALIZATIONS, sg.batch_size)
        self.concurrency = max(1, sg.concurrency)
        self.max_retries = max(0, sg.max_retries)
        self.timeout = sg.timeout_seconds
        self.backoff = sg.backoff_seconds
        self.retry_unanswered = sg.retry_unanswered
        self.api_url = sg.api_url
        self.ahead = sg.schedule_ahead_minutes * 60
        self.cancels = 0  # cancels made by this transport
        self._held: dict[str, int] = {}  # cancels SendGrid holds for us: batch -> its send_at (a slot each)
        self._lifted: list[str] = []  # deleted since the last `cancels_held()`
        self._held_changed = False
        self._lost: set[str] = set()  # batches this send cancelled because their answer was lost
        self._held_lock = threading.Lock()
        self.sleep, self.clock = sleep, clock
        self.retrying = retry.policy(
            attempts=self.max_retries + 1, first=self.backoff, retry_on=self._retryable, throttled=_throttled,
            max_throttled=MAX_THROTTLED, server_delay=self._reset_delay, max_server_delay=MAX_RATE_WAIT,
            sleep=sleep, before_sleep=self._pause_everyone_if_throttled)
        self._api_key = sg.api_key
        self._wire_made: Wire | None = None  # `_wire`, made on first use
        self._wire_lock = threading.Lock()
        # batch ids asked for ahead, in the background, while the loop builds the previous claim: a POST
        # /v3/mail/batch per request, made serially, was most of the loop's waiting (issue 16). An id handed
        # out and never used holds nothing: it is recorded with a claim before any request carries it.
        self._batches_ahead: deque[Future[str]] = deque()
        self._batch_pool: ThreadPoolExecutor | None = None
        self._paused_until = 0.0
        self._pause_lock = threading.Lock()
        self._shared_json: dict[tuple[int, int, Common], tuple[str, int]] = {}

    def warm(self) -> None:
        """Import the sendgrid package and make the connections' headers now (`deliver.loop` calls it while
        the database writes the snapshot and this process has nothing else to do): 20 ms of `digest send`'s
        start otherwise, before its first statement (issue 16)."""
        _ = self._wire  # the package, its mail helpers (`shared`) with it

    @property
    def _wire(self) -> Wire:
        """The keep-alive connections, with the library's request headers (its Authorization: Bearer,
        User-Agent, Accept): its urllib client opens a connection per request (digest.deliver.wire)."""
        if self._wire_made is None:
            with self._wire_lock:
                if self._wire_made is None:
                    from sendgrid import SendGridAPIClient

                    headers = dict(SendGridAPIClient(api_key=self._api_key, host=self.api_url).client.request_headers)
                    headers["Content-Type"] = CONTENT_TYPE
                    self._wire_made = Wire(self.api_url, headers, self.timeout)
        return self._wire_made

    # -- the request ---------------------------------------------------------------------------------

    def shared(self, edition: Rendered, issue_number: int, common: Common = ()) -> dict[str, Any]:
        """Everything but the personalizations, built with the library's helpers (once per edition and
        headers: `shared_json` keeps it); `common`: the headers every reader of the request has."""
        from sendgrid.helpers.mail import Category, From, Header, HtmlContent, Mail, PlainTextContent, ReplyTo, Subject

        pub = self.settings.publication
        mail = Mail(from_email=From(pub.from_email, display_name(pub.from_name or pub.name) or None),
                    subject=Subject(edition.subject), plain_text_content=PlainTextContent(edition.text),
                    html_content=HtmlContent(edition.html))
        if pub.reply_to:
            mail.reply_to = ReplyTo(pub.reply_to)
        mail.category = [Category(c) for c in categories_for(self.settings, issue_number)]
        for name, value in common:
            mail.header = Header(name, value)
        body = mail.get()
        body.pop("personalizations", None)
        check_shared(body)
        return body

    def shared_json(self, edition: Rendered, issue_number: int, common: Common = ()) -> tuple[str, int]:
        """The shared part serialized once per edition (the HTML is not re-encoded for every request),
        and its size in bytes."""
        key = (id(edition), issue_number, common)
        if key not in self._shared_json:
            # ASCII (non-ASCII escaped, RFC 8259 §7), like the readers' pieces: a body with one non-ASCII
            # character would be a wider string, every reader's piece copied wide and then walked by the
            # UTF-8 encoder for each request (issue 16: 9,000 instructions per reader)
            text = json.dumps(self.shared(edition, issue_number, common), **JSON)
            self._shared_json[key] = (text, len(text))
        return self._shared_json[key]

    @staticmethod
    def _pieces(messages: list[Message]) -> tuple[list[Message], list[Outcome], list[str]]:
        included, refused, personalizations = [], [], []
        for m in messages:
            try:
                personalizations.append(personalization_json(m))
                included.append(m)
            except ValueError as e:
                refused.append(Outcome(m.delivery_id, False, error=f"not sent: {e}"))
        return included, refused, personalizations

    def _body(self, personalizations: list[str], edition: Rendered, issue_number: int, common: Common) -> str:
        """One request's JSON text: the readers' pieces and the edition's shared part. RequestTooLarge over
        the 30 MB cap."""
        if len(personalizations) > MAX_PERSONALIZATIONS:
            raise PayloadError(f"bug: {len(personalizations)} personalizations in one request "
                               f"(SendGrid takes at most {MAX_PERSONALIZATIONS})")
        shared, shared_size = self.shared_json(edition, issue_number, common)
        people = ",".join(personalizations)  # ASCII (escaped): its length is its size
        size = len(people) + shared_size + len('{"personalizations":[],')
        if size >= MAX_REQUEST_BYTES:
            raise RequestTooLarge(f"issue {issue_number}: a request of {size / 1e6:.1f} MB is over "
                                  f"SendGrid's 30 MB limit (is the HTML that large?)")
        return f'{{"personalizations":[{people}],{shared[1:]}'

    def prepare(self, messages: list[Message]) -> Prepared:
        """The requests for a batch, one per edition in it (usually one). Runs in the sending loop's own
        thread, so the CPU work of a send is not split across threads fighting for the GIL; only the
        waiting on SendGrid (`submit`) runs in the worker threads."""
        groups: dict[tuple[int, Common], list[Message]] = {}
        for m in messages:
            groups.setdefault((id(m.edition), common_headers(m.headers)), []).append(m)
        prepared = Prepared([], [], issue_number=messages[0].issue_number if messages else 0)
        for (_, common), group in groups.items():
            included, refused, pieces = self._pieces(group)
            prepared.refused += refused
            if included:
                self._add_requests(prepared, pieces, included, group[0].edition, group[0].issue_number,
                                   included[0].scheduled, common)
        return prepared

    def prepare_rows(self, rows: Rows) -> Prepared:
        """`prepare` for a claimed batch as it comes (issue 16). A plain reader (`Pattern`) is one `format`
        call and no Message; any other is made a Message by `rows.slow(i)` and written by
        `personalization_json`, which refuses it alone when its data breaks a limit. The requests are those
        `prepare` makes: one per edition, split at the 30 MB cap."""
        readers, editions, tokens, mailtos, slow = rows.readers, rows.editions, rows.tokens, rows.mailtos, rows.slow
        issue_number, scheduled = rows.issue_number, rows.scheduled
        pattern = Pattern.make(rows.assemble, issue_id=rows.issue_id, issue_number=issue_number,
                               list_id=rows.list_id, scheduled=scheduled, mailbox=rows.mailbox)
        groups: dict[tuple[int, Common], tuple[Rendered, Common, list[str], list[Any]]] = {}
        refused: list[Outcome] = []
        plain_name, plain_address = PLAIN_NAME.fullmatch, _PLAIN_ADDRESS.fullmatch
        for i, r in enumerate(readers):
            edition, name, mailto = editions[i], r.name, mailtos[i]
            if pattern is not None and plain_address(r.email) and (not name or plain_name(name)) \
                    and (mailto is None or plain_address(mailto)):
                group = groups.get((id(edition), pattern.common))
                if group is None:
                    group = groups[id(edition), pattern.common] = (edition, pattern.common, [], [])
                group[2].append(pattern.fill(r.email, name, tokens[i], r.id, mailto))
                group[3].append(r)
                continue
            message = slow(i)
            if message is None:
                continue
            try:
                piece = personalization_json(message)
            except ValueError as e:
                refused.append(Outcome(message.delivery_id, False, error=f"not sent: {e}"))
                continue
            common = common_headers(message.headers)
            group = groups.setdefault((id(edition), common), (edition, common, [], []))
            group[2].append(piece)
            group[3].append(message)
        prepared = Prepared([], refused, issue_number=issue_number)
        for edition, common, pieces, included in groups.values():
            if included:
                self._add_requests(prepared, pieces, included, edition, issue_number, scheduled, common)
        return prepared

    def _add_requests(self, prepared: Prepared, pieces: list[str], included: list[Any], edition: Rendered,
                      issue_number: int, scheduled: tuple[str, int] | None, common: Common) -> None:
        """One request for these readers of one edition, or two halves if it is over the 30 MB cap.
        Scheduled: the first request of the claim keeps the batch recorded with the claim; every other one
        gets a batch of its own (POST /v3/mail/batch), listed in `prepared.batches` for the ledger, so a
        request whose answer is lost is cancelled alone and never takes another request's readers with it."""
        try:
            body = self._body(pieces, edition, issue_number, common)
        except RequestTooLarge:
            if len(pieces) < 2:
                raise
            half = len(pieces) // 2
            self._add_requests(prepared, pieces[:half], included[:half], edition, issue_number, scheduled, common)
            self._add_requests(prepared, pieces[half:], included[half:], edition, issue_number, scheduled, common)
            return
        batch: str | None = None
        if scheduled is not None:
            batch, at = scheduled
            if any(b == batch for _, _, b in prepared.requests):
                batch = self.new_batch()
                prepared.batches.append((batch, at, [m.delivery_id for m in included]))
            prepared.send_at[batch] = at
            body = f'{body[:-1]},"batch_id":{json.dumps(batch)},"send_at":{at}}}'
        prepared.requests.append((body, included, batch))

    def schedule(self, issue_moment: datetime | None) -> tuple[str, int] | None:
        """A new batch id and the send_at for the next claim (recorded with it, before any request), or None
        in the immediate mode (schedule_ahead_minutes = 0).

        Each request in flight may need one of SendGrid's 10 cancel slots if its answer is lost. When this
        send keeps losing answers (its own cancels hold slots) and fewer slots are free than requests could
        be in flight, nothing more is sent: the send stops, the readers wait in the queue for the next
        `digest send`. Slots held by others (earlier runs' recoveries, a recall's cancels until the recalled
        issue's send moment) do not stop a send: a lost answer then is left for `resolve`, as SendGrid's
        limit forces."""
        if not self.ahead:
            return None
        self.lift_passed()
        with self._held_lock:
            held = dict(self._held)
            losing = not self._lost.isdisjoint(held)
        if losing and MAX_CANCELS - len(held) < self.concurrency:
            free_at = datetime.fromtimestamp(min(held.values()) + LIFT_AFTER, UTC)
            raise SendStopped(f"{len(held)} cancelled batches hold SendGrid's {MAX_CANCELS} cancel slots (the first "
                              f"is freed after {free_at:%Y-%m-%d %H:%M} UTC): a lost answer now could not be "
                              "cancelled, so nothing more is sent; the readers are queued for the next "
                              "`digest send`")
        return self.new_batch(), self.send_moment(issue_moment)

    def send_moment(self, issue_moment: datetime | None) -> int:
        """send_at = max(the issue's send moment, now + schedule_ahead_minutes), in UNIX seconds. A send
        moment beyond SendGrid's 72 hours is not used: the send was started by hand, it goes out now."""
        now = self.clock()
        at = now + self.ahead
        if issue_moment is not None and at < issue_moment.timestamp() <= now + MAX_SCHEDULE_AHEAD - 60:
            at = issue_moment.timestamp()
        return int(at + 0.999)

    def submit(self, prepared: Prepared) -> list[Outcome]:
        outcomes = list(prepared.refused)
        for body, included, batch in prepared.requests:
            try:
                message_id = self.post(body, included, batch, send_at=prepared.send_at.get(batch or ""),
                                       issue_number=prepared.issue_number)
            except BatchCancelled:
                # this request's own batch is cancelled: none of it goes out; not answered for, the loop
                # queues its readers again for a new batch; the claim's other requests go on
                continue
            except SendStopped as e:
                raise SendStopped(str(e), outcomes + e.outcomes) from None
            outcomes += [Outcome(m.delivery_id, True, message_id) for m in included]
        return outcomes

    def send(self, messages: list[Message]) -> list[Outcome]:
        return self.submit(self.prepare(messages))

    # -- talking to SendGrid -------------------------------------------------------------------------

    def post(self, body: str, messages: Sequence[Any], batch: str | None = None, *, send_at: int | None = None,
             issue_number: int | None = None) -> str:
        """POST mail/send until it is accepted; returns X-Message-Id. 429: every worker waits for the
        reset; 5xx and failed connections: digest.retry's bounded backoff; 4xx: stop the send."""
        maybe_sent = False  # a connection dropped after the whole request was out: SendGrid may have it

        def attempt() -> Any:
            nonlocal maybe_sent
            self._wait_if_paused()
            try:
                return self._wire.request("POST", "/v3/mail/send", body)
            except (HTTPError, urllib.error.URLError):
                raise  # an answer, or a request that never went out (connecting, writing)
            except (OSError, http.client.HTTPException):
                maybe_sent = True  # the request was written, the answer never came
                raise

        try:
            response = self.retrying(attempt)
        except HTTPError as e:
            done = retry.tally(self.retrying)
            if e.status_code == 429:
                raise self._stop(f"SendGrid kept answering 429 Too Many Requests ({done.throttled} times)",
                                 messages, maybe_sent, batch, send_at) from None
            if e.status_code >= 500:
                raise self._stop(f"SendGrid answered {e.status_code} {_reason(e)} {done.tries} times",
                                 messages, maybe_sent, batch, send_at) from None
            raise SendStopped(describe_refusal(e, messages, issue_number)) from None
        except urllib.error.URLError as e:
            raise self._stop(f"cannot reach SendGrid at {self.api_url}: {e.reason}", messages, maybe_sent,
                             batch, send_at) from None
        except (OSError, http.client.HTTPException) as e:
            raise self._stop(f"the connection to SendGrid dropped {retry.tally(self.retrying).tries} times "
                             f"({e.__class__.__name__}: {e})", messages, maybe_sent, batch, send_at) from None
        if not 200 <= response.status_code < 300:
            raise SendStopped(f"SendGrid answered {response.status_code} to mail/send: "
                              f"{response.body[:300]!r}") from None
        return response.headers.get("X-Message-Id") or ""

    def _retryable(self, error: BaseException) -> bool:
        """5xx, or no connection (the request never went out): tried again. A request whose answer was
        lost is tried again only if `retry_unanswered` says so: SendGrid may have accepted it."""
        if isinstance(error, HTTPError):
            return error.status_code >= 500
        if isinstance(error, urllib.error.URLError):
            return True
        # scheduled: never the same request twice; its batch is cancelled and its readers sent in a new one
        return isinstance(error, OSError | http.client.HTTPException) and self.retry_unanswered and not self.ahead

    def _stop(self, why: str, messages: Sequence[Any], maybe_sent: bool, batch: str | None = None,
              send_at: int | None = None) -> SendStopped:
        """`messages`: the request's readers (Messages or claimed rows: each has its delivery_id)."""
        if maybe_sent and batch is not None:
            if send_at is None:
                scheduled = getattr(messages[0], "scheduled", None)
                send_at = scheduled[1] if scheduled else None
            refused = self.cancel(batch, send_at=send_at)
            if refused is None:
                with self._held_lock:
                    self._lost.add(batch)
                return BatchCancelled(f"{why}; batch {batch} cancelled: its readers are sent again")
            why = f"{why}; cancelling its batch {batch} failed ({refused})"
        if maybe_sent:
            note = ("a connection dropped after a request was out, so SendGrid may have accepted it: "
                    f"these {len(messages)} reader(s) are left of unknown fate for `digest deliveries resolve`")
            return SendStopped(f"{why}; {note}",
                               [Outcome(m.delivery_id, False, error=f"{why}; fate unknown", unknown=True)
                                for m in messages])
        return SendStopped(f"{why}; nothing of this batch was sent: its {len(messages)} reader(s) are queued "
                           "again for the next `digest send`")

    # -- scheduled batches ---------------------------------------------------------------------------

    def _call(self, what: str, do: Callable[[], Any]) -> Any:
        """One scheduling call with the request policy (5xx, 429, no connection: again). Returns the
        decoded JSON answer; raises SendStopped naming the call when it fails for good."""
        try:
            response = self.retrying(do)
        except HTTPError as e:
            raise SendStopped(f"SendGrid answered {e.status_code} {_reason(e)} to {what}: "
                              f"{(e.body or b'')[:300]!r}") from None
        except (OSError, http.client.HTTPException) as e:
            raise SendStopped(f"no answer from SendGrid to {what} ({e.__class__.__name__}: {e})") from None
        return json.loads(response.body or b"null")

    def new_batch(self) -> str:
        """A batch id from POST /v3/mail/batch: each request gets its own, so each can be cancelled alone.
        Taken from the few asked for ahead (`BATCHES_AHEAD`), and one more is asked for in its place."""
        if self._batch_pool is None:
            self._batch_pool = ThreadPoolExecutor(max_workers=BATCHES_AHEAD + 1, thread_name_prefix="sendgrid-batches")
        while len(self._batches_ahead) < BATCHES_AHEAD + 1:
            self._batches_ahead.append(self._batch_pool.submit(self._fetch_batch))
        return self._batches_ahead.popleft().result()

    def _fetch_batch(self) -> str:
        answer = self._call("POST /v3/mail/batch", lambda: self._wire.request("POST", "/v3/mail/batch"))
        batch = answer.get("batch_id") if isinstance(answer, dict) else None
        if not isinstance(batch, str) or not batch:
            raise SendStopped(f"SendGrid answered POST /v3/mail/batch without a batch_id: {answer!r}")
        return batch

    def cancel(self, batch: str, *, send_at: int | None = None) -> str | None:
        """Cancel a scheduled batch: None when SendGrid holds the cancel (nothing of the batch will go out),
        else why not (too close to send_at, refused, the 10-batch limit, no answer). A held cancel is kept
        (`cancels_held`) until its send_at has passed, when `lift_passed` frees its slot."""
        self.lift_passed()
        path = "/v3/user/scheduled_sends"
        try:
            self._call(f"the cancel of batch {batch}", lambda: self._wire.request(
                "POST", path, json.dumps({"batch_id": batch, "status": "cancel"})))
            self._hold(batch, send_at)
            return None
        except SendStopped as e:
            why = str(e)
        # the cancel's own answer may have been lost, or a retry met the first one: ask what SendGrid holds
        try:
            held = self._call(f"GET scheduled_sends/{batch}", lambda: self._wire.request("GET", f"{path}/{batch}"))
        except SendStopped:
            return why
        if isinstance(held, list) and any(isinstance(h, dict) and h.get("status") == "cancel" for h in held):
            self._hold(batch, send_at)
            return None
        return why

    def _hold(self, batch: str, send_at: int | None) -> None:
        with self._held_lock:
            self.cancels += 1
            # a send moment not known: SendGrid's furthest, so the slot is never freed too early
            self._held[batch] = send_at if send_at is not None else int(self.clock()) + MAX_SCHEDULE_AHEAD
            self._held_changed = True

    def adopt(self, held: dict[str, int]) -> None:
        """Cancels held at SendGrid for earlier runs (from the ledger): their slots are ours to free too."""
        with self._held_lock:
            for batch, at in held.items():
                self._held.setdefault(batch, at)

    def cancels_held(self) -> tuple[dict[str, int], list[str], bool]:
        """(every cancel held now, the ones deleted since the last call, whether anything changed)."""
        with self._held_lock:
            lifted, self._lifted = self._lifted, []
            changed, self._held_changed = self._held_changed or bool(lifted), False
            return dict(self._held), lifted, changed

    def lift_passed(self) -> None:
        """Delete the cancels whose batch's send_at passed LIFT_AFTER ago: SendGrid dropped that mail at its
        send_at, so the delete can no longer send it, and the slot is free for the next lost answer. A
        delete that fails is tried again next time; a 404 means the cancel is already gone."""
        now = self.clock()
        with self._held_lock:
            due = [b for b, at in self._held.items() if at + LIFT_AFTER <= now]
        for batch in due:
            try:
                self.retrying(partial(self._wire.request, "DELETE", f"/v3/user/scheduled_sends/{batch}"))
            except HTTPError as e:
                if e.status_code != 404:  # 404: the cancel is gone already; anything else: next time
                    continue
            except (OSError, http.client.HTTPException):
                continue
            with self._held_lock:
                self._held.pop(batch, None)
                self._lifted.append(batch)

    def _reset_delay(self, error: BaseException) -> float | None:
        """429: X-RateLimit-Reset is when the account may send again (epoch seconds), plus a little jitter
        so the workers do not all come back in the same instant. None (no header): the backoff."""
        if not isinstance(error, HTTPError) or error.status_code != 429:
            return None
        reset = (error.headers or {}).get("X-RateLimit-Reset")
        try:
            return max(0.0, float(reset) - self.clock()) + random.uniform(0, 0.05) if reset is not None else None
        except ValueError:
            return None

    def _pause_everyone_if_throttled(self, state: RetryCallState) -> None:
        if state.outcome is not None and _throttled(state.outcome.exception()):
            self._pause(state.upcoming_sleep)

    def _pause(self, seconds: float) -> None:
        """Every worker waits: when SendGrid says slow down, it means the account, not one thread."""
        with self._pause_lock:
            self._paused_until = max(self._paused_until, self.clock() + seconds)

    def _wait_if_paused(self) -> None:
        while (left := self._paused_until - self.clock()) > 0:
            self.sleep(left)

    def close(self) -> None:
        self._shared_json.clear()
        if self._batch_pool is not None:
            for ahead in self._batches_ahead:
                ahead.cancel()
            self._batch_pool.shutdown(wait=True)
            self._batch_pool = None
            self._batches_ahead.clear()
        if self._wire_made is not None:
            self._wire_made.close()


def check_shared(body: dict[str, Any]) -> None:
    """The request-level limits of what is shared by every reader (a failure here is our bug)."""
    content = body.get("content") or []
    types = [c["type"] for c in content]
    if not content or any(not c.get("value") for c in content):
        raise PayloadError("bug: mail/send needs at least one non-empty content block")
    if "text/plain" in types and types[0] != "text/plain" or "text/html" in types and \
            types.index("text/html") != (1 if "text/plain" in types else 0):
        raise PayloadError(f"bug: content must be text/plain first, then text/html, not {types}")
    if not body.get("subject"):
        raise PayloadError("bug: the issue has an empty subject")
    cats = body.get("categories", [])
    if len(cats) > MAX_CATEGORIES or len(set(cats)) != len(cats) or \
            any(len(c) > MAX_CATEGORY_CHARS or not c.isascii() for c in cats):
        raise PayloadError(f"bug: categories {cats} break SendGrid's rules (<= 10, unique, ASCII, <= 255)")
    check_headers(body.get("headers", {}), "message")


def _throttled(error: BaseException | None) -> bool:
    """429 Too Many Requests: the account's rate limit, not this request's fault; it has its own budget."""
    return isinstance(error, HTTPError) and error.status_code == 429


def _reason(error: HTTPError) -> str:
    return str(getattr(error, "reason", "") or "")


def describe_refusal(error: HTTPError, messages: Sequence[Any], issue_number: int | None = None) -> str:
    """SendGrid's own words, and what the request was: fit for the admin to act on."""
    details = []
    try:
        for item in json.loads(error.body or b"{}").get("errors", []):
            text = item.get("message") or ""
            if item.get("field"):
                text += f" (field {item['field']})"
            details.append(text)
    except (ValueError, AttributeError):
        details.append((error.body or b"")[:300].decode("utf-8", "replace"))
    first = messages[0]  # a Message, or a claimed row (its address is `email`)
    number = issue_number if issue_number is not None else getattr(first, "issue_number", "?")
    address = getattr(first, "to_email", None) or getattr(first, "email", "?")
    hint = {401: "; check SENDGRID_API_KEY",
            403: "; the key needs the Mail Send permission and the from address must be a verified sender"}
    return (f"SendGrid refused mail/send with {error.status_code} {_reason(error)}: "
            f"{'; '.join(d for d in details if d) or 'no reason given'}{hint.get(error.status_code, '')} "
            f"(issue {number}, a request for {len(messages)} reader(s) from {address}; "
            f"nothing of it was sent and they are queued again)")
