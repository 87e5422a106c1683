"""The corpus of ugly feeds in tests/feeds/: every file parses without an exception, gives exactly the
articles expected, and every feed or item that could not be used is named (a problem or a note)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from digest.sources.fetch import read_feed
from digest.sources.parse import FeedResult

CORPUS = Path(__file__).parent / "feeds"
NOW = datetime(2025, 3, 10, tzinfo=UTC)
SYDNEY = ZoneInfo("Australia/Sydney")
SUMMARY_CHARS = 240

#: file -> the titles it must give (in feed order), the feed-level problem if none, and the notes that
#: must name what was skipped or guessed. A file in the corpus without an entry here fails the suite.
EXPECTED: dict[str, dict] = {
    "wordpress_rss2.xml": {"titles": ["Council’s $12m pool upgrade – what’s next", "Lifeguard shortage eases"]},
    "wordpress_atom.xml": {"titles": ["Festival season: crowd & safety lessons"]},
    "ghost_rss.xml": {"titles": ["Why ticket scanners fail at 7pm", "Accessible seating, done right"]},
    "drupal_rss.xml": {"titles": ["New playground opens at Riverside Reserve", "Sportsground lighting works"]},
    "atom_xmlbase.xml": {"titles": ["Retention beats acquisition", "Small-group training, by the numbers"]},
    "atom_xhtml.xml": {"titles": ["Surf clubs & sponsors"]},
    "atom_id_no_link.xml": {"titles": ["Entry with a URL id"], "notes": ["item 2", "no http(s) link", "urn:uuid"]},
    "rss091_netscape.xml": {"titles": ["Club championships results", "Greens closed for renovation"]},
    "rss092_enclosure.xml": {"titles": ["New coaster announced", "Podcast: ride safety"]},
    "rss10_rdf.xml": {"titles": ["Visitor numbers up 9%", "Regional events calendar"]},
    "handmade_no_guids_no_dates.xml": {"titles": ["Winter timetable", "Aqua aerobics is back", "Kiosk tender"]},
    "duplicate_guids.xml": {"titles": ["First story", "Second story", "Third story"],
                            "notes": ["3 items share GUIDs", "told apart by link"]},
    "local_dates.xml": {"titles": ["Slash date", "French date", "German date", "Australian zone", "Drupal date",
                                   "Nonsense date", "Impossible date"],
                        "notes": ["item 6 ('Nonsense date')", "'sometime last week' not understood",
                                  "item 7 ('Impossible date')", "dated by when it was first seen"]},
    "future_embargo.xml": {"titles": ["Results under embargo", "Already public"]},
    "relative_links_xmlbase.xml": {"titles": ["Greens in drought", "Pro shop trends"]},
    "relative_links_channel_base.xml": {"titles": ["Court resurfacing", "Junior clinic"]},
    "relative_links_no_base.xml": {"titles": ["Absolute one"],
                                   "notes": ["item 1 ('Orphan one')", "item 2 ('Orphan two')", "no http(s) link"]},
    "entities_undeclared.xml": {"titles": ["Café & kiosk reopen — finally"], "notes": ["undefined entity"]},
    "entities_double_escaped.xml": {"titles": ["Fish & chips ’s big week"]},
    "cdata_everywhere.xml": {"titles": ["Stadium naming rights & revenue"]},
    "media_thumbnail.xml": {"titles": ["Highlights: grand final"]},
    "media_group.xml": {"titles": ["Resort reopens after flood"]},
    "tracking_pixels.xml": {"titles": ["Membership software roundup", "Only a pixel"]},
    "scripts_and_styles.xml": {"titles": ["Safe title"],
                               "notes": ["item 2 ('Script link')", "'javascript:alert(document.domain)'",
                                         "item 3 ('Data link')", "skipped"]},
    "html_page_not_feed.xml": {"problem": "not an RSS or Atom feed"},
    "empty_file.xml": {"problem": "empty: the feed has no content at all"},
    "truncated.xml": {"titles": ["Complete item", "Half an item"], "notes": ["malformed feed", "no element found"]},
    "binary_garbage.xml": {"problem": "not a readable feed"},
    "empty_channel.xml": {"titles": []},
    "latin1_declared_utf8.xml": {"titles": ["Café réouvert à Montréal"], "notes": ["declared as utf-8"]},
    "utf16_bom.xml": {"titles": ["Zoë's swim school — Ōtautahi"]},
    "bom_and_whitespace.xml": {"titles": ["Whitespace before the declaration"], "notes": ["malformed feed"]},
    "missing_titles.xml": {"titles": ["Short post without a title, the way microblogs publish them: the first words…"],
                           "notes": ["item 2", "item 3", "no title and no text: skipped"]},
    "long_title_and_body.xml": {"count": 2},
    "tracking_params_links.xml": {"titles": ["Story with tracking"]},
    "json_feed.xml": {"problem": "JSON, not RSS or Atom"},
    "billion_laughs.xml": {"titles": ["Entity bomb"], "notes": ["undefined entity"]},
    "external_entity.xml": {"titles": ["Read a file &xxe;"], "notes": ["malformed feed"]},
    "enclosure_no_type.xml": {"titles": ["Photo story", "PDF report"]},
    "srcset_only.xml": {"titles": ["Picture element"]},
}


def parse(name: str) -> FeedResult:
    return read_feed(str(CORPUS / name), now=NOW, tz=SYDNEY, summary_chars=SUMMARY_CHARS)


def test_the_corpus_has_at_least_30_ugly_feeds_and_each_has_expectations() -> None:
    files = sorted(p.name for p in CORPUS.iterdir() if p.is_file())
    assert len(files) >= 30
    assert set(files) == set(EXPECTED), "every corpus file needs an entry in EXPECTED (and no stale entries)"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_feed_gives_what_is_expected_and_names_what_it_could_not_use(name: str) -> None:
    expected = EXPECTED[name]
    result = parse(name)  # never raises: that is the first thing under test
    if "problem" in expected:
        assert result.problem is not None, f"{name}: a feed that gives nothing must say why"
        assert expected["problem"] in result.problem.message
        assert result.problem.source == str(CORPUS / name)
        assert result.articles == []
        return
    assert result.problem is None, f"{name}: {result.problem}"
    if "titles" in expected:
        assert [a.title for a in result.articles] == expected["titles"]
    if "count" in expected:
        assert len(result.articles) == expected["count"]
    notes = " | ".join(f"{n.where}: {n.message}" for n in result.notes)
    for needle in expected.get("notes", []):
        assert needle in notes, f"{name}: {needle!r} not in notes {notes!r}"
    if not expected.get("notes"):
        assert result.notes == [], f"{name}: unexpected notes {notes!r}"


_TAG = re.compile(r"</?[a-z][^>]*>", re.I)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_what_reaches_the_email_is_clean_text_and_http_links(name: str) -> None:
    for a in parse(name).articles:
        assert a.title.strip() and len(a.title) <= 201
        assert len(a.summary) <= SUMMARY_CHARS + 1
        for text in (a.title, a.summary, a.image_alt):
            assert not _TAG.search(text), f"{name}: markup in {text!r}"
            lowered = text.lower()
            for bad in ("<script", "javascript:", "alert(", "document.cookie", "display:none", "password"):
                assert bad not in lowered, f"{name}: {bad!r} in {text!r}"
        assert a.link.startswith(("http://", "https://"))
        assert a.image == "" or a.image.startswith(("http://", "https://"))
        assert a.published.tzinfo is not None
        assert len(a.key) == 32


def by_title(name: str) -> dict:
    return {a.title: a for a in parse(name).articles}


def test_images_come_from_media_content_thumbnail_enclosure_or_the_first_real_img() -> None:
    assert by_title("ghost_rss.xml")["Why ticket scanners fail at 7pm"].image == \
        "https://venues.example.org/content/images/2025/03/gates.jpg"                       # media:content
    assert by_title("media_thumbnail.xml")["Highlights: grand final"].image == \
        "https://sportvid.example.com/thumbs/grand-final.jpg"                                # thumbnail, not video
    assert by_title("media_group.xml")["Resort reopens after flood"].image == \
        "https://mediagroup.example.com/img/resort-large.jpg"                                # media:group
    coaster = by_title("rss092_enclosure.xml")
    assert coaster["New coaster announced"].image == "https://attractions.example.com/media/coaster.jpg"
    assert coaster["Podcast: ride safety"].image == ""                                       # audio enclosure
    enc = by_title("enclosure_no_type.xml")
    assert enc["Photo story"].image == "https://enc.example.com/photos/ferris-wheel.JPG?w=800"
    assert enc["PDF report"].image == ""
    wp = by_title("wordpress_rss2.xml")["Council’s $12m pool upgrade – what’s next"]
    assert wp.image == "https://aquatics.example.com/wp-content/uploads/2025/03/pool-hall.jpg"  # lazy, not emoji
    assert wp.image_alt == "The new learn-to-swim hall"
    drupal = by_title("drupal_rss.xml")["New playground opens at Riverside Reserve"]
    assert drupal.image == "https://parks.example.gov.au/sites/default/files/2025-03/playground.jpg"  # xml:base
    assert by_title("srcset_only.xml")["Picture element"].image == "https://srcset.example.com/img/marina-800.jpg"
    assert by_title("relative_links_channel_base.xml")["Court resurfacing"].image == "https://cdn.example.com/courts.jpg"


def test_tracking_pixels_are_never_taken_for_images() -> None:
    pixels = by_title("tracking_pixels.xml")
    assert pixels["Membership software roundup"].image == "https://pixels.example.com/img/roundup.png"
    assert pixels["Membership software roundup"].image_alt == "Comparison table"
    assert pixels["Only a pixel"].image == ""


def test_relative_links_are_resolved_against_xml_base_or_the_channel_link() -> None:
    atom = by_title("atom_xmlbase.xml")
    assert atom["Retention beats acquisition"].link == \
        "https://fitness.example.net/blog/posts/retention-beats-acquisition.html"
    assert atom["Retention beats acquisition"].image == "https://fitness.example.net/blog/img/retention.png"
    assert atom["Small-group training, by the numbers"].link == "https://fitness.example.net/blog/small-group-training"
    rss = by_title("relative_links_xmlbase.xml")
    assert rss["Greens in drought"].link == "https://golf.example.com/news/2025/greens-in-drought"
    assert rss["Greens in drought"].image == "https://golf.example.com/news/2025/images/greens.jpg"
    assert rss["Pro shop trends"].link == "https://golf.example.com/news/pro-shop-trends"
    channel = by_title("relative_links_channel_base.xml")
    assert channel["Court resurfacing"].link == "https://tennis.example.com/news/court-resurfacing"
    assert channel["Junior clinic"].link == "https://tennis.example.com/club/juniors.html"
    assert by_title("wordpress_atom.xml")["Festival season: crowd & safety lessons"].image == \
        "https://events.example.com/2025/03/festival-season/crowd.jpg"


def test_dates_in_local_formats_are_read_in_the_right_zone() -> None:
    dates = {t: (a.published, a.dated_by_feed) for t, a in by_title("local_dates.xml").items()}
    ten_sydney = datetime(2025, 3, 2, 23, 0, tzinfo=UTC)  # 10:00 AEDT on 3 March
    assert dates["Slash date"] == (datetime(2025, 3, 2, 13, 0, tzinfo=UTC), True)  # 03/03/2025, day first
    assert dates["French date"] == (ten_sydney, True)
    assert dates["German date"] == (datetime(2025, 3, 3, 9, 0, tzinfo=UTC), True)
    assert dates["Australian zone"] == (ten_sydney, True)  # feedparser alone reads AEDT as UTC
    assert dates["Drupal date"] == (ten_sydney, True)
    assert dates["Nonsense date"] == (NOW, False)
    assert dates["Impossible date"] == (NOW, False)
    assert by_title("rss10_rdf.xml")["Visitor numbers up 9%"].published == datetime(2025, 3, 1, 23, 0, tzinfo=UTC)


def test_items_without_dates_are_marked_undated() -> None:
    for a in parse("handmade_no_guids_no_dates.xml").articles + parse("rss091_netscape.xml").articles:
        assert a.dated_by_feed is False
        assert a.published == NOW


def test_entities_cdata_and_html_in_titles_become_plain_text() -> None:
    assert parse("entities_undeclared.xml").articles[0].summary == \
        'The café reopens with "new" hours … and bold plans.'
    assert parse("entities_double_escaped.xml").articles[0].summary == "Escaped twice by a plugin."
    cdata = parse("cdata_everywhere.xml").articles[0]
    assert cdata.link == "https://cdata.example.com/naming-rights"
    assert cdata.summary.startswith("Revenue from naming rights doubled.")
    assert parse("atom_xmlbase.xml").articles[0].title == "Retention beats acquisition"


def test_wordpress_boilerplate_is_left_out_of_summaries() -> None:
    wp = by_title("wordpress_rss2.xml")
    assert wp["Council’s $12m pool upgrade – what’s next"].summary == \
        "The council has approved a $12 million upgrade of the town pool, with a new learn-to-swim hall."
    assert wp["Lifeguard shortage eases"].summary == "Recruitment drives over summer have filled most rosters."
    assert wp["Lifeguard shortage eases"].categories == ("Aquatics",)


def test_scripts_styles_iframes_and_forms_never_reach_the_text() -> None:
    story = parse("scripts_and_styles.xml").articles[0]
    assert story.title == "Safe title"
    assert story.summary == "Visible text. click me"
    assert story.image == "https://hostile.example.com/img/ok.jpg"


def test_long_titles_and_summaries_are_cut_at_a_set_length() -> None:
    long_one, word = parse("long_title_and_body.xml").articles
    assert len(long_one.title) <= 201 and long_one.title.endswith("…")
    assert len(long_one.summary) <= SUMMARY_CHARS + 1 and long_one.summary.endswith("…")
    assert not long_one.title[:-1].endswith(" ")
    assert len(word.title) <= 201 and len(word.summary) <= SUMMARY_CHARS + 1


def test_identity_ignores_tracking_parameters_and_guid_scoping() -> None:
    from digest.sources.identity import article_key, canonical_link

    story = parse("tracking_params_links.xml").articles[0]
    assert canonical_link(story.link) == "https://campaign.example.com/story?id=7"
    assert story.key == article_key("", "https://campaign.example.com/story?id=7", "x", None)
    # a bare GUID like "1" is only unique within its feed; a URL GUID is unique everywhere
    assert article_key("1", "", "", None, "https://a.example.com") != article_key("1", "", "", None, "https://b.example.com")
    assert article_key("https://x.example.com/?p=1", "", "", None, "https://a.example.com") == \
        article_key("https://x.example.com/?p=1", "", "", None, "https://b.example.com")
    dup = parse("duplicate_guids.xml").articles
    assert len({a.key for a in dup}) == 3  # a GUID shared by every item is ignored, links tell them apart


def test_entity_bombs_and_external_entities_are_not_expanded() -> None:
    bomb = parse("billion_laughs.xml").articles[0]
    assert "lollol" not in bomb.summary and len(bomb.summary) < 50
    xxe = parse("external_entity.xml").articles[0]
    assert "root:" not in xxe.title + xxe.summary
