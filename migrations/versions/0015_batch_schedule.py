"""a claim's scheduled provider batch and send moment on its send_batches row, not on each reader's (issue 16)

Revision ID: 0015_batch_schedule
Revises: 0014_deliveries_hot
Create Date: 2026-12-03 15:20:00

A scheduled send's claim stamped SendGrid's batch id and send_at on each of its 1,000 rows: every claimed
row about 60 bytes longer and an entry in ix_deliveries_provider_batch per reader (on SQLite a third more
WAL frames; on PostgreSQL no claim a heap-only update, an indexed column changing). The claim now writes
them once, on the batch's own row, with the claim's id range (its readers' rows are found by it). A
reader's provider batch is its row's own when it has one (rows stamped before this change; the readers of
a claim split into several requests, `ledger.record_batches`), else its batch's: nothing to copy, and old
rows keep their meaning.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import digest.store

revision: str = "0015_batch_schedule"
down_revision: str | None = "0014_deliveries_hot"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("send_batches") as table:
        table.add_column(sa.Column("provider_batch", sa.String(length=128), nullable=True))
        table.add_column(sa.Column("send_at", digest.store.UTCDateTime(), nullable=True))
        table.add_column(sa.Column("first_id", sa.Integer(), nullable=True))
        table.add_column(sa.Column("last_id", sa.Integer(), nullable=True))
    op.create_index("ix_send_batches_provider_batch", "send_batches", ["provider_batch"], unique=False)


def downgrade() -> None:
    # back onto the readers' rows that have none of their own
    op.execute("UPDATE deliveries SET provider_batch = (SELECT provider_batch FROM send_batches b WHERE "
               "b.batch = deliveries.batch), send_at = (SELECT send_at FROM send_batches b WHERE "
               "b.batch = deliveries.batch) WHERE provider_batch IS NULL AND batch IS NOT NULL")
    op.drop_index("ix_send_batches_provider_batch", table_name="send_batches")
    with op.batch_alter_table("send_batches") as table:
        table.drop_column("last_id")
        table.drop_column("first_id")
        table.drop_column("send_at")
        table.drop_column("provider_batch")
