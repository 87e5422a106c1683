"""Regenerate migrations/versions/0001_initial.py from the models.

Only while nothing has been released: once a database exists in the wild, add a new revision instead
(`alembic -x ... revision --autogenerate`).
"""

import tempfile
from pathlib import Path

from alembic import command

from digest.resources import MIGRATIONS
from digest.store import alembic_config

target = MIGRATIONS / "versions" / "0001_initial.py"
target.unlink(missing_ok=True)
with tempfile.TemporaryDirectory() as tmp:
    cfg = alembic_config(f"sqlite:///{Path(tmp) / 'empty.db'}")
    command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001")
generated = next((MIGRATIONS / "versions").glob("0001_*.py"))
generated.rename(target)
print(f"wrote {target}")
