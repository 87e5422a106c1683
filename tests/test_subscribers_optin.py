"""Double opt-in and the reader's links, through the real outbox transport (.eml files) and SQLite."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest import confirmations
from digest.config import Settings
from digest.deliver.protocol import Message, Outcome
from digest.errors import DeliveryError, NotFound
from subscribers import lifecycle, optin
from subscribers.categories import UnknownCategory
from subscribers.csv_import import import_csv
from subscribers.links import TokenError, Tokens
from subscribers.models import Event, Membership, MembershipStatus

LINK = re.compile(r"http://127\.0\.0\.1:8000/c/([A-Za-z0-9._-]+)")


def _outbox(workdir: Path) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
            for p in sorted((workdir / "outbox").glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)]


def _link(msg: email.message.EmailMessage) -> str:
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    tokens = set(LINK.findall(text))
    assert len(tokens) == 1 and tokens == set(LINK.findall(html)), "one confirm link, the same in both parts"
    return tokens.pop()


def _member(session: Session, address: str, slug: str = "weekly") -> Membership:
    sub = lifecycle.find(session, address)
    assert sub is not None
    return lifecycle.membership(session, sub, lifecycle.get_list(session, slug))


def test_subscribe_sends_a_confirmation_and_the_link_activates(settings: Settings, session: Session,
                                                               workdir: Path) -> None:
    confirmations.request_confirmation(settings, session, "New.Reader@Example.com", name="Nia", source="web form",
                               ip="203.0.113.7")
    member = _member(session, "new.reader@example.com")
    assert member.status == MembershipStatus.PENDING and member.confirm_sent_at is not None
    [msg] = _outbox(workdir)
    assert msg["To"].addresses[0].addr_spec == "New.Reader@example.com"
    assert "confirm" in msg["Subject"].lower()
    assert "List-Unsubscribe" not in msg  # not subscribed yet: nothing to unsubscribe from
    text = msg.get_body(("plain",)).get_content()
    assert "Hi Nia," in text and "7 days" in text and "%%" not in text
    html = msg.get_body(("html",)).get_content()
    assert "<mj-" not in html and "Yes, subscribe me" in html and "%%" not in html
    token = _link(msg)
    assert "@" not in token

    confirmed = optin.confirm_from_token(settings, session, token, ip="203.0.113.8")
    assert confirmed.status == MembershipStatus.ACTIVE and confirmed.confirmed_at is not None
    again = optin.confirm_from_token(settings, session, token)  # a second click changes nothing
    assert again.status == MembershipStatus.ACTIVE
    kinds = session.execute(select(Event.kind, Event.ip).where(Event.subscriber_id == member.subscriber_id)
                            .order_by(Event.id)).all()
    assert [tuple(k) for k in kinds] == [("subscribed", "203.0.113.7"), ("confirm-sent", "203.0.113.7"),
                                         ("confirmed", "203.0.113.8")]


def test_resending_while_pending_is_limited_to_once_an_hour(settings: Settings, session: Session,
                                                            workdir: Path) -> None:
    start = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
    assert confirmations.request(settings, session, "p@example.com", source="form", now=start) == optin.SENT
    for minutes in (1, 30, 59):
        assert confirmations.request(settings, session, "p@example.com", source="form",
                             now=start + timedelta(minutes=minutes)) == optin.RECENTLY_SENT
    assert len(_outbox(workdir)) == 1
    assert confirmations.request(settings, session, "p@example.com", source="form",
                         now=start + timedelta(minutes=61)) == optin.SENT
    assert _member(session, "p@example.com").confirm_sent_at == start + timedelta(minutes=61)
    assert len(_outbox(workdir)) == 1  # the newer confirmation replaced the older file (same membership)
    sent = session.scalar(select(func.count()).select_from(Event).where(Event.kind == "confirm-sent"))
    assert sent == 2


def test_the_form_never_reveals_whether_an_address_is_known(settings: Settings, session: Session,
                                                            workdir: Path) -> None:
    lifecycle.subscribe(session, "active@example.com", source="test", confirmed=True)
    lifecycle.erase(session, "erased@example.com")
    session.commit()
    results = [confirmations.request_confirmation(settings, session, e, source="form")
               for e in ("active@example.com", "erased@example.com", "fresh@example.com")]
    assert results == [None, None, None]
    sent_to = [m["To"].addresses[0].addr_spec for m in _outbox(workdir)]
    assert sent_to == ["fresh@example.com"]  # nothing to the active reader, nothing to the erased one
    assert lifecycle.find(session, "erased@example.com") is None
    with pytest.raises(lifecycle.InvalidEmail):
        confirmations.request_confirmation(settings, session, "no-at-sign", source="form")
    with pytest.raises(NotFound):
        confirmations.request_confirmation(settings, session, "x@example.com", list_slug="no-such-list", source="form")


def test_a_stranger_cannot_change_an_existing_readers_name_or_categories(settings: Settings,
                                                                        session: Session) -> None:
    lifecycle.subscribe(session, "ann@example.com", source="test", confirmed=True, categories=["Aquatics"])
    session.commit()
    confirmations.request_confirmation(settings, session, "ann@example.com", name="Rude Name", categories=["Fitness"],
                               source="form")
    sub = lifecycle.find(session, "ann@example.com")
    assert sub.name == "" and sub.categories == ["Aquatics"]


def test_an_old_confirmation_link_cannot_undo_an_unsubscribe(settings: Settings, session: Session,
                                                             workdir: Path) -> None:
    t0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
    with time_machine.travel(t0, tick=False):
        confirmations.request_confirmation(settings, session, "u@example.com", source="form")
        old_link = _link(_outbox(workdir)[-1])
        optin.confirm_from_token(settings, session, old_link)
    with time_machine.travel(t0 + timedelta(hours=1), tick=False):
        sid = _member(session, "u@example.com").subscriber_id
        list_id = _member(session, "u@example.com").list_id
        unsubscribe = Tokens(settings.secret_key).make("unsubscribe", sid, list_id)
        sub = optin.unsubscribe_from_token(settings, session, unsubscribe, ip="198.51.100.4", source="one-click")
        assert sub.email == "u@example.com"
        assert _member(session, "u@example.com").status == MembershipStatus.UNSUBSCRIBED
    with time_machine.travel(t0 + timedelta(hours=2), tick=False):
        with pytest.raises(TokenError):
            optin.confirm_from_token(settings, session, old_link)
        assert _member(session, "u@example.com").status == MembershipStatus.UNSUBSCRIBED
        # the reader asks again: still unsubscribed until the new link is opened
        confirmations.request_confirmation(settings, session, "u@example.com", source="form")
        assert _member(session, "u@example.com").status == MembershipStatus.UNSUBSCRIBED
        new_link = _link(_outbox(workdir)[-1])
        assert new_link != old_link
    with time_machine.travel(t0 + timedelta(hours=3), tick=False):
        assert optin.confirm_from_token(settings, session, new_link).status == MembershipStatus.ACTIVE


def test_confirmation_links_expire(settings: Settings, session: Session, workdir: Path) -> None:
    t0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
    with time_machine.travel(t0, tick=False):
        confirmations.request_confirmation(settings, session, "late@example.com", source="form")
    link = _link(_outbox(workdir)[-1])
    later = t0 + timedelta(days=settings.subscribers.confirm_expiry_days, seconds=1)
    with time_machine.travel(later, tick=False), pytest.raises(TokenError) as e:
        optin.confirm_from_token(settings, session, link)
    assert e.value.expired
    assert _member(session, "late@example.com").status == MembershipStatus.PENDING


def test_unsubscribe_link_leaves_only_the_list_it_came_from(settings: Settings, session: Session) -> None:
    lifecycle.create_list(session, "offers", "Offers")
    lifecycle.subscribe(session, "two@example.com", source="test", confirmed=True)
    lifecycle.subscribe(session, "two@example.com", source="test", confirmed=True, list_slug="offers")
    session.commit()
    weekly = _member(session, "two@example.com")
    token = Tokens(settings.secret_key).make("unsubscribe", weekly.subscriber_id, weekly.list_id)
    optin.unsubscribe_from_token(settings, session, token)
    optin.unsubscribe_from_token(settings, session, token)  # idempotent
    assert _member(session, "two@example.com").status == MembershipStatus.UNSUBSCRIBED
    assert _member(session, "two@example.com", "offers").status == MembershipStatus.ACTIVE
    events = session.scalars(select(Event.source).where(Event.kind == "unsubscribed")).all()
    assert events == ["reader: link"]
    with pytest.raises(TokenError):
        optin.unsubscribe_from_token(settings, session, token + "x")
    lifecycle.erase(session, "two@example.com")
    session.commit()
    with pytest.raises(TokenError):
        optin.unsubscribe_from_token(settings, session, token)


def test_preferences_change_categories_leave_and_join_lists(settings: Settings, session: Session,
                                                            workdir: Path) -> None:
    lifecycle.create_list(session, "offers", "Special offers")
    member = lifecycle.subscribe(session, "prefs@example.com", source="test", confirmed=True)
    session.commit()
    token = Tokens(settings.secret_key).make("preferences", member.subscriber_id, member.list_id)
    sub, mlist = optin.preferences_from_token(settings, session, token)
    assert (sub.email, mlist.slug) == ("prefs@example.com", "weekly")

    confirmations.update_preferences(settings, session, sub, categories=["aquatics", "Fitness", "Aquatics"],
                             lists={"weekly": True, "offers": True}, ip="192.0.2.44")
    assert sub.categories == ["Aquatics", "Fitness"]  # the directory's spelling, no repeats
    offers = _member(session, "prefs@example.com", "offers")
    assert offers.status == MembershipStatus.PENDING  # consent is per list: a confirmation went out
    [msg] = _outbox(workdir)
    assert "Special offers" in msg.get_body(("plain",)).get_content()
    assert _member(session, "prefs@example.com").status == MembershipStatus.ACTIVE

    confirmations.update_preferences(settings, session, sub, categories=[], lists={"weekly": False})
    assert _member(session, "prefs@example.com").status == MembershipStatus.UNSUBSCRIBED and sub.categories == []
    with pytest.raises(UnknownCategory):
        confirmations.update_preferences(settings, session, sub, categories=["Not A Category"], lists={})
    with pytest.raises(NotFound):
        confirmations.update_preferences(settings, session, sub, categories=[], lists={"nope": True})
    with pytest.raises(TokenError):
        optin.preferences_from_token(settings, session,
                                     Tokens(settings.secret_key).make("unsubscribe", sub.id, member.list_id))


class _Refusing:
    name, batch_size, concurrency = "refusing", 10, 1

    def send(self, messages: list[Message]) -> list[Outcome]:
        return [Outcome(m.delivery_id, False, error="550 mailbox unavailable") for m in messages]

    def close(self) -> None:
        pass


def test_a_confirmation_that_cannot_be_sent_is_an_error_and_can_be_retried(settings: Settings,
                                                                           session: Session) -> None:
    with pytest.raises(DeliveryError):
        confirmations.request_confirmation(settings, session, "r@example.com", source="form", transport=_Refusing())
    member = _member(session, "r@example.com")
    # not recorded as sent, so the next try is not held back
    assert member.status == MembershipStatus.PENDING and member.confirm_sent_at is None
    assert confirmations.request(settings, session, "r@example.com", source="form") == optin.SENT


def test_confirm_pending_emails_imported_readers_once(settings: Settings, session: Session, workdir: Path,
                                                      tmp_path: Path) -> None:
    rows = "".join(f"reader{i}@example.com,Reader {i}\n" for i in range(25))
    (tmp_path / "in.csv").write_text("email,name\n" + rows)
    report = import_csv(session, tmp_path / "in.csv")
    assert report.added == 25
    lifecycle.subscribe(session, "already@example.com", source="t", confirmed=True)
    session.commit()

    first = confirmations.send_pending(settings, session, limit=10)
    assert (first.sent, first.failed) == (10, 0)
    rest = confirmations.send_pending(settings, session)
    assert (rest.sent, rest.failed) == (15, 0)
    assert confirmations.send_pending(settings, session).sent == 0  # nobody twice
    messages = _outbox(workdir)
    assert len(messages) == 25
    assert "already@example.com" not in {m["To"].addresses[0].addr_spec for m in messages}
    pending = session.scalar(select(func.count()).select_from(Membership).where(
        Membership.status == MembershipStatus.PENDING, Membership.confirm_sent_at.is_not(None)))
    assert pending == 25
    # every link works, for its own reader
    token = _link(messages[3])
    member = optin.confirm_from_token(settings, session, token)
    assert member.subscriber.email == messages[3]["To"].addresses[0].addr_spec
    assert member.status == MembershipStatus.ACTIVE

    failed = confirmations.send_pending(settings, session, again=True, transport=_Refusing(),
                                now=datetime.now(UTC) + timedelta(days=8))
    assert failed.sent == 0 and failed.failed == 24 and "550" in failed.errors[0]


def test_the_consent_side_takes_its_sender_and_categories_from_the_caller(settings: Settings,
                                                                          session: Session, workdir: Path) -> None:
    """subscribers.optin renders and sends nothing itself: `send` and the known categories come in."""
    asked: list[tuple[str, str]] = []

    def send(member: Membership) -> None:
        asked.append((member.subscriber.email, member.mailing_list.slug))

    outcome = optin.request(settings, session, "own@example.com", send=send, known_categories=("Aquatics",),
                            categories=["aquatics"], source="test")
    assert outcome == optin.SENT and asked == [("own@example.com", "weekly")]
    member = _member(session, "own@example.com")
    assert member.status == MembershipStatus.PENDING and member.confirm_sent_at is not None
    assert member.subscriber.categories == ["Aquatics"]  # the caller's categories, in their spelling
    assert not (workdir / "outbox").exists() or not list((workdir / "outbox").glob("*.eml"))
    with pytest.raises(UnknownCategory):
        optin.request(settings, session, "other@example.com", send=send, known_categories=("Aquatics",),
                      categories=["Darts"], source="test")
    assert len(asked) == 1

    def refuse(member: Membership) -> None:
        raise DeliveryError("no")

    with pytest.raises(DeliveryError):
        optin.request(settings, session, "third@example.com", send=refuse, known_categories=None, source="test")
    assert _member(session, "third@example.com").confirm_sent_at is None  # not recorded: may be asked again


def test_confirm_pending_dry_run_counts_what_would_be_sent(settings: Settings, session: Session,
                                                           tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("email\n" + "".join(f"p{i}@example.com\n" for i in range(4)))
    import_csv(session, tmp_path / "in.csv")
    assert optin.Pending(settings, session).count() == 4
    assert optin.Pending(settings, session).count(limit=3) == 3
    assert optin.Pending(settings, session, list_slug="weekly").count() == 4
    with pytest.raises(NotFound):
        optin.Pending(settings, session, list_slug="nope")
    assert confirmations.send_pending(settings, session, limit=1).sent == 1
    assert optin.Pending(settings, session).count() == 3
