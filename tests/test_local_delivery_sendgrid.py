"""Local morning delivery through SendGrid (issue 15): one pass schedules every reader at 07:00 in their own
zone (personalizations[].send_at), one zone moment per batch so a recall still works per batch, against the
contract server (send_at at most 72 h ahead, a cancel 10+ minutes before the batch's send_at).

Two Mondays on either side of Sydney's daylight-saving start (6 October 2024): Auckland is on summer time in
both, Sydney only in the second, Brisbane and Perth in neither. The clock (ours and the server's) is moved with
time-machine to the Sunday before each.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import select

from digest.config import Settings, load_settings
from digest.deliver.batches import recall
from digest.deliver.sendgrid import SendGridTransport
from digest.issue_status import IssueStatus
from digest.issues import build_draft, send
from digest.store import Delivery, IssueRow, migrate, session_factory
from subscribers.models import Subscriber
from subscribers.zones import set_zone
from tests.fakes.readers import scheduled_of, seed_readers, set_keys
from tests.fakes.sendgrid_server import SendGridServer
from tests.test_schedule_jobs import fresh_feed

KEY = "SG.local-delivery-key"
SYDNEY = ZoneInfo("Australia/Sydney")
ZONES = ("Australia/Perth", "Australia/Brisbane", "Australia/Sydney", "Pacific/Auckland")


def local_settings(workdir: Path, **sendgrid: object) -> Settings:
    set_keys(workdir, "publication", timezone="Australia/Sydney")
    set_keys(workdir, "schedule", local_delivery=True)
    set_keys(workdir, "delivery", transport="sendgrid", allow_http_public_url=True)
    set_keys(workdir, "delivery.sendgrid", backoff_seconds=0.01, max_retries=2, batch_size=50, **sendgrid)
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    return settings


def readers_in_zones(settings: Settings, per_zone: int = 3, without: int = 2) -> dict[str, str | None]:
    """`per_zone` readers in each of ZONES and `without` readers with no zone (the publication's)."""
    emails = seed_readers(settings, per_zone * len(ZONES) + without)
    zones: dict[str, str | None] = {}
    with session_factory(settings.database_url)() as s:
        for i, address in enumerate(emails):
            zone = ZONES[i % len(ZONES)] if i < per_zone * len(ZONES) else None
            sub = s.scalar(select(Subscriber).where(Subscriber.email == address))
            assert sub is not None
            set_zone(sub, zone)
            zones[address] = zone
        s.commit()
    return zones


@pytest.mark.slow
@pytest.mark.parametrize("monday", ["2024-09-30", "2024-10-07"])
def test_every_reader_is_scheduled_at_seven_local_in_one_pass_with_a_batch_per_zone(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, monday: str) -> None:
    moment = datetime.fromisoformat(f"{monday}T07:00").replace(tzinfo=SYDNEY).astimezone(UTC)
    with time_machine.travel(moment - timedelta(hours=12), tick=True), SendGridServer(KEY) as server:
        monkeypatch.setenv("SENDGRID_API_KEY", KEY)
        monkeypatch.setenv("DIGEST_SENDGRID_API_URL", server.url)
        settings = local_settings(workdir)
        fresh_feed(workdir, datetime.now(UTC))
        zones = readers_in_zones(settings)
        with session_factory(settings.database_url)() as s:
            build_draft(settings, s, send_at=moment)
            s.commit()
        outcome = send(settings, transport=SendGridTransport(settings))
        assert outcome.report is not None and outcome.report.submitted == len(zones), outcome.report

        at: dict[str, int] = {}
        for request in server.received:
            payload = request.payload
            assert payload is not None
            people = payload["personalizations"]
            assert len({p["send_at"] for p in people}) == 1, "a batch holds one zone moment"
            assert payload["send_at"] == people[0]["send_at"], "the batch is cancelled by its own send_at"
            for p in people:
                at[p["to"][0]["email"]] = p["send_at"]
        assert Counter(server.recipients()) == Counter(list(zones)), "every reader once"
        for address, zone in zones.items():
            local = datetime.fromtimestamp(at[address], ZoneInfo(zone or "Australia/Sydney"))
            assert (local.strftime("%a %Y-%m-%d %H:%M")) == f"Mon {monday} 07:00", (address, zone, local)
        first = {zone: at[a] for a, zone in zones.items() if zone}
        assert first["Pacific/Auckland"] < first["Australia/Sydney"] <= first["Australia/Brisbane"] \
            < first["Australia/Perth"]
        # daylight saving per zone: Sydney and Brisbane share 07:00 only while Sydney is on standard time
        gap = first["Australia/Brisbane"] - first["Australia/Sydney"]
        assert gap == (0 if monday == "2024-09-30" else 3600)
        assert len({r.batch_id for r in server.received}) == len(server.received) == len(set(first.values()))

        with session_factory(settings.database_url)() as s:
            rows = s.scalars(select(Delivery)).all()
            moments = {email: send_at for email, (_, send_at) in scheduled_of(s, rows[0].issue_id).items()}
            assert {r.email: r.due_at for r in rows} == moments
            assert {e: int(m.timestamp()) for e, m in moments.items() if m} == at
            assert {r.email: r.zone for r in rows} == {a: z or "Australia/Sydney" for a, z in zones.items()}

        # five minutes before Auckland's moment: its batch can no longer be cancelled, every later zone's can
        offset = (first["Pacific/Auckland"] - 5 * 60) - datetime.now(UTC).timestamp()
        server.clock_offset = offset
        with session_factory(settings.database_url)() as s:
            issue = s.scalar(select(IssueRow))
            assert issue is not None
            report = recall(s, issue, SendGridTransport(settings), by="test",
                            now=datetime.now(UTC) + timedelta(seconds=offset))
            assert issue.status == IssueStatus.RECALLED
        kiwis = sorted(a for a, z in zones.items() if z == "Pacific/Auckland")
        assert report.recalled == len(zones) - len(kiwis)
        assert [b.readers for b, _ in report.kept] == [len(kiwis)]
        assert sorted(server.recipients()) == kiwis, "only the zone already due still gets it"
