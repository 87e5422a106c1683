"""Unsubscribe by email (issue 17, point 4): List-Unsubscribe offers a `mailto:` only when something acts on
it, an address carrying the reader's signed token, which SendGrid Inbound Parse posts to our webhook.

Headers on every transport (outbox, SMTP, SendGrid), the webhook end to end with SendGrid's multipart post,
replays harmless, forged or wrong-secret posts refused with nothing changed.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from digest.config import Settings, load_settings
from digest.issues import send
from digest.store import migrate, session_factory
from digest.web.app import create_app
from subscribers.links import MailboxTokens
from subscribers.models import Event, Membership, Subscriber
from tests.fakes.readers import seed_readers, set_keys
from tests.fakes.sendgrid_server import SendGridServer, copy_headers
from tests.fakes.smtp_server import SMTPServer

MAILBOX = "unsubscribe@inbound.example.org"
SECRET = "inbound-secret-0123456789abcdef-0123456789"
KEY = "SG.test-key-for-the-mailbox"
#: List-Unsubscribe with the mailbox: the one-click URL, then the reader's own mailto: (RFC 2369)
WITH_MAILTO = re.compile(r"<(https?://[^>]+/u/[^>]+)>, <mailto:(unsubscribe\+[0-9a-f]+-[0-9a-f]+-[a-z2-7]{26}"
                         r"@inbound\.example\.org)\?subject=unsubscribe>")


@pytest.fixture
def configured(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    set_keys(workdir, "delivery", unsubscribe_mailbox=MAILBOX)
    monkeypatch.setenv("DIGEST_INBOUND_SECRET", SECRET)
    return workdir


def _settings(folder: Path, readers: int = 3) -> Settings:
    settings = load_settings(folder / "digest.toml")
    migrate(settings.database_url)
    seed_readers(settings, readers)
    return settings


def _check(headers: dict[str, str], settings: Settings) -> tuple[str, int]:
    """The copy's mailto: address and the subscriber its token names; RFC 5321's 64-character local part."""
    found = WITH_MAILTO.fullmatch(headers["List-Unsubscribe"])
    assert found, headers["List-Unsubscribe"]
    address = found.group(2)
    assert len(address.split("@")[0]) <= 64
    ref = MailboxTokens(settings.secret_key, MAILBOX).read(address)
    assert ref.list_id == 1
    return address, ref.subscriber_id


def _eml_headers(folder: Path) -> list[dict[str, str]]:
    out = []
    for path in sorted((folder / "outbox").glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        out.append({k: str(v) for k, v in msg.items()})
    return out


def _ids_by_email(settings: Settings) -> dict[str, int]:
    with session_factory(settings.database_url)() as s:
        return dict(s.execute(select(Subscriber.email, Subscriber.id)).all())


def test_outbox_copies_carry_each_readers_own_mailbox_address(configured: Path) -> None:
    settings = _settings(configured)
    assert send(settings).report.submitted == 3  # type: ignore[union-attr]
    ids = _ids_by_email(settings)
    seen = set()
    for headers in _eml_headers(configured):
        address, sid = _check(headers, settings)
        assert ids[headers["To"].split("<")[-1].rstrip(">")] == sid  # the token names this copy's reader
        seen.add(address)
    assert len(seen) == 3


def test_what_the_smtp_server_receives_carries_the_mailbox_address(configured: Path) -> None:
    with SMTPServer() as server:
        set_keys(configured, "delivery", transport="smtp", allow_http_public_url=True)  # a local test setup
        set_keys(configured, "delivery.smtp", host="127.0.0.1", port=server.port, security="none")
        settings = _settings(configured)
        assert send(settings).report.submitted == 3  # type: ignore[union-attr]
        received = list(server.recorder.received)
    assert len(received) == 3
    ids = _ids_by_email(settings)
    for item in received:
        msg = email.message_from_bytes(item.data, policy=email.policy.default)
        _address, sid = _check({k: str(v) for k, v in msg.items()}, settings)
        assert ids[str(msg["To"]).split("<")[-1].rstrip(">")] == sid


def test_the_sendgrid_request_carries_the_mailbox_address(configured: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SendGridServer(KEY) as server:
        set_keys(configured, "delivery", transport="sendgrid", allow_http_public_url=True)  # a local test setup
        monkeypatch.setenv("SENDGRID_API_KEY", KEY)
        monkeypatch.setenv("DIGEST_SENDGRID_API_URL", server.url)
        settings = _settings(configured)
        assert send(settings).report.submitted == 3  # type: ignore[union-attr]
        received = list(server.received)
    ids = _ids_by_email(settings)
    personalizations = [(r.payload or {}, p) for r in received for p in (r.payload or {})["personalizations"]]
    assert len(personalizations) == 3
    for payload, p in personalizations:
        _address, sid = _check(copy_headers(payload, p), settings)
        assert ids[p["to"][0]["email"]] == sid


@pytest.mark.parametrize("missing", ["mailbox", "secret", "short secret"])
def test_without_a_mailbox_that_acts_there_is_no_mailto(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                        missing: str) -> None:
    if missing != "mailbox":
        set_keys(workdir, "delivery", unsubscribe_mailbox=MAILBOX)
    if missing != "secret":
        monkeypatch.setenv("DIGEST_INBOUND_SECRET", "too short" if missing == "short secret" else SECRET)
    settings = _settings(workdir, 2)
    assert send(settings).report.submitted == 2  # type: ignore[union-attr]
    for headers in _eml_headers(workdir):
        assert "mailto:" not in headers["List-Unsubscribe"]
        assert re.fullmatch(r"<https?://[^>]+/u/[^>]+>", headers["List-Unsubscribe"])
    with TestClient(create_app(settings)) as client:  # and nothing listens for one
        r = client.post(f"/webhooks/inbound/{SECRET}", data={"to": MAILBOX})
        assert r.status_code == 404


def test_the_draft_checks_say_whether_the_mailto_is_offered(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from digest.issues import build_draft

    def check() -> list[tuple[str, str]]:
        settings = load_settings(workdir / "digest.toml")
        migrate(settings.database_url)
        with session_factory(settings.database_url)() as s:
            draft = build_draft(settings, s)
            s.commit()
        return [(c.level, c.message) for c in draft.checks if c.name == "unsubscribe-mailbox"]

    assert check() == []  # not configured: nothing to say
    set_keys(workdir, "delivery", unsubscribe_mailbox=MAILBOX)
    ((level, message),) = check()
    assert level == "warn" and "DIGEST_INBOUND_SECRET" in message and "no mailto:" in message
    monkeypatch.setenv("DIGEST_INBOUND_SECRET", SECRET)
    ((level, message),) = check()
    assert level == "ok" and MAILBOX in message


def test_a_bad_mailbox_address_is_a_config_error_naming_the_key(workdir: Path) -> None:
    from digest.errors import ConfigError

    set_keys(workdir, "delivery", unsubscribe_mailbox="unsubscribe+x@inbound.example.org")
    with pytest.raises(ConfigError, match="unsubscribe_mailbox"):
        load_settings(workdir / "digest.toml")


# -- the webhook, end to end ------------------------------------------------------------------------------


@pytest.fixture
def mailed(configured: Path) -> Iterator[tuple[TestClient, Settings, dict[int, str]]]:
    """Issue 1 sent to three readers by the outbox; the app; each reader's mailbox address from their copy."""
    settings = _settings(configured)
    assert send(settings).report.submitted == 3  # type: ignore[union-attr]
    addresses = {sid: address for address, sid in (_check(h, settings) for h in _eml_headers(configured))}
    with TestClient(create_app(settings)) as client:
        yield client, settings, addresses


