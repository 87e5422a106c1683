"""The command line starts at the speed of a keystroke (issue 16): `digest --help` imports no database,
scheduler, web, HTTP or settings-schema module, and still lists every command with its help; a command
that finds the schema current does not import Alembic.

Checked on the modules a fresh interpreter holds afterwards (`sys.modules`), not on a time: a time on a
shared machine drifts, the import list does not. benchmarks/cli_startup.py prints the times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SECRET

# what `digest --help` must not import: the database (SQLAlchemy, Alembic, the drivers), the scheduler,
# the web stack, the HTTP and provider clients, the renderer, and the project's modules that bring them
HEAVY = ("sqlalchemy", "alembic", "psycopg", "apscheduler", "fastapi", "starlette", "uvicorn", "httpx",
         "sendgrid", "python_http_client", "mjml", "jinja2", "pydantic", "feedparser", "argon2", "itsdangerous",
         "email_validator", "tenacity", "digest.store", "digest.web", "digest.schedule", "digest.config",
         "digest.deliver", "digest.issues", "digest.moments", "digest.render", "digest.reports", "digest.sources",
         "subscribers.lifecycle", "subscribers.csv_import", "subscribers.models")

# runs the real entry point, then prints what it imported (the exit of --help is a SystemExit)
PROBE = """
import json, sys
sys.argv = ["digest", *sys.argv[1:]]
from digest.cli.main import main
try:
    main()
finally:
    print("\\n" + json.dumps(sorted(sys.modules)))
"""


def _imported(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> tuple[str, list[str]]:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "DIGEST_SECRET_KEY": SECRET, "COLUMNS": "200",
                                          **(env or {})})
    assert out.returncode == 0, out.stderr
    text, _, modules = out.stdout.rstrip().rpartition("\n")
    return text, json.loads(modules)


def _heavy(modules: list[str], names: tuple[str, ...] = HEAVY) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in names)]


@pytest.mark.nodb
def test_help_imports_nothing_heavy() -> None:
    text, modules = _imported("--help")
    assert "digest.cli.main" in modules  # the probe ran the real command line
    assert _heavy(modules) == []


@pytest.mark.nodb
def test_help_lists_every_command_with_its_help() -> None:
    import typer.main

    from digest.cli.main import app

    text, _ = _imported("--help")
    group = typer.main.get_command(app)
    assert isinstance(group, typer.main.TyperGroup)
    assert len(group.commands) >= 15
    for name, command in group.commands.items():
        short = command.get_short_help_str(limit=60).removesuffix("...").split(".")[0]
        line = next((line for line in text.splitlines() if f" {name} " in line), None)
        assert line is not None, f"`digest --help` does not list {name}:\n{text}"
        assert short[:30] in text, f"`digest --help` lists {name} without its help {short!r}"


@pytest.mark.nodb
def test_group_help_and_subcommand_help_stay_light() -> None:
    for args in (("subscribers", "--help"), ("subscribers", "import", "--help"), ("deliveries", "--help"),
                 ("schedule", "--help"), ("serve", "--help")):
        text, modules = _imported(*args)
        assert "Usage" in text, args
        # Typer (0.29) converts a command's parameters with pydantic's TypeAdapter: its own cost, not ours
        assert _heavy(modules, tuple(h for h in HEAVY if h != "pydantic")) == [], args


@pytest.mark.nodb
def test_import_help_names_the_import_batch_size() -> None:
    """The --batch-size default is written in the help, not imported (subscribers.csv_import brings the database)."""
    from subscribers.csv_import import BATCH_SIZE

    text, _ = _imported("subscribers", "import", "--help")
    assert f"{BATCH_SIZE:,}" in text


def test_status_on_a_current_schema_skips_alembic_and_the_scheduler(workdir: Path) -> None:
    from digest.config import load_settings
    from digest.store import migrate

    migrate(load_settings(workdir / "digest.toml").database_url)
    text, modules = _imported("status", cwd=workdir)
    assert "no issues yet" in text or "Issues" in text
    assert "sqlalchemy" in modules  # it did read the database
    assert _heavy(modules, ("alembic", "apscheduler", "fastapi", "uvicorn", "httpx", "sendgrid", "mjml")) == []


def test_a_new_database_is_still_migrated(workdir: Path) -> None:
    """The fast path reads the schema's version; a database without one is created by Alembic as before."""
    text, modules = _imported("status", cwd=workdir)
    assert "alembic" in modules
    from digest.config import load_settings
    from digest.store import _schema_version, engine_for, migration_heads

    with engine_for(load_settings(workdir / "digest.toml").database_url).connect() as conn:
        assert _schema_version(conn) == migration_heads() != frozenset()
