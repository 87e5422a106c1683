"""Admins' pages through the test client: subscribers, history, unsubscribe, import, export, figures."""

from __future__ import annotations

import csv
import io
import re

from sqlalchemy import select, text

from digest import issues
from digest.store import session_scope
from subscribers import lifecycle
from subscribers.models import Event, Membership, MembershipStatus
from subscribers.search import Page, Query, search
from tests.test_web_support import app_fixture, client_fixture, csrf, csrf_from, login  # noqa: F401 (fixtures)


def add(settings, *emails: str, confirmed: bool = True, list_slug: str = "weekly") -> None:
    with session_scope(settings.database_url) as s:
        for e in emails:
            lifecycle.subscribe(s, e, name=e.split("@")[0].title(), source="test", confirmed=confirmed,
                                list_slug=list_slug)


def emails_on(page: str) -> list[str]:
    return re.findall(r'<a href="/admin/subscribers/\d+">([^<]+)</a>', page)


def test_search_filters_and_keyset_pages_through_everyone(client, settings):
    add(settings, *(f"reader{i:03d}@example.com" for i in range(120)))
    add(settings, "zed@other.example", confirmed=False)
    login(client)
    first = client.get("/admin/subscribers")
    assert first.status_code == 200 and "121 subscribers" in " ".join(first.text.split())
    seen: list[str] = []
    page = first.text
    while True:
        seen += emails_on(page)
        nxt = re.search(r'href="(/admin/subscribers\?[^"]*before=\d+)" rel="next"', page)
        if not nxt:
            break
        page = client.get(nxt.group(1).replace("&amp;", "&")).text
    assert len(seen) == len(set(seen)) == 121  # every reader once: no gap, no repeat
    assert seen[0] == "zed@other.example"  # newest first
    # and back again from the last page
    prev = re.search(r'href="(/admin/subscribers\?[^"]*after=\d+)" rel="prev"', page)
    back = client.get(prev.group(1).replace("&amp;", "&")).text
    assert emails_on(back) == seen[50:100]
    assert 'rel="prev"' in back and 'rel="next"' in back
    found = client.get("/admin/subscribers", params={"q": "READER01"}).text
    assert sorted(emails_on(found)) == [f"reader{i:03d}@example.com" for i in range(10, 20)]
    assert "10 subscribers match" in " ".join(found.split())
    assert emails_on(client.get("/admin/subscribers", params={"q": "Reader005"}).text) == \
        ["reader005@example.com"]  # names match too, in any case
    pending = client.get("/admin/subscribers", params={"status": "pending", "list": "weekly"}).text
    assert emails_on(pending) == ["zed@other.example"]
    unknown = client.get("/admin/subscribers", params={"list": "nope"})
    assert unknown.status_code == 200 and emails_on(unknown.text) == [] and "no list named" in unknown.text
    assert "unknown status" in client.get("/admin/subscribers", params={"status": "nope"}).text
    assert emails_on(client.get("/admin/subscribers", params={"q": "100%_"}).text) == []  # LIKE wildcards literal


def test_count_is_capped_for_broad_searches(settings, session, monkeypatch):
    add(settings, *(f"r{i}@example.com" for i in range(30)))
    monkeypatch.setattr("subscribers.search.COUNT_CAP", 10)
    page = search(session, Query(q="example", size=5))
    assert page.capped and page.count == 10 and len(page.rows) == 5
    page = search(session, Query(q="example", size=50))  # all on the first page: counted exactly
    assert not page.capped and page.count == 30
    page = search(session, Query(size=5))  # no filter: the exact total
    assert not page.capped and page.count == 30


def walk(session, query: Query) -> tuple[list[str], Page]:
    """Every row of a search, following the keyset pages."""
    page = first = search(session, query)
    emails = [r.email for r in page.rows]
    while page.next_before:
        page = search(session, Query(**{**query.__dict__, "before": page.next_before}))
        emails += [r.email for r in page.rows]
    return emails, first


