"""POST /webhooks/sendgrid: signed event batches, applied once, counted per issue."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from digest.config import Settings, load_settings
from digest.issues import send
from digest.reports import issue_figures
from digest.store import Delivery, DeliveryEvent, IssueRow, migrate, session_factory
from subscribers.models import Event, Membership, Subscriber
from tests.conftest import run_cli
from tests.fakes.readers import seed_readers, set_keys

SIG = "X-Twilio-Email-Event-Webhook-Signature"
TS = "X-Twilio-Email-Event-Webhook-Timestamp"


class Signer:
    """SendGrid's side of the Signed Event Webhook: an ECDSA P-256 key pair made for the test."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public = base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {SIG: base64.b64encode(signature).decode(), TS: ts, "Content-Type": "application/json"}


@pytest.fixture
def signer() -> Signer:
    return Signer()


def sent_with_webhook_key(workdir: Path, signer: Signer, readers: int,
                          before_send: Callable[[Settings], None] | None = None) -> Settings:
    """Issue 1 sent (outbox) to `readers` readers, the webhook's verification key configured."""
    set_keys(workdir, "delivery.sendgrid", webhook_public_key=signer.public, webhook_max_age_seconds=300)
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    seed_readers(settings, readers)
    if before_send is not None:
        before_send(settings)
    outcome = send(settings)
    assert outcome.report is not None and outcome.report.submitted == readers
    return settings


@pytest.fixture
def sent(workdir: Path, signer: Signer) -> Settings:
    """An issue sent (outbox) to 6 readers; the webhook key configured."""
    return sent_with_webhook_key(workdir, signer, 6)


@pytest.fixture
def client(sent: Settings) -> Iterator[TestClient]:
    from digest.web.app import create_app

    with TestClient(create_app(sent)) as c:
        yield c


def event(n: int, kind: str, reader: int, issue_id: int = 1, **extra: Any) -> dict[str, Any]:
    return {"email": f"reader{reader}@example.com", "timestamp": int(time.time()), "event": kind,
            "sg_event_id": f"evt-{n}", "sg_message_id": "msg.filter0001", "digest_issue": str(issue_id),
            "digest_subscriber": str(reader), "digest_list": "1", "category": ["Leisure Industry Weekly"], **extra}


def post(client: TestClient, signer: Signer, events: Any, **kwargs: Any) -> Any:
    body = json.dumps(events).encode()
    return client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body, **kwargs))


def statuses(settings: Settings) -> dict[str, str]:
    with session_factory(settings.database_url)() as s:
        return dict(s.execute(select(Subscriber.email, Membership.status).join(Membership)).all())


BATCH = [
    event(1, "processed", 1), event(2, "delivered", 1), event(3, "delivered", 2), event(4, "delivered", 3),
    event(5, "open", 1), event(6, "open", 1), event(7, "open", 2), event(8, "click", 1, url="https://x.example/a"),
    event(9, "bounce", 4, type="bounce", reason="550 5.1.1 no such user", status="5.1.1"),
    event(10, "dropped", 5, reason="Invalid"),
    event(11, "spamreport", 2),
    event(12, "unsubscribe", 3),
    event(13, "bounce", 6, type="blocked", reason="421 try later"),  # a soft bounce: counted nowhere
]


@pytest.mark.slow  # the real command in a subprocess
def test_a_signed_batch_changes_statuses_once_and_counts_per_issue(client: TestClient, signer: Signer,
                                                                   sent: Settings, workdir: Path) -> None:
    response = post(client, signer, BATCH)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 13, "recorded": 13, "duplicates": 0, "applied": 4, "unmatched": 0,
                               "invalid": [], "mended": []}
    assert statuses(sent) == {
        "reader1@example.com": "active", "reader2@example.com": "complained", "reader3@example.com": "unsubscribed",
        "reader4@example.com": "bounced", "reader5@example.com": "bounced", "reader6@example.com": "active"}
    with session_factory(sent.database_url)() as s:
        changes = s.execute(select(Event.kind, Event.new_status, Event.source).where(
            Event.source == "sendgrid event webhook").order_by(Event.id)).all()
        figures = asdict(issue_figures(s)[0])
    assert [(k, n) for k, n, _ in changes] == [("bounce", "bounced"), ("dropped", "bounced"),
                                               ("spamreport", "complained"), ("unsubscribe", "unsubscribed")]
    assert {k: figures[k] for k in ("submitted", "delivered", "bounced", "complained", "opened", "clicked")} == {
        "submitted": 6, "delivered": 3, "bounced": 2, "complained": 1, "opened": 2, "clicked": 1}

    again = post(client, signer, BATCH)  # SendGrid retries a batch it did not see answered
    assert again.json()["recorded"] == 0 and again.json()["duplicates"] == 13 and again.json()["applied"] == 0
    with session_factory(sent.database_url)() as s:
        assert s.scalar(select(func.count()).select_from(DeliveryEvent)) == 13
        assert issue_figures(s)[0].opened == 2

    status = run_cli("status", cwd=workdir, env={"COLUMNS": "250"})
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if "│ 1 " in line or line.strip().startswith("│ 1"))
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    # issue, status, readers, submitted, failed, skipped, unknown, delivered, bounced, complained, opened,
    # clicked, subject
    assert cells[0] == "1" and cells[3:12] == ["6", "0", "0", "0", "3", "2", "1", "2", "1"], cells


