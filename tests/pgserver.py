"""A throwaway PostgreSQL server for one test run, and a database per test on it.

The controller process (xdist's, or pytest's own without -n) starts one server from Debian's `postgresql`
package in a temporary folder and hands its address to the workers in $DIGEST_TEST_PG_URL; each test then
gets a database of its own on it (`CREATE DATABASE ... TEMPLATE`, which copies files instead of replaying
the migrations). The server listens on 127.0.0.1 only, on a free port, with its socket in the temporary
folder and a random password, and is stopped and removed when the run ends, passed, failed or interrupted.
A run that sets $DIGEST_TEST_PG_URL itself (e.g. a CI service container) uses that server instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

ENV_URL = "DIGEST_TEST_PG_URL"  # the server's admin URL (database `postgres`), set for the workers
ENV_STARTED = "DIGEST_TEST_PG_STARTED"  # set when this run started the server (not a given $DIGEST_TEST_PG_URL)
TEMPLATE = "digest_template"  # migrated once per run; every `settings` database is a copy of it
DRIVER = "postgresql+psycopg"
# initdb and postgres refuse to run as root (`initdb: error: cannot be run as root`); when the tests run as
# root (CI containers), the server runs as this unprivileged user, `nobody` unless told otherwise
ENV_USER = "DIGEST_TEST_PG_USER"


class PostgresUnavailable(RuntimeError):
    """No server could be started; the message says why, in a line fit to print."""


def bindir() -> Path | None:
    """Debian keeps each major version's programs apart (/usr/lib/postgresql/<major>/bin); newest first."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child_setup(pw: pwd.struct_passwd | None) -> Callable[[], None]:
    """What the server's child process does before exec: become `pw`, then die with pytest.

    PR_SET_PDEATHSIG stops the server (SIGQUIT: immediate shutdown) if pytest is killed outright. It is
    cleared when the credentials change (prctl(2)), so the switch to the unprivileged user happens here,
    before it, rather than through subprocess's `user=`.
    """

    def setup() -> None:
        if pw is not None:
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGQUIT))  # 1 = PR_SET_PDEATHSIG

    return setup


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    folder: Path
    url: str  # admin URL, database `postgres`

    def stop(self) -> None:
        """Fast shutdown (SIGINT: disconnect clients, then exit), then remove the folder."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def _remove_stale(parent: Path, min_age: float = 600) -> None:
    """Folders left by runs that were killed outright (their server died with them, see _child_setup)."""
    for folder in parent.glob("digest-pg-*"):
        pidfile = folder / "data" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            if time.time() - folder.stat().st_mtime < min_age:
                continue  # may be another run's, still starting
            if pidfile.exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pidfile.read_text().split()[0]), 0)
                    continue  # its server runs
            shutil.rmtree(folder, ignore_errors=True)


def start(wrapper: Sequence[str] = (), options: Sequence[str] = ()) -> Server:
    """initdb into a temporary folder and start postgres on a free 127.0.0.1 port; raise PostgresUnavailable.
    `wrapper`: a command postgres runs under (benchmarks/send.py counts its instructions with valgrind);
    `options`: more settings (`name=value`)."""
    bins = bindir()
    if bins is None:
        raise PostgresUnavailable("PostgreSQL is not installed (scripts/test.sh installs it: apt-get install "
                                  "postgresql)")
    user: str | None = None
    pw: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        user = os.environ.get(ENV_USER, "nobody")
        try:
            pw = pwd.getpwnam(user)
        except KeyError as e:
            raise PostgresUnavailable(f"user {user!r} ({ENV_USER}) does not exist to run PostgreSQL as") from e
    _remove_stale(Path(tempfile.gettempdir()))
    folder = Path(tempfile.mkdtemp(prefix="digest-pg-"))
    try:
        if pw is not None:
            os.chown(folder, pw.pw_uid, pw.pw_gid)
        data, sockets = folder / "data", folder / "sock"
        password = secrets.token_hex(16)
        (folder / "pw").write_text(password)
        if pw is not None:
            os.chown(folder / "pw", pw.pw_uid, pw.pw_gid)
        init = subprocess.run(
            [str(bins / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile", str(folder / "pw"),
             "--auth", "scram-sha-256", "-E", "UTF8", "--locale", "C.UTF-8", "--no-sync"],
            user=user, cwd=folder, capture_output=True, text=True, timeout=120)
        (folder / "pw").unlink()
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {(init.stderr or init.stdout).strip()}")
        sockets.mkdir()
        if pw is not None:
            os.chown(sockets, pw.pw_uid, pw.pw_gid)
        for _attempt in range(5):  # the port is free when chosen; another process may take it before we bind
            port = _free_port()
            log = open(folder / "postgres.log", "ab")  # noqa: SIM115 (the server keeps it for its lifetime)
            process = subprocess.Popen(
                [*wrapper, str(bins / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
                 "-c", "listen_addresses=127.0.0.1",
                 # a throwaway server: durability buys nothing, and each test creates and drops a database
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 # each test's engine keeps a pool until it is collected, and CLI subprocesses open their own
                 "-c", "max_connections=300", *(arg for option in options for arg in ("-c", option))],
                cwd=folder, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_child_setup(pw))
            log.close()
            url = f"{DRIVER}://postgres:{password}@127.0.0.1:{port}/postgres"
            server = Server(process, folder, url)
            if _wait_ready(server):
                return server
            if process.poll() is None:  # not ready in time: give up on this one, keep the folder for the next
                process.kill()
            process.wait(timeout=10)
        tail = (folder / "postgres.log").read_text(errors="replace")[-2000:]
        raise PostgresUnavailable(f"postgres did not start: {tail.strip()}")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _wait_ready(server: Server, timeout: float = 30) -> bool:
    import psycopg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            psycopg.connect(libpq(server.url), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            time.sleep(0.1)
    return False


def libpq(url: str) -> str:
    """The SQLAlchemy URL as psycopg takes it."""
    return url.replace(DRIVER + "://", "postgresql://", 1)


def database_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


@lru_cache(maxsize=1)
def _admin(admin_url: str) -> Any:
    import psycopg

    return psycopg.connect(libpq(admin_url), autocommit=True)


_names = itertools.count(1)


def new_name() -> str:
    """A database name unique on the server: the process id tells xdist's workers apart."""
    return f"t{os.getpid()}_{next(_names)}"


