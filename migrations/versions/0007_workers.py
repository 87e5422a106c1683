"""several send workers: a lease on each claimed delivery; login and sign-up rate limits in the database

Revision ID: 0007_workers
Revises: 0006_provider_cancels
Create Date: 2026-12-02 14:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import digest.store

revision: str = "0007_workers"
down_revision: str | None = "0006_provider_cancels"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("worker", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("lease_until", digest.store.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("posted_at", digest.store.UTCDateTime(), nullable=True))
        batch_op.create_index(batch_op.f("ix_deliveries_worker"), ["worker"], unique=False)
    # rows claimed before leases existed may have gone out: they stay of unknown fate (posted), never re-queued
    op.execute("UPDATE deliveries SET posted_at = updated_at WHERE status = 'claimed'")
    op.create_table(
        "rate_hits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("at", digest.store.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rate_hits", schema=None) as batch_op:
        batch_op.create_index("ix_rate_hits_scope_key_at", ["scope", "key", "at"], unique=False)
        batch_op.create_index(batch_op.f("ix_rate_hits_at"), ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rate_hits", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rate_hits_at"))
        batch_op.drop_index("ix_rate_hits_scope_key_at")
    op.drop_table("rate_hits")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_worker"))
        batch_op.drop_column("posted_at")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("worker")
