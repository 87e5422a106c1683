"""Where the package's data lives: the templates and the Alembic migrations.

Both stay at the top of the repository (`templates/`, `migrations/`) and the wheel build copies them into
the package (`digest/templates`, `digest/migrations`; pyproject.toml, `force-include`), so an installed
digest finds them through the package. A source checkout (an editable install, the tests) has them one
level up, at the top of the repository.
"""

from __future__ import annotations

from pathlib import Path


def _find(name: str) -> Path:
    # installed as plain files, never zipped (Jinja and Alembic need paths): the package is this file's folder,
    # found without importlib.resources (with zipfile and tempfile, a tenth of `import typer`, which every
    # command that checks the schema would pay: issue 16)
    package = Path(__file__).resolve().parent
    for candidate in (package / name, package.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"digest's {name}/ folder is missing from {package} (a broken install?)")


TEMPLATES = _find("templates")
MIGRATIONS = _find("migrations")
