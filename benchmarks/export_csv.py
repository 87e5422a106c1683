"""How fast `digest subscribers export` writes 1,000,000 subscribers on PostgreSQL: the rows read through
SQLAlchemy and written in Python, and the file made by the server with COPY (subscribers/csv_export.py).

Seeds N subscribers (two attributes, categories, one or two memberships each) on a throwaway PostgreSQL
server (COPY, then ANALYZE), then exports everyone, and the active members of one list, both ways into a
file, checking the two files are the same bytes.

    python benchmarks/export_csv.py [--n 1000000]

Baseline in the same run, in the same process: the product's own COPY statement run bare through psycopg
(the bytes straight into the file: no text decoding, no formula guard in Python, no SQLAlchemy), so each
way is shown as a ratio to the least this export can cost on this machine at this moment.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402

from digest.store import core_table, migrate, session_factory, session_scope, utcnow  # noqa: E402
from subscribers.bulk import load_rows  # noqa: E402
from subscribers.csv_export import _copy_statement, export_csv  # noqa: E402
from subscribers.models import MailingList, Membership, MembershipStatus, Subscriber  # noqa: E402

REGIONS = ["NSW", "VIC", "QLD", "WA", "SA", "TAS", "ACT", "NT", "=NZ"]  # one that the formula guard quotes
CATEGORIES = ["Pools", "Spas", "Cinemas", "Bowling", "Golf"]


def seed(url: str, n: int) -> None:
    rng = random.Random(8)
    now = utcnow()
    with session_scope(url) as s:
        weekly, offers = MailingList(slug="weekly", name="Weekly"), MailingList(slug="offers", name="Offers")
        s.add_all([weekly, offers])
        s.flush()
        statuses = [m.value for m in MembershipStatus]
        for start in range(0, n, 20_000):
            ids = range(start + 1, min(n, start + 20_000) + 1)
            people = [(i, f"reader.{i}@example{i % 50}.com", f"reader.{i}@example{i % 50}.com", f"Reader {i}",
                       {"region": rng.choice(REGIONS), "member_since": str(2000 + i % 25)},
                       rng.sample(CATEGORIES, i % 3), now) for i in ids]
            load_rows(s.connection(), core_table(Subscriber),
                      ("id", "email", "email_key", "name", "attributes", "categories", "created_at"), people)
            members = [(i, weekly.id, rng.choices(statuses, weights=[8, 80, 9, 2, 1])[0], now, now) for i in ids]
            members += [(i, offers.id, "active", now, now) for i in ids if i % 4 == 0]
            load_rows(s.connection(), core_table(Membership),
                      ("subscriber_id", "list_id", "status", "created_at", "updated_at"), members)
    with session_scope(url) as s:
        s.execute(text("SELECT setval('subscribers_id_seq', (SELECT max(id) FROM subscribers))"))
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # what autovacuum does on a live database


def product(url: str, path: Path, use_copy: bool, **selection: str) -> tuple[float, int]:
    with session_factory(url)() as session, open(path, "w", encoding="utf-8", newline="") as out:
        t0 = time.perf_counter()
        n = export_csv(session, out, use_copy=use_copy, **selection)
        return time.perf_counter() - t0, n


def bare(url: str, path: Path, list_slug: str | None = None, status: str | None = None) -> float:
    """The same COPY statement through psycopg alone, its bytes written as they come (after the header)."""
    import psycopg

    with session_factory(url)() as session:  # the statement as the product builds it (its attribute keys)
        keys = sorted(session.execute(text("SELECT DISTINCT json_object_keys(attributes) FROM subscribers"))
                      .scalars(), key=str.casefold)
        list_id = session.scalar(text("SELECT id FROM lists WHERE slug = :s"), {"s": list_slug}) if list_slug else None
    statement = _copy_statement(list_id, MembershipStatus(status) if status else None, keys)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn, \
            open(path, "wb") as out:
        t0 = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            for data in copy:
                out.write(data)
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    from benchmarks import pg

    with pg.database("bench_export") as url, tempfile.TemporaryDirectory() as tmp:
        migrate(url)
        t0 = time.perf_counter()
        seed(url, args.n)
        print(f"seeded {args.n:,} subscribers (+ memberships) in {time.perf_counter() - t0:.1f} s\n")
        folder = Path(tmp)
        print(f"{'export':28} {'rows':>9} {'bare COPY s':>11} {'COPY s':>7} {'rows s':>7} {'COPY/bare':>9}"
              f" {'rows/bare':>9} {'rows/COPY':>9}  load")
        for label, selection in [("everyone", {}), ("weekly, active", {"list_slug": "weekly", "status": "active"})]:
            base = bare(url, folder / "bare.csv", **selection)
            copied, n = product(url, folder / "copy.csv", True, **selection)
            rows, m = product(url, folder / "rows.csv", False, **selection)
            assert n == m and filecmp.cmp(folder / "copy.csv", folder / "rows.csv", shallow=False), label
            print(f"{label:28} {n:9,} {base:11.1f} {copied:7.1f} {rows:7.1f} {copied / base:8.1f}x"
                  f" {rows / base:8.1f}x {rows / copied:8.1f}x  {os.getloadavg()[0]:.1f}")
    print(f"\nload average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
