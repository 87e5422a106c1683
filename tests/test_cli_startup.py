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
from types import SimpleNamespace
from zoneinfo import ZoneInfo

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
        # Typer (0.29) converts a command's parameters with pydantic's TypeAdapter; the lazy root gives its
        # str, Path and bool parameters converters without it (digest.cli.params)
        assert _heavy(modules) == [], args


@pytest.mark.nodb
def test_import_help_names_the_import_batch_size() -> None:
    """The --batch-size default is written in the help, not imported (subscribers.csv_import brings the database)."""
    from subscribers.csv_import import BATCH_SIZE

    text, _ = _imported("subscribers", "import", "--help")
    assert f"{BATCH_SIZE:,}" in text


#: what `digest status` and `digest subscribers show` must not import on a current schema: they read the
#: config's database URL and zone (digest.config_file) and the database (digest.dbapi) without either
READ_ONLY_HEAVY = ("sqlalchemy", "pydantic", "pydantic_core", "alembic", "digest.store", "digest.config",
                   "subscribers.models", "subscribers.lifecycle", "subscribers.queries")


def test_status_on_a_current_schema_skips_alembic_and_the_scheduler(workdir: Path) -> None:
    from digest.config import load_settings
    from digest.store import IssueRow, migrate, session_scope

    url = load_settings(workdir / "digest.toml").database_url
    migrate(url)
    with session_scope(url) as s:
        s.add(IssueRow(number=7, subject="A light read", status="sent", content={}))
    text, modules = _imported("status", cwd=workdir)
    assert "#7" in text or "│ 7 " in text, text
    assert "A light read" in text  # it did read the database
    assert _heavy(modules, READ_ONLY_HEAVY) == []  # without SQLAlchemy or pydantic (issue 16)
    assert _heavy(modules, ("alembic", "apscheduler", "fastapi", "uvicorn", "httpx", "sendgrid", "mjml")) == []
    # the lazy root built `status` alone: no other command's module, nor Typer's help formatter
    assert _heavy(modules, ("typer.rich_utils", "rich.markdown", "digest.moments", "subscribers.lifecycle",
                            "digest.issues", "jinja2")) == []


def test_a_new_database_is_still_migrated(workdir: Path) -> None:
    """The fast path reads the schema's version; a database without one is created by Alembic as before."""
    text, modules = _imported("status", cwd=workdir)
    assert "alembic" in modules
    from digest.config import load_settings
    from digest.store import _schema_version, engine_for, migration_heads

    with engine_for(load_settings(workdir / "digest.toml").database_url).connect() as conn:
        assert _schema_version(conn) == migration_heads() != frozenset()


# --- the lazy root (digest.cli.main._Root): the same commands as Typer's eager group, built on demand --------

def _params(command: object) -> list[tuple[str, tuple[str, ...], str]]:
    return [(p.name or "", tuple(p.opts), getattr(p, "help", None) or "") for p in command.params]  # type: ignore[attr-defined]


@pytest.mark.nodb
def test_the_lazy_root_has_typers_commands_with_the_same_parameters() -> None:
    """`main()` runs `root()`, the tests' CliRunner runs `app` through Typer: both must be the same program."""
    import typer.main
    from typer import _click as click

    from digest.cli.main import app, root

    eager = typer.main.get_command(app)
    assert isinstance(eager, typer.main.TyperGroup)
    lazy = root()
    ctx = click.Context(lazy)
    assert lazy.list_commands(ctx) == list(eager.commands)  # same names, same order in --help
    assert lazy.lazy.built == {}  # nothing built before it is asked for
    for name, expected in eager.commands.items():
        built = lazy.get_command(ctx, name)
        assert built is not None and type(built) is type(expected), name
        assert (built.name, built.help, _params(built)) == (expected.name, expected.help, _params(expected)), name
        if isinstance(expected, typer.main.TyperGroup):
            assert isinstance(built, typer.main.TyperGroup)
            assert {n: _params(c) for n, c in built.commands.items()} == \
                {n: _params(c) for n, c in expected.commands.items()}, name
    assert lazy.get_command(ctx, "no-such-command") is None