def test_list_and_status_filters_page_the_same_whether_many_or_few_match(settings, session, monkeypatch):
    add(settings, *(f"a{i:02d}@example.com" for i in range(40)))
    add(settings, *(f"p{i:02d}@example.com" for i in range(7)), confirmed=False)
    add(settings, *(f"o{i:02d}@example.com" for i in range(5)), list_slug="offers")
    active = sorted(f"a{i:02d}@example.com" for i in range(40))
    for cap in (10_000, 10):  # few matches (read the members once) and many (probe per subscriber)
        monkeypatch.setattr("subscribers.search.COUNT_CAP", cap)
        emails, first = walk(session, Query(list_slug="weekly", status="active", size=6))
        assert sorted(emails) == active and len(emails) == len(set(emails))
        assert (first.count, first.capped) == ((10, True) if cap == 10 else (40, False))
        emails, first = walk(session, Query(status="pending", size=3))
        assert sorted(emails) == [f"p{i:02d}@example.com" for i in range(7)] and first.count == 7
        emails, _ = walk(session, Query(list_slug="offers", size=2))
        assert sorted(emails) == [f"o{i:02d}@example.com" for i in range(5)]
        emails, first = walk(session, Query(list_slug="offers", status="bounced"))
        assert emails == [] and first.count == 0


def test_subscriber_history_and_unsubscribe_by_an_admin(client, settings):
    add(settings, "ann@example.com")
    add(settings, "ann@example.com", list_slug="offers")
    with session_scope(settings.database_url) as s:
        sid = lifecycle.find(s, "ann@example.com").id
    login(client)
    page = client.get(f"/admin/subscribers/{sid}")
    assert page.status_code == 200 and "ann@example.com" in page.text
    assert "consent recorded by admin" in page.text and "weekly" in page.text and "offers" in page.text
    r = client.post(f"/admin/subscribers/{sid}/unsubscribe", data={"csrf_token": csrf_from(page.text),
                                                                   "list": "weekly"})
    assert r.status_code == 200 and "unsubscribed from list weekly" in r.text
    with session_scope(settings.database_url) as s:
        statuses = dict(s.execute(select(Membership.list_id, Membership.status)
                                  .where(Membership.subscriber_id == sid)).all())
        assert sorted(statuses.values()) == [MembershipStatus.ACTIVE, MembershipStatus.UNSUBSCRIBED]
        event = s.scalar(select(Event).where(Event.subscriber_id == sid, Event.kind == "unsubscribed"))
        assert event.source == "admin admin@example.com (web)" and event.ip == "testclient"
    assert "admin admin@example.com (web)" in r.text  # the history shows who did it
    assert client.get("/admin/subscribers/9999").status_code == 404


def test_import_with_bad_rows_shows_counts_and_rejects(client, settings):
    add(settings, "old@example.com")
    login(client)
    body = ("email,name,region\n"
            "new1@example.com,New One,NSW\n"
            "not-an-address,Bad,VIC\n"
            "new2@example.com,New Two,QLD\n"
            "NEW1@example.com,Duplicate,NSW\n"
            "old@example.com,Old,WA\n"
            ",Empty,SA\n")
    token = csrf(client, "/admin/import")
    r = client.post("/admin/import", data={"csrf_token": token, "list": "weekly"},
                    files={"file": ("readers.csv", body.encode(), "text/csv")})
    assert r.status_code == 200, r.text
    counts = dict(re.findall(r'data-count="(\w+)">([\d,]+)<', r.text))
    assert counts == {"rows": "6", "added": "2", "updated": "1", "unchanged": "0", "rejected": "3",
                      "suppressed": "0"}
    assert "not-an-address" in r.text and "email is empty" in r.text and "Duplicate" in r.text
    with session_scope(settings.database_url) as s:
        assert lifecycle.find(s, "new1@example.com").memberships[0].status == "pending"  # no consent evidence
    rejects = re.search(r'href="(/admin/import/rejects/[^"]+)"', r.text).group(1)
    download = client.get(rejects)
    assert download.status_code == 200
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert sorted(row["_row"] for row in rows) == ["3", "5", "7"]
    folder = settings.base_dir / "imports"
    assert [p.name for p in folder.iterdir()] == [rejects.rsplit("/", 1)[1]]  # the upload itself is gone
    assert client.get("/admin/import/rejects/..%2Fdigest.toml").status_code == 404


