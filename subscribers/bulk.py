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
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import JSON, Table, bindparam, func, insert, literal_column, select
from sqlalchemy.engine import Connection

from digest.errors import DigestError


class _Memo(dict):  # type: ignore[type-arg]
    """A processor's results for hashable values (the first call computes, the rest look up)."""

    def __init__(self, process: Any) -> None:
        super().__init__()
        self.process = process

    def __missing__(self, key: Any) -> Any:
        value = self[key] = self.process(key)
        return value


class _JSONMemo(dict):  # type: ignore[type-arg]
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


def json_converter(conn: Connection, table: Table, column: str) -> Any:
    """The dialect's conversion of a JSON column's values (memoised), to run ahead of `insert_rows`."""
    return _JSONMemo(table.c[column].type._cached_bind_processor(conn.dialect))


def insert_rows(conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
                converted: Sequence[str] = (), skip_existing: Sequence[str] = ()) -> None:
    """INSERT `rows` (tuples in `columns` order) into `table` with one executemany.

    Columns named in `converted` already hold the dialect's values (see `json_converter`). With
    `skip_existing` (the columns of a unique index), rows clashing with a stored one are skipped
    (ON CONFLICT DO NOTHING, SQLite and PostgreSQL). On SQLite the rows go to the driver one at a time
    (no list of parameters is built: a batch's parameters would double its memory)."""
    dialect = conn.dialect
    statement = insert(table)
    if skip_existing:
        if dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        elif dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert  # type: ignore[assignment]
        else:
            raise DigestError(f"importing needs SQLite or PostgreSQL (ON CONFLICT DO NOTHING), not {dialect.name}")
        statement = dialect_insert(table).on_conflict_do_nothing(index_elements=list(skip_existing))
    compiled = statement.values({c: bindparam(c) for c in columns}).compile(dialect=dialect)
    converters: list[Any] = []
    for name in columns:
        column_type = table.c[name].type
        process = column_type._cached_bind_processor(dialect)
        if process is None or name in converted:
            converters.append(None)
        else:
            converters.append(_JSONMemo(process) if isinstance(column_type, JSON) else _Memo(process).__getitem__)
    if dialect.name == "sqlite" and compiled.positional:
        index = {name: i for i, name in enumerate(columns)}
        order = [index[name] for name in compiled.positiontup]
        steps = [(i, converters[i]) for i in order]
        if order == list(range(len(columns))) and not any(converters):
            params: Iterable[Any] = rows
        else:
            params = (tuple(row[i] if c is None else c(row[i]) for i, c in steps) for row in rows)
        conn.connection.driver_connection.executemany(compiled.string, params)  # type: ignore[union-attr]
        return
    rows = list(rows)
    if not rows:
        return
    columns_data = [list(c) for c in zip(*rows, strict=True)]
    for i, convert in enumerate(converters):
        if convert is not None:
            columns_data[i] = list(map(convert, columns_data[i]))
    if compiled.positional:
        index = {name: i for i, name in enumerate(columns)}
        params = list(zip(*(columns_data[index[name]] for name in compiled.positiontup), strict=True))
    else:
        params = [dict(zip(columns, values, strict=True)) for values in zip(*columns_data, strict=True)]
    conn.exec_driver_sql(compiled.string, params)


def bound_value(conn: Connection, column: Any, value: Any) -> Any:
    """`value` as the dialect stores it in `column` (the column type's bind conversion)."""
    process = column.type._cached_bind_processor(conn.dialect)
    return value if process is None else process(value)


def among(dialect: str, column: Any, values: Sequence[Any]) -> Any:
    """`column IN values` for thousands of values. On SQLite the values travel as one JSON parameter
    (json_each) instead of one bound parameter each, which SQLAlchemy names and expands one by one."""
    if dialect == "sqlite":
        return column.in_(select(literal_column("value")).select_from(func.json_each(json.dumps(list(values)))))
    return column.in_(values)
