"""The one small interface every transport implements: the Message it carries, the Outcome per message,
the Transport protocol, and the SendReport of a send.

A transport only talks to its provider; the ledger (`ledger.py`) and the batch loop (`loop.py`) are
written once for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formataddr
from typing import Any, NamedTuple, Protocol

from digest.config import Settings
from digest.errors import DeliveryError
from digest.render import Rendered


@dataclass
class Message:
    """One reader's copy: the shared edition plus that reader's token values and headers."""

    delivery_id: int
    subscriber_id: int
    issue_id: int
    issue_number: int
    to_email: str
    to_name: str
    edition: Rendered
    values: dict[str, str]
    headers: dict[str, str]
    list_id: int = 0
    #: the provider batch id and send_at (UNIX seconds) of a scheduled send; None: sent at once
    scheduled: tuple[str, int] | None = None


@dataclass
class Rows:
    """A claimed batch side by side, for a transport's `prepare_rows` (issue 16: a batch built as a batch):
    the claimed rows (delivery_id, id, email, name), each one's edition, "reader" token and mailto (None
    when no mailbox acts on it). `assemble(name, token, mailto)` is the personalizer's values and headers of
    any reader (what a transport's template for plain readers is made from); `slow(i)` is reader i's
    Message by the per-reader code (None: it could not be built, and the loop recorded why)."""

    readers: Sequence[Any]
    editions: Sequence[Rendered]
    tokens: Sequence[str]
    mailtos: Sequence[str | None]
    mailbox: bool
    assemble: Callable[[str, str, str | None], tuple[dict[str, str], dict[str, str]]]
    slow: Callable[[int], Message | None]
    issue_id: int
    issue_number: int
    list_id: int
    scheduled: tuple[str, int] | None = None


class Outcome(NamedTuple):
    """What became of one message. `unknown`: it may or may not have gone out (left claimed). A named tuple:
    one per reader, made at a third of a frozen dataclass's cost (issue 16)."""

    delivery_id: int
    ok: bool
    message_id: str | None = None
    error: str | None = None
    unknown: bool = False


class SendStopped(DeliveryError):
    """The send must stop (auth refused, payload refused, provider down): a message fit for the admin.

    `outcomes` are the messages of the batch the transport had already handled before stopping (marked
    as they went); the rest of the batch was not sent and goes back to the queue.
    """

    def __init__(self, message: str, outcomes: Sequence[Outcome] = ()) -> None:
        super().__init__(message)
        self.outcomes = list(outcomes)


class SendInterrupted(DeliveryError):
    """SIGTERM or SIGHUP (`digest.stopping`) stopped the send after its requests in flight were recorded.
    `report` is the send so far; `digest send` resumes."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.report: SendReport | None = None


class Transport(Protocol):
    """Sends batches. Returns one Outcome per message; raises DeliveryError to stop the whole send.

    A transport may also offer `prepare(messages) -> work` and `submit(work) -> list[Outcome]`: the loop
    then prepares in its own thread (the CPU part) and submits in the worker threads (the waiting); with
    `prepare_rows(Rows) -> work` too, the loop hands it a claimed batch as it is, no Message per reader. And
    `schedule(send_moment) -> (batch id, send_at) | None` with `cancel(batch) -> str | None` (scheduled
    provider batches, recorded with each claim before its request: see `deliver/batches.py`).
    """

    name: str
    batch_size: int
    concurrency: int

    def send(self, messages: list[Message]) -> list[Outcome]: ...

    def close(self) -> None: ...


@dataclass
class SendReport:
    issue_number: int
    subject: str
    submitted: int = 0
    failed: int = 0
    skipped: int = 0
    unknown: int = 0
    already: int = 0
    errors: list[str] = field(default_factory=list)
    waiting: int = 0  # local delivery: readers queued for their zone's moment, still ahead
    next_due: datetime | None = None  # the next of those moments

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.unknown == 0


def sender(settings: Settings) -> str:
    pub = settings.publication
    return formataddr((pub.from_name or pub.name, pub.from_email))
