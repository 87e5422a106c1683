"""provider_cancels: the cancels SendGrid holds for our scheduled batches (10 slots), until each is safe to lift

Revision ID: 0006_provider_cancels
Revises: 0005_reports
Create Date: 2026-12-02 14:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import digest.store

revision: str = "0006_provider_cancels"
down_revision: str | None = "0005_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "provider_cancels",
        sa.Column("batch", sa.String(length=128), nullable=False),
        sa.Column("send_at", digest.store.UTCDateTime(), nullable=False),
        sa.Column("cancelled_at", digest.store.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("batch"),
    )


def downgrade() -> None:
    op.drop_table("provider_cancels")
