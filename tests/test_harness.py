"""The test harness itself: each database test gets a database of its own, on the backend its id names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import inspect

from digest.config import Settings
from digest.store import engine_for
from tests import pgserver


def test_a_database_test_starts_from_an_empty_database_of_its_own(database_url: str, backend: str,
                                                                  request: pytest.FixtureRequest) -> None:
    assert f"[{backend}]" in request.node.nodeid
    assert database_url.startswith({"sqlite": "sqlite:///", "postgresql": "postgresql+psycopg://"}[backend])
    assert not database_url.endswith("/" + pgserver.TEMPLATE)
    engine = engine_for(database_url)
    assert engine.dialect.name == backend
    assert inspect(engine).get_table_names() == []


def test_settings_point_at_the_migrated_database_of_this_test(settings: Settings, workdir: Path,
                                                               database_url: str) -> None:
    assert settings.database_url == database_url or settings.database_url == f"sqlite:///{workdir / 'digest.db'}"
    assert "alembic_version" in inspect(engine_for(settings.database_url)).get_table_names()


def test_the_throwaway_server_listens_on_loopback_only_from_a_temporary_folder() -> None:
    if not os.environ.get(pgserver.ENV_STARTED):
        pytest.skip("no PostgreSQL server started by this run (DIGEST_TEST_BACKENDS, or DIGEST_TEST_PG_URL given)")
    import psycopg

    with psycopg.connect(pgserver.libpq(os.environ[pgserver.ENV_URL])) as conn:
        listen = conn.execute("SHOW listen_addresses").fetchone()
        data = conn.execute("SHOW data_directory").fetchone()
        superuser = conn.execute("SELECT rolname FROM pg_roles WHERE oid = 10").fetchone()
    assert listen == ("127.0.0.1",)
    assert data is not None and Path(data[0]).parent.name.startswith("digest-pg-")
    assert superuser == ("postgres",)
