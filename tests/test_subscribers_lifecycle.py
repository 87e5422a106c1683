"""The lifecycle: pending -> active -> unsubscribed, bounces and complaints, every change an event, and
the rules no import, admin or API call may break. Real SQLite files throughout."""

from __future__ import annotations

import random
import string

import pytest
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.config import Settings
from digest.issues import recipients
from digest.store import Delivery, IssueRow
from subscribers import addresses, lifecycle
from subscribers.models import Event, Membership, MembershipStatus, Subscriber, Suppression


def _events(session: Session, sub: Subscriber) -> list[tuple[str, str | None, str | None]]:
    return [(e.kind, e.old_status, e.new_status) for e in session.scalars(
        select(Event).where(Event.subscriber_id == sub.id).order_by(Event.id))]


def test_pending_then_confirmed_then_unsubscribed_each_with_its_event(session: Session) -> None:
    member = lifecycle.subscribe(session, "Ann@Example.com", name="Ann", source="web form", ip="203.0.113.5")
    assert member.status == MembershipStatus.PENDING and member.confirmed_at is None
    assert lifecycle.confirm(session, member, source="reader: confirmation link", ip="203.0.113.9")
    assert member.status == MembershipStatus.ACTIVE and member.confirmed_at is not None
    sub = member.subscriber
    assert lifecycle.unsubscribe(session, sub, source="reader: link", ip="198.51.100.1") == 1
    assert member.status == MembershipStatus.UNSUBSCRIBED
    session.commit()
    assert _events(session, sub) == [("subscribed", None, MembershipStatus.PENDING),
                                     ("confirmed", MembershipStatus.PENDING, MembershipStatus.ACTIVE),
                                     ("unsubscribed", MembershipStatus.ACTIVE, MembershipStatus.UNSUBSCRIBED)]
    ips = [e.ip for e in session.scalars(select(Event).where(Event.subscriber_id == sub.id).order_by(Event.id))]
    assert ips == ["203.0.113.5", "203.0.113.9", "198.51.100.1"]


def test_only_active_members_receive_the_list(session: Session) -> None:
    for email, confirmed in (("a@example.com", True), ("p@example.com", False), ("u@example.com", True),
                             ("b@example.com", True), ("c@example.com", True)):
        lifecycle.subscribe(session, email, source="test", confirmed=confirmed)
    lifecycle.unsubscribe(session, lifecycle.find(session, "u@example.com"), source="test")
    lifecycle.apply_event(session, lifecycle.find(session, "b@example.com").id, "bounce", source="webhook")
    lifecycle.apply_event(session, lifecycle.find(session, "c@example.com").id, "spamreport", source="webhook")
    session.commit()
    assert [s.email for s in recipients(session, "weekly")] == ["a@example.com"]


def test_addresses_are_unique_case_insensitively_and_idn_domains_are_normalised(session: Session) -> None:
    first = lifecycle.subscribe(session, "Jörg.Müller@BÜCHER.example", source="test")
    again = lifecycle.subscribe(session, "jörg.müller@xn--bcher-kva.example", source="test")
    session.commit()
    assert first.subscriber_id == again.subscriber_id
    assert session.scalar(select(func.count()).select_from(Subscriber)) == 1
    sub = first.subscriber
    assert sub.email == "Jörg.Müller@bücher.example"  # as given, the domain in its Unicode form
    assert sub.email_key == "jörg.müller@bücher.example"
    with pytest.raises(lifecycle.InvalidEmail) as e:
        lifecycle.subscribe(session, "not an address", source="test")
    assert "not an address" in str(e.value)


def _corpus(n: int) -> list[str]:
    rnd = random.Random(3)
    pieces = [*string.ascii_letters, *string.digits, *".-_+!#$%&'*/=?^`{|}~", "@", "@@", " ", '"', "<", ">",
              "..", "ü", "é", "xn--", "ß", "İ", "ℌ", "\u200b", "[", "]", ",", ";", ":", "\\"]
    domains = ["example.com", "EXAMPLE.COM", "bücher.de", "xn--bcher-kva.de", "localhost", "a..b.com", "-a.com",
               "ex_ample.com", "example.c", "1.2.3.4", "[1.2.3.4]", "x" * 64 + ".com", "例え.テスト", "ß.de",
               "example.com.", "Ⅻ.example.org"]
    out = ["info@example.com", "Postmaster@Example.com", "a" * 64 + "@example.com", "a" * 65 + "@example.com",
           "a" * 240 + "@example.com", "ann@" + "b" * 250 + ".com", '"quoted"@example.com', "Ann <ann@example.com>"]
    for _ in range(n):
        local = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))
        out.append(f"{local}@{rnd.choice(domains)}")
    return out


