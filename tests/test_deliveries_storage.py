"""The deliveries table is laid out for the send's writes (migrations 0010_deliveries_fillfactor,
0014_deliveries_hot, 0017_deliveries_room): no index names a column that claiming or marking a row changes,
and on PostgreSQL three quarters of each page are kept free, so those writes are heap-only updates that
touch no index."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateTable

from digest.config import load_settings
from digest.deliver import ledger
from digest.deliver.protocol import Outcome
from digest.store import Delivery, IssueRow, engine_for, migrate, session_factory
from subscribers.lifecycle import ensure_list
from tests.fakes.readers import seed_readers, sending_issue

# what a claim and a mark write on each reader's row (ledger._claim_statement, ledger._mark_statement)
WRITTEN_PER_READER = {"status", "batch", "worker", "lease_until", "updated_at", "message_id", "edition"}


def test_deliveries_keep_room_for_heap_only_updates_after_the_migrations_and_in_the_model(database_url: str) -> None:
    # the model says it too, so a table created from it (tests, scripts) matches the migrated one
    ddl = str(CreateTable(Delivery.__table__).compile(dialect=postgresql.dialect()))  # type: ignore[arg-type]
    assert "WITH (fillfactor = 25)" in ddl, ddl
    migrate(database_url)
    engine = engine_for(database_url)
    if engine.dialect.name != "postgresql":
        return  # SQLite has no fillfactor: the migration only has to run there
    with engine.connect() as conn:
        options = conn.scalar(text("SELECT reloptions FROM pg_class WHERE relname = 'deliveries'"))
    assert options == ["fillfactor=25"], options



def test_deliveries_take_their_ids_a_thousand_at_a_time_on_postgresql(database_url: str) -> None:
    """Migration 0018_deliveries_ids_ahead: the two halves of a large snapshot (ledger._copy) write runs of
    ids of their own, not one id each in turns, and no row's id locks the sequence."""
    migrate(database_url)
    engine = engine_for(database_url)
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no sequences")
    with engine.connect() as conn:
        cache = conn.scalar(text("SELECT cache_size FROM pg_sequences WHERE schemaname || '.' || sequencename "
                                 "= pg_get_serial_sequence('deliveries', 'id')"))
    assert cache == 1000, cache

def test_no_index_of_deliveries_names_a_column_a_claim_or_a_mark_writes(database_url: str) -> None:
    migrate(database_url)
    engine = engine_for(database_url)
    indexes = inspect(engine).get_indexes("deliveries")
    assert {i["name"] for i in indexes} >= {"ix_deliveries_issue_id", "ix_deliveries_provider_batch"}, indexes
    for index in indexes:
        named = set(index["column_names"])
        where = str(index.get("dialect_options", {}).get(f"{engine.dialect.name}_where", ""))
        named |= set(re.findall(r"\w+", where))  # a partial index's predicate counts too
        assert not named & WRITTEN_PER_READER, index


def _readers(workdir: Path, n: int) -> tuple[str, int, int]:
    """n active readers and issue 1 sending, its send not begun: (database URL, issue id, list id)."""
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    seed_readers(settings, n)
    issue_id = sending_issue(settings)
    with session_factory(settings.database_url)() as s:
        return settings.database_url, issue_id, ensure_list(s, settings.delivery.list).id


def _hot(session: Session) -> tuple[int, int]:
    """(rows updated, of them heap-only) in deliveries by this transaction so far (PostgreSQL's own counts)."""
    row: Any = session.execute(text("SELECT pg_stat_get_xact_tuples_updated('deliveries'::regclass), "
                                    "pg_stat_get_xact_tuples_hot_updated('deliveries'::regclass)")).one()
    return int(row[0]), int(row[1])


