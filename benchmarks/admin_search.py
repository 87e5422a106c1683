"""How fast the admins' subscriber pages answer with 100,000 or 1,000,000 subscribers (goal: p95 under
200 ms a page).

Seeds N subscribers with memberships in a fresh SQLite file (bulk inserts), logs in as an admin and
times each page through FastAPI's TestClient (the whole request: routing, session, query, template).
With --postgresql the database is a throwaway PostgreSQL server instead (seeded by COPY, then ANALYZE).

    python benchmarks/admin_search.py [--n 100000] [--repeat 20]
    python benchmarks/admin_search.py --postgresql --n 1000000
    python benchmarks/admin_search.py --postgresql --n 1000000 --pages "list counts,dashboard"

Baselines in the same run, in the same process: the login page (a page that reads no subscriber: routing,
template and the test client's own cost), and each page's own SQL run bare: every statement the page
sent (recorded from the engine, with its parameters) replayed through a plain psycopg / sqlite3
connection. A page's p95 is shown with its ratio to its bare SQL's p95 (what the product adds over the
queries) and the SQL's share shows which pages are slow because of their queries.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("DIGEST_SECRET_KEY", "benchmark-secret-key-0123456789")

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import event, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from digest.config import load_settings  # noqa: E402
from digest.demo import init  # noqa: E402
from digest.store import core_table, migrate, session_scope, utcnow  # noqa: E402
from digest.web.app import create_app  # noqa: E402
from digest.web.users import add_user  # noqa: E402
from subscribers import counts  # noqa: E402
from subscribers.bulk import load_rows  # noqa: E402
from subscribers.models import MailingList, Membership, Subscriber  # noqa: E402

PASSWORD = "benchmark password"
WEIGHTS = {"active": 80, "pending": 8, "unsubscribed": 9, "bounced": 2, "complained": 1}


def seed(url: str, n: int) -> None:
    rng = random.Random(6)
    now = utcnow()
    domains = [f"example{i}.com" for i in range(50)] + ["gmail.com", "outlook.com", "bigpond.com"]
    first = ["ann", "bob", "cat", "dan", "eve", "fay", "gus", "hal", "ida", "jon", "kim", "lou", "max", "ned"]
    with session_scope(url) as s:
        weekly = MailingList(slug="weekly", name="Weekly")
        offers = MailingList(slug="offers", name="Offers")
        s.add_all([weekly, offers])
        s.flush()
        lists = (weekly.id, offers.id)
        batch = 20_000
        for start in range(0, n, batch):
            rows = []
            for i in range(start, min(n, start + batch)):
                name = f"{rng.choice(first)}.{i}"
                email = f"{name}@{rng.choice(domains)}"
                rows.append({"id": i + 1, "email": email, "email_key": email.casefold(),
                             "name": name.split(".")[0].title(), "attributes": {}, "categories": [],
                             "created_at": now})
            columns = ("id", "email", "email_key", "name", "attributes", "categories", "created_at")
            load_rows(s.connection(), core_table(Subscriber), columns, [tuple(r[c] for c in columns) for r in rows])
            members = []
            for row in rows:
                status = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
                members.append({"subscriber_id": row["id"], "list_id": lists[0], "status": status,
                                "created_at": now, "updated_at": now})
                if row["id"] % 4 == 0:
                    members.append({"subscriber_id": row["id"], "list_id": lists[1], "status": "active",
                                    "created_at": now, "updated_at": now})
            columns = ("subscriber_id", "list_id", "status", "created_at", "updated_at")
            load_rows(s.connection(), core_table(Membership), columns, [tuple(m[c] for c in columns) for m in members])
        add_user(s, "admin@example.com", "admin", PASSWORD)
    if url.startswith("postgresql"):
        with session_scope(url) as s:  # the seeded ids bypassed the sequence; fresh statistics for the planner
            s.execute(text("SELECT setval('subscribers_id_seq', (SELECT max(id) FROM subscribers))"))
        with session_scope(url) as s:
            s.connection().exec_driver_sql("ANALYZE")


def timed(client: TestClient, url: str, repeat: int) -> tuple[float, float, float, str]:
    """(median, p95, max) in ms over `repeat` requests, and the last body."""
    times = []
    body = ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (url, r.status_code)
        body = r.text
    return (*_stats(times), body)


def _stats(times: list[float]) -> tuple[float, float, float]:
    times = sorted(times)
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)], times[-1]


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[str, Any]]]:
    """Every statement any engine sends meanwhile, as the driver got it (SQL text and parameters)."""
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        sent.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def bare_connection(url: str) -> Any:
    """A plain DB-API connection to the same database, outside SQLAlchemy (autocommit: nothing held)."""
    if url.startswith("sqlite"):
        import sqlite3

        return sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    import psycopg

    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True)


def bare(conn: Any, statements: list[tuple[str, Any]], repeat: int) -> tuple[float, float, float]:
    """(median, p95, max) in ms of running these statements bare, fetching every row, `repeat` times."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for statement, parameters in statements:
            cur = conn.cursor()
            cur.execute(statement, parameters)
            if cur.description is not None:
                cur.fetchall()
            cur.close()
        times.append((time.perf_counter() - t0) * 1000)
    return _stats(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--postgresql", action="store_true", help="on a throwaway PostgreSQL server")
    parser.add_argument("--pages", default="", help="only the pages whose label contains one of these "
                                                    "comma-separated words (default: every page)")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    if args.postgresql:
        from benchmarks import pg

        with pg.database("bench_admin") as url:
            run(args, url)
    else:
        run(args, None)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def run(args: argparse.Namespace, url: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        init(folder)
        if url:
            toml = folder / "digest.toml"
            toml.write_text(toml.read_text().replace('url = "sqlite:///digest.db"', f'url = "{url}"', 1))
        settings = load_settings(folder / "digest.toml")
        migrate(settings.database_url)
        t0 = time.perf_counter()
        seed(settings.database_url, args.n)
        print(f"seeded {args.n:,} subscribers (+ memberships) in {time.perf_counter() - t0:.1f} s")
        app = create_app(settings)
        with TestClient(app, base_url="http://127.0.0.1:8000") as client:
            page = client.get("/login").text
            token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
            r = client.post("/login", data={"csrf_token": token, "email": "admin@example.com",
                                            "password": PASSWORD, "next": "/admin"}, follow_redirects=False)
            assert r.status_code == 303
            deep = args.n // 2
            pages = [
                ("first page", "/admin/subscribers"),
                ("page in the middle (keyset)", f"/admin/subscribers?before={deep}"),
                ("last page", "/admin/subscribers?before=40"),
                ("search 'gmail' (substring)", "/admin/subscribers?q=gmail"),
                ("search exact address", "/admin/subscribers?q=ann.12345%40"),
                ("search with no match", "/admin/subscribers?q=zzzz-nobody"),
                ("status=bounced", "/admin/subscribers?status=bounced"),
                ("status=bounced, middle page", f"/admin/subscribers?status=bounced&before={deep}"),
                ("list=offers (any status)", "/admin/subscribers?list=offers"),
                ("list=offers status=active", "/admin/subscribers?list=offers&status=active"),
                ("list=weekly status=active", "/admin/subscribers?list=weekly&status=active"),
                ("weekly+active, middle page", f"/admin/subscribers?list=weekly&status=active&before={deep}"),
                ("list counts", "/admin/lists"),
                ("one subscriber", f"/admin/subscribers/{deep}"),
                ("dashboard", "/admin"),
            ]
            wanted = [w.strip() for w in args.pages.split(",") if w.strip()]
            if wanted:
                pages = [(label, u) for label, u in pages if any(w in label for w in wanted)]
            _, floor, _, _ = timed(client, "/login", args.repeat)
            print(f"\nbaseline 1: the login page (no subscriber read), p95 {floor:.1f} ms")
            print("baseline 2: each page's own SQL (recorded from one request) replayed bare through "
                  f"{'sqlite3' if settings.database_url.startswith('sqlite') else 'psycopg'} in this process")
            print(f"\n{'page':30} {'median':>7} {'p95':>7} {'max':>7} {'SQL p95':>8} {'stmts':>5}"
                  f" {'p95/SQL':>8} {'p95/login':>9}   (ms)")
            worst = 0.0
            conn = bare_connection(settings.database_url)
            try:
                for label, page_url in pages:
                    client.get(page_url)  # warm: the first view of a page compiles its statements
                    with recording() as sent:
                        assert client.get(page_url).status_code == 200
                    median, p95, top, _ = timed(client, page_url, args.repeat)
                    _, sql_p95, _ = bare(conn, sent, args.repeat)
                    worst = max(worst, p95)
                    print(f"{label:30} {median:7.1f} {p95:7.1f} {top:7.1f} {sql_p95:8.1f} {len(sent):5}"
                          f" {p95 / sql_p95:7.1f}x {p95 / floor:8.1f}x")
            finally:
                conn.close()
            print(f"\nworst p95: {worst:.1f} ms (goal: under 200 ms)")
            # what the list counts cost where they are counted now: the scheduler's refresh (subscribers.counts)
            times = []
            with session_scope(settings.database_url) as s:
                for _ in range(5):
                    t0 = time.perf_counter()
                    counts.refresh(s)
                    times.append((time.perf_counter() - t0) * 1000)
            print(f"list counts refresh (the scheduler's job, every few minutes): median "
                  f"{statistics.median(times):.1f} ms, max {max(times):.1f} ms over 5")

if __name__ == "__main__":
    main()
