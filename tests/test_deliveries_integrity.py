"""The ledger has no foreign keys (migration 0016_deliveries_keys: PostgreSQL checked each row the
snapshot inserted with a query of its own). What they guarded still holds: every row names a reader who
existed when it was written, and an erased reader is unlinked from every row, even one a send is writing
while the erasure runs (the snapshot holds off erasures until it commits, digest.locks.hold_off_erasures)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

from digest.config import load_settings
from digest.deliver import ledger
from digest.store import Delivery, IssueRow, engine_for, migrate, session_factory
from subscribers import lifecycle
from subscribers.lifecycle import ensure_list
from tests.fakes.readers import seed_readers, sending_issue


def _issue(workdir: Path, n: int) -> tuple[str, int, int, list[str]]:
    """n active readers and issue 1 sending, not snapshotted: (URL, issue id, list id, addresses)."""
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    emails = seed_readers(settings, n)
    issue_id = sending_issue(settings)
    with session_factory(settings.database_url)() as s:
        return settings.database_url, issue_id, ensure_list(s, settings.delivery.list).id, emails


def _snapshot(s: Session, issue_id: int, list_id: int) -> int:
    issue = s.get(IssueRow, issue_id, with_for_update=True)
    assert issue is not None
    return ledger.snapshot(s, issue, list_id)


def _ledger(url: str, issue_id: int) -> dict[str, int | None]:
    with session_factory(url)() as s:
        return dict(s.execute(select(Delivery.email, Delivery.subscriber_id).where(Delivery.issue_id == issue_id)
                              ).all())  # type: ignore[arg-type]


def test_an_erased_reader_is_unlinked_from_the_ledger_though_no_foreign_key_does_it(workdir: Path) -> None:
    url, issue_id, list_id, emails = _issue(workdir, 3)
    assert inspect(engine_for(url)).get_foreign_keys("deliveries") == []
    with session_factory(url)() as s:
        assert _snapshot(s, issue_id, list_id) == 3
        s.commit()
        assert lifecycle.erase(s, emails[1])
        s.commit()
    rows = _ledger(url, issue_id)
    assert rows.pop("(erased)") is None  # address and link both gone
    assert sorted(rows) == [emails[0], emails[2]] and all(rows.values())


def _blocked(url: str, timeout: float = 10.0) -> None:
    """Wait until some other session of this database waits for a row lock."""
    with engine_for(url).connect() as conn:
        deadline = time.monotonic() + timeout
        while not conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                   "AND wait_event_type = 'Lock'")):
            assert time.monotonic() < deadline, "the other session never waited for the lock"
            time.sleep(0.02)
            conn.rollback()


def _overlap(url: str, first: Callable[[Session], object], then: Callable[[Session], object]) -> None:
    """`first` in a transaction left open; `then` in another thread's session, which must wait for a row
    lock of `first`'s; `first` commits, and `then` completes."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with session_factory(url)() as s:
                then(s)
                s.commit()
        except BaseException as e:  # re-raised below
            errors.append(e)

    with session_factory(url)() as s:
        first(s)
        thread = threading.Thread(target=run)
        thread.start()
        _blocked(url)
        s.commit()
    thread.join(30)
    assert not thread.is_alive() and not errors, errors


@pytest.mark.parametrize("erasure_first", [False, True])
def test_an_erasure_and_a_snapshot_overlapping_on_postgresql_wait_for_each_other(workdir: Path, backend: str,
                                                                               erasure_first: bool) -> None:
    """Either the erasure waits for the snapshot and then blanks and unlinks the rows it wrote, or the
    snapshot waits for the erasure and leaves the reader out."""
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time: a snapshot and an erasure cannot overlap")
    url, issue_id, list_id, emails = _issue(workdir, 3)
    added: list[int] = []
    erased: list[bool] = []

    def snapshot(s: Session) -> None:
        added.append(_snapshot(s, issue_id, list_id))

    def erase(s: Session) -> None:
        erased.append(lifecycle.erase(s, emails[0]))

    _overlap(url, *((erase, snapshot) if erasure_first else (snapshot, erase)))
    assert erased == [True] and added == [2 if erasure_first else 3]
    rows = _ledger(url, issue_id)
    if not erasure_first:
        assert rows.pop("(erased)") is None  # the row the snapshot was writing: blanked and unlinked
    assert sorted(rows) == emails[1:] and all(rows.values())


