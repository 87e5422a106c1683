"""Shared fixtures: real folders, real SQLite files, real servers. Nothing here mocks the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from digest.config import Settings, load_settings
from digest.demo import init
from digest.store import migrate, session_factory
from tests import pgserver
from tests.fakes.sendgrid_server import SendGridServer

SECRET = "test-secret-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent
SENDGRID_KEY = "SG.test-key-for-the-contract"  # the API key the SendGrid contract server (`server`) takes
CHROMIUM = "/usr/bin/chromium"  # Debian's package; scripts/test.sh installs it, never a downloaded browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_SECRET_KEY", SECRET)
    for name in ("DIGEST_DATABASE_URL", "DIGEST_CONFIG", "SENDGRID_API_KEY", "DIGEST_SENDGRID_API_URL"):
        monkeypatch.delenv(name, raising=False)


# Every test that touches the database runs once per backend: $DIGEST_TEST_BACKENDS (comma-separated) picks
# them: SQLite alone for a bare `pytest` (the fast loop), both in scripts/test.sh (CI). A test touches the
# database when it asks for `database_url` (directly or through `workdir`/`settings`); the backend shows in
# its id, `test_x[sqlite]`, `test_x[postgresql]`.
ENV_BACKENDS = "DIGEST_TEST_BACKENDS"
BACKENDS = ("sqlite", "postgresql")


def _wanted_backends() -> tuple[list[str], bool]:
    """The backends asked for, and whether they were asked for explicitly (then a missing server fails)."""
    raw = os.environ.get(ENV_BACKENDS, "").strip()
    if not raw:  # a bare `pytest` is the fast loop: SQLite; scripts/test.sh (CI) asks for both
        return ["sqlite"], False
    wanted = [b.strip() for b in raw.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in BACKENDS]
    if unknown or not wanted:
        raise pytest.UsageError(f"{ENV_BACKENDS}={raw!r}: choose among {', '.join(BACKENDS)}")
    return wanted, True


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    """Start PostgreSQL once, in the controller, before xdist starts its workers (they inherit the URL)."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller has done it
        return
    wanted, explicit = _wanted_backends()
    if "postgresql" not in wanted or os.environ.get(pgserver.ENV_URL):
        if os.environ.get(pgserver.ENV_URL) and "postgresql" in wanted:
            pgserver.make_template(os.environ[pgserver.ENV_URL])
        return
    try:
        server = pgserver.start()
    except (pgserver.PostgresUnavailable, OSError, subprocess.SubprocessError) as e:
        if explicit or _in_ci():
            raise pytest.UsageError(f"PostgreSQL tests asked for but no server could be started: {e}") from e
        # a developer's machine without PostgreSQL: run on SQLite and say so at the end, loudly
        os.environ[ENV_BACKENDS] = "sqlite"
        _notes.append(f"PostgreSQL NOT TESTED: {e}")
        return
    config.add_cleanup(server.stop)  # runs on failure and on Ctrl-C too
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # a CI timeout ends the run with SIGTERM, which by default exits without any cleanup: make it a Ctrl-C
        signal.signal(signal.SIGTERM, _interrupt)
    os.environ[pgserver.ENV_URL] = server.url
    os.environ[pgserver.ENV_STARTED] = "1"
    try:
        pgserver.make_template(server.url)
    except BaseException:
        server.stop()
        raise


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