def test_the_fast_path_of_normalize_agrees_with_email_validator_exactly() -> None:
    """The import's fast path must give what email-validator gives, or refuse what it refuses."""
    agreed = fast = 0
    for raw in _corpus(4000):
        try:
            expected = validate_email(raw.strip(), check_deliverability=False).normalized
        except EmailNotValidError:
            expected = None
        try:
            got = lifecycle.normalize(raw).email
        except lifecycle.InvalidEmail:
            got = None
        assert got == expected, raw
        fast += addresses._fast_normalize(raw.strip()) is not None
        agreed += 1
    assert agreed > 4000 and fast > 200  # the fast path was really taken, not only the validator


def test_the_key_a_person_is_found_by_skips_the_validator_only_where_it_agrees() -> None:
    """subscribers.email_key answers plain ASCII text without email-validator (`subscribers show` starts
    without it, issue 16): for every such text, valid or not, the key is what the validator's normalising
    gives (or, for text it refuses, the trimmed text case-folded), as lifecycle.find always looked it up."""
    from subscribers.email_key import email_key, plain_key

    rnd = random.Random(16)
    corpus = _corpus(6000) + [f" {raw}\t" for raw in _corpus(300)]
    corpus += ["".join(rnd.choice(string.printable) for _ in range(rnd.randint(1, 30))) + "@Example.COM"
               for _ in range(3000)]
    corpus += ["POSTMASTER@EXAMPLE.COM", "Abuse@example.com", "a@XN--BCHER-KVA.de", "a@[IPv6:2001:db8::0:1]",
               '"a"@example.com', "a\\b@example.com", "a@example.com.", ".a@example.com", "a@-example.com"]
    plain = 0
    for raw in corpus:
        try:
            expected = validate_email(raw.strip(), check_deliverability=False).normalized.casefold()
        except EmailNotValidError:
            expected = raw.strip().casefold()
        assert email_key(raw) == expected, raw
        plain += plain_key(raw.strip()) is not None
    assert plain > 3000  # the shortcut was really taken, not only the validator


def test_withdrawn_memberships_are_never_reactivated_by_an_admin_or_a_form(session: Session) -> None:
    for status, how in ((MembershipStatus.UNSUBSCRIBED, "unsubscribe"), (MembershipStatus.BOUNCED, "bounce"),
                        (MembershipStatus.COMPLAINED, "spamreport")):
        email = f"{status}@example.com"
        member = lifecycle.subscribe(session, email, source="test", confirmed=True)
        lifecycle.apply_event(session, member.subscriber_id, how, source="webhook")
        assert member.status == status
        again = lifecycle.subscribe(session, email, source="admin", confirmed=True)
        assert again.status == status
        again = lifecycle.subscribe(session, email, source="web form", ip="192.0.2.1")
        assert again.status == status
        assert not lifecycle.confirm(session, again, source="admin")  # no signed fresh request
        kinds = [k for k, _, _ in _events(session, member.subscriber)]
        assert kinds[-2:] == ["requested", "requested"]


def test_a_confirmation_signed_after_the_withdrawal_is_a_fresh_opt_in(session: Session) -> None:
    member = lifecycle.subscribe(session, "back@example.com", source="test", confirmed=True)
    lifecycle.unsubscribe(session, member.subscriber, source="reader")
    session.commit()
    withdrawn_at = member.updated_at
    from datetime import timedelta

    assert not lifecycle.confirm(session, member, source="link", requested_at=withdrawn_at - timedelta(seconds=5))
    assert member.status == MembershipStatus.UNSUBSCRIBED
    assert lifecycle.confirm(session, member, source="link", requested_at=withdrawn_at + timedelta(seconds=5))
    assert member.status == MembershipStatus.ACTIVE


def test_a_complaint_outranks_later_bounces_and_unsubscribes(session: Session) -> None:
    member = lifecycle.subscribe(session, "c@example.com", source="test", confirmed=True)
    assert lifecycle.apply_event(session, member.subscriber_id, "spamreport", source="webhook") == 1
    assert lifecycle.apply_event(session, member.subscriber_id, "bounce", source="webhook") == 0
    assert lifecycle.apply_event(session, member.subscriber_id, "unsubscribe", source="webhook") == 0
    assert member.status == MembershipStatus.COMPLAINED