def test_a_snapshot_in_progress_on_postgresql_does_not_hold_up_a_change_to_a_reader(workdir: Path,
                                                                                  backend: str) -> None:
    """The snapshot holds off erasures alone: a reader who changes their name or preferences meanwhile is not
    kept waiting for the whole send's snapshot (FOR NO KEY UPDATE on its readers' rows, SQLAlchemy's
    `key_share=True` without `read=True`, did)."""
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time: a snapshot and a change cannot overlap")
    url, issue_id, list_id, emails = _issue(workdir, 3)
    with session_factory(url)() as s:
        assert _snapshot(s, issue_id, list_id) == 3  # left open: its locks held
        with session_factory(url)() as other:
            other.execute(text("SET LOCAL lock_timeout = '2s'"))
            changed = other.execute(text("UPDATE subscribers SET name = 'Renamed' WHERE email = :e"),
                                    {"e": emails[0]}).rowcount  # type: ignore[attr-defined]
            other.commit()
        s.commit()
    assert changed == 1
    assert sorted(_ledger(url, issue_id)) == sorted(emails)


def test_a_snapshot_on_postgresql_writes_nothing_to_its_readers_rows(workdir: Path, backend: str) -> None:
    """Issue 16: what holds an erasure off is one lock (digest.locks.hold_off_erasures), not a row lock on each
    reader, which PostgreSQL writes into the row itself (its xmax): a write of every reader's row, a tenth
    of the snapshot's time at 100,000 readers."""
    if backend != "postgresql":
        pytest.skip("SQLite has no row locks")
    url, issue_id, list_id, _ = _issue(workdir, 5)
    marks = text("SELECT id, xmax::text FROM subscribers ORDER BY id")  # the last transaction to lock each
    with session_factory(url)() as s:
        before = s.execute(marks).all()
        s.rollback()
        assert _snapshot(s, issue_id, list_id) == 5
        s.commit()
        after = s.execute(marks).all()
    assert len(after) == 5 and after == before, "the snapshot locked its readers' rows"


# -- a large snapshot on PostgreSQL: two halves, written by two connections at once (ledger._copy) -----------


def _halves(workdir: Path, monkeypatch: pytest.MonkeyPatch, n: int) -> tuple[str, int, int, list[str]]:
    """n active readers and 2 who left, ids spread wide enough that the snapshot is written in two halves."""
    monkeypatch.setattr(ledger, "SPLIT_SPAN", 4)
    url, issue_id, list_id, emails = _issue(workdir, n)
    left = seed_readers(load_settings(workdir / "digest.toml"), 2, domain="left.example", status="unsubscribed")
    assert left and emails
    return url, issue_id, list_id, emails


def test_a_large_snapshot_on_postgresql_is_written_by_two_transactions_each_active_reader_once(
        workdir: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time: the snapshot is one INSERT")
    url, issue_id, list_id, emails = _halves(workdir, monkeypatch, 9)
    with session_factory(url)() as s:
        assert _snapshot(s, issue_id, list_id) == 9
        s.commit()
        writers = s.scalar(text("SELECT count(DISTINCT xmin::text) FROM deliveries WHERE issue_id = :i"),
                           {"i": issue_id})
    assert writers == 2, "one transaction wrote the whole snapshot"
    rows = _ledger(url, issue_id)
    assert sorted(rows) == sorted(emails) and len(set(rows.values())) == 9


def test_a_snapshot_whose_own_half_fails_after_the_other_half_committed_is_completed_by_the_next_run(
        workdir: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upper half commits on its own connection; the issue's transaction then fails (here: after its
    INSERT, before its commit). The issue keeps no `snapshot_at`, and the next snapshot adds exactly the
    readers missing."""
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time: the snapshot is one INSERT")
    url, issue_id, list_id, emails = _halves(workdir, monkeypatch, 9)
    copy = ledger._copy

    def copy_then_fail(*args: object) -> int:
        copy(*args)  # type: ignore[arg-type]
        raise RuntimeError("the process failed before the issue's transaction committed")

    monkeypatch.setattr(ledger, "_copy", copy_then_fail)
    with session_factory(url)() as s, pytest.raises(RuntimeError):
        _snapshot(s, issue_id, list_id)
    upper = _ledger(url, issue_id)
    assert 0 < len(upper) < 9, "the upper half was not committed on its own"
    monkeypatch.setattr(ledger, "_copy", copy)
    with session_factory(url)() as s:
        assert s.get_one(IssueRow, issue_id).snapshot_at is None
        assert _snapshot(s, issue_id, list_id) == 9 - len(upper)
        s.commit()
    rows = _ledger(url, issue_id)
    assert sorted(rows) == sorted(emails) and len(set(rows.values())) == 9


def test_an_erasure_waits_for_both_halves_of_a_snapshot_and_blanks_the_row_the_other_connection_wrote(
        workdir: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time: a snapshot and an erasure cannot overlap")
    url, issue_id, list_id, emails = _halves(workdir, monkeypatch, 9)
    erased: list[bool] = []
    _overlap(url, lambda s: _snapshot(s, issue_id, list_id),
             lambda s: erased.append(lifecycle.erase(s, emails[-1])))  # the highest id: the upper half's
    assert erased == [True]
    rows = _ledger(url, issue_id)
    assert rows.pop("(erased)") is None
    assert sorted(rows) == sorted(emails[:-1]) and all(rows.values())
