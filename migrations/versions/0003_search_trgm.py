"""trigram indexes for the admin's substring search (PostgreSQL only)

Revision ID: 0003_search_trgm
Revises: 0002_batches
Create Date: 2026-12-02 14:40:00

`pg_trgm` GIN indexes let PostgreSQL answer `email_key LIKE '%x%'` and `name ILIKE '%x%'` from an
index (https://www.postgresql.org/docs/current/pgtrgm.html#PGTRGM-INDEX); a B-tree cannot serve a
leading wildcard. pg_trgm is a trusted extension (PostgreSQL 13+): the database's owner may create it.
SQLite has no such index: nothing happens there.

On a large live database, building them takes a lock that holds writes to `subscribers` back for the
build (about 20 s at a million readers): create them by hand first with `CREATE INDEX CONCURRENTLY IF NOT
EXISTS` (the same statements as below), and this migration then finds them and does nothing.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003_search_trgm"
down_revision: str | None = "0002_batches"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {"ix_subscribers_email_key_trgm": "email_key", "ix_subscribers_name_trgm": "name"}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for name, column in INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON subscribers USING gin ({column} gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
