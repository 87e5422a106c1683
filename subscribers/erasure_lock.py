"""The one lock between an erasure and a send's snapshot (PostgreSQL's advisory locks; SQLite has one writer).

The ledger has no foreign key to the readers (migration 0016_deliveries_keys): what its check guarded, that
a snapshot's row never names a reader erased meanwhile, is this lock. A snapshot holds it shared until it
commits (`hold_off_erasures`), so every reader it copies exists until then; an erasure holds it alone
(`erasing`), so it runs before a snapshot (which then leaves its reader out) or after it (and blanks and
unlinks the rows it wrote). One lock for the whole snapshot, not a FOR KEY SHARE lock on each reader's row:
that wrote every reader's row, a tenth of the snapshot's time (issue 16), and it held no more off.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

#: the advisory lock's key
ERASURE_KEY = 0x65726173  # "eras"


def hold_off_erasures(session: Session) -> None:
    """Until this transaction ends, no erasure starts; one running now is waited for."""
    if session.connection().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": ERASURE_KEY})


def erasing(session: Session) -> None:
    """Until this transaction ends, no snapshot starts; those being written now are waited for."""
    if session.connection().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ERASURE_KEY})
