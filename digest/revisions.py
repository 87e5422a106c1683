"""The schema's newest migration revisions, read from migrations/versions as text (no Alembic, no
SQLAlchemy): a command that finds the database's recorded revision equal to these need not migrate, and
need not import Alembic (a third of a second) or SQLAlchemy (digest.dbapi reads the recorded one)."""

from __future__ import annotations

import ast
import re
from functools import lru_cache

from digest.resources import MIGRATIONS

_REVISION_LINE = re.compile(r"^(revision|down_revision)\b[^=\n]*=\s*(.+?)\s*$", re.MULTILINE)


@lru_cache(maxsize=1)
def migration_heads() -> frozenset[str]:
    """The newest revisions of migrations/versions, from the files' `revision` and `down_revision` lines.
    Alembic itself still runs whenever the database's differ (digest.store.migrate)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for name, value in _REVISION_LINE.findall(path.read_text(encoding="utf-8")):
            found = ast.literal_eval(value)
            names = {found} if isinstance(found, str) else set(found or ())
            (revisions if name == "revision" else parents).update(names)
    return frozenset(revisions - parents)