_counts: dict[str, dict[str, int]] = {}  # backend -> outcome -> tests, in the controller
_notes: list[str] = []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker("nodb") is None:
        metafunc.parametrize("backend", _wanted_backends()[0], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The database this test runs on; a `nodb` test gets SQLite's default and runs once."""
    return getattr(request, "param", "sqlite")


def _backend_of(report: pytest.TestReport) -> str:
    params = report.nodeid.rpartition("[")[2].rstrip("]").split("-") if report.nodeid.endswith("]") else []
    return next((p for p in params if p in BACKENDS), "no database")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count each test once per backend, by outcome (the controller sees its workers' reports here)."""
    if not (report.when == "call" or (report.when == "setup" and not report.passed)):
        return
    outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
    counts = _counts.setdefault(_backend_of(report), {})
    counts[outcome] = counts.get(outcome, 0) + 1


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    counts = _counts
    parts = []
    for name in (*BACKENDS, "no database"):
        if name in counts:
            by = counts[name]
            detail = ", ".join(f"{n} {outcome}" for outcome, n in sorted(by.items()))
            parts.append(f"{sum(by.values())} on {name} ({detail})")
    terminalreporter.write_sep("=", "backends: " + "; ".join(parts) if parts else "backends: no tests ran")
    for note in _notes:
        terminalreporter.write_sep("!", note, red=True, bold=True)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of this test's own: a SQLite file in tmp_path, or a new PostgreSQL database."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'digest.db'}"
        return
    admin = os.environ[pgserver.ENV_URL]
    name = pgserver.new_name()
    url = pgserver.create(admin, name)
    try:
        yield url
    finally:
        pgserver.drop(admin, name)


@pytest.fixture
def another_database(backend: str, tmp_path: Path, database_url: str) -> Iterator[Callable[[str], str]]:
    """Makes more empty databases on this test's backend, by name, for tests that move data between two."""
    made: list[str] = []

    def make(name: str) -> str:
        if backend == "sqlite":
            (tmp_path / name).mkdir()
            return f"sqlite:///{tmp_path / name / 'digest.db'}"
        made.append(f"{pgserver.new_name()}_{name}")
        return pgserver.create(os.environ[pgserver.ENV_URL], made[-1])

    yield make
    for name in made:
        pgserver.drop(os.environ[pgserver.ENV_URL], name)


@pytest.fixture
def workdir(tmp_path: Path, database_url: str) -> Path:
    """A folder as `digest init` leaves it: digest.toml and the sample sources, on this test's database."""
    init(tmp_path)
    if not database_url.startswith("sqlite"):  # SQLite keeps the file's default, digest.db next to it
        edit_config(tmp_path, 'url = "sqlite:///digest.db"', f'url = "{database_url}"')
    return tmp_path


def edit_config(folder: Path, old: str, new: str) -> None:
    path = folder / "digest.toml"
    text = path.read_text()
    assert old in text, f"{old!r} not in digest.toml"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture
def settings(workdir: Path) -> Settings:
    s = load_settings(workdir / "digest.toml")
    if s.database_url.startswith("postgresql"):
        # a copy of the run's migrated template is the same schema, without replaying the migrations per test
        admin, name = os.environ[pgserver.ENV_URL], s.database_url.rsplit("/", 1)[1]
        pgserver.drop(admin, name)
        pgserver.create(admin, name, template=pgserver.TEMPLATE)
    migrate(s.database_url)
    return s


@pytest.fixture
def server() -> Iterator[SendGridServer]:
    """The SendGrid v3 contract server (tests/fakes/sendgrid_server.py) on a free port, taking SENDGRID_KEY."""
    with SendGridServer(SENDGRID_KEY) as srv:
        yield srv


@pytest.fixture
def session(settings: Settings) -> Iterator:
    with session_factory(settings.database_url)() as s:
        yield s


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """The real `digest` command in a subprocess, as a user runs it."""
    full_env = {**os.environ, "DIGEST_SECRET_KEY": SECRET, **(env or {})}
    return subprocess.run([sys.executable, "-m", "digest", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`digest ARGS` through the real entry point (`digest.cli.main.main`: exit codes, one-line errors), in
    this process: many steps without an interpreter start each. Returns the exit code and the output."""
    from digest.cli.main import main

    monkeypatch.setattr(sys, "argv", ["digest", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def screenshots() -> Path:
    """Where browser tests write screenshots: $DIGEST_SCREENSHOTS (CI lists it), else test-artifacts/."""
    folder = Path(os.environ.get("DIGEST_SCREENSHOTS") or ROOT / "test-artifacts" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless Debian Chromium driven by Playwright. Missing chromium fails: a skip would hide it in CI."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is not installed: scripts/test.sh installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
