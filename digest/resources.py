"""Where the package's data lives: the templates and the Alembic migrations.

Both stay at the top of the repository (`templates/`, `migrations/`) and the wheel build copies them into
the package (`digest/templates`, `digest/migrations`; pyproject.toml, `force-include`), so an installed
digest finds them through the package. A source checkout (an editable install, the tests) has them one
level up, at the top of the repository.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _find(name: str) -> Path:
    package = Path(str(files("digest")))  # installed as plain files, never zipped: Jinja and Alembic need paths
    for candidate in (package / name, package.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"digest's {name}/ folder is missing from {package} (a broken install?)")


TEMPLATES = _find("templates")
MIGRATIONS = _find("migrations")
