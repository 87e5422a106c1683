"""Reports: signed SendGrid open and click events for a sent issue -> per-article, per-listing and appeal
counts on the page /admin/issues/N and in `digest report N`; the dashboard's trends; the supplier report
and its formula-safe CSV. Every database test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from digest.config import Settings, load_settings
from digest.issues import send
from digest.models import Issue
from digest.reporting.issue import issue_report, timeline
from digest.reporting.links import APPEAL, ARTICLE, LISTING, OTHER, LinkMap
from digest.reporting.suppliers import supplier_reach
from digest.reporting.trends import appeal_over_time, list_growth
from digest.store import Delivery, IssueRow, migrate, session_factory
from subscribers import lifecycle
from subscribers.models import Subscriber
from tests.conftest import edit_config, run_main
from tests.fakes.readers import seed_readers, set_keys
from tests.test_web_support import EDITOR, login, make_users
from tests.test_webhooks_sendgrid import Signer, post, sent_with_webhook_key

MAIN_URL = "https://news.example.com/subscribe"
B_URL = f"{MAIN_URL}?variant=b"
VARIANT_B = f'''
[[appeal.variants]]
key = "b"
title = "Support independent news"
body = "Independent journalism needs readers like you."
button = "Subscribe to print"
url = "{B_URL}"

[delivery]
'''
#: a supplier whose name a spreadsheet would run as a formula (the directory is outside data)
FORMULA_NAME = "=Tidewell Systems"


def ev(n: int, kind: str, reader: int, **extra: Any) -> dict[str, Any]:
    """A SendGrid event as its Event Webhook posts it, with the custom_args the send put on the copy."""
    return {"email": f"reader{reader}@example.com", "timestamp": int(time.time()), "event": kind,
            "sg_event_id": f"rep-{n}", "sg_message_id": "msg.filter0001", "digest_issue": "1",
            "digest_subscriber": str(reader), "digest_list": "1", **extra}


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def sent(workdir: Path, signer: Signer) -> Settings:
    """Issue #1 sent (outbox) to 6 readers: appeal variants spread across readers (main for odd ids, b
    for even ids), reader 1 wanting only Fitness (fewer listings in their edition)."""
    edit_config(workdir, "\n[delivery]\n", VARIANT_B)
    edit_config(workdir, "#rotate = \"issue\"", 'rotate = "reader"')
    directory = workdir / "sample" / "directory.csv"
    directory.write_text(directory.read_text().replace("\nTidewell Systems,", f"\n{FORMULA_NAME},"))

    def fitness_only_reader_and_users(settings: Settings) -> None:
        make_users(settings)
        with session_factory(settings.database_url)() as s:
            s.execute(update(Subscriber).where(Subscriber.id == 1).values(categories=["Fitness"]))
            s.commit()

    return sent_with_webhook_key(workdir, signer, 6, before_send=fitness_only_reader_and_users)


@pytest.fixture
def client(sent: Settings) -> Iterator[TestClient]:
    from digest.web.app import create_app

    with TestClient(create_app(sent)) as c:
        yield c


def the_issue(settings: Settings) -> Issue:
    with session_factory(settings.database_url)() as s:
        row = s.scalar(select(IssueRow).where(IssueRow.number == 1))
        assert row is not None
        return Issue.from_json(row.content)


def feed_events(client: TestClient, signer: Signer, issue: Issue, public_url: str) -> None:
    a0, a1 = issue.all_articles[0].link, issue.all_articles[1].link
    listing = issue.listings[0].url
    batch = [ev(i, "delivered", r) for i, r in enumerate((1, 2, 3, 4, 5), 1)] + [
        ev(6, "bounce", 6, type="bounce", reason="550 5.1.1 no such user", status="5.1.1"),
        ev(7, "open", 1), ev(8, "open", 1), ev(9, "open", 2), ev(10, "open", 3),
        ev(11, "click", 1, url=a0), ev(12, "click", 1, url=a0 + "#more"),  # one reader, two clicks
        ev(13, "click", 2, url=a0), ev(14, "click", 2, url=a1),
        ev(15, "click", 3, url=listing + "?utm_source=digest"),  # a tracking parameter added on the way
        ev(16, "click", 4, url=B_URL),  # reader 4 (even) was shown variant b
        ev(17, "click", 3, url=MAIN_URL),  # reader 3 (odd) was shown the main appeal
        ev(18, "click", 5, url=f"{public_url}/unsubscribe/SIGNED-TOKEN-OF-READER-5"),
    ]
    response = post(client, signer, batch)
    assert response.status_code == 200, response.text
    assert response.json()["recorded"] == len(batch) and response.json()["unmatched"] == 0


def test_link_map_sends_each_click_to_its_link(settings: Settings) -> None:
    from datetime import UTC, datetime

    from digest.models import Appeal, Article, Listing
    now = datetime.now(UTC)
    issue = Issue(1, "s", "p", now, [Article("a", "A story", "https://news.example.com/a", now)],
                  [Article("h", "A headline", "https://news.example.com/h/", now)],
                  [Listing("Acme", "https://acme.example")], Appeal("main", "Help", "b", "Go", MAIN_URL))
    links = LinkMap(issue, {"main": MAIN_URL, "b": B_URL}, "https://digest.example.org")
    assert links.target("https://NEWS.example.com/a?utm_medium=email").kind == ARTICLE
    assert links.target("https://news.example.com/h").key == "h"  # a trailing slash is the same page
    assert links.target("https://news.example.com/a-different-story").kind == OTHER
    assert links.target("https://acme.example/").kind == LISTING
    assert links.target(B_URL).key == "b" and links.target(MAIN_URL + "?utm_source=x").key == "main"
    assert links.target(f"{MAIN_URL}?variant=b&utm_source=x").kind == APPEAL
    unsubscribe = links.target("https://digest.example.org/unsubscribe/abc.def")
    assert unsubscribe == links.target("https://digest.example.org/unsubscribe/xyz")
    assert unsubscribe.kind == OTHER and "abc" not in unsubscribe.label  # the reader's token is never shown
    assert "secret" not in links.target("https://elsewhere.example/page?token=secret").label


def test_signed_events_give_per_article_listing_and_appeal_counts(
        client: TestClient, signer: Signer, sent: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    issue = the_issue(sent)
    feed_events(client, signer, issue, sent.publication.public_url)
    with session_factory(sent.database_url)() as s:
        report = issue_report(s, sent, 1)
        editions = dict(s.execute(select(Delivery.subscriber_id, Delivery.edition)).all())
    assert editions[2] is not None and all(editions.values())  # every copy's edition was recorded
    assert (report.sent, report.delivered, report.opened, report.clicked, report.bounced) == (6, 5, 3, 5, 1)
    assert [(a.readers, a.clicks) for a in report.articles[:2]] == [(2, 3), (1, 1)]
    assert sum(a.clicks for a in report.articles[2:]) == 0
    assert [a.key for a in report.articles] == [a.key for a in issue.all_articles]  # the issue's order
    first = report.listings[0]
    fitness = "fitness" in {c.casefold() for c in issue.listings[0].categories}
    # reached: delivered readers whose edition showed it (reader 6 bounced; reader 1 sees Fitness only)
    assert (first.readers, first.clicks, first.reach) == (1, 1, 5 if fitness else 4)
    appeal = {r.key: (r.reach, r.readers) for r in report.appeal}
    assert appeal == {"main": (3, 1), "b": (2, 1)}  # main: readers 1, 3, 5; b: 2 and 4 (6 bounced)
    assert {e.appeal for e in report.editions} == {"main", "b"}
    assert [(o.label, o.readers) for o in report.other] == [("unsubscribe link", 1)]
    assert report.timeline[0][1:] == (3, 5)
    assert all(o is None and c is None for _, o, c in report.timeline[1:])  # days not begun yet: no zeros

    # a week later: a click 30 hours after the send is day 2's, one 8 days after is outside the chart
    assert report.sent_at is not None
    start = int(report.sent_at.timestamp())
    post(client, signer, [ev(30, "click", 2, url=issue.all_articles[1].link, timestamp=start + 30 * 3600),
                          ev(31, "click", 3, url=issue.all_articles[1].link, timestamp=start + 8 * 86400)])
    with session_factory(sent.database_url)() as s:
        week = timeline(s, 1, report.sent_at, now=report.sent_at + timedelta(days=8))
    assert [c for _, _, c in week] == [5, 1, 0, 0, 0, 0, 0]

    login(client, EDITOR)  # editors see the report too
    page = client.get("/admin/issues/1")
    assert page.status_code == 200, page.text
    html = page.text
    assert "<script" not in html and 'role="img"' in html and "approximate" in html
    title0 = re.escape(issue.all_articles[0].title.replace("&", "&amp;").replace("'", "&#39;"))
    assert re.search(title0 + r'</a></td>\s*<td class="num">2</td><td class="num phone-hide">3</td>', html)
    name0 = re.escape(issue.listings[0].name.replace("&", "&amp;"))
    assert re.search(name0 + rf'</a></td><td class="num">{first.reach}</td>\s*<td class="num">1</td>', html)
    assert re.search(r'<th scope="row" class="wrap">b</th><td class="num">2</td><td class="num">1</td>', html)
    assert "SIGNED-TOKEN" not in html
    assert client.get("/admin/issues/99").status_code == 404

    code, out = run_main(monkeypatch, capsys, "report", "1", "--config", str(sent.path))
    assert code == 0, out
    lines = out.splitlines()
    short = issue.all_articles[0].title[:20]
    row = next(line for line in lines if short in line and "│" in line)
    assert re.search(r"│\s*2\s*│\s*3\s*│", row), row
    assert any(re.search(r"│\s*b\s*│\s*2\s*│\s*1\s*│\s*1\s*│\s*50\.0%", line) for line in lines), out
    assert "approximate" in out and "clicked" in out
    assert run_main(monkeypatch, capsys, "report", "99", "--config", str(sent.path))[0] == 2


def test_supplier_report_page_and_formula_safe_csv(client: TestClient, signer: Signer, sent: Settings,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    issue = the_issue(sent)
    assert FORMULA_NAME in [x.name for x in issue.listings], "the featured tier supplier should be featured"
    target = next(x for x in issue.listings if x.name == FORMULA_NAME)
    feed_events(client, signer, issue, sent.publication.public_url)
    post(client, signer, [ev(40, "click", 2, url=target.url)])
    with session_factory(sent.database_url)() as s:
        reach = supplier_reach(s, sent)
    tidewell = reach[target.key]
    assert tidewell.issues == (1,) and tidewell.readers >= 1 and tidewell.reach >= 4

    login(client, EDITOR)
    page = client.get("/admin/suppliers")
    assert page.status_code == 200 and "@media print" not in page.text  # the print rules live in site.css
    assert "<script" not in page.text and 'role="img"' in page.text
    one = client.get("/admin/suppliers", params={"supplier": FORMULA_NAME})
    assert one.status_code == 200 and "#1" in one.text
    assert client.get("/admin/suppliers", params={"supplier": "nobody at all"}).status_code == 404
    got = client.get("/admin/suppliers.csv")
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(got.text)))
    cell = next(r for r in rows if "Tidewell" in r["supplier"])
    assert cell["supplier"] == "'" + FORMULA_NAME  # neutralised: a spreadsheet shows it, never runs it
    assert (int(cell["readers_reached"]), int(cell["readers_clicked"])) == (tidewell.reach, tidewell.readers)
    css = client.get("/static/site.css").text
    assert "@media print" in css and "@page" in css

    code, out = run_main(monkeypatch, capsys, "listings", "report", "--config", str(sent.path),
                         "--csv", str(sent.path.parent / "features.csv"))
    assert code == 0, out
    with (sent.path.parent / "features.csv").open(newline="") as f:
        listed = {r["supplier"]: r for r in csv.DictReader(f)}
    assert int(listed["'" + FORMULA_NAME]["readers_reached"]) == tidewell.reach
    assert int(listed["'" + FORMULA_NAME]["readers_clicked"]) == tidewell.readers


def test_dashboard_trends_appeal_and_list_growth(client: TestClient, signer: Signer, sent: Settings) -> None:
    issue = the_issue(sent)
    feed_events(client, signer, issue, sent.publication.public_url)
    with session_factory(sent.database_url)() as s:
        # seeded readers have no history; one joins a second list through the lifecycle (a history row)
        lifecycle.ensure_list(s, "monthly")
        lifecycle.subscribe(s, "reader2@example.com", list_slug="monthly", source="test")
        s.commit()
        points = appeal_over_time(s, sent)
        weeks = list_growth(s, sent.publication.tz)
        monthly = list_growth(s, sent.publication.tz, list_slug="monthly")
        weekly = list_growth(s, sent.publication.tz, list_slug="weekly")
    assert [(p.issue, p.variant, p.reach, p.readers) for p in points] == [(1, "main", 3, 1), (1, "b", 2, 1)]
    assert len(weeks) == 12 and weeks[-1].new == 1 and monthly[-1].new == 1 and sum(w.new for w in weekly) == 0
    login(client)
    html = client.get("/admin").text
    assert "The appeal over time" in html and "Subscribers over time" in html and "<script" not in html
    assert client.get("/admin/lists/monthly").status_code == 200
    assert client.get("/admin/lists/nonexistent").status_code == 404


# -- our own click redirect (delivery.click_redirect) for SMTP and the outbox -------------------------


def html_of(msg: Any) -> str:
    part = msg.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def test_own_click_redirect_is_off_by_default(settings: Settings) -> None:
    from tests.test_web_support import messages, text_of

    seed_readers(settings, 1)
    assert send(settings).report.submitted == 1  # type: ignore[union-attr]
    msg = messages(settings)[0]
    issue = the_issue(settings)
    assert "/r/" not in html_of(msg) and "/r/" not in text_of(msg)
    assert issue.all_articles[0].link in text_of(msg)


def test_own_click_redirect_records_the_click_and_redirects(workdir: Path) -> None:
    from html import unescape
    from urllib.parse import urlsplit

    from digest.web.app import create_app
    from tests.test_web_support import messages, text_of

    set_keys(workdir, "delivery", click_redirect=True)
    settings = load_settings(workdir / "digest.toml")
    migrate(settings.database_url)
    seed_readers(settings, 3)
    assert send(settings).report.submitted == 3  # type: ignore[union-attr]
    issue = the_issue(settings)
    article, listing = issue.all_articles[0], issue.listings[0]
    msg = messages(settings, "reader2@example.com")[0]
    html, text = html_of(msg), text_of(msg)
    assert article.link not in text and f'href="{article.link}"' not in html  # rewritten in both parts
    assert f"{settings.publication.public_url}/r/" in text
    links = [unescape(h) for h in re.findall(r'href="([^"]+/r/[^"]+)"', html)]
    assert links and all(h.startswith(settings.publication.public_url + "/r/") for h in links)
    assert "/unsubscribe" in html or "/u/" in html  # the reader's own links are not tracked
    with TestClient(create_app(settings)) as client:
        def follow(url: str) -> Any:
            parts = urlsplit(url)
            return client.get(f"{parts.path}?{parts.query}", follow_redirects=False)

        to_article = next(h for h in links if "u=" in h and follow_target(h) == article.link)
        first = follow(to_article)
        assert first.status_code == 302 and first.headers["location"] == article.link
        assert follow(to_article).status_code == 302  # a second click: one reader, two clicks
        to_listing = next(h for h in links if follow_target(h) == listing.url)
        assert follow(to_listing).headers["location"] == listing.url
        # the link's MAC: another target, or a changed MAC, is refused (no open redirect)
        assert follow(to_article.replace("u=https", "u=https%3A%2F%2Fevil.example%2F%3Fx%3Dhttps")).status_code == 404
        mac_start = to_article.index("/", to_article.index("/r/") + 3) + 1
        tampered = to_article[:mac_start] + ("0" if to_article[mac_start] != "0" else "1") + to_article[mac_start + 1:]
        assert follow(tampered).status_code == 404
        # the archive's copy: links work, nothing is recorded for anyone
        archived = client.get("/issues/1").text
        anonymous = next(unescape(h) for h in re.findall(r'href="([^"]+/r/-/[^"]+)"', archived))
        assert follow(anonymous).status_code == 302
    with session_factory(settings.database_url)() as s:
        report = issue_report(s, settings, 1)
    assert (report.articles[0].readers, report.articles[0].clicks) == (1, 2)
    assert (report.listings[0].readers, report.listings[0].clicks) == (1, 1)
    assert report.clicked == 1
    # one edition for the whole batch: recorded in one statement, every reader's copy has it
    assert report.unknown_edition == 0 and [(e.key, e.readers) for e in report.editions] == [("default", 3)]


def follow_target(link: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(link).query)["u"][0]


def test_charts_are_scriptless_named_svg_with_unique_ids() -> None:
    from collections import Counter

    from digest.web.charts import chart

    html = str(chart('Clicks on "<Acme & Co>"', ["#1", "#2"], [("b", [1, 2]), ("main", [0, 3])], description="why"))
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert html.count('role="img"') == 2  # desktop and phone sizes
    assert 'aria-label="Clicks on &quot;&lt;Acme &amp; Co&gt;&quot;"' in html and "<title>Clicks on" in html
    ids = Counter(re.findall(r'\bid="([^"]+)"', html))
    assert ids and max(ids.values()) == 1
    assert "<figcaption>why</figcaption>" in html