def test_a_replayed_event_does_not_undo_a_later_change(client: TestClient, signer: Signer, sent: Settings) -> None:
    """Idempotent on sg_event_id: an old unsubscribe replayed after the reader came back changes nothing."""
    assert post(client, signer, [event(20, "unsubscribe", 1)]).json()["applied"] == 1
    with session_factory(sent.database_url)() as s:  # the reader confirmed again (fresh opt-in)
        member = s.scalar(select(Membership).join(Subscriber).where(Subscriber.email == "reader1@example.com"))
        member.status = "active"
        s.commit()
    assert post(client, signer, [event(20, "unsubscribe", 1)]).json()["duplicates"] == 1
    assert statuses(sent)["reader1@example.com"] == "active"


@pytest.mark.parametrize("case", ["missing", "stale", "future", "tampered", "other key", "garbage"])
def test_unsigned_stale_or_tampered_batches_are_refused(client: TestClient, signer: Signer, sent: Settings,
                                                        case: str) -> None:
    body = json.dumps([event(30, "spamreport", 1)]).encode()
    headers = signer.headers(body)
    if case == "missing":
        headers = {"Content-Type": "application/json"}
    elif case == "stale":
        headers = signer.headers(body, timestamp=int(time.time()) - 360)  # a margin: the machine may be slow
    elif case == "future":
        headers = signer.headers(body, timestamp=int(time.time()) + 360)
    elif case == "tampered":
        body = body.replace(b"spamreport", b"delivered!")
    elif case == "other key":
        headers = Signer().headers(body)
    else:
        headers[SIG] = "not base64 at all %%%"
    response = client.post("/webhooks/sendgrid", content=body, headers=headers)
    assert response.status_code == 403, response.text
    assert statuses(sent)["reader1@example.com"] == "active"
    with session_factory(sent.database_url)() as s:
        assert s.scalar(select(func.count()).select_from(DeliveryEvent)) == 0


def test_without_a_configured_key_every_batch_is_refused(workdir: Path, signer: Signer) -> None:
    from digest.web.app import create_app

    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    with TestClient(create_app(settings)) as c:
        body = b"[]"
        response = c.post("/webhooks/sendgrid", content=body, headers=signer.headers(body))
    assert response.status_code == 403 and "not configured" in response.json()["detail"]


def test_ids_that_the_ledger_does_not_back_are_not_trusted(client: TestClient, signer: Signer,
                                                           sent: Settings) -> None:
    forged = event(40, "spamreport", 2, email="reader5@example.com")  # says reader 2, is reader 5's address
    stranger = event(41, "bounce", 1, email="nobody@example.org")
    bad = [{"event": "open"}, "not an object"]
    result = post(client, signer, [forged, stranger, *bad]).json()
    assert result["recorded"] == 2 and result["unmatched"] == 1 and len(result["invalid"]) == 2
    found = statuses(sent)
    assert found["reader5@example.com"] == "complained" and found["reader2@example.com"] == "active"
    with session_factory(sent.database_url)() as s:
        rows = dict(s.execute(select(DeliveryEvent.provider_event_id, DeliveryEvent.subscriber_id)).all())
        issue = s.scalar(select(IssueRow))
        delivery = s.scalar(select(Delivery).where(Delivery.email == "reader5@example.com"))
    assert rows == {"evt-40": delivery.subscriber_id, "evt-41": None}
    assert issue.status == "sent"


def test_bad_json_is_a_400_after_the_signature(client: TestClient, signer: Signer) -> None:
    body = b'{"not": "a list"}'
    assert client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body)).status_code == 400
    body = b"[{broken"
    assert client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body)).status_code == 400
