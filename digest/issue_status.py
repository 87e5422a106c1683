"""An issue's status: the statuses, the moves allowed between them, and the one function that moves.

draft -> approved -> sending -> sent, or held / skipped on the way. The issue workflow (`digest.issues`)
and the delivery ledger (`digest.deliver.ledger`) both move an issue through `move`, so the rules are
written once and a wrong move is an error, not a silent overwrite. The stored strings are the enum's
values (the `issues.status` column is a plain string), so no migration is needed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from digest.errors import DigestError


class IssueStatus(StrEnum):
    DRAFT = "draft"
    APPROVED = "approved"
    SENDING = "sending"
    SENT = "sent"
    SKIPPED = "skipped"
    HELD = "held"
    RECALLED = "recalled"


S = IssueStatus
#: from each status, the statuses an issue may move to
MOVES: Mapping[IssueStatus, frozenset[IssueStatus]] = {
    # a draft is approved, held or skipped by an editor (or the schedule); `digest send` may send a draft
    # that nobody approved (the ledger's snapshot moves it to sending)
    S.DRAFT: frozenset({S.APPROVED, S.HELD, S.SKIPPED, S.SENDING}),
    # reopened or rebuilt (draft), held back, skipped, or sent
    S.APPROVED: frozenset({S.DRAFT, S.HELD, S.SKIPPED, S.SENDING}),
    S.HELD: frozenset({S.APPROVED, S.DRAFT, S.SKIPPED}),
    # a skipped issue's number is reused: the next draft rebuilds it
    S.SKIPPED: frozenset({S.DRAFT}),
    # recalled: scheduled batches cancelled before their send moment (`digest recall`)
    S.SENDING: frozenset({S.SENT, S.RECALLED}),
    # failed readers queued again (`digest deliveries retry-failed`) open the issue again
    S.SENT: frozenset({S.SENDING, S.RECALLED}),
    # a recalled issue is fixed (a draft again: rebuilt, approved, sent) or skipped; its recalled readers
    # stay queued and get it once
    S.RECALLED: frozenset({S.DRAFT, S.SKIPPED}),
}
#: an issue that is the newest and in one of these is rebuilt by the next draft instead of a new number
REBUILDABLE = frozenset({S.DRAFT, S.APPROVED, S.HELD, S.SKIPPED, S.RECALLED})
#: the issue in progress is the newest in one of these (searched in this order)
IN_PROGRESS = (S.SENDING, S.APPROVED, S.DRAFT)
#: each move in words, for the error that refuses it ("only an issue that is draft or held can be approved")
_ACTIONS = {S.DRAFT: "made a draft again", S.APPROVED: "approved", S.SENDING: "sent out", S.SENT: "marked sent",
            S.SKIPPED: "skipped", S.HELD: "held", S.RECALLED: "recalled"}
#: an approval is dropped when the issue moves to one of these
_UNAPPROVED = frozenset({S.DRAFT, S.HELD, S.SKIPPED})


class StatusRow(Protocol):
    """What `move` touches on an issue (`digest.store.IssueRow`; a protocol so the store may import this)."""

    number: int
    status: str
    note: str
    approved_at: datetime | None
    approved_by: str | None
    sent_at: datetime | None
    recalled_at: datetime | None
    recalled_by: str | None


def sources(to: IssueStatus) -> tuple[IssueStatus, ...]:
    """The statuses an issue may move to `to` from, in the enum's order."""
    return tuple(s for s in IssueStatus if to in MOVES[s])


def add_note(row: StatusRow, text: str, now: datetime | None = None) -> None:
    """The issue's history in words (who held it, why it was skipped, a missed run): appended, never lost."""
    stamp = f"{(now or datetime.now(UTC)).astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    row.note = f"{row.note or ''}{stamp} {text}\n"


def move(row: StatusRow, to: IssueStatus, *, now: datetime | None = None, by: str = "",
         note: str | None = None, only: Collection[IssueStatus] | None = None, action: str | None = None,
         ) -> IssueStatus:
    """Move the issue to `to`, or raise a DigestError naming the issue, its status and the move.

    `only` narrows the statuses the move is made from (an editor's command may allow fewer than the
    machine does); `action` is the move in words for the error ("reopened").

    `note`, when given, is recorded in the issue's history after "old -> new" (e.g. " by cli: holiday").
    An approval (`approved_at`, `approved_by` = `by`) is set by a move to approved and dropped by a move
    to draft, held or skipped; `sent_at` is set by the move to sent; `recalled_at` and `recalled_by` by the
    move to recalled. Returns the status it moved from.
    """
    old = IssueStatus(row.status)
    allowed = [s for s in sources(to) if only is None or s in only]
    if old not in allowed:
        raise DigestError(f"issue {row.number} is {old}: only an issue that is {' or '.join(allowed)} "
                          f"can be {action or _ACTIONS[to]}")
    now = now or datetime.now(UTC)
    if note is not None:
        add_note(row, f"{old} -> {to}{note}", now)
    row.status = to
    if to == S.APPROVED:
        row.approved_at, row.approved_by = now, by
    elif to in _UNAPPROVED:
        row.approved_at, row.approved_by = None, None
    elif to == S.SENT:
        row.sent_at = row.sent_at or now
    elif to == S.RECALLED:
        row.recalled_at, row.recalled_by = now, by
    return old
