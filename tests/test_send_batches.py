"""A batch's "about to go out" stamp is one `send_batches` row (migration 0012_send_batches, issue 16), not a
stamp on each reader's row; post and reap are ordered by that row's lock (PostgreSQL: real concurrent
transactions); a database upgraded with a batch posted under the old code keeps it of unknown fate."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text, update

from digest.config import Settings, load_settings
from digest.deliver.ledger import claim, counts, post, reap, snapshot, tally, unknown_batches
from digest.issues import build_draft, start_sending
from digest.store import Delivery, IssueRow, SendBatch, UTCDateTime, engine_for, migrate, session_factory, utcnow
from tests.fakes.readers import seed_readers, set_keys

LEASE = timedelta(seconds=60)


@pytest.fixture
def ready(workdir: Path) -> Settings:
    set_keys(workdir, "delivery", lease_seconds=60)
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    seed_readers(settings, 30)
    with session_factory(settings.database_url)() as s:
        issue = build_draft(settings, s).row
        start_sending(s, issue)
        snapshot(s, issue, 1)
        s.commit()
    return settings


def _expire(settings: Settings) -> None:
    """The lease of every claimed row ran out (its worker stopped renewing it)."""
    with session_factory(settings.database_url)() as s:
        s.execute(update(Delivery).where(Delivery.status == "claimed")
                  .values(lease_until=utcnow() - timedelta(seconds=1)))
        s.commit()


def test_post_stamps_the_batch_once_and_leaves_its_readers_rows_alone(backend: str, ready: Settings) -> None:
    with session_factory(ready.database_url)() as s:
        issue = s.scalar(select(IssueRow))
        got = claim(s, issue.id, 1, 10, worker="w1", lease=LEASE)
        assert got is not None and len(got.readers) == 10
        ids = [r.delivery_id for r in got.readers]
        version = "xmin::text" if backend == "postgresql" else "updated_at"  # a row rewritten gets a new xmin
        before = dict(s.execute(text(f"SELECT id, {version} FROM deliveries WHERE batch = :b"), {"b": got.batch}).all())
        assert s.scalar(select(SendBatch.posted_at).where(SendBatch.batch == got.batch)) is None
        assert post(s, got.batch, "w1", 10)
        after = dict(s.execute(text(f"SELECT id, {version} FROM deliveries WHERE batch = :b"), {"b": got.batch}).all())
        assert sorted(after) == sorted(ids) and after == before, "no reader's row was written by the post"
        assert s.scalar(select(SendBatch.posted_at).where(SendBatch.batch == got.batch)) is not None
        assert not post(s, got.batch, "w1", 10), "a batch is posted once"
        # a worker that claims for another issue's batch id, or a wrong size, posts nothing
        other = claim(s, issue.id, 1, 10, worker="w1", lease=LEASE)
        assert other is not None and not post(s, other.batch, "w1", 9) and not post(s, other.batch, "w2", 10)
        assert s.scalar(select(SendBatch.posted_at).where(SendBatch.batch == other.batch)) is None
        # posted batch: unknown once its worker is gone; the batch never posted: queued again
        _expire(ready)
        assert reap(s, issue.id) == (10, 10)
        assert counts(s, issue.id) == {"queued": 20, "claimed": 10}
        assert tally(s, issue.id).unknown == 10
        assert [b.batch for b in unknown_batches(s, issue.id)] == [got.batch]
        assert not post(s, other.batch, "w1", 10), "a reaped batch never goes out"


def _concurrently(fn: object) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(fn()))  # type: ignore[operator]
    thread.start()
    return thread, out


def test_a_reap_waits_for_a_post_in_progress_and_then_leaves_the_batch_unknown(backend: str, ready: Settings) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time: a post and a reap cannot overlap there")
    factory = session_factory(ready.database_url)
    with factory() as s:
        issue = s.scalar(select(IssueRow))
        got = claim(s, issue.id, 1, 10, worker="w1", lease=LEASE)
        assert got is not None
    engine = engine_for(ready.database_url)
    with engine.connect() as owner:  # the owner's post, caught between its UPDATE and its commit
        assert owner.execute(text("UPDATE send_batches SET posted_at = now() WHERE batch = :b AND reaped_at IS NULL"),
                             {"b": got.batch}).rowcount == 1
        _expire(ready)  # the owner's lease runs out while its post is not yet committed

        def reaper() -> tuple[int, int]:
            with factory() as r:
                return reap(r, issue.id)

        thread, out = _concurrently(reaper)
        time.sleep(0.5)
        assert thread.is_alive(), "the reap waits for the batch row the post holds"
        owner.commit()
        thread.join(30)
    assert out == [(0, 10)], "the post committed first: the request may be out, so its readers are unknown"
    with factory() as s:
        assert tally(s, issue.id).unknown == 10 and counts(s, issue.id).get("queued") == 20


def test_a_post_waits_for_a_reap_in_progress_and_then_sends_nothing(backend: str, ready: Settings) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time: a post and a reap cannot overlap there")
    factory = session_factory(ready.database_url)
    with factory() as s:
        issue = s.scalar(select(IssueRow))
        got = claim(s, issue.id, 1, 10, worker="w1", lease=LEASE)
        assert got is not None
    engine = engine_for(ready.database_url)
    with engine.connect() as reaper:  # a reaper that has taken the batch's row and not yet committed
        assert reaper.execute(text("UPDATE send_batches SET reaped_at = now() WHERE batch = :b RETURNING posted_at"),
                              {"b": got.batch}).all() == [(None,)]

        def owner() -> bool:
            with factory() as o:
                return post(o, got.batch, "w1", 10)

        thread, out = _concurrently(owner)
        time.sleep(0.5)
        assert thread.is_alive(), "the post waits for the batch row the reaper holds"
        reaper.execute(update(Delivery).where(Delivery.batch == got.batch).values(
            status="queued", batch=None, worker=None, lease_until=None))
        reaper.commit()
        thread.join(30)
    assert out == [False], "reaped first: the owner's request must not go out"
    with factory() as s:
        assert counts(s, issue.id) == {"queued": 30}
        assert s.scalar(select(SendBatch.posted_at).where(SendBatch.batch == got.batch)) is None


def _to(url: str, revision: str, *, down: bool = False) -> None:
    from alembic import command

    from digest.store import alembic_config

    with engine_for(url).begin() as conn:
        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


def test_batches_claimed_before_the_upgrade_keep_their_fate(database_url: str) -> None:
    """Under 0011 a crash left claimed rows stamped posted (unknown) and others not (queued again on reap);
    0012 moves each stamp to its batch's row, and the way back puts it on the rows again."""
    _to(database_url, "0011_list_counts")
    now = utcnow()
    old = Table("deliveries", MetaData(), Column("id", Integer, primary_key=True), Column("issue_id", Integer),
                Column("email", String), Column("status", String), Column("batch", String),
                Column("updated_at", UTCDateTime), Column("worker", String), Column("lease_until", UTCDateTime),
                Column("posted_at", UTCDateTime))  # 0011's columns that matter here
    with engine_for(database_url).begin() as conn:
        issue = conn.execute(insert(IssueRow.__table__).values(number=1, subject="s", status="sending", content={})
                             .returning(IssueRow.__table__.c.id)).scalar_one()
        conn.execute(insert(old), [{"issue_id": issue, "email": f"r{i}@example.com", "status": "claimed",
                                    "batch": "posted" if i < 2 else "not-posted", "updated_at": now, "worker": "gone",
                                    "lease_until": now - timedelta(seconds=1), "posted_at": now if i < 2 else None}
                                   for i in range(4)])
    migrate(database_url)
    with session_factory(database_url)() as s:
        assert dict(s.execute(select(SendBatch.batch, SendBatch.posted_at.is_not(None))).all()) == {
            "posted": True, "not-posted": False}
        assert reap(s, issue) == (2, 2)
        assert tally(s, issue).unknown == 2 and [b.batch for b in unknown_batches(s, issue)] == ["posted"]
    _to(database_url, "0011_list_counts", down=True)
    with engine_for(database_url).connect() as conn:
        assert conn.execute(text("SELECT email, posted_at IS NOT NULL FROM deliveries WHERE status = 'claimed' "
                                 "ORDER BY email")).all() == [("r0@example.com", True), ("r1@example.com", True)]
