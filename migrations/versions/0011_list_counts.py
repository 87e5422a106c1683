"""list counts kept in a table, refreshed every few minutes (the admin's list counts at a million members)

Revision ID: 0011_list_counts
Revises: 0010_deliveries_fillfactor
Create Date: 2026-12-02 18:05:00

An exact GROUP BY over 1,250,000 memberships took 270 ms on PostgreSQL (benchmarks/admin_search.py), on
every view of /admin/lists and of the dashboard. `subscribers.counts.refresh` now counts every few minutes
(the scheduler, an import, the page itself on a small database) and keeps the result here. The table
starts empty: the first view or refresh fills it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import digest.store

revision: str = "0011_list_counts"
down_revision: str | None = "0010_deliveries_fillfactor"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "list_counts",
        sa.Column("list_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("counted_at", digest.store.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["list_id"], ["lists.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("list_id", "status"),
    )


def downgrade() -> None:
    op.drop_table("list_counts")
