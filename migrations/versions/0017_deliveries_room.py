"""deliveries: three quarters of each page kept free, so every claim is a heap-only update too (issue 16)

Revision ID: 0017_deliveries_room
Revises: 0016_deliveries_keys
Create Date: 2026-12-03 22:00:00

A claim rewrites every row of its pages in one transaction, and none of the old versions can be pruned
before it commits (PostgreSQL docs, "Heap-Only Tuples (HOT)"). Since migrations 0015 and 0016 a snapshot
row is about 95 bytes and a claimed one about 160 (batch, worker, lease): a page filled to half (0014's
fillfactor 50) cannot hold each of its rows twice, and 43,000 of the 200,000 updates of a send to 100,000
readers left their page, writing an entry in each of the table's three indexes. Filled to a quarter,
every claimed version fits beside its original (200,000 of 200,000 heap-only), and the mark finds the
claim's versions dead and prunes them. Measured on the whole send (docs/delivery.md, Speed, the tenth
round): PostgreSQL's time in the claims 0.89-1.06 s -> 0.58-0.61 s, its CPU 1.96-2.24 s -> 1.68-1.72 s.
The table takes twice the pages of 0014's; a sent issue's rows use about half of each. Only pages
written after this change get the new fillfactor; SQLite has no such setting.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017_deliveries_room"
down_revision: str | None = "0016_deliveries_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILLFACTOR = 25  # as digest.store.Delivery's postgresql_with


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE deliveries SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE deliveries SET (fillfactor = 50)")