@pytest.mark.nodb
def test_help_skips_typers_rich_formatter_and_builds_no_command() -> None:
    """Typer's formatter module brings Markdown (markdown_it), tracebacks and syntax highlighting (pygments):
    more instructions than `import typer` itself; the root's --help is drawn without it."""
    text, modules = _imported("--help")
    assert _heavy(modules, ("typer.rich_utils", "rich.markdown", "markdown_it", "rich.traceback", "rich.syntax",
                            "pygments", "typer._adapters", "webbrowser")) == []
    assert "Usage: digest [OPTIONS] COMMAND [ARGS]..." in text and "Build and send a weekly newsletter digest." in text
    assert "--help" in text and "Show this message and exit." in text
    # a summary is the first paragraph with its source line breaks joined (the docstring wraps at 110 columns)
    assert "Write the current draft (or, if there is none, what one would hold) to files and show its status " \
           "and checks." in " ".join(text.split()).replace("│ ", "").replace(" │", "")


@pytest.mark.nodb
def test_a_misspelt_command_is_still_a_usage_error_with_a_suggestion() -> None:
    out = subprocess.run([sys.executable, "-m", "digest", "stauts"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "DIGEST_SECRET_KEY": SECRET, "COLUMNS": "200"}, cwd=ROOT)
    assert out.returncode == 2
    assert "No such command 'stauts'" in out.stderr and "status" in out.stderr


def test_subscribers_show_imports_no_scheduler(workdir: Path) -> None:
    """`subscribers show` prints its moments in the publication's zone without digest.moments (APScheduler)."""
    from digest.config import load_settings
    from digest.store import migrate

    migrate(load_settings(workdir / "digest.toml").database_url)
    added = subprocess.run([sys.executable, "-m", "digest", "subscribers", "add", "reader@example.com", "--confirmed",
                            "--source", "test"], cwd=workdir, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "DIGEST_SECRET_KEY": SECRET})
    assert added.returncode == 0, added.stderr
    text, modules = _imported("subscribers", "show", "Reader@EXAMPLE.com", cwd=workdir)
    assert "reader@example.com" in text and "confirmed" in text  # found by its key, as lifecycle.find finds it
    assert _heavy(modules, READ_ONLY_HEAVY) == []  # it read the database without SQLAlchemy or pydantic
    assert _heavy(modules, ("alembic", "apscheduler", "digest.moments", "fastapi", "uvicorn", "httpx", "sendgrid",
                            "mjml", "jinja2", "typer.rich_utils")) == []


@pytest.mark.nodb
def test_the_cli_stamp_is_digest_moments_stamp() -> None:
    """digest.cli.common.stamp repeats digest.moments.stamp's rule (to spare the scheduler's import): the same
    text for every moment, across a daylight-saving change and in a zone west of UTC."""
    from datetime import UTC, datetime, timedelta

    from digest.cli.common import stamp
    from digest.moments import stamp as moments_stamp

    for zone in ("Australia/Sydney", "America/New_York", "UTC"):
        settings = SimpleNamespace(publication=SimpleNamespace(tz=ZoneInfo(zone)))
        assert stamp(settings, None) == moments_stamp(settings, None) == ""  # type: ignore[arg-type]
        for hours in range(0, 24 * 200, 37):
            moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=hours)
            for fmt in ("%Y-%m-%d %H:%M", "%Y-%m-%d"):
                assert stamp(settings, moment, fmt) == moments_stamp(settings, moment, fmt)  # type: ignore[arg-type]


@pytest.mark.nodb
def test_plain_parameters_convert_as_typers_own(tmp_path: Path) -> None:
    """digest.cli.params converts str, Path and bool values without pydantic: the same values, and the same
    errors (a missing file, a folder given for a file), as Typer's own converter, for every such parameter."""
    import typer.main
    from typer import _click as click
    from typer._coercion import build_runtime_param
    from typer.core import _TyperParameter

    from digest.cli.main import app
    from digest.cli.params import plain

    (tmp_path / "file.csv").write_text("email\n")
    samples: dict[type, list[object]] = {str: ["x", "", "-", "Ünïcode@example.com"],
                                         bool: [True, False],
                                         Path: [str(tmp_path / "file.csv"), str(tmp_path / "missing.csv"),
                                                str(tmp_path), "-", "relative/name.toml"]}
    checked = 0

    def walk(eager: click.Command) -> None:
        nonlocal checked
        for sub in getattr(eager, "commands", {}).values():
            walk(sub)
        plain(eager)
        for param in [p for p in eager.params if isinstance(p, _TyperParameter)]:
            light = param._runtime_param
            annotation = param.type_descriptor.annotation
            if light is None or annotation not in samples:
                continue
            typers = build_runtime_param(param.type_descriptor)
            ctx = click.Context(eager)
            for value in samples[annotation]:
                outcomes = []
                for runtime in (light, typers):
                    try:
                        outcomes.append(("ok", runtime.coerce(value, param=param, ctx=ctx)))
                    except click.BadParameter as e:
                        outcomes.append(("error", e.format_message()))
                assert outcomes[0] == outcomes[1], (eager.name, param.name, value, outcomes)
                checked += 1

    walk(typer.main.get_command(app))
    assert checked > 100  # every command's --config, the addresses, the files, the flags


