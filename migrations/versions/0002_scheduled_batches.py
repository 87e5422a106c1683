"""scheduled provider batches on deliveries; who recalled an issue

Revision ID: 0002_batches
Revises: 0001
Create Date: 2026-12-02 12:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import digest.store

revision: str = "0002_batches"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_batch", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("send_at", digest.store.UTCDateTime(), nullable=True))
        batch_op.create_index(batch_op.f("ix_deliveries_provider_batch"), ["provider_batch"], unique=False)
    with op.batch_alter_table("issues", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recalled_at", digest.store.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("recalled_by", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("issues", schema=None) as batch_op:
        batch_op.drop_column("recalled_by")
        batch_op.drop_column("recalled_at")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_provider_batch"))
        batch_op.drop_column("send_at")
        batch_op.drop_column("provider_batch")
