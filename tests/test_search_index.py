"""Admin substring search: the same answers on both backends, and on PostgreSQL a plan that can use the
pg_trgm GIN indexes (migration 0003) instead of reading every subscriber."""

from __future__ import annotations

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
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "LIKE" in statement.upper():
            seen.append((statement, parameters))

    bind = session.get_bind()
    event.listen(bind, "before_cursor_execute", capture)
    try:
        search(session, Query(q="quill"))
    finally:
        event.remove(bind, "before_cursor_execute", capture)
    assert seen
    statement, parameters = seen[0]
    raw = session.connection().connection.dbapi_connection
    assert raw is not None
    with raw.cursor() as cur:
        # a 300-row table is best read whole, or walked newest first by its primary key (what a search
        # matching many readers does); forbidding both shows whether the trigram indexes can answer at all
        cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute("SET LOCAL enable_indexscan = off")
        cur.execute("EXPLAIN " + statement, parameters)
        plan = "\n".join(row[0] for row in cur.fetchall())
    assert "ix_subscribers_email_key_trgm" in plan and "ix_subscribers_name_trgm" in plan, plan
    session.execute(text("ROLLBACK"))