def test_claiming_and_marking_a_batch_on_postgresql_write_heap_only_versions(workdir: Path, backend: str) -> None:
    if backend != "postgresql":
        return  # heap-only tuples are PostgreSQL's; the schema test above holds for SQLite
    url, issue_id, list_id = _readers(workdir, 3000)
    with session_factory(url)() as s:
        issue = s.get(IssueRow, issue_id)
        assert issue is not None
        assert ledger.snapshot(s, issue, list_id) == 3000
        s.commit()
        before = _hot(s)
        # a worker id as long as the send loop's (`digest.locks.join_send`): the claimed row as big as in a send
        got = ledger.claim(s, issue.id, list_id, 1000, worker="0123456789abcdef", commit=False)
        assert got is not None and len(got.readers) == 1000
        claimed = tuple(a - b for a, b in zip(_hot(s), before, strict=True))
        s.commit()
        # a claimed row is bigger than the snapshot's (batch, worker, lease), and none of the claim's old
        # versions can be pruned before it commits: only a page filled to a quarter holds each of its rows
        # twice (at 0014's fillfactor 50, 596 here; migration 0017_deliveries_room). No pruning is needed, so
        # no older transaction elsewhere on the server changes this
        assert claimed == (1000, 1000)
        before = _hot(s)
        ok = [Outcome(r.delivery_id, True, message_id="abcdefghijklmnopqrstuv") for r in got.readers]
        assert ledger.mark(s, got.batch, ok, 1000, {r.delivery_id: "e1a2b3c" for r in got.readers}) == (1000, 0, 0)
        updated, hot = (a - b for a, b in zip(_hot(s), before, strict=True))
        s.commit()
        assert updated == 1000
        # the claim's old versions are dead once it committed, and the mark's pages prune them: 97% heap-only.
        # But no version is pruned while any transaction on the server is older than the claim (held open
        # in another database, this gives 406 every time, as the other tests of a parallel run do now and
        # then): the room the fillfactor left is then what the marks have, about 40%. With an index on
        # `status`, or full pages, none
        assert hot >= 350, (updated, hot)
        marked = select(func.count()).where(Delivery.status == "submitted", Delivery.edition == "e1a2b3c")
        assert s.scalar(marked) == 1000


