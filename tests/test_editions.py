"""Per-reader editions: category preferences, appeal variants, the print subscribers' thank-you, and no
appeal for a while after a click on it; rendered once per distinct edition, never once per reader."""

from __future__ import annotations

import email
import email.policy
from collections import Counter
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from digest.compose import folded
from digest.config import Settings, load_settings
from digest.editions import DEFAULT, Editions, appeal_clickers
from digest.issues import build_draft, issue_of, send
from digest.models import Issue
from digest.store import DeliveryEvent, IssueRow, migrate, session_factory, utcnow
from subscribers import lifecycle
from subscribers.models import Subscriber
from tests.conftest import edit_config

MAIN_URL = "https://news.example.com/subscribe"
VARIANT_B = "Support independent news"
THANKS = "Thank you for subscribing to print"
APPEAL_EXTRA = f'''
[[appeal.variants]]
key = "b"
title = "{VARIANT_B}"
body = "Independent journalism needs readers like you."
button = "Subscribe to print"
url = "{MAIN_URL}?variant=b"

[appeal.thank_you]
title = "{THANKS}"
body = "Your print subscription keeps us independent."

[delivery]
'''


@pytest.fixture
def cfg(workdir: Path) -> Settings:
    edit_config(workdir, "\n[delivery]\n", APPEAL_EXTRA)
    edit_config(workdir, f'url = "{MAIN_URL}"', f'url = "{MAIN_URL}"\nquiet_issues_after_click = 2')
    s = load_settings(workdir / "digest.toml")
    migrate(s.database_url)
    return s


def reader(id: int, categories=(), **attributes):  # type: ignore[no-untyped-def]  # noqa: A002
    return SimpleNamespace(id=id, categories=list(categories), attributes=attributes)


@pytest.fixture
def issue(cfg: Settings) -> Issue:
    with session_factory(cfg.database_url)() as s:
        draft = build_draft(cfg, s)
        s.commit()
        return draft.issue


def test_readers_without_preferences_share_the_editors_edition(cfg: Settings, issue: Issue) -> None:
    editions = Editions(cfg, issue)
    assert editions.key(reader(1)) == editions.key(reader(2, print_subscriber=False)) == DEFAULT
    assert editions.key(None) == DEFAULT
    assert editions.issue_for(DEFAULT) is issue
    assert editions.get().html == editions(reader(3)).html
    assert editions.renders == 1



def test_the_editors_edition_made_ahead_is_counted_once_a_reader_gets_it(cfg: Settings, issue: Issue) -> None:
    """`warm` renders it while the send's snapshot is written (digest.deliver.loop): the send's first batch
    then finds it made, and a send none of whose readers get it does not count it."""
    editions = Editions(cfg, issue)
    editions.warm()
    assert editions.renders == 0 and editions.keys == []
    made = editions.get()
    assert editions.renders == 1 and editions.get() is made and editions(reader(3)) is made
    assert made.html == Editions(cfg, issue).get().html

def test_preferences_put_their_articles_first_and_keep_only_their_listings(cfg: Settings, issue: Issue) -> None:
    editions = Editions(cfg, issue)
    key = editions.key(reader(1, ["fitness ", "Venues"]))
    mine = editions.issue_for(key)
    wanted = {"fitness", "venues"}
    everything = issue.all_articles
    theirs = [a for a in everything if folded(a.categories) & wanted]
    assert theirs and len(theirs) < len(everything)
    assert mine.all_articles == theirs + [a for a in everything if a not in theirs]  # editor's order kept
    assert len(mine.articles) == len(issue.articles) and len(mine.headlines) == len(issue.headlines)
    assert mine.listings == [x for x in issue.listings if folded(x.categories) & wanted]
    assert mine.subject == issue.subject and mine.appeal == issue.appeal
    # the same preferences in another spelling, or with a category this issue does not have: same edition
    assert editions.key(reader(2, ["Venues", "FITNESS", "Golf"])) == key


def test_the_editors_pins_stay_first_for_everyone(cfg: Settings, issue: Issue) -> None:
    pinned = issue.headlines[-1]
    with_pin = Issue(**{**issue.__dict__, "pinned": [pinned.key],
                        "articles": [pinned, *issue.articles[:-1]],
                        "headlines": [issue.articles[-1], *issue.headlines[:-1]]})
    editions = Editions(cfg, with_pin)
    mine = editions.issue_for(editions.key(reader(1, ["Aquatics"])))
    assert mine.top == pinned
    assert all("aquatics" in folded(a.categories) for a in mine.articles[1:3])


def test_preferences_this_issue_has_nothing_for_get_the_editors_order_and_no_listings(cfg: Settings,
                                                                                      issue: Issue) -> None:
    editions = Editions(cfg, issue)
    key = editions.key(reader(1, ["Golf"]))
    assert key != DEFAULT
    none_of_theirs = editions.issue_for(key)
    assert none_of_theirs.all_articles == issue.all_articles and none_of_theirs.listings == []
    assert editions.key(reader(2, ["Curling"])) == key