@pytest.mark.parametrize(("old", "wanted", "preconfirmed", "expected"), [
    (None, None, False, MembershipStatus.PENDING),
    (None, None, True, MembershipStatus.ACTIVE),
    (None, MembershipStatus.ACTIVE, False, MembershipStatus.PENDING),
    (None, MembershipStatus.ACTIVE, True, MembershipStatus.ACTIVE),
    (None, MembershipStatus.UNSUBSCRIBED, True, MembershipStatus.UNSUBSCRIBED),
    (None, MembershipStatus.BOUNCED, False, MembershipStatus.BOUNCED),
    (MembershipStatus.PENDING, None, True, MembershipStatus.ACTIVE),
    (MembershipStatus.PENDING, None, False, None),
    (MembershipStatus.ACTIVE, MembershipStatus.PENDING, False, None),
    (MembershipStatus.ACTIVE, MembershipStatus.UNSUBSCRIBED, False, MembershipStatus.UNSUBSCRIBED),
    (MembershipStatus.PENDING, MembershipStatus.COMPLAINED, False, MembershipStatus.COMPLAINED),
    (MembershipStatus.UNSUBSCRIBED, MembershipStatus.ACTIVE, True, None),
    (MembershipStatus.UNSUBSCRIBED, None, True, None),
    (MembershipStatus.BOUNCED, MembershipStatus.PENDING, False, None),
    (MembershipStatus.COMPLAINED, MembershipStatus.ACTIVE, True, None),
    (MembershipStatus.COMPLAINED, MembershipStatus.UNSUBSCRIBED, True, None),
])
def test_import_status_rules(old: str | None, wanted: str | None, preconfirmed: bool, expected: str | None) -> None:
    new, note = lifecycle.import_status(old, wanted, preconfirmed=preconfirmed)
    assert new == expected
    if old in (MembershipStatus.UNSUBSCRIBED, MembershipStatus.BOUNCED, MembershipStatus.COMPLAINED):
        assert "kept" in note  # never silent: the import reports it left the membership as it was
    if (old, wanted, preconfirmed) == (None, MembershipStatus.ACTIVE, False):
        assert "--preconfirmed" in note


def test_apply_imported_refuses_to_touch_a_withdrawn_membership(session: Session) -> None:
    member = lifecycle.subscribe(session, "x@example.com", source="test", confirmed=True)
    lifecycle.unsubscribe(session, member.subscriber, source="test")
    session.flush()
    item = lifecycle.ImportedStatus(member.subscriber_id, member.list_id, member.id, MembershipStatus.UNSUBSCRIBED,
                                    MembershipStatus.ACTIVE)
    with pytest.raises(ValueError):
        lifecycle.apply_imported(session, [item], source="import")


def test_erasure_deletes_the_person_and_history_and_suppresses_the_address(settings: Settings,
                                                                           session: Session) -> None:
    member = lifecycle.subscribe(session, "Gone@Example.com", name="Gone", source="test", confirmed=True)
    lifecycle.subscribe(session, "stay@example.com", source="test", confirmed=True)
    sid = member.subscriber_id
    issue = IssueRow(number=1, subject="s", content={}, status="sent")
    session.add(issue)
    session.flush()
    session.add(Delivery(issue_id=issue.id, subscriber_id=sid, email="Gone@example.com", status="submitted"))
    session.commit()

    assert lifecycle.erase(session, "gone@EXAMPLE.com")
    session.commit()
    assert lifecycle.find(session, "gone@example.com") is None
    assert session.scalar(select(func.count()).select_from(Membership).where(Membership.subscriber_id == sid)) == 0
    assert session.scalar(select(func.count()).select_from(Event).where(Event.subscriber_id == sid)) == 0
    assert session.scalar(select(Delivery.email).where(Delivery.issue_id == issue.id)) == "(erased)"
    suppression = session.scalars(select(Suppression)).one()
    assert "gone" not in suppression.email_hash and len(suppression.email_hash) == 64
    assert lifecycle.find(session, "stay@example.com") is not None  # nobody else touched

    with pytest.raises(lifecycle.Suppressed):
        lifecycle.subscribe(session, "GONE@example.com", source="web form")
    # an address never seen can be suppressed ahead of any import
    assert not lifecycle.erase(session, "never@example.com")
    session.commit()
    with pytest.raises(lifecycle.Suppressed):
        lifecycle.subscribe(session, "never@example.com", source="admin", confirmed=True)


def test_ids_are_not_reused_after_an_erasure_so_old_links_point_at_nobody(session: Session) -> None:
    last = lifecycle.subscribe(session, "last@example.com", source="test").subscriber_id
    session.commit()
    lifecycle.erase(session, "last@example.com")
    session.commit()
    newcomer = lifecycle.subscribe(session, "new@example.com", source="test").subscriber_id
    assert newcomer > last


def test_create_list_checks_the_name(session: Session) -> None:
    offers = lifecycle.create_list(session, "offers", "Special offers")
    assert (offers.slug, offers.name) == ("offers", "Special offers")
    from digest.errors import DigestError

    with pytest.raises(DigestError):
        lifecycle.create_list(session, "offers")
    with pytest.raises(DigestError):
        lifecycle.create_list(session, "Bad Name!")


def test_statuses_are_an_enum_stored_as_their_strings(session: Session) -> None:
    member = lifecycle.subscribe(session, "enum@example.com", source="test", confirmed=True)
    session.commit()
    session.expire_all()
    assert member.status is MembershipStatus.ACTIVE  # read back as the enum, not a bare string
    stored = session.connection().exec_driver_sql("SELECT status FROM memberships").scalar_one()
    assert stored == "active" and type(stored) is str
    assert MembershipStatus.parse("bounced") is MembershipStatus.BOUNCED
    with pytest.raises(ValueError, match="unknown status 'gone' \\(one of pending, active, unsubscribed"):
        MembershipStatus.parse("gone")