def test_a_snapshot_on_postgresql_leaves_the_planner_the_tables_size_and_the_issues_share(
        workdir: Path, backend: str) -> None:
    """The snapshot grows the table by a whole list in one statement, long before autovacuum looks: it
    analyzes what the claim's plan depends on (the table's size, the issue's and the statuses' share), from a
    small sample, in its own transaction. Without it the planner kept the view it had of the table empty."""
    if backend != "postgresql":
        return  # SQLite's planner keeps no statistics of its own here
    url, issue_id, list_id = _readers(workdir, 3000)
    with session_factory(url)() as s:
        s.execute(text("ANALYZE deliveries"))  # the table as autovacuum last saw it: empty
        s.commit()
        issue = s.get(IssueRow, issue_id)
        assert issue is not None
        assert ledger.snapshot(s, issue, list_id) == 3000
        target = s.scalar(text("SHOW default_statistics_target"))
        s.commit()
        assert target == "10"  # for the snapshot's transaction only
        assert s.scalar(text("SHOW default_statistics_target")) == "100"
        assert s.scalar(text("SELECT reltuples FROM pg_class WHERE relname = 'deliveries'")) == 3000
        stats = dict(s.execute(text("SELECT attname, most_common_vals::text FROM pg_stats "
                                    "WHERE tablename = 'deliveries' AND attname IN ('issue_id', 'status')")).all())
        assert stats == {"issue_id": f"{{{issue_id}}}", "status": "{queued}"}, stats


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, its sub-plans included."""
    return [plan, *(node for child in plan.get("Plans", []) for node in _plan_nodes(child))]


def test_a_claim_on_postgresql_finds_its_rows_by_key_without_reading_the_whole_table(
        workdir: Path, backend: str) -> None:
    """The claim's UPDATE finds the ids it picked through the primary key, whatever the table's size. Joined
    to the pick (a CTE, whose size the planner cannot see), its plan was a hash of every queued row of the
    table: each claim read the whole issue, O(readers) per batch (issue 16)."""
    if backend != "postgresql":
        return  # SQLite runs the claim as an IN over the picked ids (`_claim_statement`)
    url, issue_id, list_id = _readers(workdir, 3000)
    with session_factory(url)() as s:
        issue = s.get(IssueRow, issue_id)
        assert issue is not None
        assert ledger.snapshot(s, issue, list_id) == 3000  # and analyzed: the plan a send gets
        s.commit()
        conn = s.connection()
        compiled = ledger._claim_statement(True, False, False).compile(dialect=conn.dialect)
        values = compiled.construct_params({
            "c_issue": issue_id, "c_after": 0, "c_size": 1000, "c_due_by": None, "c_moment": None, "c_batch": "b",
            "c_now": issue.snapshot_at, "c_worker": None, "c_lease_until": None, "c_list": list_id})
        plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}", values).scalar_one()[0]["Plan"]
        s.rollback()
    update = next(n for n in _plan_nodes(plan) if n.get("Operation") == "Update")
    assert update["Actual Rows"] == 1000, update  # the 1,000 claimed
    # what the UPDATE reads of the table to find them: the 1,000 ids by key, not the issue's 3,000 rows
    reads = [n for n in _plan_nodes(update)[1:] if n.get("Relation Name") == "deliveries" or
             n.get("Index Name") == "deliveries_pkey"]
    assert reads and all(n["Actual Rows"] * n["Actual Loops"] <= 1000 for n in reads), reads
    assert "deliveries_pkey" in {n.get("Index Name") for n in reads}, reads


def test_a_batch_spread_over_the_issue_is_read_and_marked_by_its_own_rows_alone(workdir: Path) -> None:
    """A claim of readers queued again (or of one zone's readers) takes ids spread over the issue: found by
    their ids, not their range, and a mark touches none of the rows between them."""
    url, issue_id, list_id = _readers(workdir, 300)
    with session_factory(url)() as s:
        issue = s.get(IssueRow, issue_id)
        assert issue is not None
        ledger.snapshot(s, issue, list_id)
        s.commit()
        first = ledger.claim(s, issue.id, list_id, 300, worker="w1")
        assert first is not None and len(first.readers) == 300
        spread = [r.delivery_id for r in first.readers][::50]  # six rows, 50 ids apart: not a dense run
        ledger.release(s, spread, first.batch)
        rest = [r for r in first.readers if r.delivery_id not in spread]
        ok = [Outcome(r.delivery_id, True, message_id="first") for r in rest]
        assert ledger.mark(s, first.batch, ok, len(rest), {r.delivery_id: "e1" for r in rest}) == (294, 0, 0)
        s.commit()
        again = ledger.claim(s, issue.id, list_id, 100, worker="w1")
        assert again is not None and [r.delivery_id for r in again.readers] == spread
        email_of = {r.delivery_id: r.email for r in first.readers}
        assert [r.email for r in again.readers] == [email_of[i] for i in spread]
        ok = [Outcome(i, True, message_id="second") for i in spread]
        assert ledger.mark(s, again.batch, ok, len(spread), {i: "e2" for i in spread}) == (6, 0, 0)
        s.commit()
        rows = dict(s.execute(select(Delivery.id, Delivery.message_id).where(Delivery.issue_id == issue.id)).all())
        assert sorted(i for i, m in rows.items() if m == "second") == spread
        assert sum(m == "first" for m in rows.values()) == 294
        assert s.scalar(select(func.count()).where(Delivery.edition == "e2")) == 6


def test_a_scheduled_claim_writes_its_provider_batch_once_and_its_readers_rows_stay_heap_only(
        workdir: Path, backend: str) -> None:
    """Migration 0015_batch_schedule: a scheduled send's provider batch and send moment are the claimed batch's,
    on its `send_batches` row, not on each reader's (they made every claimed row 60 bytes longer and wrote an
    entry in ix_deliveries_provider_batch per reader), and the batch's readers are found by them; on
    PostgreSQL a scheduled claim's row versions can now be heap-only."""
    from datetime import UTC, datetime

    from digest.store import SendBatch
    from tests.fakes.readers import scheduled_of

    url, issue_id, list_id = _readers(workdir, 3000)
    at = datetime(2031, 5, 6, 7, 0, tzinfo=UTC)
    with session_factory(url)() as s:
        issue = s.get(IssueRow, issue_id)
        assert issue is not None
        assert ledger.snapshot(s, issue, list_id) == 3000
        s.commit()
        before = _hot(s) if backend == "postgresql" else (0, 0)
        got = ledger.claim(s, issue.id, list_id, 1000, scheduled=("sg-batch-1", int(at.timestamp())),
                           worker="0123456789abcdef", commit=False)
        assert got is not None and len(got.readers) == 1000
        updated, hot = (a - b for a, b in zip(_hot(s), before, strict=True)) if backend == "postgresql" else (0, 0)
        s.commit()
        own = select(func.count()).where(Delivery.issue_id == issue.id, Delivery.provider_batch.is_not(None))
        assert s.scalar(own) == 0, "no reader's row carries the provider batch"
        row = s.get_one(SendBatch, got.batch)
        ids = [r.delivery_id for r in got.readers]
        assert (row.provider_batch, row.send_at, row.first_id, row.last_id) == ("sg-batch-1", at, min(ids), max(ids))
        assert {i: v for i, v in scheduled_of(s, issue.id).items() if v != (None, None)} == {
            r.email: ("sg-batch-1", at) for r in got.readers}
        assert ledger.batch_send_at(s, issue.id, "sg-batch-1") == at
        assert ledger.requeue_batch(s, issue.id, "sg-batch-1", ledger.CLAIMED, "cancelled") == 1000
        s.commit()
        assert ledger.counts(s, issue.id) == {"queued": 3000}
        assert scheduled_of(s, issue.id) == {e: (None, None) for e in scheduled_of(s, issue.id)}
    if backend == "postgresql":
        assert updated == 1000
        # about 60%: a claimed row grows by its batch, worker and lease, and a page filled to half holds about
        # that share of its rows twice at that size (docs/delivery.md, the sixth round). Before migration
        # 0015_batch_schedule none was: the claim changed ix_deliveries_provider_batch's column
        assert hot >= 500, (updated, hot)


