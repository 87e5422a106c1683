"""The schema comes from Alembic, and the migrations match the models exactly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import subscribers.models  # noqa: F401  (registers the subscriber tables on Base)
from digest.store import Base, engine_for, migrate, schema_filter


def test_migrations_create_every_table_and_match_the_models(database_url: str) -> None:
    url = database_url
    migrate(url)
    migrate(url)  # idempotent
    engine = engine_for(url)
    tables = set(inspect(engine).get_table_names())
    assert {"subscribers", "lists", "memberships", "events", "issues", "deliveries", "feed_state",
            "articles", "alembic_version"} <= tables
    with engine.connect() as conn:
        # the filter leaves out only what the models create on the other backend (the PostgreSQL search indexes)
        opts = {"compare_type": False, "include_object": schema_filter(conn.dialect.name)}
        diff = compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata)
    assert diff == [], f"models and migrations differ (run scripts/regen_initial_migration.py): {diff}"
