"""A PostgreSQL connection names the digest process it belongs to (`pg_stat_activity.application_name`), on
both ways digest connects: SQLAlchemy's engines and digest.dbapi's read-only connection."""

from __future__ import annotations

import os
import sys

import pytest
from sqlalchemy import text

from digest import dbapi
from digest.store import engine_for

OWN_NAME = "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"


def _by_engine(url: str) -> str:
    with engine_for(url).connect() as conn:
        return str(conn.scalar(text(OWN_NAME)))


def _by_dbapi(url: str) -> str:
    with dbapi.connect(url) as db:
        ((name,),) = db.rows(OWN_NAME)
        return str(name)


def test_a_connection_names_the_command_and_the_process(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("application_name is PostgreSQL's")
    monkeypatch.setattr(sys, "argv", ["digest", "subscribers", "import", "readers.csv", "--list", "news"])
    # an engine is kept per URL: a URL this process has none for yet is named as the command now is
    assert _by_engine(database_url + "?connect_timeout=10") == f"digest subscribers import {os.getpid()}"
    assert _by_dbapi(database_url) == f"digest subscribers import {os.getpid()}"
    monkeypatch.setattr(sys, "argv", ["digest", "send", "--workers", "2"])
    assert _by_engine(database_url + "?connect_timeout=11") == f"digest send {os.getpid()}"
    assert _by_dbapi(database_url) == f"digest send {os.getpid()}"
    assert _by_engine(database_url + "?application_name=nightly-export") == "nightly-export", "the URL's own"
