"""deliveries: each connection takes its ids a thousand at a time (PostgreSQL), for the snapshot's INSERT (issue 16)

Revision ID: 0018_deliveries_ids_ahead
Revises: 0017_deliveries_room
Create Date: 2026-12-04 16:35:00

A snapshot writes one row per reader, each with an id from `deliveries_id_seq`. With the default cache
of 1, every nextval() locks the sequence's page, and every 32nd writes WAL; a large list's snapshot is
written by two connections at once (`digest.deliver.ledger._copy`), whose rows then took ids in turns, both
inserting into the same rightmost page of the primary key and of ix_deliveries_issue_id. With CACHE 1000
each backend takes a thousand ids at a time ("CREATE SEQUENCE", PostgreSQL docs): the two halves write
their own runs of ids, and each row's id costs no lock. At 100,000 readers, one INSERT 0.39-0.45 s ->
0.38-0.39 s, the two halves 0.30-0.34 s -> 0.27-0.28 s and their CPU 0.50-0.57 s -> 0.46-0.48 s
(docs/delivery.md, Speed, the fourteenth round).

What it costs: ids a backend took and did not use are skipped (at most 999 per connection that inserted),
and ids are no longer in commit order across connections, which nothing relies on: an issue's rows are
still one run of ids with few gaps (the claims' `ledger._dense`), and every lookup names the issue.
SQLite has no sequences: nothing changes there.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018_deliveries_ids_ahead"
down_revision: str | None = "0017_deliveries_room"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CACHE = 1000


def _sequence() -> str | None:
    """The sequence behind deliveries.id (SERIAL names it deliveries_id_seq; asked, not assumed)."""
    return op.get_bind().exec_driver_sql("SELECT pg_get_serial_sequence('deliveries', 'id')").scalar()


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql" and (sequence := _sequence()):
        op.execute(f"ALTER SEQUENCE {sequence} CACHE {CACHE}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql" and (sequence := _sequence()):
        op.execute(f"ALTER SEQUENCE {sequence} CACHE 1")
