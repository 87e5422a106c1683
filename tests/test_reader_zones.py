"""A reader's time zone at every door (issue 15): the CSV import column `timezone` (an invalid zone is a reject
with its reason, the other rows go in), the export, `digest subscribers add --timezone`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.store import session_factory
from subscribers import lifecycle
from subscribers.csv_export import export_csv
from subscribers.csv_import import import_csv
from subscribers.zones import InvalidZone, parse_zone
from tests.conftest import run_main


def test_zone_names_are_iana_names_matched_without_regard_to_case() -> None:
    assert parse_zone(" australia/perth ") == "Australia/Perth"
    assert parse_zone("") is None and parse_zone(None) is None
    for bad in ("Mars/Olympus_Mons", "+10:00", "AEST", "../../etc/passwd", "Australia/Perth" * 10):
        with pytest.raises(InvalidZone, match="is not an IANA time zone name"):
            parse_zone(bad)


def test_the_import_takes_a_timezone_column_and_rejects_a_bad_zone_with_its_reason(
        settings: Settings, session: Session, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("email,name,timezone\n"
                    "per@example.com,Per,Australia/Perth\n"
                    "akl@example.com,Akl,pacific/auckland\n"
                    "mars@example.com,Mars,Mars/Olympus_Mons\n"
                    "none@example.com,None,\n", encoding="utf-8")
    report = import_csv(session, path)
    assert (report.added, report.rejected) == (3, 1)
    assert report.rejects_path is not None
    with open(report.rejects_path, encoding="utf-8", newline="") as f:
        [reject] = list(csv.DictReader(f))
    assert reject["_row"] == "4" and "timezone 'Mars/Olympus_Mons' is not an IANA time zone name" in reject["_reason"]
    zones = {a: lifecycle.find(session, a).timezone for a in ("per@example.com", "akl@example.com", "none@example.com")}
    assert zones == {"per@example.com": "Australia/Perth", "akl@example.com": "Pacific/Auckland",
                     "none@example.com": None}
    assert lifecycle.find(session, "mars@example.com") is None

    # a second file changes a known reader's zone; an empty cell keeps it
    path.write_text("email,timezone\nper@example.com,Australia/Brisbane\nakl@example.com,\n", encoding="utf-8")
    again = import_csv(session, path)
    assert (again.updated, again.unchanged) == (1, 1)
    session.expire_all()
    assert lifecycle.find(session, "per@example.com").timezone == "Australia/Brisbane"
    assert lifecycle.find(session, "akl@example.com").timezone == "Pacific/Auckland"

    out = io.StringIO()
    export_csv(session, out)
    rows = {r["email"]: r["timezone"] for r in csv.DictReader(io.StringIO(out.getvalue()))}
    assert rows == {"per@example.com": "Australia/Brisbane", "akl@example.com": "Pacific/Auckland",
                    "none@example.com": ""}
    # the export re-imports to the same zones
    path.write_text(out.getvalue(), encoding="utf-8")
    assert import_csv(session, path).updated == 0


def test_subscribers_add_takes_a_timezone_and_refuses_a_bad_one(
        settings: Settings, workdir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(workdir)
    code, out = run_main(monkeypatch, capsys, "subscribers", "add", "per@example.com", "--confirmed", "--source",
                         "signed form 2026-11-30", "--timezone", "australia/perth")
    assert code == 0 and "time zone Australia/Perth" in out, out
    code, out = run_main(monkeypatch, capsys, "subscribers", "add", "bad@example.com", "--confirmed", "--source",
                         "signed form", "--timezone", "Sydney")
    assert code == 2 and "--timezone: timezone 'Sydney' is not an IANA time zone name" in out, out
    assert len(out.strip().splitlines()) == 1, "one line"
    with session_factory(settings.database_url)() as s:
        assert lifecycle.find(s, "per@example.com").timezone == "Australia/Perth"
        assert lifecycle.find(s, "bad@example.com") is None, "nothing written for a refused zone"
