"""Subscribers out as CSV, in the format the import reads (`subscribers.csv_import`): the two round-trip.

Two ways to the same bytes. Everywhere, rows are read through SQLAlchemy and written here (`_rows`). On
PostgreSQL the file is instead made by the server: `COPY (SELECT ...) TO STDOUT (FORMAT csv)` streamed
through psycopg's `cursor.copy()` (https://www.psycopg.org/psycopg3/docs/basic/copy.html), with the
memberships aggregated, the categories joined and the formula guard of `csv_safe` applied in the SELECT
(`_copy`). benchmarks/export_csv.py measures both at 1,000,000 subscribers; docs/subscribers.md has
the figures.

Both write PostgreSQL's CSV quoting (https://www.postgresql.org/docs/current/sql-copy.html#COPY-FORMAT-CSV):
a cell is quoted when it holds a comma, a double quote, a line feed or a carriage return, an empty cell
is written empty, and lines end in a line feed. Python's csv.writer (with a "\\n" line ending) left a bare
carriage return unquoted, which every CSV reader (Python's own included) takes for the end of the row,
so such a value did not survive the round trip; `_line` quotes it as COPY does.

COPY is not used (the rows path writes the file) when an attribute holds a JSON object or array: the row
path writes those as Python's json.dumps(ensure_ascii=False), which SQL cannot reproduce exactly (the
`json` type keeps the text as stored, with \\u escapes; `jsonb` reorders keys).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from digest.errors import DigestError
from subscribers import lifecycle
from subscribers.csv_read import COLUMNS
from subscribers.csv_safe import TRIGGERS, safe_row
from subscribers.models import MailingList, Membership, MembershipStatus, Subscriber

PROGRESS_EVERY = 5000
_QUOTE_IF = frozenset(',"\n\r')


def _field(value: Any) -> str:
    cell = "" if value is None else str(value)
    if _QUOTE_IF.isdisjoint(cell):
        return cell
    return '"' + cell.replace('"', '""') + '"'


def _line(cells: Iterable[Any]) -> str:
    """One CSV line as PostgreSQL's COPY (FORMAT csv) writes it (see the module's docstring)."""
    return ",".join(_field(c) for c in cells) + "\n"


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def export_csv(session: Session, out: TextIO, *, list_slug: str | None = None, status: str | None = None,
               progress: Callable[[int, int], None] | None = None, use_copy: bool | None = None) -> int:
    """Write subscribers as CSV (one row per person, memberships in `lists`); returns the row count.

    With --list/--status only people with such a membership are written, and `lists` shows only
    the memberships that match, so the file re-imports to exactly that selection. `use_copy`: None
    lets PostgreSQL's COPY make the file where it can (the same bytes either way); True insists
    (DigestError where it cannot), False reads the rows here.
    """
    try:
        wanted = MembershipStatus.parse(status) if status is not None else None
    except ValueError as e:
        raise DigestError(str(e)) from None
    list_id = lifecycle.get_list(session, list_slug).id if list_slug else None
    postgresql = session.get_bind().dialect.name == "postgresql"
    if postgresql:
        keys, nested = _keys_postgresql(session)
    else:
        keys, nested = _keys(session), True
    attribute_keys = sorted(keys, key=str.casefold)
    if use_copy and not postgresql:
        raise DigestError("COPY export needs PostgreSQL")
    if use_copy and nested:
        raise DigestError("COPY export cannot write attributes that hold JSON objects or arrays exactly")
    copy = postgresql and not nested if use_copy is None else use_copy
    total = _total(session, list_id, wanted)
    out.write(_line(safe_row([*COLUMNS, *attribute_keys])))  # cells a spreadsheet would run are quoted (csv_safe)
    write = _copy if copy else _rows
    written = write(session, out, list_id, wanted, attribute_keys, lambda n: progress(n, total) if progress else None)
    if progress:
        progress(written, total)
    return written


def _keys(session: Session) -> set[str]:
    keys: set[str] = set()
    for attrs in session.scalars(select(Subscriber.attributes).execution_options(yield_per=5000)):
        keys.update(attrs or {})
    return keys


def _keys_postgresql(session: Session) -> tuple[set[str], bool]:
    """Every attribute name, and whether any value is a JSON object or array, in one pass on the server."""
    found = session.execute(text(
        "SELECT e.key, bool_or(json_typeof(e.value) IN ('object', 'array')) FROM subscribers s"
        " CROSS JOIN LATERAL json_each(CASE WHEN json_typeof(s.attributes) = 'object' THEN s.attributes"
        " ELSE '{}'::json END) AS e GROUP BY e.key")).all()
    return {key for key, _ in found}, any(nested for _, nested in found)


def _total(session: Session, list_id: int | None, wanted: MembershipStatus | None) -> int:
    conditions = _conditions(list_id, wanted)
    if conditions:
        chosen = select(Membership.subscriber_id).where(*conditions).distinct()
        return session.scalar(select(func.count()).select_from(chosen.subquery())) or 0
    return session.scalar(select(func.count(Subscriber.id))) or 0


def _conditions(list_id: int | None, wanted: MembershipStatus | None) -> list[Any]:
    conditions = []
    if list_id is not None:
        conditions.append(Membership.list_id == list_id)
    if wanted is not None:
        conditions.append(Membership.status == wanted)
    return conditions


def _rows(session: Session, out: TextIO, list_id: int | None, wanted: MembershipStatus | None,
          attribute_keys: list[str], tick: Callable[[int], None]) -> int:
    """The rows read through SQLAlchemy, grouped per subscriber and written here."""
    conditions = _conditions(list_id, wanted)
    q = select(Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.categories, Subscriber.created_at,
               Subscriber.attributes, Subscriber.timezone, MailingList.slug, Membership.status)
    if conditions:
        q = (q.join(Membership, Membership.subscriber_id == Subscriber.id)
             .join(MailingList, MailingList.id == Membership.list_id).where(*conditions))
    else:
        q = (q.outerjoin(Membership, Membership.subscriber_id == Subscriber.id)
             .outerjoin(MailingList, MailingList.id == Membership.list_id))
    q = q.order_by(Subscriber.id, MailingList.slug).execution_options(yield_per=5000)

    written = 0
    current: list[Any] | None = None
    memberships: list[str] = []

    def flush() -> None:
        nonlocal written
        if current is None:
            return
        _, email, name, cats, created, attrs, zone = current
        attrs = attrs or {}
        out.write(_line(safe_row([email, name, ";".join(memberships), " / ".join(cats or []),
                                  created.isoformat() if created else "", zone or "",
                                  *(_cell(attrs[k]) if k in attrs else "" for k in attribute_keys)])))
        written += 1
        if written % PROGRESS_EVERY == 0:
            tick(written)

    for sid, email, name, cats, created, attrs, zone, slug, mstatus in session.execute(q):
        if current is None or current[0] != sid:
            flush()
            current, memberships = [sid, email, name, cats, created, attrs, zone], []
        if slug is not None:
            memberships.append(f"{slug}:{mstatus}")
    flush()
    return written


def _guarded(expression: str) -> str:
    """csv_safe.safe in SQL: a `'` before a cell that, past any leading quotes, starts with a trigger;
    an empty cell as NULL, which COPY writes empty (it quotes an empty string, csv_safe's rows do not)."""
    triggers = ", ".join(f"chr({ord(t)})" for t in TRIGGERS)
    return (f"CASE WHEN left(ltrim({expression}, chr(39)), 1) IN ({triggers}) THEN chr(39) || {expression}"
            f" ELSE NULLIF({expression}, '') END")


def _copy_statement(list_id: int | None, wanted: MembershipStatus | None, attribute_keys: list[str]) -> Any:
    """The COPY of the same rows `_rows` writes, cell for cell (values as psycopg literals)."""
    from psycopg import sql

    where = []
    if list_id is not None:
        where.append(sql.SQL("m.list_id = {}").format(sql.Literal(list_id)))
    if wanted is not None:
        where.append(sql.SQL("m.status = {}").format(sql.Literal(wanted.value)))
    attributes = [sql.SQL("CASE json_typeof(s.attributes -> {k}) WHEN 'string' THEN s.attributes ->> {k}"
                          " ELSE (s.attributes -> {k})::text END").format(k=sql.Literal(k))
                  for k in attribute_keys]
    cells = [
        sql.SQL("s.email"), sql.SQL("s.name"), sql.SQL("ms.lists"),
        # " / ".join(categories), in the array's order
        sql.SQL("CASE WHEN json_typeof(s.categories) = 'array' THEN (SELECT string_agg(c.value, ' / '"
                " ORDER BY c.n) FROM json_array_elements_text(s.categories) WITH ORDINALITY AS c(value, n)) END"),
        # datetime.isoformat() of the UTC time: microseconds only when there are some
        sql.SQL("to_char(s.created_at, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN date_trunc('second',"
                " s.created_at) = s.created_at THEN '' ELSE to_char(s.created_at, '.US') END || '+00:00'"),
        sql.SQL("s.timezone"), *attributes,
    ]
    outer = sql.SQL(", ").join(sql.SQL(_guarded(f"c{i}")) for i in range(len(cells)))
    inner = sql.SQL(", ").join(sql.SQL("{} AS {}").format(c, sql.Identifier(f"c{i}")) for i, c in enumerate(cells))
    filtered = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
    return sql.SQL(
        "COPY (SELECT {outer} FROM (SELECT s.id, {inner} FROM subscribers s {join} ("
        "SELECT m.subscriber_id, string_agg(l.slug || ':' || m.status, ';' ORDER BY l.slug) AS lists"
        " FROM memberships m JOIN lists l ON l.id = m.list_id{filtered} GROUP BY m.subscriber_id"
        ") ms ON ms.subscriber_id = s.id) AS cells ORDER BY id) TO STDOUT (FORMAT csv)"
    ).format(outer=outer, inner=inner, join=sql.SQL("JOIN" if where else "LEFT JOIN"), filtered=filtered)


def _copy(session: Session, out: TextIO, list_id: int | None, wanted: MembershipStatus | None,
          attribute_keys: list[str], tick: Callable[[int], None]) -> int:
    """The rows as PostgreSQL's COPY writes them, in this session's transaction (the keys' snapshot)."""
    driver = session.connection().connection.driver_connection
    assert driver is not None
    decode = codecs.getincrementaldecoder("utf-8")().decode
    written = 0
    with driver.cursor() as cursor, cursor.copy(_copy_statement(list_id, wanted, attribute_keys)) as copy:
        for data in copy:  # one message per row (COPY TO sends each row in its own CopyData message)
            out.write(decode(data))
            written += 1
            if written % PROGRESS_EVERY == 0:
                tick(written)
    out.write(decode(b"", final=True))
    return written
