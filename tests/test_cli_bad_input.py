"""Bad input at the command line: a list name that is not a list is an error naming the lists (exit 2),
and the read-only commands change nothing in the database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select

from digest.config import Settings
from digest.store import engine_for, session_factory
from subscribers.models import MailingList
from tests.conftest import edit_config, run_cli, run_main
from tests.test_schedule_jobs import READERS, subscribe

Run = Callable[..., str]


@pytest.fixture
def digest(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """`digest ARGS` through the real entry point (exit codes, one-line errors), in this process."""
    monkeypatch.chdir(workdir)

    def run(*args: str, code: int = 0) -> str:
        returned, out = run_main(monkeypatch, capsys, *args)
        assert returned == code, (args, out)
        return out  # as printed: the pipe test looks at the line breaks

    return run


def _slugs(settings: Settings) -> list[str]:
    with session_factory(settings.database_url)() as s:
        return sorted(s.scalars(select(MailingList.slug)))


def test_a_mistyped_configured_list_is_an_error_naming_the_lists(settings: Settings, workdir: Path,
                                                                 digest: Run) -> None:
    subscribe(settings, *READERS)
    edit_config(workdir, 'list = "weekly"', 'list = "weeky"')
    for args in (("send",), ("send", "--dry-run"), ("draft", "--offline"), ("subscribers", "lists")):
        out = digest(*args, code=2)
        assert out.startswith("error: no list named 'weeky' (the lists are: weekly)"), (args, out)
        assert "[delivery]" in out and out.count("\n") == 1
    assert _slugs(settings) == ["weekly"], "no empty list was created"


def test_a_configured_list_is_created_on_a_new_database(settings: Settings, workdir: Path, digest: Run) -> None:
    edit_config(workdir, 'list = "weekly"', 'list = "members"')
    digest("subscribers", "add", "a@example.com", "--confirmed", "--source", "test")
    assert _slugs(settings) == ["members"]


@pytest.mark.parametrize("args", [
    ("subscribers", "list", "--list", "weeky"),
    ("subscribers", "export", "--list", "weeky"),
    ("subscribers", "remove", "ann@example.com", "--list", "weeky"),
    ("subscribers", "confirm-pending", "--list", "weeky", "--dry-run"),
    ("subscribers", "add", "new@example.com", "--list", "weeky"),
])
def test_a_mistyped_list_option_is_an_error_naming_the_lists(settings: Settings, digest: Run,
                                                            args: tuple[str, ...]) -> None:
    subscribe(settings, *READERS)
    out = digest(*args, code=2)
    assert out.startswith("error: no list named 'weeky' (the lists are: weekly)") and out.count("\n") == 1, out
    assert _slugs(settings) == ["weekly"]


def test_importing_into_a_mistyped_list_names_the_lists(settings: Settings, workdir: Path, digest: Run) -> None:
    subscribe(settings, *READERS)
    (workdir / "in.csv").write_text("email\nz@example.com\n")
    out = digest("subscribers", "import", "in.csv", "--list", "weeky", code=2)
    assert out.startswith("error: no list named 'weeky' (the lists are: weekly)"), out


def _dump(settings: Settings) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, in a stable order, on either backend."""
    engine = engine_for(settings.database_url)
    tables = MetaData()
    tables.reflect(engine)
    with engine.connect() as conn:
        return {name: sorted((tuple(row) for row in conn.execute(select(table))), key=repr)
                for name, table in sorted(tables.tables.items())}


@pytest.mark.parametrize("with_draft", [False, True])
def test_read_only_commands_change_nothing_in_the_database(settings: Settings, digest: Run,
                                                           with_draft: bool) -> None:
    subscribe(settings, *READERS)
    if with_draft:
        digest("draft", "--offline")
    digest("status")  # the schema is up to date before the first dump
    before = _dump(settings)
    assert "would send to 3 active readers of list" in " ".join(digest("send", "--dry-run").split())
    digest("status")
    out = digest("preview", "--offline", "--out", "p.html", "--text", "p.txt")
    assert ("not kept" in out) != with_draft
    digest("schedule", "--show")
    assert _dump(settings) == before


@pytest.mark.slow  # the real command in a subprocess, its output a pipe as under cron
def test_output_to_a_pipe_is_not_hard_wrapped_and_counts_read_as_words(settings: Settings, workdir: Path) -> None:
    subscribe(settings, "ann@example.com")
    done = run_cli("send", "--dry-run", cwd=workdir, env={"COLUMNS": "", "TERM": "dumb"})
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert len(first) > 80 and first.endswith("KB"), done.stdout  # one line, however long
    assert "would send to 1 active reader of list 'weekly'" in done.stdout and "(s)" not in done.stdout
    done = run_cli("preview", "--offline", cwd=workdir)
    assert any(line.endswith("(Gmail clips at 102 KB)") and " articles + " in line
               for line in done.stdout.splitlines()), done.stdout
