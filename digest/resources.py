"""Where the package's data lives: the templates and the Alembic migrations.

Both stay at the top of the repository (`templates/`, `migrations/`) and are copied into the package
(`digest/templates`, `digest/migrations`) when a wheel is built, so a normal install finds them through
the package. An editable install or a checkout finds them at the top of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"digest's {name}/ folder is missing from {_PACKAGE} (a broken install?)")


TEMPLATES = _find("templates")
MIGRATIONS = _find("migrations")