def test_print_subscribers_are_thanked_and_recent_clickers_are_not_asked(cfg: Settings, issue: Issue) -> None:
    editions = Editions(cfg, issue, appeal_clicked={7})
    thanked = [editions.key(reader(i, print_subscriber=v)) for i, v in enumerate((True, "yes", "TRUE", 1), 1)]
    assert len(set(thanked)) == 1
    assert editions.issue_for(thanked[0]).appeal.title == THANKS
    assert editions.key(reader(5, print_subscriber="no")) == DEFAULT
    quiet = editions.issue_for(editions.key(reader(7)))
    assert quiet.appeal is None and quiet.articles == issue.articles
    assert THANKS.upper() in editions.get(thanked[0]).text
    assert issue.appeal.title.upper() not in editions.get(thanked[0]).text
    text = editions.get(editions.key(reader(7))).text
    assert issue.appeal.title.upper() not in text and THANKS.upper() not in text
    assert "Subscribe to print:" not in editions.get(thanked[0]).text  # a thank-you asks for nothing


def test_variants_rotate_per_issue_or_split_per_reader(cfg: Settings, issue: Issue, workdir: Path) -> None:
    assert issue.appeal.key == ("main" if issue.number % 2 == 1 else "b")
    edit_config(workdir, 'quiet_issues_after_click = 2', 'quiet_issues_after_click = 2\nrotate = "reader"')
    split = load_settings(workdir / "digest.toml")
    editions = Editions(split, issue)
    appeals = Counter(editions.issue_for(editions.key(reader(i))).appeal.key for i in range(1, 101))
    assert appeals == {"main": 50, "b": 50}
    next_issue = Editions(split, Issue(**{**issue.__dict__, "number": issue.number + 1}))
    assert next_issue.issue_for(next_issue.key(reader(1))).appeal.key != \
        editions.issue_for(editions.key(reader(1))).appeal.key  # each reader sees the variants in turn


def test_a_key_decided_once_per_kind_of_reader_is_the_key_decided_afresh(cfg: Settings, issue: Issue,
                                                                        workdir: Path) -> None:
    """key() remembers its decisions by what they depend on (issue 16: it ran once per reader); every reader
    still gets exactly the key a fresh Editions gives them, in both rotations, with clicks and preferences."""
    topics = sorted(Editions(cfg, issue)._topics)
    assert topics  # the sample issue has categories, so preferences change the edition
    topic = topics[0]
    readers = [reader(i, categories=[[], [topic], [topic.upper() + " "], ["nothing here"], ["", " "]][i % 5],
                      **({"print_subscriber": "yes"} if i % 7 == 0 else {})) for i in range(1, 141)]
    for rotate in ("issue", "reader"):
        if rotate == "reader":
            edit_config(workdir, 'quiet_issues_after_click = 2', 'quiet_issues_after_click = 2\nrotate = "reader"')
        settings = load_settings(workdir / "digest.toml")
        remembering = Editions(settings, issue, appeal_clicked={3, 11, 12})
        keys = [remembering.key(r) for r in readers + readers]  # the second round from memory
        fresh = [Editions(settings, issue, appeal_clicked={3, 11, 12}).key(r) for r in readers]
        assert keys == fresh + fresh, rotate
        for key, r in zip(keys, readers, strict=False):
            alone = Editions(settings, issue, appeal_clicked={3, 11, 12})
            assert remembering.issue_for(key) == alone.issue_for(alone.key(r)), (rotate, r)
        assert len(set(keys)) > 3  # the readers were of several kinds


def _issue_row(s, number: int, days_ago: int) -> IssueRow:  # type: ignore[no-untyped-def]
    at = utcnow() - timedelta(days=days_ago)
    row = IssueRow(number=number, subject=f"#{number}", content={}, status="sent", sent_at=at,
                   created_at=at - timedelta(hours=1))
    s.add(row)
    s.flush()
    return row


def _click(s, row: IssueRow, subscriber_id: int, url: str) -> None:  # type: ignore[no-untyped-def]
    s.add(DeliveryEvent(provider_event_id=f"ev-{row.id}-{subscriber_id}-{len(url)}", issue_id=row.id,
                        subscriber_id=subscriber_id, kind="click", url=url))


def test_appeal_clickers_are_the_readers_who_clicked_an_appeal_url_in_the_last_n_issues(cfg: Settings) -> None:
    with session_factory(cfg.database_url)() as s:
        subs = [lifecycle.subscribe(s, f"r{i}@example.com", source="test", confirmed=True).subscriber
                for i in range(5)]
        s.flush()
        old, last = _issue_row(s, 1, 40), _issue_row(s, 2, 30)
        _click(s, last, subs[0].id, MAIN_URL + "?utm_source=digest")       # the main appeal, with tracking
        _click(s, last, subs[1].id, MAIN_URL + "?variant=b")                # a variant's own URL
        _click(s, last, subs[2].id, "https://news.example.com/news/story")  # a story, not the appeal
        _click(s, old, subs[3].id, MAIN_URL)                                # too long ago for issue 4
        s.add(DeliveryEvent(provider_event_id="open-1", issue_id=last.id, subscriber_id=subs[4].id, kind="open",
                            url=MAIN_URL))
        s.commit()
        assert appeal_clickers(s, cfg, 3) == {subs[0].id, subs[1].id, subs[3].id}
        assert appeal_clickers(s, cfg, 4) == {subs[0].id, subs[1].id}  # quiet for 2 issues after a click
        assert appeal_clickers(s, cfg, 5) == set()


