"""Signed reader links: unforgeable, expiring, bound to one purpose and one key, and address-free."""

from __future__ import annotations

import base64
import string
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from digest.config import Settings
from subscribers.links import PURPOSES, ReaderLinks, TokenError, Tokens

KEY = "test-secret-key-0123456789abcdef"


def test_a_token_reads_back_to_its_ids_and_signing_time() -> None:
    tokens = Tokens(KEY)
    before = datetime.now(UTC).replace(microsecond=0)
    for purpose in PURPOSES:
        token = tokens.make(purpose, 123456, 7)
        ref = tokens.read(purpose, token, max_age_days=1)
        assert (ref.subscriber_id, ref.list_id) == (123456, 7)
        assert ref.issued_at is not None and before <= ref.issued_at <= datetime.now(UTC)
        assert token.isascii() and "/" not in token and " " not in token  # safe as a URL path segment


def test_every_single_character_change_is_refused() -> None:
    """Including the spare bits of base64's last character: no second spelling of a link is accepted."""
    tokens = Tokens(KEY)
    token = tokens.make("unsubscribe", 42, 1)
    alphabet = string.ascii_letters + string.digits + "-_."
    tried = 0
    for i, ch in enumerate(token):
        for other in alphabet.replace(ch, ""):
            forged = token[:i] + other + token[i + 1:]
            with pytest.raises(TokenError) as e:
                tokens.read("unsubscribe", forged, max_age_days=365)
            assert not e.value.expired
            tried += 1
    assert tried == len(token) * (len(alphabet) - 1)


def test_ids_cannot_be_swapped_for_another_readers() -> None:
    tokens = Tokens(KEY)
    token = tokens.make("unsubscribe", 42, 1)
    forged = token.replace("2a.1.", "2b.1.", 1)  # subscriber 43 with 42's signature
    assert forged != token
    with pytest.raises(TokenError):
        tokens.read("unsubscribe", forged, max_age_days=365)


def test_truncated_empty_and_garbage_tokens_are_refused() -> None:
    tokens = Tokens(KEY)
    token = tokens.make("preferences", 5, 1)
    for bad in (token[:-1], token[: len(token) // 2], "", "....", "not-a-token", "é" * 20, token + "x"):
        with pytest.raises(TokenError):
            tokens.read("preferences", bad, max_age_days=365)


def test_a_token_signed_with_another_key_is_refused() -> None:
    token = Tokens("another-secret-key-0123456789").make("unsubscribe", 1, 1)
    with pytest.raises(TokenError) as e:
        Tokens(KEY).read("unsubscribe", token, max_age_days=365)
    assert not e.value.expired


def test_a_token_is_good_for_its_own_purpose_only() -> None:
    tokens = Tokens(KEY)
    unsubscribe = tokens.make("unsubscribe", 9, 1)
    for other in ("confirm", "preferences"):
        with pytest.raises(TokenError):
            tokens.read(other, unsubscribe, max_age_days=365)


def test_expired_tokens_are_refused_and_say_so() -> None:
    tokens = Tokens(KEY)
    with time_machine.travel(datetime(2025, 1, 1, 12, tzinfo=UTC), tick=False):
        token = tokens.make("confirm", 1, 1)
    with time_machine.travel(datetime(2025, 1, 8, 11, 59, tzinfo=UTC), tick=False):
        assert tokens.read("confirm", token, max_age_days=7).subscriber_id == 1
    with time_machine.travel(datetime(2025, 1, 8, 12, 0, 1, tzinfo=UTC), tick=False), pytest.raises(TokenError) as e:
        tokens.read("confirm", token, max_age_days=7)
    assert e.value.expired


def test_unsubscribe_links_work_for_at_least_60_days_whatever_the_config(settings: Settings) -> None:
    assert settings.subscribers.link_expiry_days >= 60
    tokens = Tokens(settings.secret_key)
    sent = datetime(2025, 3, 1, tzinfo=UTC)
    with time_machine.travel(sent, tick=False):
        token = tokens.make("unsubscribe", 77, 1)
    with time_machine.travel(sent + timedelta(days=60), tick=False):
        assert tokens.read("unsubscribe", token, settings.subscribers.link_expiry_days).subscriber_id == 77


def test_a_token_carries_no_email_address() -> None:
    """The readable part is the two ids in hex; the rest is a timestamp and a signature."""
    tokens = Tokens(KEY)
    token = tokens.make("unsubscribe", 1000, 2)
    value, stamp, signature = token.rsplit(".", 2)
    assert value == "3e8.2"
    assert len(base64.urlsafe_b64decode(stamp + "=" * (-len(stamp) % 4))) <= 8  # an integer time, no text
    assert len(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))) == 20  # an HMAC-SHA1
    assert len(token) < 60  # short enough for a URL in a plain-text email line