def parse_post(to: str, *, sender: str = "Reader One <reader1@example.com>", envelope_to: str | None = None
               ) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]]]:
    """What SendGrid Inbound Parse posts for one message (multipart/form-data; its documented default fields)."""
    fields = {
        "headers": f"Received: by mx.sendgrid.net\nFrom: {sender}\nTo: <{to}>\nSubject: unsubscribe\n",
        "dkim": "{@example.com : pass}", "to": f"<{to}>", "from": sender, "subject": "unsubscribe",
        "text": "", "sender_ip": "192.0.2.10", "SPF": "pass", "charsets": json.dumps({"to": "UTF-8", "from": "UTF-8"}),
        "envelope": json.dumps({"to": [envelope_to or to], "from": sender.split("<")[-1].rstrip(">")}),
        "spam_score": "0.1", "attachments": "0",
    }
    return fields, {"email": ("", b"", "text/plain")}  # a file part forces multipart, as SendGrid's post is


def statuses(settings: Settings) -> dict[int, str]:
    with session_factory(settings.database_url)() as s:
        return dict(s.execute(select(Membership.subscriber_id, Membership.status)).all())


def consent_events(settings: Settings) -> list[tuple[int, str, str]]:
    with session_factory(settings.database_url)() as s:
        return [tuple(r) for r in s.execute(select(Event.subscriber_id, Event.kind, Event.source)
                                            .where(Event.source.like("%Inbound Parse%")).order_by(Event.id))]


