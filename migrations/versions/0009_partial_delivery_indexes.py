"""the ledger's batch, provider_batch and worker indexes only where set (partial indexes; issue 16)

Revision ID: 0009_partial_delivery_indexes
Revises: 0008_admin_indexes
Create Date: 2026-12-02 17:10:00

Those columns are NULL on every delivery but the ones in flight or scheduled, and every lookup is by a
value (or IS NOT NULL): a full index kept an entry per NULL row too, which each claim and mark of a row
rewrote. Indexed only where set, a send writes fewer index entries per reader.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_partial_delivery_indexes"
down_revision: str | None = "0008_admin_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("batch", "provider_batch", "worker")


def upgrade() -> None:
    for column in COLUMNS:
        op.drop_index(f"ix_deliveries_{column}", table_name="deliveries")
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(f"ix_deliveries_{column}", "deliveries", [column], unique=False, sqlite_where=where,
                        postgresql_where=where)


def downgrade() -> None:
    for column in COLUMNS:
        op.drop_index(f"ix_deliveries_{column}", table_name="deliveries")
        op.create_index(f"ix_deliveries_{column}", "deliveries", [column], unique=False)