def test_a_signing_key_is_required() -> None:
    with pytest.raises(ValueError):
        Tokens("")


def test_make_writes_exactly_what_itsdangerous_signs() -> None:
    """The fast `make` must stay byte-for-byte itsdangerous's TimestampSigner.sign, or old links break."""
    from itsdangerous import TimestampSigner

    tokens = Tokens(KEY)
    for moment in (datetime(2026, 11, 30, 7, tzinfo=UTC), datetime(2027, 3, 1, 12, 30, 5, tzinfo=UTC)):
        with time_machine.travel(moment, tick=False):
            for purpose in PURPOSES:
                reference = TimestampSigner(KEY, salt=f"digest.{purpose}")
                for sid, lid in ((1, 1), (7, 3), (123456789, 42)):
                    assert tokens.make(purpose, sid, lid) == reference.sign(f"{sid:x}.{lid:x}").decode("ascii")


def test_reader_links_are_made_and_read_in_one_place(settings: Settings) -> None:
    """Each purpose has its own path under public_url, and is read back with its own expiry."""
    links = ReaderLinks(settings)
    base = settings.publication.public_url
    urls = {"confirm": links.confirm_url(5, 2), "unsubscribe": links.unsubscribe_url(5, 2),
            "preferences": links.preferences_url(5, 2)}
    for purpose, path in (("confirm", "/c/"), ("unsubscribe", "/u/"), ("preferences", "/p/")):
        assert urls[purpose].startswith(base + path)
        ref = links.read(purpose, urls[purpose].rsplit("/", 1)[1])
        assert (ref.subscriber_id, ref.list_id) == (5, 2)
    with pytest.raises(TokenError):
        links.read("confirm", urls["unsubscribe"].rsplit("/", 1)[1])
    with pytest.raises(ValueError):
        links.read("nothing", "x")
    sent = datetime(2025, 3, 1, tzinfo=UTC)
    with time_machine.travel(sent, tick=False):
        confirm = ReaderLinks(settings).confirm_url(1, 1).rsplit("/", 1)[1]
        unsubscribe = ReaderLinks(settings).unsubscribe_url(1, 1).rsplit("/", 1)[1]
    later = sent + timedelta(days=settings.subscribers.confirm_expiry_days, seconds=1)
    assert later < sent + timedelta(days=settings.subscribers.link_expiry_days)
    with time_machine.travel(later, tick=False):
        with pytest.raises(TokenError) as e:
            ReaderLinks(settings).read("confirm", confirm)
        assert e.value.expired
        assert ReaderLinks(settings).read("unsubscribe", unsubscribe).subscriber_id == 1


def test_one_reader_token_serves_both_links_of_a_copy_and_older_links_still_work(settings: Settings) -> None:
    """Issue 16: a copy's unsubscribe and preferences links share one signature; links in copies sent
    before (one token per purpose) keep working; neither kind confirms anything."""
    links = ReaderLinks(settings)
    unsubscribe, preferences = links.reader_urls(8, 3)
    token = unsubscribe.rsplit("/u/", 1)[1]
    assert preferences == f"{settings.publication.public_url}/p/{token}"
    assert unsubscribe == links.unsubscribe_url(8, 3) and preferences == links.preferences_url(8, 3)
    for purpose in ("unsubscribe", "preferences"):
        assert (links.read(purpose, token).subscriber_id, links.read(purpose, token).list_id) == (8, 3)
    with pytest.raises(TokenError):
        links.read("confirm", token)
    old = {p: links.tokens.make(p, 8, 3) for p in ("unsubscribe", "preferences")}
    assert links.read("unsubscribe", old["unsubscribe"]).subscriber_id == 8
    assert links.read("preferences", old["preferences"]).subscriber_id == 8
    with pytest.raises(TokenError):  # an old per-purpose token is still good for its own purpose only
        links.read("unsubscribe", old["preferences"])
    with pytest.raises(TokenError):
        links.read("unsubscribe", token[:-2] + ("AA" if token[-2:] != "AA" else "BA"))


def test_an_expired_reader_token_says_so(settings: Settings) -> None:
    sent = datetime(2025, 3, 1, tzinfo=UTC)
    with time_machine.travel(sent, tick=False):
        token = ReaderLinks(settings).reader_urls(1, 1)[0].rsplit("/", 1)[1]
    with time_machine.travel(sent + timedelta(days=settings.subscribers.link_expiry_days, seconds=1), tick=False):
        with pytest.raises(TokenError) as e:
            ReaderLinks(settings).read("unsubscribe", token)
        assert e.value.expired