def test_sending_a_built_issue_imports_no_source_fetcher(workdir: Path) -> None:
    """`digest send` of an approved issue renders and sends; it fetches nothing, so it imports neither the
    sources' fetchers (httpx, feedparser) nor the collecting that uses them, and it validates no address, so
    not email-validator either (issue 16: the send's start-up)."""
    env = {**os.environ, "DIGEST_SECRET_KEY": SECRET}
    for args in (["subscribers", "add", "reader@example.com", "--confirmed", "--source", "test"],
                 ["draft", "--offline"], ["approve"]):
        done = subprocess.run([sys.executable, "-m", "digest", *args], cwd=workdir, capture_output=True, text=True,
                              timeout=120, env=env)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    text, modules = _imported("send", cwd=workdir)
    assert "submitted 1," in text and "status sent" in text  # the probe sent the approved issue
    assert _heavy(modules, ("httpx", "feedparser", "digest.sources.collect", "digest.sources.fetch",
                            "email_validator")) == []


def test_a_command_closes_its_database_before_the_interpreter_exits(workdir: Path, database_url: str) -> None:
    """`digest` freezes its objects out of the collector as it exits (`digest.cli.main._leave`: Python's
    finalization collected the whole heap, 0.2 s after a send), so it closes its connections itself first. On
    SQLite the last connection's close checkpoints the WAL and deletes it (https://www.sqlite.org/wal.html):
    a WAL file left behind would mean a copy of digest.db alone lacks what was committed."""
    if not database_url.startswith("sqlite"):
        pytest.skip("checks SQLite's WAL file, which only a clean close removes")
    done = subprocess.run([sys.executable, "-m", "digest", "draft", "--offline"], cwd=workdir, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "DIGEST_SECRET_KEY": SECRET})
    assert done.returncode == 0, done.stderr
    assert (workdir / "digest.db").stat().st_size > 0
    assert not (workdir / "digest.db-wal").exists()


# runs the real entry point (`run`) and reports the collector's thresholds as the command begins and once
# it has its settings (`settings_for`), and how many objects were frozen then; the process's own first
COLLECTOR = """
import gc, json, sys
sys.argv = ["digest", *sys.argv[1:]]
from digest.cli import common, main
seen = {"default": gc.get_threshold()}
original = common.settings_for
def watched(*args, **kwargs):
    seen["starting"] = gc.get_threshold()
    settings = original(*args, **kwargs)
    seen["started"], seen["frozen"] = gc.get_threshold(), gc.get_freeze_count()
    return settings
for module in list(sys.modules.values()):  # digest.cli.common, and the command modules that import it by name
    if getattr(module, "settings_for", None) is original:
        module.settings_for = watched
try:
    main.run()
finally:
    print("\\n" + json.dumps(seen))
"""


def test_start_up_is_spared_the_collector_until_the_command_has_its_settings(workdir: Path) -> None:
    """The objects a command makes before its work (modules, registries: 150,000) were scanned by some 250
    collections for no garbage (`digest.cli.common.starting`): the first generation's threshold is large
    until the settings are loaded, then they are frozen and the thresholds are the process's own again."""
    out = subprocess.run([sys.executable, "-c", COLLECTOR, "draft", "--offline"], cwd=workdir, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "DIGEST_SECRET_KEY": SECRET})
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.rstrip().rpartition("\n")[2])
    default = seen["default"]
    assert seen["starting"] == [100_000, *default[1:]], seen
    assert seen["started"] == default, seen
    assert seen["frozen"] > 50_000, seen  # everything start-up made, out of the collector's sight