def create(admin_url: str, name: str, template: str = "template0") -> str:
    from psycopg import sql

    _admin(admin_url).execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                               sql.Identifier(template)))
    return database_url(admin_url, name)


def drop(admin_url: str, name: str) -> None:
    """Drop a test's database; FORCE (PostgreSQL 13+) ends the connections its engines still pool."""
    from psycopg import sql

    _admin(admin_url).execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def connections(admin_url: str, name: str) -> int:
    """How many backends database `name` has now (over the one admin connection, which adds none there)."""
    return int(_admin(admin_url).execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                         (name,)).fetchone()[0])


def wait_for_killed_clients(url: str, timeout: float = 30) -> None:
    """After a client process is SIGKILLed, wait until the database has no other backend running a statement
    or holding a transaction open. A backend carries out a COMMIT it has already read although its client is
    gone, and only then finds the closed socket and exits: read too early, a ledger row of the dead process
    can still change under the test (a batch listed as of unknown fate, then marked)."""
    import psycopg

    with psycopg.connect(libpq(url), autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
                           "AND state <> 'idle'").fetchone() != (0,):
            assert time.monotonic() < deadline, "a killed client's PostgreSQL backend did not end"
            time.sleep(0.01)


def make_template(admin_url: str) -> None:
    """The migrated database every test's database is copied from; no connection to it may stay open."""
    from digest.store import engine_for, migrate

    drop(admin_url, TEMPLATE)
    url = create(admin_url, TEMPLATE)
    migrate(url)
    engine_for(url).dispose()
