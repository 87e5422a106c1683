"""Local delivery's snapshot: each reader's zone and moment are written with their row by the snapshot's own
INSERT (`ledger._zones`), a zone this machine does not know is sent at the publication's moment and says so,
and a row left without a moment (a reader who moved to a zone the snapshot had not seen) is given one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from digest.config import load_settings
from digest.deliver import ledger
from digest.moments import zone_moment
from digest.store import Delivery, IssueRow, migrate, session_factory
from subscribers.lifecycle import ensure_list
from tests.fakes.readers import seed_readers, sending_issue

HOME = "Australia/Melbourne"
SEND_AT = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)  # Tuesday 07:00 in Melbourne


def _moment(zone: str) -> datetime:
    return zone_moment(SEND_AT, ZoneInfo(HOME), ZoneInfo(zone))


def _rows(s: Session, issue_id: int) -> dict[str, tuple[str | None, datetime | None, str | None]]:
    found = s.execute(select(Delivery.email, Delivery.zone, Delivery.due_at, Delivery.error)
                      .where(Delivery.issue_id == issue_id))
    return {email: (zone, at, error) for email, zone, at, error in found}


def test_the_snapshot_writes_each_readers_zone_and_moment_with_their_row(workdir: Path) -> None:
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    emails = seed_readers(settings, 4)
    issue_id = sending_issue(settings)
    zones = {emails[0]: "Australia/Perth", emails[1]: "Europe/London", emails[2]: "Mars/Olympus", emails[3]: None}
    with session_factory(settings.database_url)() as s:
        for email, zone in zones.items():  # stored as an older zone database may have let it in
            s.execute(text("UPDATE subscribers SET timezone = :z WHERE email = :e"), {"z": zone, "e": email})
        s.commit()
        list_id = ensure_list(s, settings.delivery.list).id
        issue = s.get(IssueRow, issue_id)
        assert issue is not None
        issue.send_at = SEND_AT
        assert ledger.snapshot(s, issue, list_id, home=HOME) == 4
        s.commit()
        rows = _rows(s, issue_id)
        assert rows[emails[0]] == ("Australia/Perth", _moment("Australia/Perth"), None)
        assert rows[emails[1]] == ("Europe/London", _moment("Europe/London"), None)
        assert rows[emails[2]] == (HOME, _moment(HOME), "time zone 'Mars/Olympus' unknown here: due at the "
                                   f"publication's moment ({HOME})")
        assert rows[emails[3]] == (HOME, _moment(HOME), None)  # no zone of their own: the publication's

        # a row the INSERT found no zone for (its reader moved meanwhile to one not seen a moment before)
        s.execute(update(Delivery).where(Delivery.email == emails[1]).values(zone=None, due_at=None))
        s.execute(text("UPDATE subscribers SET timezone = 'Asia/Tokyo' WHERE email = :e"), {"e": emails[1]})
        s.execute(update(Delivery).where(Delivery.email == emails[0]).values(error="kept"))
        ledger.set_moments(s, issue_id, SEND_AT, HOME)
        s.commit()
        after = _rows(s, issue_id)
    assert after[emails[1]] == ("Asia/Tokyo", _moment("Asia/Tokyo"), None)
    assert after[emails[0]] == ("Australia/Perth", _moment("Australia/Perth"), "kept")  # had a moment
    assert after[emails[2]] == rows[emails[2]] and after[emails[3]] == rows[emails[3]]
