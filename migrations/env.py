"""Alembic environment: the URL and connection come from digest.store.migrate (or alembic.ini-less CLI)."""

from alembic import context
from sqlalchemy import engine_from_config, pool

import subscribers.models  # noqa: F401  (registers the subscriber tables on Base)
from digest.store import Base, UTCDateTime, schema_filter

target_metadata = Base.metadata


def render_item(type_, obj, autogen_context):
    if type_ == "type" and isinstance(obj, UTCDateTime):
        autogen_context.imports.add("import digest.store")
        return "digest.store.UTCDateTime()"
    return False


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=render_item,
        compare_type=True,
        include_object=schema_filter(connection.dialect.name),
    )
    with context.begin_transaction():
        context.run_migrations()


conn = context.config.attributes.get("connection")
if conn is not None:
    run(conn)
else:
    engine = engine_from_config(context.config.get_section(context.config.config_ini_section) or {},
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as c:
        run(c)
