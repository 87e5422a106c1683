"""deliveries: no foreign keys, one index for a reader's rows: each row the snapshot inserts paid for both (issue 16)

Revision ID: 0016_deliveries_keys
Revises: 0015_batch_schedule
Create Date: 2026-12-03 17:20:00

PostgreSQL checks a foreign key with a query per inserted row (a lookup and a FOR KEY SHARE lock of the
row it names); the two of `deliveries` (its issue, its subscriber) were half of the snapshot's INSERT at
100,000 readers: 1.15-1.34 s against 0.62-0.69 s without them (docs/delivery.md, Speed, the eighth
round). What they guarded is kept by the code that writes the table: `ledger.snapshot` is its only
writer and takes its rows from a join with the subscribers, holding the issue's row and each
subscriber's FOR KEY SHARE; issues are never deleted; `lifecycle.erase` locks the person, then blanks and
unlinks their rows (what ON DELETE SET NULL did) before deleting them. Nothing to copy: every row already
names what exists.

The unique key (issue, subscriber) becomes (subscriber, issue): it then also finds a reader's rows
(an erasure, the reports), which ix_deliveries_subscriber_id did, one index fewer for every row inserted
(the INSERT 0.58-0.67 s -> 0.47-0.52 s) and for every update that leaves its page. The issue's rows are
found by ix_deliveries_issue_id. On SQLite the table is copied once (batch mode); on PostgreSQL the new
unique index is built with a plain ALTER TABLE, which blocks writes to `deliveries` while it runs.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016_deliveries_keys"
down_revision: str | None = "0015_batch_schedule"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite's foreign keys have no name: batch mode finds them by this convention (Alembic, "Dropping Unnamed
# or Named Foreign Key Constraints") and copies the table without them. PostgreSQL's have the default names.
_CONVENTION = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
_KEYS = {"issue_id": ("issues", "CASCADE"), "subscriber_id": ("subscribers", "SET NULL")}


def _name(column: str, postgresql: bool) -> str:
    return f"deliveries_{column}_fkey" if postgresql else f"fk_deliveries_{column}_{_KEYS[column][0]}"


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("deliveries", naming_convention=_CONVENTION) as table:
        for column in _KEYS:
            table.drop_constraint(_name(column, postgresql), type_="foreignkey")
        table.drop_index("ix_deliveries_subscriber_id")
        table.drop_constraint("uq_delivery_issue_subscriber", type_="unique")
        table.create_unique_constraint("uq_delivery_subscriber_issue", ["subscriber_id", "issue_id"])


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    # rows naming what no longer exists (none should): as the keys' ON DELETE would have left them
    op.execute("UPDATE deliveries SET subscriber_id = NULL WHERE subscriber_id IS NOT NULL AND NOT EXISTS "
               "(SELECT 1 FROM subscribers s WHERE s.id = deliveries.subscriber_id)")
    op.execute("DELETE FROM deliveries WHERE NOT EXISTS (SELECT 1 FROM issues i WHERE i.id = deliveries.issue_id)")
    with op.batch_alter_table("deliveries", naming_convention=_CONVENTION) as table:
        table.drop_constraint("uq_delivery_subscriber_issue", type_="unique")
        table.create_unique_constraint("uq_delivery_issue_subscriber", ["issue_id", "subscriber_id"])
        table.create_index("ix_deliveries_subscriber_id", ["subscriber_id"], unique=False)
        for column, (parent, action) in _KEYS.items():
            table.create_foreign_key(_name(column, postgresql), parent, [column], ["id"], ondelete=action)
