"""Benchmark: where the delivery ledger's time goes, statement by statement, in one `digest send`.

    python benchmarks/ledger_statements.py -n 30000 --postgresql     # a throwaway PostgreSQL 15
    python benchmarks/ledger_statements.py -n 30000                  # SQLite
    python benchmarks/ledger_statements.py -n 100000 --postgresql --schema "DROP INDEX ix_deliveries_issue_id"

Seeds N readers as benchmarks/send.py does, starts the SendGrid contract server, and runs `issues.send` in
this process with every statement timed (SQLAlchemy cursor events; the commits too), grouped by what it
does (claim, post, mark, snapshot...). On PostgreSQL it also prints the server's CPU time for the send (the
postmaster, its reaped backends and its live ones, from /proc) and the WAL written per reader: those two
hold still when the machine is busy; statement times move with the load by 20-30%. Checks every reader
got the issue exactly once. Prints figures; asserts nothing about speed. (docs/delivery.md, Speed.)
`--schema SQL` (repeatable) runs a statement on the seeded database before the send: a schema variant
measured against the migrations' own in the same conditions, never a change kept.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.send import KEY, SECRET, seed, start_server  # noqa: E402

KINDS = (  # (what the statement text starts with or contains, its name), first match wins
    ("WITH picked AS MATERIALIZED", "claim: pick, UPDATE and read the readers (PostgreSQL, one statement)"),
    ("FOR UPDATE SKIP LOCKED", "claim: SELECT ids FOR UPDATE SKIP LOCKED"),
    ("SELECT deliveries.id, subscribers.id", "claim: SELECT the readers"),
    ("INSERT INTO send_batches", "claim: INSERT the batch's row"),
    ("SET posted_at", "post"),
    ("INSERT INTO deliveries", "snapshot: INSERT ... SELECT"),
    ("ANALYZE", "snapshot: ANALYZE"),
)


def kind(sql: str) -> str:
    s = " ".join(sql.split())
    for text, name in KINDS:
        if text in s[:400]:
            return name
    if s.startswith("UPDATE deliveries SET status") and "message_id" in s:
        return "mark"
    if s.startswith("UPDATE deliveries SET status") and "lease_until" in s and (" IN (" in s or "ANY (" in s):
        return "claim: UPDATE the batch's rows"
    return "other: " + s[:80]


def server_cpu(folder: Path) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster with its reaped children, and its live children."""
    postmaster = int((folder / "data" / "postmaster.pid").read_text().split()[0])
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(pid) == postmaster:
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        elif int(fields[1]) == postmaster:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wal_bytes(admin_url: str) -> int:
    import psycopg

    with psycopg.connect(admin_url.replace("postgresql+psycopg", "postgresql")) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'").fetchone()
        assert row is not None
        return int(row[0])


def hot_updates(url: str) -> tuple[int, int]:
    """(rows updated, of them heap-only) in deliveries so far: a HOT update writes no index entry."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")  # PostgreSQL 15: counts are flushed lazily
        row = conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                           "WHERE relname = 'deliveries'").fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description="the ledger's statements in one send")
    parser.add_argument("-n", "--readers", type=int, default=30_000)
    parser.add_argument("--postgresql", action="store_true", help="start a throwaway PostgreSQL server")
    parser.add_argument("--schema", action="append", default=[], metavar="SQL",
                        help="a statement run on the seeded database before the send (a variant to measure)")
    args = parser.parse_args()
    os.environ.setdefault("DIGEST_SECRET_KEY", SECRET)
    from sqlalchemy import event
    from sqlalchemy.engine import Connection, Engine

    times: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])

    @event.listens_for(Engine, "before_cursor_execute")
    def _before(conn: Connection, *_: Any) -> None:
        conn.info["t0"] = time.perf_counter()

    @event.listens_for(Engine, "after_cursor_execute")
    def _after(conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        t = times[kind(statement)]
        t[0] += 1
        t[1] += time.perf_counter() - conn.info.pop("t0")

    commit = Connection._commit_impl

    def timed_commit(self: Connection) -> None:
        t0 = time.perf_counter()
        commit(self)
        t = times["COMMIT"]
        t[0] += 1
        t[1] += time.perf_counter() - t0

    Connection._commit_impl = timed_commit  # type: ignore[method-assign]
    from tests import pgserver

    pg = pgserver.start() if args.postgresql else None
    n = args.readers
    try:
        if pg is not None:
            os.environ["DIGEST_DATABASE_URL"] = pgserver.create(pg.url, "ledger")
        with tempfile.TemporaryDirectory() as tmp:
            config = seed(Path(tmp), n)
            config.write_text(config.read_text().replace("[delivery]\n", "[delivery]\nallow_http_public_url = true\n",
                                                         1))
            server, url = start_server()
            try:
                os.environ.update(SENDGRID_API_KEY=KEY, DIGEST_SENDGRID_API_URL=url)
                from digest.config import load_settings
                from digest.issues import send

                settings = load_settings(config)
                if args.schema:
                    from sqlalchemy import text

                    from digest.store import engine_for

                    with engine_for(settings.database_url).begin() as conn:
                        for sql in args.schema:
                            conn.execute(text(sql))
                times.clear()
                wal0, pg0 = (wal_bytes(pg.url), server_cpu(pg.folder)) if pg else (0, 0.0)
                cpu0 = time.process_time()
                t0 = time.perf_counter()
                send(settings)
                wall = time.perf_counter() - t0
                cpu = time.process_time() - cpu0
                wal, pg_cpu = (wal_bytes(pg.url) - wal0, server_cpu(pg.folder) - pg0) if pg else (0, 0.0)
                updated, hot = hot_updates(os.environ["DIGEST_DATABASE_URL"]) if pg else (0, 0)
                stats = json.loads(urllib.request.urlopen(f"{url}/_stats").read())
            finally:
                server.kill()
                server.wait()
    finally:
        if pg is not None:
            pg.stop()
    assert stats["recipients"] == stats["unique"] == n, stats
    one, five, _ = os.getloadavg()
    if args.schema:
        print("schema variant: " + "; ".join(args.schema))
    print(f"{n:,} readers on {'PostgreSQL' if pg else 'SQLite'}: the send {wall:.2f} s, the sender's CPU {cpu:.2f} s"
          + (f", PostgreSQL's CPU {pg_cpu:.2f} s, WAL {wal / n:,.0f} bytes per reader, {updated:,} rows updated "
             f"({hot:,} heap-only)" if pg else "")
          + f" (load average {one:.2f} {five:.2f} on {os.cpu_count()} cores)")
    batches = max(1, times["mark"][0])
    print(f"{'total s':>8} {'count':>6} {'ms each':>8} {'ms/batch':>8}  statement")
    for name, (count, total) in sorted(times.items(), key=lambda kv: -kv[1][1]):
        if total >= 0.005:
            print(f"{total:8.3f} {int(count):6d} {1000 * total / max(1, count):8.2f} {1000 * total / batches:8.2f}  "
                  f"{name}")
    print(f"{sum(t for _, t in times.values()):8.3f} seconds in statements and commits; ms/batch: over the "
          f"{int(batches)} batches marked")


if __name__ == "__main__":
    main()
