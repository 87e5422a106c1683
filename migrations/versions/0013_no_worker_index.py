"""no index on deliveries.worker: each claimed row wrote an entry to it and each mark removed it (issue 16)

Revision ID: 0013_no_worker_index
Revises: 0012_send_batches
Create Date: 2026-12-03 04:30:00

Every lookup by worker (renew, reap, the unknown ones, adopting a batch) also names the issue and the
`claimed` status, which ix_deliveries_issue_status narrows to the issue's few claimed batches. The index
cost two B-tree writes per reader and send (on claim and on mark), about a seventh of the ledger's
instructions on SQLite (docs/delivery.md, Speed).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_no_worker_index"
down_revision: str | None = "0012_send_batches"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_deliveries_worker", table_name="deliveries")


def downgrade() -> None:
    where = sa.text("worker IS NOT NULL")
    op.create_index("ix_deliveries_worker", "deliveries", ["worker"], unique=False, sqlite_where=where,
                    postgresql_where=where)
