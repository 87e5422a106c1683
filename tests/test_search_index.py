"""Admin substring search: the same answers on both backends, and on PostgreSQL a plan that can use the
pg_trgm GIN indexes (migration 0003) instead of reading every subscriber."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.orm import Session

from subscribers import lifecycle
from subscribers.search import Query, search
from tests.fakes.readers import seed_readers


def test_substring_search_is_case_blind_literal_and_indexed_on_postgresql(settings: Any, session: Session,
                                                                         backend: str) -> None:
    for email, name in [("Zoe.Quill@Example.org", "Zoë Quillfeather"), ("x_100%@example.org", "Percent Person")]:
        lifecycle.subscribe(session, email, name=name, list_slug=settings.delivery.list, source="test")
    session.commit()
    seed_readers(settings, 300)  # after: it writes its own ids (max + 1), which PostgreSQL's sequence does not see
    assert [r.email for r in search(session, Query(q="QUILL")).rows] == ["Zoe.Quill@example.org"]
    assert [r.name for r in search(session, Query(q="quillfeather")).rows] == ["Zoë Quillfeather"]
    assert [r.email for r in search(session, Query(q="_100%")).rows] == ["x_100%@example.org"]  # % and _ literal
    assert search(session, Query(q="reader12")).count == 11  # reader12, reader120-129

    if backend != "postgresql":
        return
    # a 300-row table is best read whole, or walked newest first by its primary key (what a search matching
    # many readers does); forbidding both shows whether the trigram indexes can answer at all
    plan = _plan(session, Query(q="quill"), lambda statement: "LIKE" in statement.upper(),
                 forbid=("seqscan", "indexscan"))
    assert "ix_subscribers_email_key_trgm" in plan and "ix_subscribers_name_trgm" in plan, plan


def test_unfiltered_total_is_exact_up_to_the_cap_and_postgresqls_estimate_above_it(settings: Any, session: Session,
                                                                                  backend: str,
                                                                                  monkeypatch: Any) -> None:
    seed_readers(settings, 30)
    monkeypatch.setattr("subscribers.search.COUNT_CAP", 40)
    page = search(session, Query(size=5))  # below the cap: counted exactly, whatever the backend
    assert (page.count, page.capped, page.estimated) == (30, False, False)
    monkeypatch.setattr("subscribers.search.COUNT_CAP", 10)
    page = search(session, Query(size=5))
    # never analysed, PostgreSQL has no estimate (reltuples -1) and SQLite keeps none: the exact count
    assert (page.count, page.capped, page.estimated) == (30, False, False)
    if backend != "postgresql":
        return
    seed_readers(settings, 20)
    session.execute(text("ANALYZE subscribers"))  # what autovacuum does on a live database
    session.commit()
    page = search(session, Query(size=5, before=45))
    # ANALYZE reads every row of so small a table, so its estimate is the 50 rows exactly
    assert (page.count, page.capped, page.estimated) == (50, False, True) and len(page.rows) == 5
    filtered = search(session, Query(q="reader", size=5))  # a filtered page is never estimated
    assert (filtered.count, filtered.capped, filtered.estimated) == (10, True, False)


def test_a_middle_page_counts_every_match_not_those_past_the_bound(settings: Any, session: Session,
                                                                  monkeypatch: Any) -> None:
    active = seed_readers(settings, 30)
    seed_readers(settings, 10, status="bounced")
    seed_readers(settings, 12, list_slug="offers")
    for cap in (10_000, 10):  # few matches (read the members once) and many (probe per subscriber)
        monkeypatch.setattr("subscribers.search.COUNT_CAP", cap)
        for query, total, everyone in [(Query(list_slug="weekly", status="active", size=4), 30, active),
                                       (Query(status="bounced", size=4), 10, None),
                                       (Query(list_slug="offers", size=4), 12, None)]:
            first = search(session, query)
            seen = [r.email for r in first.rows]
            page = first
            while page.next_before:
                page = search(session, Query(**{**query.__dict__, "before": page.next_before}))
                assert (page.count, page.capped) == (first.count, first.capped) == (min(total, cap), total > cap)
                seen += [r.email for r in page.rows]
            assert len(seen) == len(set(seen)) == total
            if everyone is not None:
                assert sorted(seen) == sorted(everyone)
            back = search(session, Query(**{**query.__dict__, "after": page.rows[0].id}))
            assert (back.count, back.capped) == (first.count, first.capped) and back.rows


def _plan(session: Session, query: Query, keep: Any, forbid: tuple[str, ...] = ("seqscan", "bitmapscan")) -> str:
    """PostgreSQL's plan for the statement of `query`'s search that `keep` picks, with the scans that so
    small a table would rather use forbidden (the question is whether an index can answer)."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if keep(statement):
            seen.append((statement, parameters))

    bind = session.get_bind()
    event.listen(bind, "before_cursor_execute", capture)
    try:
        search(session, query)
    finally:
        event.remove(bind, "before_cursor_execute", capture)
    assert seen, query
    statement, parameters = seen[0]
    raw = session.connection().connection.dbapi_connection
    assert raw is not None
    with raw.cursor() as cur:
        for scan in forbid:
            cur.execute(f"SET LOCAL enable_{scan} = off")
        cur.execute("EXPLAIN " + statement, parameters)
        plan = "\n".join(row[0] for row in cur.fetchall())
    session.execute(text("ROLLBACK"))
    return plan


def test_status_and_list_filters_read_the_membership_indexes_on_postgresql(settings: Any, session: Session,
                                                                          backend: str, monkeypatch: Any) -> None:
    if backend != "postgresql":
        return  # SQLite has the same indexes (migration 0008) but its planner is not asked here
    seed_readers(settings, 40)
    seed_readers(settings, 20, status="bounced")
    monkeypatch.setattr("subscribers.search.COUNT_CAP", 10)  # the many-match path, as at a million readers
    # a status on any list: counted along (status, subscriber_id) in id order, no sort of every match
    plan = _plan(session, Query(status="bounced"), lambda s: "count(" in s)
    assert "ix_memberships_status_subscriber" in plan and "Sort" not in plan, plan
    # a list+status page in the middle: the index range starts at the page's bound, not at the newest member
    plan = _plan(session, Query(list_slug="weekly", status="active", before=20),
                 lambda s: "EXISTS" in s and "ORDER BY" in s)
    # (a 60-row table has no statistics to choose between the two membership indexes; either serves)
    assert re.search(r"Index (Only )?Scan Backward using ix_memberships_\w+_subscriber on memberships", plan), plan
    assert re.search(r"Index Cond: \(.*subscriber_id < 20\)", plan), plan
