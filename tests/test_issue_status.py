"""The issue's state machine: every allowed move works, every other move raises, and the ledger and the
workflow both go through it."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import product
from pathlib import Path

import pytest
from sqlalchemy import update

from digest.config import Settings
from digest.deliver.ledger import FAILED, finish_if_done, requeue_failed, snapshot
from digest.errors import DigestError
from digest.issue_status import MOVES, IssueStatus, move
from digest.store import Delivery, IssueRow, session_factory
from tests.fakes.readers import seed_readers

S = IssueStatus
NOW = datetime(2024, 4, 8, 7, 0, tzinfo=UTC)
EARLIER = datetime(2024, 4, 1, 7, 0, tzinfo=UTC)

#: written out by hand, so a change to the machine's data is a change to this test too
ALLOWED = {
    (S.DRAFT, S.APPROVED), (S.DRAFT, S.HELD), (S.DRAFT, S.SKIPPED), (S.DRAFT, S.SENDING),
    (S.APPROVED, S.DRAFT), (S.APPROVED, S.HELD), (S.APPROVED, S.SKIPPED), (S.APPROVED, S.SENDING),
    (S.HELD, S.APPROVED), (S.HELD, S.DRAFT), (S.HELD, S.SKIPPED),
    (S.SKIPPED, S.DRAFT),
    (S.SENDING, S.SENT), (S.SENDING, S.RECALLED),
    (S.SENT, S.SENDING), (S.SENT, S.RECALLED),
    (S.RECALLED, S.DRAFT), (S.RECALLED, S.SKIPPED),
}


@dataclass
class Row:
    number: int = 7
    status: str = "draft"
    note: str = ""
    approved_at: datetime | None = EARLIER
    approved_by: str | None = "someone"
    sent_at: datetime | None = None
    recalled_at: datetime | None = None
    recalled_by: str | None = None


def test_the_moves_are_the_ones_written_out() -> None:
    assert {(a, b) for a, targets in MOVES.items() for b in targets} == ALLOWED
    assert set(MOVES) == set(IssueStatus)


@pytest.mark.parametrize(("old", "new"), list(product(IssueStatus, IssueStatus)))
def test_every_move_is_allowed_or_refused(old: IssueStatus, new: IssueStatus) -> None:
    row = Row(status=old.value)  # as read back from the database: a plain string
    if (old, new) not in ALLOWED:
        with pytest.raises(DigestError, match=f"issue 7 is {old}: only an issue that is .* can be "):
            move(row, new, now=NOW, by="ed", note=" by ed")
        assert row == Row(status=old.value), "a refused move changes nothing"
        return
    assert move(row, new, now=NOW, by="ed", note=" by ed") == old
    assert row.status == new
    assert row.note == f"2024-04-08 07:00 UTC {old} -> {new} by ed\n"
    if new == S.APPROVED:
        assert (row.approved_at, row.approved_by) == (NOW, "ed")
    elif new in (S.DRAFT, S.HELD, S.SKIPPED):
        assert (row.approved_at, row.approved_by) == (None, None)
    else:
        assert (row.approved_at, row.approved_by) == (EARLIER, "someone"), "sending keeps the approval"
    assert row.sent_at == (NOW if new == S.SENT else None)
    assert (row.recalled_at, row.recalled_by) == ((NOW, "ed") if new == S.RECALLED else (None, None))


def test_the_error_names_the_allowed_statuses_and_the_action() -> None:
    with pytest.raises(DigestError, match="issue 7 is skipped: only an issue that is approved or held can be "
                                          "reopened"):
        move(Row(status="skipped"), S.DRAFT, only=(S.APPROVED, S.HELD), action="reopened")
    with pytest.raises(DigestError, match="issue 7 is sent: only an issue that is draft or held can be approved"):
        move(Row(status="sent"), S.APPROVED)


def test_no_note_unless_asked_and_sent_at_is_kept() -> None:
    row = Row(status="sending", sent_at=EARLIER)
    move(row, S.SENT, now=NOW)
    assert row.note == "" and row.sent_at == EARLIER


def test_the_ledger_moves_the_issue_through_the_machine(settings: Settings) -> None:
    seed_readers(settings, 3)
    with session_factory(settings.database_url)() as s:
        held = IssueRow(number=1, subject="#1", content={}, status=S.HELD)
        s.add(held)
        s.flush()
        with pytest.raises(DigestError, match="issue 1 is held: only an issue that is draft or approved or "
                                              "sent can be sent out"):
            snapshot(s, held, 1)
        s.rollback()

        row = IssueRow(number=2, subject="#2", content={}, status=S.APPROVED)
        s.add(row)
        s.flush()
        assert snapshot(s, row, 1) == 3 and row.status == S.SENDING
        assert not finish_if_done(s, row).done, "readers are still queued"
        s.execute(update(Delivery).values(status=FAILED, error="refused"))
        assert finish_if_done(s, row, lambda: NOW).done and row.status == S.SENT and row.sent_at == NOW
        s.commit()
        assert requeue_failed(s, row) == 3 and row.status == S.SENDING
        with pytest.raises(DigestError, match="issue 2 is sending: only an issue that is draft or approved"):
            move(row, S.SENDING)


def test_only_the_state_machine_assigns_an_issue_status() -> None:
    """`row.status = ...` (or a tuple assignment to it) appears in digest/ only in issue_status.py."""
    root = Path(__file__).resolve().parent.parent / "digest"
    found = []
    for path in root.rglob("*.py"):
        if path.name == "issue_status.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else []
            for target in targets:
                elts = target.elts if isinstance(target, ast.Tuple) else [target]
                found += [f"{path.relative_to(root)}:{node.lineno}" for t in elts
                          if isinstance(t, ast.Attribute) and t.attr == "status"]
    assert found == []
