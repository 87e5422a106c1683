"""local morning delivery: a reader's time zone; each delivery's zone and the moment it is due

Revision ID: 0004_local_delivery
Revises: 0003_search_trgm
Create Date: 2026-12-02 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import digest.store

revision: str = "0004_local_delivery"
down_revision: str | None = "0003_search_trgm"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("timezone", sa.String(length=64), nullable=True))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("zone", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("due_at", digest.store.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("due_at")
        batch_op.drop_column("zone")
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_column("timezone")