def _emls(workdir: Path) -> dict[str, email.message.EmailMessage]:
    out = {}
    for p in (workdir / "outbox").glob("*.eml"):
        msg = email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        out[msg["To"].addresses[0].addr_spec] = msg
    return out


def _text(msg: email.message.EmailMessage) -> str:
    return msg.get_body(preferencelist=("plain",)).get_content()


def test_a_send_renders_once_per_distinct_edition_not_per_reader(cfg: Settings, workdir: Path) -> None:
    groups = {  # name: (count, categories, print subscriber, clicked the appeal last issue)
        "plain": (30, [], False, False), "aquatics": (12, ["Aquatics"], False, False),
        "fitvenues": (10, ["Fitness", "Venues"], False, False), "venuesfit": (3, ["venues", "fitness"], False, False),
        "golf": (5, ["Golf"], False, False), "print": (5, [], True, False),
        "printaqua": (3, ["Aquatics"], True, False), "clicked": (4, [], False, True),
    }
    with session_factory(cfg.database_url)() as s:
        previous = _issue_row(s, 1, 20)
        for name, (count, categories, printed, clicked) in groups.items():
            for i in range(count):
                member = lifecycle.subscribe(s, f"{name}{i}@example.com", source="test", confirmed=True,
                                             categories=categories)
                member.subscriber.attributes = {"print_subscriber": printed, "plan": "x"}
                s.flush()
                if clicked:
                    _click(s, previous, member.subscriber.id, MAIN_URL)
        s.commit()
    outcome = send(cfg)
    assert outcome.report is not None and outcome.report.ok and outcome.report.submitted == 72
    # plain; aquatics; fitness+venues (both spellings); golf; print; print+aquatics; clicked
    assert outcome.editions == 7

    with session_factory(cfg.database_url)() as s:
        issue = issue_of(s.scalar(select(IssueRow).where(IssueRow.number == 2)))
        categories = {sub.email: sub.categories for sub in s.scalars(select(Subscriber))}
    mails = _emls(workdir)
    assert len(mails) == 72
    assert issue.appeal.key == "b"  # issue 2 of the rotation
    plain, fit, golf = _text(mails["plain0@example.com"]), _text(mails["fitvenues0@example.com"]), \
        _text(mails["golf0@example.com"])
    assert VARIANT_B.upper() in plain and THANKS.upper() not in plain
    assert THANKS.upper() in _text(mails["print0@example.com"]) and VARIANT_B.upper() not in \
        _text(mails["print0@example.com"])
    clicked = _text(mails["clicked0@example.com"])
    assert VARIANT_B.upper() not in clicked and THANKS.upper() not in clicked
    first_fit = next(a for a in issue.all_articles if folded(a.categories) & {"fitness", "venues"})
    assert f"== TOP STORY ==\n\n{first_fit.title}\n" in fit
    assert f"== TOP STORY ==\n\n{issue.top.title}\n" in plain and f"== TOP STORY ==\n\n{issue.top.title}\n" in golf
    assert "SUPPLIER DIRECTORY" in plain and "SUPPLIER DIRECTORY" not in golf
    aqua = _text(mails["aquatics0@example.com"])
    for listing in issue.listings:
        assert (listing.name in aqua) == ("aquatics" in folded(listing.categories))
    assert categories["venuesfit0@example.com"] == ["venues", "fitness"]


@pytest.mark.nodb  # reads settings only: runs once
def test_appeal_variant_keys_must_differ(workdir: Path) -> None:
    from digest.errors import ConfigError

    edit_config(workdir, "\n[delivery]\n", APPEAL_EXTRA.replace('key = "b"', 'key = "main"'))
    with pytest.raises(ConfigError, match="appeal variant keys must differ .*: main, main, thank_you"):
        load_settings(workdir / "digest.toml")


def test_a_batchs_editions_are_each_readers_own(cfg: Settings, issue: Issue) -> None:
    """`each` (a claimed batch at once, the key made once per distinct preferences) gives every reader the
    edition `key` gives them alone: shared and equal-but-distinct preference objects, empty ones, print
    subscribers, and readers whose recent appeal click changes their edition."""
    shared = ["Venues"]
    batch = [reader(1), reader(2, shared), reader(3, shared), reader(4, ["Venues"]), reader(5, ["Golf"]),
             reader(6, print_subscriber=True), reader(7), reader(8, shared, print_subscriber=True)]
    for clicked in ((), (3, 7)):
        editions = Editions(cfg, issue, appeal_clicked=clicked)
        alone = Editions(cfg, issue, appeal_clicked=clicked)
        got = [e.edition for e in editions.each(batch)]
        assert got == [alone.key(r) for r in batch]
        assert len(set(got)) >= 4  # the readers do differ: the test would see a wrong sharing
        assert editions.renders == len(set(got))
