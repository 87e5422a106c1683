"""A throwaway PostgreSQL for the benchmarks (the tests' own, tests/pgserver.py), and a database on it."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import pgserver  # noqa: E402


@contextlib.contextmanager
def database(name: str = "bench") -> Iterator[str]:
    """A new PostgreSQL server in a temporary folder and an empty database on it; removed at the end."""
    server = pgserver.start()
    try:
        yield pgserver.create(server.url, name)
    finally:
        server.stop()
