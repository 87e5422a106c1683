"""The deliveries table keeps free room in its pages on PostgreSQL (migration 0010_deliveries_fillfactor):
a batch's stamps that change no indexed column (posted_at, edition) are then heap-only updates."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from digest.store import Delivery, engine_for, migrate


def test_deliveries_keep_room_for_heap_only_updates_after_the_migrations_and_in_the_model(database_url: str) -> None:
    # the model says it too, so a table created from it (tests, scripts) matches the migrated one
    ddl = str(CreateTable(Delivery.__table__).compile(dialect=postgresql.dialect()))  # type: ignore[arg-type]
    assert "WITH (fillfactor = 70)" in ddl, ddl
    migrate(database_url)
    engine = engine_for(database_url)
    if engine.dialect.name != "postgresql":
        return  # SQLite has no fillfactor: the migration only has to run there
    with engine.connect() as conn:
        options = conn.scalar(text("SELECT reloptions FROM pg_class WHERE relname = 'deliveries'"))
    assert options == ["fillfactor=70"], options
