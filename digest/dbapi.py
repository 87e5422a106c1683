"""One small read-only runner: SQL text with `:name` parameters in, rows as tuples out, on SQLite and
PostgreSQL, without SQLAlchemy.

Why: `digest status` and `digest subscribers show` must start within 2x of `import typer` (issue 16) and
`import sqlalchemy` alone costs 3.3x. Their queries (digest.reports, subscribers.profile) are written once
as SQL text valid on both databases and run through this module, by those commands over a connection of
its own (`connect`) and by the web pages and tests over their SQLAlchemy session's connection (`reader`),
so there is one definition of each query.

The conventions are SQLAlchemy's, so both paths read and write the same values:
- `:name` parameters (sqlite3's named style; turned into psycopg's `%(name)s`), never inside a string
  literal; a list or tuple parameter written `IN (:name)` is expanded to one parameter per item (an
  empty one to NULL, which matches nothing);
- a datetime parameter is bound as store.UTCDateTime binds it: naive UTC, and on SQLite as the text
  SQLAlchemy's DATETIME stores ("2026-10-05 07:00:00.000000", which compares as text in time order);
- `utc()` reads a stored moment back as UTCDateTime does (SQLite gives that text, PostgreSQL a naive
  `timestamp without time zone`): an aware UTC datetime; `json()` reads a JSON column.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: how long a read waits for a writer's lock (as digest.store's SQLite engines do: busy_timeout 30 s)
BUSY_SECONDS = 30.0
#: SQLAlchemy's SQLite DATETIME storage format (sqlalchemy.dialects.sqlite.DATETIME)
SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"
_SQLITE_PREFIX = "sqlite:///"
_PSYCOPG_PREFIX = "postgresql+psycopg://"
_PARAM = re.compile(r"(?<![:\w]):(\w+)")  # `:name`, not PostgreSQL's `::type` cast nor `12:30`


class _DBAPIConnection(Protocol):
    def cursor(self) -> Any: ...


class Reader:
    """A database connection to read with: `rows(sql, name=value, ...)`."""

    def __init__(self, connection: _DBAPIConnection, dialect: str) -> None:
        self.connection = connection
        self.dialect = dialect  # "sqlite" or "postgresql"

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Every row of one SELECT, as tuples, in the order the SQL gives them."""
        sql, bound = self._bind(sql, params)
        cursor = self.connection.cursor()
        try:
            cursor.execute(sql, bound)
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def _bind(self, sql: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        bound: dict[str, Any] = {}

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in params:
                raise KeyError(f"no value given for the SQL parameter :{name}")
            value = params[name]
            if isinstance(value, list | tuple | set | frozenset):
                if not value:
                    return "NULL"
                names = [f"{name}_{i}" for i in range(len(value))]
                bound.update({n: self._value(v) for n, v in zip(names, value, strict=True)})
                return ", ".join(self._placeholder(n) for n in names)
            bound[name] = self._value(value)
            return self._placeholder(name)

        if self.dialect == "postgresql":
            sql = sql.replace("%", "%%")  # psycopg's placeholders are %-style: a literal % is written %%
        return _PARAM.sub(one, sql), bound

    def _placeholder(self, name: str) -> str:
        return f"%({name})s" if self.dialect == "postgresql" else f":{name}"

    def _value(self, value: Any) -> Any:
        if isinstance(value, datetime):  # store.UTCDateTime.process_bind_param
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            naive = value.astimezone(UTC).replace(tzinfo=None)
            return naive.strftime(SQLITE_DATETIME) if self.dialect == "sqlite" else naive
        if isinstance(value, str):
            return str(value)  # a StrEnum member (IssueStatus, MembershipStatus) as its plain value
        return value


def utc(value: datetime | str | None) -> datetime | None:
    """A stored moment as an aware UTC datetime (store.UTCDateTime.process_result_value)."""
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC)


def json(value: Any) -> Any:
    """A JSON column's value: SQLite gives its text, psycopg the decoded value."""
    if not isinstance(value, str | bytes):
        return value
    import json as _json  # only the commands that read a JSON column pay for the module

    return _json.loads(value)


def reader(db: Reader | Session) -> Reader:
    """A Reader as it is, or one over a SQLAlchemy session's connection (inside its transaction)."""
    if isinstance(db, Reader):
        return db
    connection = db.connection()
    driver = connection.connection.driver_connection  # the sqlite3 or psycopg connection under the session
    if driver is None:
        raise RuntimeError("the session's connection has no driver connection (it was invalidated)")
    return Reader(driver, connection.dialect.name)


def application_name() -> str:
    """How this process's PostgreSQL connections name themselves (`pg_stat_activity.application_name`):
    "digest <command> <pid>", e.g. "digest send 4242", so an admin can tell which process holds a lock or
    a long transaction. At most 63 bytes of printable ASCII: longer is cut, others are replaced by "?"
    (https://www.postgresql.org/docs/current/runtime-config-logging.html, application_name)."""
    words = []  # the command and its subcommand: the arguments before the first option, two at most
    for arg in sys.argv[1:3]:
        if arg.startswith("-"):
            break
        words.append(arg)
    return re.sub(r"[^\x20-\x7e]", "?", " ".join(["digest", *words, str(os.getpid())]))[:63]


def readable(url: str) -> bool:
    """Whether `connect` opens this URL: an SQLite file or PostgreSQL through psycopg, with no options in
    the URL's query (any other URL is read through SQLAlchemy, which knows them all)."""
    if "?" in url:  # options SQLAlchemy reads (and passes on its own way): left to it
        return False
    if url.startswith(_SQLITE_PREFIX):
        return url != _SQLITE_PREFIX + ":memory:"
    return url.startswith(_PSYCOPG_PREFIX)


@contextmanager
def connect(url: str) -> Iterator[Reader]:
    """A read-only connection for a `readable` URL: SQLite in its read-only URI mode (it waits for a
    writer as the engines do: https://www.sqlite.org/uri.html, `mode=ro`), PostgreSQL in read-only
    transactions. sqlite3.OperationalError when the file does not exist."""
    if not readable(url):
        raise ValueError(f"not a database URL digest.dbapi reads: {url}")
    connection: Any
    if url.startswith(_SQLITE_PREFIX):
        path = url.removeprefix(_SQLITE_PREFIX)
        connection = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=BUSY_SECONDS)
        dialect = "sqlite"
    else:
        import psycopg  # only for a PostgreSQL database (`pip install '.[postgres]'`)

        connection = psycopg.connect("postgresql://" + url.removeprefix(_PSYCOPG_PREFIX),
                                     application_name=application_name())  # (`readable`: no query in the URL)
        connection.read_only = True
        dialect = "postgresql"
    try:
        yield Reader(connection, dialect)
    finally:
        connection.close()


def schema_version(db: Reader) -> frozenset[str]:
    """The migration revisions Alembic recorded in the database (empty when it has none: a new database)."""
    probe = ("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
             if db.dialect == "sqlite" else "SELECT count(*) FROM (SELECT to_regclass('alembic_version') AS t) x "
                                            "WHERE t IS NOT NULL")
    if not db.rows(probe)[0][0]:
        return frozenset()
    return frozenset(str(v) for (v,) in db.rows("SELECT version_num FROM alembic_version"))

