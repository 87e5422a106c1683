"""bulk.load_rows: COPY on PostgreSQL, executemany on SQLite; what is stored is what the ORM would store."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from digest.store import core_table
from subscribers.bulk import json_converter, load_rows
from subscribers.models import Subscriber

AWKWARD = ["tab\there", "line\nbreak", "back\\slash \\N", "quote \" and ' ,comma", "Zoë 東京 🙂", "", "\\."]


def test_rows_with_awkward_text_json_and_times_arrive_intact(session: Session) -> None:
    when = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    rows = [(f"r{i}@example.com", f"r{i}@example.com", text, {"note": text, "n": i}, [text, "x"], when)
            for i, text in enumerate(AWKWARD)]
    load_rows(session.connection(), core_table(Subscriber),
              ("email", "email_key", "name", "attributes", "categories", "created_at"), rows)
    session.commit()
    got = session.execute(select(Subscriber.email, Subscriber.name, Subscriber.attributes, Subscriber.categories,
                                 Subscriber.created_at).order_by(Subscriber.email)).all()
    assert sorted((e, n, a, c, t) for e, _, n, a, c, t in rows) == [tuple(r) for r in got]


def test_json_converted_ahead_arrives_as_the_orm_would_store_it(session: Session) -> None:
    """The import converts JSON cells once, ahead (`json_converter`: JSON text for COPY on PostgreSQL, the
    driver's value on SQLite) and hands them over as `converted`: the same values come back."""
    table = core_table(Subscriber)
    convert = json_converter(session.connection(), table, "attributes")
    when = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    values = [({"note": text, "n": i, "nul": "a\x00b"}, [text]) for i, text in enumerate(AWKWARD)]
    rows = [(f"j{i}@example.com", f"j{i}@example.com", "", convert(attrs), convert(cats), when)
            for i, (attrs, cats) in enumerate(values)]
    load_rows(session.connection(), table, ("email", "email_key", "name", "attributes", "categories", "created_at"),
              rows, converted=("attributes", "categories"))
    session.commit()
    got = session.execute(select(Subscriber.attributes, Subscriber.categories).order_by(Subscriber.id)).all()
    assert [tuple(r) for r in got] == values
