"""The export made by PostgreSQL's COPY is the export made row by row, byte for byte, on tricky data; and it
imports back to what was exported (subscribers/csv_export.py)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.errors import DigestError
from digest.store import migrate, session_factory
from subscribers.csv_export import export_csv
from subscribers.csv_import import import_csv
from subscribers.models import MailingList, Membership, MembershipStatus, Subscriber

#: every cell a spreadsheet or a CSV reader could trip on: formula triggers (csv_safe), quotes before a
#: trigger, separators, quotes, line feeds, carriage returns, tabs, non-ASCII and beyond the BMP
TRICKY = ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tTab", "\rCR", "'=quoted", "''+twice",
          "a,b", 'say "hi"', "two\nlines", "cr\rinside", "crlf\r\nin", "Zoë 🎉 ünï", " spaced ", "x\\.y",
          "\\.", "'", "plain"]


def _fill(session: Session, *, valid_emails: bool = False) -> None:
    """The same rows in any database: ids, times and JSON as given (not through the consent rules, which
    would clean some of them: the export must write whatever is stored). Tricky addresses unless asked
    for ones the import accepts."""
    weekly, offers = MailingList(id=1, slug="weekly", name="Weekly"), MailingList(id=2, slug="offers", name="Offers")
    session.add_all([weekly, offers])
    whole = datetime(2026, 12, 2, 17, 0, 0, tzinfo=UTC)
    for i, value in enumerate(TRICKY, start=1):
        session.add(Subscriber(
            id=i, email=f"r{i}@example.com" if valid_emails else
            f"{value.strip() or 'x'}{i}@example.com".replace("\n", "").replace("\r", ""),
            email_key=f"key{i}@example.com", name=value,
            attributes={"=region": value, "a,b": str(i), 'q"k': f"{value}-{i}", "Ünï": i * 1.5, "flag": i % 2 == 0,
                        "none": None, "big": 10**20 + i} if i % 3 else {"only": value},
            categories=[value, "Plain cat"] if i % 2 else [], timezone="Australia/Sydney" if i % 4 else None,
            created_at=whole if i % 2 else whole.replace(microsecond=1234 * i)))
    session.add(Subscriber(id=99, email="nobody@example.com", email_key="nobody@example.com", name="",
                           attributes={}, categories=[], created_at=whole))  # no membership at all
    session.flush()
    statuses = list(MembershipStatus)
    for i in range(1, len(TRICKY) + 1):
        session.add(Membership(subscriber_id=i, list_id=1, status=statuses[i % len(statuses)],
                               created_at=whole, updated_at=whole))
        if i % 3 == 0:
            session.add(Membership(subscriber_id=i, list_id=2, status=MembershipStatus.ACTIVE,
                                   created_at=whole, updated_at=whole))
    session.commit()


def _export(session: Session, **kw: Any) -> bytes:
    out = io.StringIO(newline="")
    export_csv(session, out, **kw)
    return out.getvalue().encode("utf-8")


SELECTIONS: list[dict[str, Any]] = [{}, {"list_slug": "weekly"}, {"status": "active"},
                                    {"list_slug": "offers", "status": "active"},
                                    {"list_slug": "weekly", "status": "bounced"}]


def test_copy_export_is_byte_for_byte_the_row_export_on_both_databases(settings: Settings, session: Session,
                                                                       backend: str, tmp_path: Path) -> None:
    if backend != "postgresql":
        pytest.skip("compares PostgreSQL's COPY with SQLite's rows: runs once, with the PostgreSQL backend")
    lite_url = f"sqlite:///{tmp_path / 'lite.db'}"
    migrate(lite_url)
    with session_factory(lite_url)() as lite:
        _fill(lite)
        _fill(session)
        for selection in SELECTIONS:
            on_sqlite = _export(lite, **selection)
            rows = _export(session, use_copy=False, **selection)
            copied = _export(session, use_copy=True, **selection)
            assert copied == rows == on_sqlite, selection
            assert _export(session, **selection) == copied  # the default on PostgreSQL: COPY, same bytes
        everyone = _export(session, use_copy=True)
    lines = everyone.decode().split("\n")
    assert lines[0].startswith("email,name,lists,categories,created_at,timezone,'=region,\"a,b\",big,")
    assert "\"cr\rinside\"" in everyone.decode()  # a carriage return inside a cell is quoted, as COPY does
    assert "'=HYPERLINK(\"\"http://x\"\")" in everyone.decode() and ",'-2," in everyone.decode()
    assert "2026-12-02T17:00:00.002468+00:00" in everyone.decode()  # isoformat: microseconds when there are some
    assert "nobody@example.com,,,,2026-12-02T17:00:00+00:00,," in everyone.decode()


def test_the_export_imports_back_to_what_was_stored(settings: Settings, session: Session, tmp_path: Path,
                                                    another_database: Any) -> None:
    _fill(session, valid_emails=True)
    path = tmp_path / "everyone.csv"
    path.write_bytes(_export(session))
    url = another_database("fresh")
    migrate(url)
    with session_factory(url)() as fresh:
        report = import_csv(fresh, path, preconfirmed=True, source="round trip", create_lists=True)
        assert report.rejected == 0, report
        got = {s.email: (s.name, s.attributes) for s in fresh.query(Subscriber)}
    want = {s.email: (s.name, s.attributes) for s in session.query(Subscriber)}
    for email, (name, attributes) in want.items():
        got_name, got_attributes = got[email]
        # names are cleaned at the import door (line breaks to spaces: subscribers/names.py) and cells are
        # trimmed; attributes come back as text: each as the CSV had it, a carriage return inside included
        assert got_name.split() == name.split(), email
        assert got_attributes == {k: v.strip() if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                                  for k, v in attributes.items()}, email
    assert got["r12@example.com"][1]["only"] == "cr\rinside"  # a bare CR no longer ends the row


def test_nested_attributes_keep_the_row_export_and_copy_says_why(settings: Settings, session: Session,
                                                                 backend: str) -> None:
    _fill(session)
    sub = session.get(Subscriber, 1)
    assert sub is not None
    sub.attributes = {**sub.attributes, "nested": {"é": [1, "ü"]}}
    session.commit()
    rows = _export(session, use_copy=False)
    assert _export(session) == rows and '"{""é"": [1, ""ü""]}"' in rows.decode()
    with pytest.raises(DigestError, match="COPY export"):
        _export(session, use_copy=True)