def test_import_needs_source_for_preconfirmed_and_names_the_problem(client, settings):
    login(client)
    token = csrf(client, "/admin/import")
    r = client.post("/admin/import", data={"csrf_token": token, "list": "weekly", "preconfirmed": "true"},
                    files={"file": ("readers.csv", b"email\nann@example.com\n", "text/csv")})
    assert r.status_code == 400 and "readers.csv" in r.text and "--source" in r.text
    r = client.post("/admin/import", data={"csrf_token": token, "list": "weekly", "preconfirmed": "true",
                                           "source": "paper form at the 2024 expo"},
                    files={"file": ("readers.csv", b"email\nann@example.com\n", "text/csv")})
    assert r.status_code == 200
    with session_scope(settings.database_url) as s:
        sub = lifecycle.find(s, "ann@example.com")
        assert sub.memberships[0].status == MembershipStatus.ACTIVE
        sources = {e.source for e in s.scalars(select(Event).where(Event.subscriber_id == sub.id))}
    assert any("paper form at the 2024 expo" in src and "admin@example.com" in src for src in sources)
    r = client.post("/admin/import", data={"csrf_token": token},
                    files={"file": ("x.csv", b"name\nAnn\n", "text/csv")})
    assert r.status_code == 400 and "email" in r.text


def test_export_round_trips_the_selection(client, settings):
    add(settings, "ann@example.com", "bob@example.com")
    add(settings, "cat@example.com", confirmed=False)
    login(client)
    r = client.get("/admin/export", params={"list": "weekly", "status": "active"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert sorted(row["email"] for row in rows) == ["ann@example.com", "bob@example.com"]
    assert {row["lists"] for row in rows} == {"weekly:active"}
    everyone = list(csv.DictReader(io.StringIO(client.get("/admin/export").text)))
    assert len(everyone) == 3
    assert client.get("/admin/export", params={"status": "nonsense"}).status_code == 400


def test_list_counts_and_issue_figures(client, settings):
    add(settings, "ann@example.com", "bob@example.com")
    add(settings, "cat@example.com", confirmed=False)
    outcome = issues.send(settings)
    assert outcome.report and outcome.report.submitted == 2
    login(client)
    lists = client.get("/admin/lists").text
    assert re.search(r"status=active\">2<", lists) and re.search(r"status=pending\">1<", lists)
    figures = client.get("/admin/issues").text
    assert "#1" in figures and re.search(r'<td class="num">2</td>\s*<td class="num">2</td>', figures)


def test_the_unfiltered_total_above_the_cap_is_labelled_an_estimate_on_postgresql(client, settings, backend,
                                                                                  monkeypatch):
    add(settings, *(f"r{i}@example.com" for i in range(30)))
    monkeypatch.setattr("subscribers.search.COUNT_CAP", 10)
    if backend == "postgresql":
        with session_scope(settings.database_url) as s:
            s.execute(text("ANALYZE subscribers"))  # what autovacuum does on a live database
    login(client)
    summary = " ".join(client.get("/admin/subscribers", params={"before": "25"}).text.split())
    if backend == "postgresql":
        assert "About 30 subscribers (the database's estimate)." in summary
    else:  # SQLite keeps no estimate: it counts
        assert "30 subscribers." in summary and "About" not in summary and "estimate" not in summary
