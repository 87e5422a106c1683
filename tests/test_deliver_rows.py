"""A claimed batch built as a batch (issue 16): `SendGridTransport.prepare_rows` writes, for plain readers,
from a pattern, and for the others by the per-reader code; both must give the very requests `prepare` gives
from one Message per reader, refuse the same readers for the same reasons, and sign links that verify."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import time_machine

from digest.config import Settings, load_settings
from digest.deliver.ledger import Reader
from digest.deliver.personalizer import Personalizer
from digest.deliver.protocol import Message, Rows
from digest.deliver.sendgrid import SendGridTransport
from digest.render import PLAIN_NAME, Rendered, token_values
from subscribers.links import ReaderLinks, Tokens
from tests.conftest import SENDGRID_KEY, edit_config
from tests.fakes.readers import set_keys
from tests.fakes.sendgrid_server import SendGridServer

NAMES = ["Reader 1", "", "x" * 72, "x" * 73, "Ann O'Hara", 'Ann "the" Hara', "Smith, Ann", "Ann; Bob", "Zoë",
         "  spaced", "trailing ", "Eve\r\nBcc: x@example.com", "A & B", "a<b>", "back\\slash", "100% {sure} {0}",
         "tab\there", "two  spaces", "-", "~!#$%()*+-./:=?@[]^_`{|}"]
EMAILS = ["r{i}@example.com", 'quote"d{i}@example.com', "r{i}@bücher.example", "zoë{i}@example.com",
          "a{i}" + "b" * 320 + "@example.com", "back\\slash{i}@example.com"]


@pytest.fixture
def sg(workdir: Path, server: SendGridServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """SendGrid settings; the contract server answers the batch ids a scheduled batch's second request takes."""
    edit_config(workdir, 'transport = "outbox"', 'transport = "sendgrid"\nallow_http_public_url = true')
    monkeypatch.setenv("SENDGRID_API_KEY", SENDGRID_KEY)
    monkeypatch.setenv("DIGEST_SENDGRID_API_URL", server.url)
    return load_settings(workdir / "digest.toml")


def _both(settings: Settings, scheduled: tuple[str, int] | None = None) -> tuple[list, list, int]:  # type: ignore[type-arg]
    """The requests and refusals of one batch by `prepare_rows` and by `prepare`, and how many readers the
    batch path handed to the per-reader code."""
    personal = Personalizer(settings)
    transport = SendGridTransport(settings)
    a = Rendered("Issue 3", "", "<p>%%GREETING_HTML%% A</p>", "%%GREETING%% A", [], "a")
    b = Rendered("Issue 3", "", "<p>%%GREETING_HTML%% B</p>", "%%GREETING%% B", [], "b")
    readers, editions, messages = [], [], []
    for i, (name, address) in enumerate(((n, e) for e in EMAILS for n in NAMES), 1):
        r = Reader(1000 + i, i, address.format(i=i), name, {}, [])
        edition = a if i % 3 else b
        values, headers = personal.for_reader(r.id, 7, name, list_slug="news", issue_number=3)
        readers.append(r)
        editions.append(edition)
        messages.append(Message(r.delivery_id, r.id, 11, 3, r.email, name, edition, values, headers, 7, scheduled))
    slow: list[int] = []

    def message(i: int) -> Message:
        slow.append(i)
        return messages[i]

    tokens, mailtos = personal.batch_parts([r.id for r in readers], 7)
    rows = Rows(readers, editions, tokens, mailtos, personal.mails,
                partial(personal.assemble, list_slug="news", issue_number=3), message, 11, 3, 7, scheduled)
    try:
        fast, each = transport.prepare_rows(rows), transport.prepare(messages)
    finally:
        transport.close()
    assert [[m.delivery_id for m in ms] for _, ms, _ in fast.requests] == \
        [[m.delivery_id for m in ms] for _, ms, _ in each.requests]
    assert sorted(fast.send_at.values()) == sorted(each.send_at.values())

    def texts(requests: list) -> list[str]:  # type: ignore[type-arg]
        # a scheduled claim's second request has a batch id of its own, asked for by each path
        return [body.replace(batch, f"batch {n}") if batch else body for n, (body, _, batch) in enumerate(requests)]

    return texts(fast.requests), fast.refused, len(slow), (texts(each.requests), each.refused)  # type: ignore[return-value]


@pytest.mark.nodb
@pytest.mark.parametrize("mailbox", [False, True])
@pytest.mark.parametrize("scheduled", [None, ("b" * 32, 1_900_000_000)])
def test_a_batch_built_as_a_batch_is_the_batch_built_reader_by_reader(
        sg: Settings, workdir: Path, monkeypatch: pytest.MonkeyPatch, mailbox: bool,
        scheduled: tuple[str, int] | None) -> None:
    if mailbox:
        set_keys(workdir, "delivery", unsubscribe_mailbox="unsubscribe@inbound.example.org")
        monkeypatch.setenv("DIGEST_INBOUND_SECRET", "inbound-secret-0123456789abcdef-0123456789")
        sg = load_settings(workdir / "digest.toml")
    with time_machine.travel(1_800_000_000, tick=False):  # both paths sign in the same second
        requests, refused, slow, (expected, expected_refused) = _both(sg, scheduled)
        links = ReaderLinks(sg)
        people = [p for body in requests for p in json.loads(body)["personalizations"]]
        for p in people:  # the signed links verify, for the reader they were written for
            sid = int(p["custom_args"]["digest_subscriber"])
            token = p["substitutions"]["%%UNSUBSCRIBE_URL%%"].rsplit("/", 1)[1]
            assert links.read("unsubscribe", token).subscriber_id == sid
    assert requests == expected and len(requests) == 2  # two editions; and exactly the same text
    # refused alike: the zoë@ addresses and the long ones
    assert sorted(refused) == sorted(expected_refused) and len(refused) == 2 * len(NAMES)
    plain = sum(1 for n in NAMES if not n or PLAIN_NAME.fullmatch(n))
    # only the first address is plain: the others, and the plain address with a name that is not, went the
    # per-reader way; the rest took the pattern
    assert slow == (len(EMAILS) - 1) * len(NAMES) + len(NAMES) - plain and plain == 7
    assert len(people) == (len(EMAILS) - 2) * len(NAMES)
    for p in people:
        assert ("mailto:unsubscribe+" in p["headers"]["List-Unsubscribe"]) is mailbox
        assert all("\r" not in v and "\n" not in v for v in p["headers"].values())


@pytest.mark.nodb
def test_a_plain_name_is_written_unchanged_and_every_other_takes_the_per_reader_code() -> None:
    for name in NAMES:
        if PLAIN_NAME.fullmatch(name):
            values = token_values(name, "u", "p")
            assert values["%%GREETING%%"] == values["%%GREETING_HTML%%"] == f"Hi {name},"
            assert json.dumps(name) == f'"{name}"' and name == name.strip() and not set(name) & set(";,")
    assert not any(PLAIN_NAME.fullmatch(n) for n in ("x" * 73, "Zoë", "A & B", "Eve\r\nBcc: x", " a", "a "))


@pytest.mark.nodb
def test_tokens_made_for_a_batch_are_the_ones_made_one_by_one() -> None:
    tokens = Tokens("a-secret-key")
    ids = [1, 2, 255, 4096, 2**62]
    with time_machine.travel(1_800_000_000, tick=False):
        for purpose in ("reader", "click", "confirm"):
            assert tokens.make_many(purpose, ids, 9) == [tokens.make(purpose, i, 9) for i in ids]
    with pytest.raises(ValueError, match="unknown token purpose"):
        tokens.make_many("nothing", ids, 9)