def test_mail_to_a_readers_address_unsubscribes_that_reader_once(mailed) -> None:
    client, settings, addresses = mailed
    sid = sorted(addresses)[1]
    data, files = parse_post(addresses[sid])
    r = client.post(f"/webhooks/inbound/{SECRET}", data=data, files=files)
    assert r.status_code == 200, r.text
    assert r.json() == {"readers": 1, "changed": 1, "refused": []}
    after = statuses(settings)
    assert after[sid] == "unsubscribed" and [s for s, v in after.items() if v == "active"] == \
        [s for s in sorted(addresses) if s != sid]
    assert consent_events(settings) == [(sid, "unsubscribed",
                                         "reader: email to the unsubscribe mailbox (SendGrid Inbound Parse)")]
    # SendGrid retries a post it did not see answered: the same message again changes nothing
    again = client.post(f"/webhooks/inbound/{SECRET}", data=data, files=files)
    assert again.status_code == 200 and again.json()["changed"] == 0
    assert len(consent_events(settings)) == 1


def test_the_address_is_read_whatever_case_a_mail_system_gave_it(mailed) -> None:
    client, settings, addresses = mailed
    sid = min(addresses)
    shouted = addresses[sid].upper()
    data, files = parse_post("someone-else@example.org", envelope_to=shouted)  # the envelope holds it only
    r = client.post(f"/webhooks/inbound/{SECRET}", data=data, files=files)
    assert r.status_code == 200 and r.json()["changed"] == 1
    assert statuses(settings)[sid] == "unsubscribed"


def _forged(addresses: dict[int, str]) -> list[str]:
    first, second = sorted(addresses)[:2]
    local, domain = addresses[first].split("@")
    head, ids, mac = local.rsplit("-", 2)[0], "-".join(local.split("+")[1].split("-")[:2]), local.rsplit("-", 1)[1]
    other_ids = "-".join(addresses[second].split("+")[1].split("-")[:2])
    flipped = mac[:-1] + ("a" if mac[-1] != "a" else "b")
    return [
        f"unsubscribe+{ids}-{flipped}@{domain}",  # one character of the MAC changed
        f"unsubscribe+{other_ids}-{mac}@{domain}",  # another reader's ids with this reader's MAC
        f"unsubscribe+{ids}-{mac[:-2]}@{domain}",  # cut short
        f"unsubscribe+{ids}@{domain}",  # no MAC at all
        f"unsubscribe@{domain}",  # the bare mailbox
        f"{local}@other.example.org",  # a valid token at another domain
        MailboxTokens("another-secret-key-0123456789abcdef", MAILBOX).address(first, 1),  # signed with another key
        f"unsubscribe+{'f' * 40}-1-{mac}@{domain}",  # an id far past 64 bits
        head + "@" + domain,
    ]


def test_a_forged_or_tampered_address_is_refused_and_changes_nothing(mailed) -> None:
    client, settings, addresses = mailed
    before = statuses(settings)
    for forged in _forged(addresses):
        data, files = parse_post(forged)
        r = client.post(f"/webhooks/inbound/{SECRET}", data=data, files=files)
        assert r.status_code == 400, (forged, r.text)
    assert statuses(settings) == before and consent_events(settings) == []


@pytest.mark.parametrize("secret", ["wrong", SECRET[:-1], SECRET + "x", SECRET.upper(), "é" * 40])
def test_a_post_without_the_url_secret_is_refused_and_changes_nothing(mailed, secret: str) -> None:
    client, settings, addresses = mailed
    before = statuses(settings)
    data, files = parse_post(addresses[min(addresses)])
    r = client.post(f"/webhooks/inbound/{secret}", data=data, files=files)
    assert r.status_code == 403
    assert statuses(settings) == before and consent_events(settings) == []
