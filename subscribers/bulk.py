"""Bulk INSERT at the driver's speed, with SQLAlchemy's own SQL and type conversions.

`session.execute(insert(T), rows)` converts every parameter of every row through the column types
(UTC datetimes, JSON) in Python; for a million-row import that costs more than SQLite's own work. Here
the statement is compiled once for the dialect, each column's bind processor is applied with a memo
(the batch shares one timestamp, a few statuses, a few list ids), and the rows go to the driver's
executemany. What is stored is exactly what the ORM would store: the same compiler, the same
processors; only the per-row Python overhead is gone. Postgres and SQLite both work.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import JSON, Table, bindparam, func, insert, literal_column, select
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeEngine


class _Memo(dict[Any, Any]):
    """A processor's results for hashable values (the first call computes, the rest look up)."""

    def __init__(self, process: Any) -> None:
        super().__init__()
        self.process = process

    def __missing__(self, key: Any) -> Any:
        value = self[key] = self.process(key)
        return value


class _JSONMemo(dict[Any, Any]):
    """The same for JSON values: small dicts and lists of strings, keyed by their items (few distinct)."""

    def __init__(self, process: Any) -> None:
        super().__init__()
        self.process = process

    def __call__(self, value: Any) -> Any:
        try:
            key = (tuple(value.items()) if isinstance(value, dict) else tuple(value), type(value))
            return self[key]
        except TypeError:  # an unhashable value inside: convert it as it is
            return self.process(value)
        except KeyError:
            pass
        if len(self) > 10_000:
            return self.process(value)
        result = self[key] = self.process(value)
        return result


def _bind_processor(column_type: TypeEngine[Any], dialect: Dialect) -> Callable[[Any], Any] | None:
    """The conversion SQLAlchemy applies to a parameter of this type: the dialect's implementation of
    the type (a TypeDecorator's included), then its bind processor, by public API only."""
    return column_type.dialect_impl(dialect).bind_processor(dialect)


def _json_processor(column_type: TypeEngine[Any], dialect: Dialect) -> Any:
    """A JSON column's values as the bulk path sends them. On PostgreSQL that path is COPY in text format,
    which takes the JSON text itself (https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.2):
    SQLAlchemy's own processor would wrap each value in psycopg's `Json`, whose dumper encodes it again
    for every row, however often the value repeats; the text is what that dumper writes (json.dumps:
    digest.store makes its engines without a json_serializer of their own)."""
    if dialect.name == "postgresql":
        return json.dumps
    return _bind_processor(column_type, dialect)


def json_converter(conn: Connection, table: Table, column: str) -> Any:
    """The dialect's conversion of a JSON column's values (memoised), to run ahead of `load_rows`."""
    return _JSONMemo(_json_processor(table.c[column].type, conn.dialect))


def insert_rows(conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
                converted: Sequence[str] = ()) -> None:
    """INSERT `rows` (tuples in `columns` order) into `table` with the driver's executemany.

    Columns named in `converted` already hold the dialect's values (see `json_converter`)."""
    dialect = conn.dialect
    rows = list(rows)
    if not rows:
        return
    data = [list(c) for c in zip(*rows, strict=True)]
    for i, name in enumerate(columns):
        column_type = table.c[name].type
        process = _bind_processor(column_type, dialect)
        if process is not None and name not in converted:
            convert = _JSONMemo(process) if isinstance(column_type, JSON) else _Memo(process).__getitem__
            data[i] = list(map(convert, data[i]))
    compiled = insert(table).values({c: bindparam(c) for c in columns}).compile(dialect=dialect)
    if compiled.positional:
        index = {name: i for i, name in enumerate(columns)}
        params: list[Any] = list(zip(*(data[index[name]] for name in compiled.positiontup or ()), strict=True))
    else:
        params = [dict(zip(columns, values, strict=True)) for values in zip(*data, strict=True)]
    conn.exec_driver_sql(compiled.string, params)


def among(dialect: str, column: Any, values: Sequence[Any]) -> Any:
    """`column IN values` for thousands of values. On SQLite the values travel as one JSON parameter
    (json_each) instead of one bound parameter each, which SQLAlchemy names and expands one by one."""
    if dialect == "sqlite":
        return column.in_(select(literal_column("value")).select_from(func.json_each(json.dumps(list(values)))))
    return column.in_(values)


def copy_rows(conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
              converted: Sequence[str] = ()) -> None:
    """The same rows into `table` with PostgreSQL's COPY ... FROM STDIN (psycopg 3's `cursor.copy()`).

    COPY streams the rows in one command instead of one INSERT per row: no statement per row to parse,
    plan and answer (https://www.postgresql.org/docs/current/populate.html#POPULATE-COPY-FROM). The values
    go through the same bind processors as `insert_rows` (UTC datetimes, JSON), then psycopg's dumpers."""
    dialect = conn.dialect
    processors: list[tuple[int, Callable[[Any], Any]]] = []  # only the columns that need one (few)
    for i, name in enumerate(columns):
        column_type = table.c[name].type
        process = _json_processor(column_type, dialect) if isinstance(column_type, JSON) else \
            _bind_processor(column_type, dialect)
        if process is not None and name not in converted:
            processors.append((i, _JSONMemo(process) if isinstance(column_type, JSON) else _Memo(process).__getitem__))
    preparer = dialect.identifier_preparer
    sql = (f"COPY {preparer.format_table(table)} ({', '.join(preparer.quote(c) for c in columns)}) "
           "FROM STDIN")
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(sql) as copy:
        write = copy.write_row
        if processors:
            for row in rows:
                values = list(row)
                for i, process in processors:
                    values[i] = process(values[i])
                write(values)
        else:
            for row in rows:
                write(row)


def load_rows(conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
              converted: Sequence[str] = ()) -> None:
    """Many rows into `table` the fastest way the database has: COPY on PostgreSQL (`copy_rows`), the
    driver's executemany elsewhere (`insert_rows`; SQLite has no COPY and its executemany is in-process)."""
    if conn.dialect.name == "postgresql":
        copy_rows(conn, table, columns, rows, converted=converted)
    else:
        insert_rows(conn, table, columns, rows, converted=converted)