def test_a_scheduled_claim_of_readers_spread_over_the_issue_stamps_their_own_rows(workdir: Path) -> None:
    """One zone's readers, or readers queued again, are spread over the issue's ids: their claim's id range may
    span the whole issue, which a recall would read once per batch. Their provider batch goes on their own
    rows (found by ix_deliveries_provider_batch), as before migration 0015_batch_schedule."""
    from datetime import UTC, datetime

    from digest.store import SendBatch
    from tests.fakes.readers import scheduled_of

    url, issue_id, list_id = _readers(workdir, 300)
    at = datetime(2031, 5, 6, 7, 0, tzinfo=UTC)
    with session_factory(url)() as s:
        issue = s.get(IssueRow, issue_id)
        assert issue is not None
        ledger.snapshot(s, issue, list_id)
        s.commit()
        first = ledger.claim(s, issue.id, list_id, 300, scheduled=("sg-1", int(at.timestamp())), worker="w1")
        assert first is not None
        spread = [r.delivery_id for r in first.readers][::50]  # six rows, 50 ids apart: not a dense run
        ledger.release(s, spread, first.batch)
        s.commit()
        again = ledger.claim(s, issue.id, list_id, 100, scheduled=("sg-2", int(at.timestamp())), worker="w1")
        assert again is not None and [r.delivery_id for r in again.readers] == spread
        own = dict(s.execute(select(Delivery.id, Delivery.provider_batch).where(
            Delivery.issue_id == issue.id, Delivery.provider_batch.is_not(None))).all())
        assert own == dict.fromkeys(spread, "sg-2"), "the spread claim's rows carry it themselves"
        assert s.get_one(SendBatch, again.batch).provider_batch is None
        assert s.get_one(SendBatch, first.batch).provider_batch == "sg-1", "the dense claim's batch row has it"
        effective = scheduled_of(s, issue.id)
        assert sorted(b for b, _ in effective.values()) == ["sg-1"] * 294 + ["sg-2"] * 6
        assert ledger.requeue_batch(s, issue.id, "sg-2", ledger.CLAIMED, "cancelled") == 6
        assert ledger.requeue_batch(s, issue.id, "sg-1", ledger.CLAIMED, "cancelled") == 294
        s.commit()
        assert ledger.counts(s, issue.id) == {"queued": 300}
