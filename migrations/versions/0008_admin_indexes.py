"""membership indexes for the admin's subscriber pages at a million readers

Revision ID: 0008_admin_indexes
Revises: 0007_workers
Create Date: 2026-12-02 17:00:00

The admin's list and status filters (subscribers/search.py) page by subscriber id and count up to a cap.
With only (list_id, status), PostgreSQL answered `status=bounced` with a sequential scan of every
membership and a list+status page in the middle by walking the list from its newest member down to the
page (EXPLAIN ANALYZE at 1,000,000 subscribers: 140 and 160 ms idle). (list_id, status, subscriber_id)
replaces (list_id, status) (it serves every query that one did, as its prefix) and gives each list+status
its members in id order; (status, subscriber_id) does the same for a status on any list.

On a large live PostgreSQL, building them holds writes to `memberships` back for the build: create them
by hand first with `CREATE INDEX CONCURRENTLY IF NOT EXISTS` (the statements below), and this migration
then finds them and only drops the old index.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008_admin_indexes"
down_revision: str | None = "0007_workers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "ix_memberships_list_status_subscriber": "list_id, status, subscriber_id",
    "ix_memberships_status_subscriber": "status, subscriber_id",
}


def upgrade() -> None:
    # IF NOT EXISTS (PostgreSQL and SQLite alike) so that indexes built beforehand CONCURRENTLY are kept
    for name, columns in INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON memberships ({columns})")
    op.execute("DROP INDEX IF EXISTS ix_memberships_list_status")


def downgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS ix_memberships_list_status ON memberships (list_id, status)")
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
