"""a batch's "about to go out" stamp once per batch (send_batches) instead of on each reader's row (issue 16)

Revision ID: 0012_send_batches
Revises: 0011_list_counts
Create Date: 2026-12-03 00:10:00

Before each request the sender stamped `posted_at` on every claimed row of the batch: 1,000 row updates per
batch, a sixth of the ledger's statement time on PostgreSQL. The stamp now lives in one row per batch
(`send_batches`), which post and reap both write, so that row's lock orders them as the rows' locks did.
The batch index keeps only claimed rows, so a row's mark no longer writes an entry to it. Batches claimed
before the upgrade keep their meaning: every batch with claimed rows gets its row, posted when any of its
rows was (a crash under the old code leaves the same unknown fate after the upgrade).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import digest.store

revision: str = "0012_send_batches"
down_revision: str | None = "0011_list_counts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "send_batches",
        sa.Column("batch", sa.String(length=64), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("posted_at", digest.store.UTCDateTime(), nullable=True),
        sa.Column("reaped_at", digest.store.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["issue_id"], ["issues.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("batch"),
    )
    op.create_index("ix_send_batches_issue_id", "send_batches", ["issue_id"], unique=False)
    op.execute("INSERT INTO send_batches (batch, issue_id, posted_at) SELECT batch, min(issue_id), max(posted_at) "
               "FROM deliveries WHERE status = 'claimed' AND batch IS NOT NULL GROUP BY batch")
    # SQLite 3.35+ drops a column that no index or constraint names in place, as PostgreSQL does
    op.execute("ALTER TABLE deliveries DROP COLUMN posted_at")
    _batch_index("status = 'claimed'")


def _batch_index(where: str) -> None:
    """Every lookup by batch is of claimed rows (their status said with it): indexed only while claimed, a
    row's mark (which keeps its batch) writes no entry to this index."""
    op.drop_index("ix_deliveries_batch", table_name="deliveries")
    op.create_index("ix_deliveries_batch", "deliveries", ["batch"], unique=False, sqlite_where=sa.text(where),
                    postgresql_where=sa.text(where))


def downgrade() -> None:
    _batch_index("batch IS NOT NULL")
    op.add_column("deliveries", sa.Column("posted_at", digest.store.UTCDateTime(), nullable=True))
    op.execute("UPDATE deliveries SET posted_at = (SELECT posted_at FROM send_batches "
               "WHERE send_batches.batch = deliveries.batch) WHERE status = 'claimed'")
    op.drop_index("ix_send_batches_issue_id", table_name="send_batches")
    op.drop_table("send_batches")
