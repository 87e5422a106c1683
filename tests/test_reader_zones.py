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
from tests.test_web_support import app_fixture, client_fixture  # noqa: F401 (fixtures)


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


def _reader_page(settings: Settings, email: str = "ann@example.com", zone: str | None = None) -> str:
    """The path of an active reader's own preferences page (as the link in their email has it)."""
    from urllib.parse import urlsplit

    from digest.deliver.personalizer import Personalizer

    with session_factory(settings.database_url)() as s:
        member = lifecycle.subscribe(s, email, list_slug=settings.delivery.list, source="test", confirmed=True)
        member.subscriber.timezone = zone
        s.commit()
        url = Personalizer(settings).preferences_url(member.subscriber_id, member.list_id)
    return urlsplit(url).path


def test_the_preferences_page_offers_the_zones_and_saves_the_chosen_one(client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from tests.test_web_support import csrf_from

    path = _reader_page(settings)
    page = client.get(path)
    assert page.status_code == 200
    # no zone saved: the browser's own is chosen by /static/zone.js, the only script the page may run
    assert 'name="timezone"' in page.text and "data-browser-default" in page.text
    assert '<option value="" selected>The publication\'s: Australia/Sydney</option>' in page.text
    assert "<option>Australia/Perth</option>" in page.text and '<script src="/static/zone.js"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/zone.js").status_code == 200
    assert "script-src 'none'" in client.get("/subscribe").headers["content-security-policy"], "others run none"

    token = csrf_from(page.text)
    bad = client.post(path, data={"csrf_token": token, "lists": ["weekly"], "timezone": "Mars/Base"})
    assert bad.status_code == 400 and "timezone &#39;Mars/Base&#39; is not an IANA time zone name" in bad.text
    with session_factory(settings.database_url)() as s:
        assert lifecycle.find(s, "ann@example.com").timezone is None, "nothing saved"
    ok = client.post(path, data={"csrf_token": token, "lists": ["weekly"], "timezone": "Australia/Perth"})
    assert ok.status_code == 200 and "Saved." in ok.text
    assert "<option selected>Australia/Perth</option>" in ok.text and "data-browser-default" not in ok.text
    with session_factory(settings.database_url)() as s:
        assert lifecycle.find(s, "ann@example.com").timezone == "Australia/Perth"
    # the first choice gives the reader the publication's zone again
    client.post(path, data={"csrf_token": token, "lists": ["weekly"], "timezone": ""})
    with session_factory(settings.database_url)() as s:
        assert lifecycle.find(s, "ann@example.com").timezone is None
