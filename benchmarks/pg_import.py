"""Import subscriber rows into PostgreSQL (a throwaway server) with the real `digest subscribers import`, and
the same file with a minimal importer written here, in the same run; prints both times, their ratio and
each process's peak memory. Run by hand:

    .venv/bin/python benchmarks/pg_import.py                   # 1,000,000 rows
    .venv/bin/python benchmarks/pg_import.py --rows 100000

The file is the one `benchmarks/import_csv.py` generates (a name, two attribute columns, about 0.2% bad
rows: invalid addresses and repeats). Three figures, each a whole process or command:

- digest: `digest subscribers import` in a child process, start-up included (staging through COPY,
  `subscribers.bulk.load_rows`);
- baseline: the least an importer must do (issue 16), in a child process with psycopg and email-validator
  alone, no project code: parse the CSV, validate each address with email-validator, drop the file's own
  repeats, and COPY subscribers and their memberships into the same tables, with the same indexes (the
  unique ones and the trigram ones of migration 0003), 20,000 rows per transaction; no staging, no
  consent events, no rejects report. Its database is a copy of digest's empty schema (CREATE DATABASE ...
  TEMPLATE), made before digest writes a row;
- floor: one bare `COPY ... FROM STDIN (FORMAT csv)` of the file into a table of four text columns and no
  index: what the server needs to take the bytes in, for scale only.

The ratio digest / baseline is the figure (the goal: 1.5x or less); absolute times drift with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DIGEST_SECRET_KEY", "benchmark-secret-key-0123456789")

import psycopg  # noqa: E402

from benchmarks import pg  # noqa: E402
from benchmarks.import_csv import Tally, generate, load, run_child, valid_people  # noqa: E402
from tests import pgserver  # noqa: E402


def baseline(dsn: str, csv_path: str, list_slug: str, batch: int) -> None:
    """The minimal importer (see the module doc), in its own process; prints its seconds and peak memory
    as JSON. Ids are taken from the table's own sequence, a batch at a time (nextval over a series), so
    the memberships can name them without a round trip per row."""
    from datetime import UTC, datetime

    start = time.perf_counter()
    conn = psycopg.connect(dsn)
    cur = conn.cursor()
    row = cur.execute("SELECT id FROM lists WHERE slug = %s", (list_slug,)).fetchone()
    assert row is not None
    list_id = row[0]
    conn.commit()
    now = datetime.now(UTC).replace(tzinfo=None)
    people: list[tuple[object, ...]] = []

    def flush() -> None:
        with conn.transaction():
            ids = [i for (i,) in cur.execute("SELECT nextval('subscribers_id_seq') FROM generate_series(1, %s)",
                                             (len(people),))]
            with cur.copy("COPY subscribers (id, email, email_key, name, attributes, categories, created_at) "
                          "FROM STDIN") as copy:
                for sid, person in zip(ids, people, strict=True):
                    copy.write_row((sid, *person))
            with cur.copy("COPY memberships (subscriber_id, list_id, status, created_at, updated_at) "
                          "FROM STDIN") as copy:
                for sid in ids:
                    copy.write_row((sid, list_id, "pending", now, now))
        people.clear()

    tally = Tally()
    for person in valid_people(csv_path, tally):
        people.append((*person, "[]", now))
        if len(people) >= batch:
            flush()
    if people:
        flush()
    conn.close()
    peak = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_kb": peak, "rows": tally.rows,
                      "bad": tally.bad}))


def folder_on(url: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix="digest-bench-pgimport-"))
    run_child([sys.executable, "-m", "digest", "init", str(root)], what="digest init")
    toml = root / "digest.toml"
    toml.write_text(toml.read_text().replace('url = "sqlite:///digest.db"', f'url = "{url}"', 1))
    # the schema first (outside the timing), as on any real install
    run_child([sys.executable, "-m", "digest", "subscribers", "lists"], cwd=root, what="the schema")
    return root


def floor(url: str, csv_path: Path) -> float:
    """Seconds for one bare COPY of the file into an unindexed table of text columns."""
    with psycopg.connect(pgserver.libpq(url)) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE raw_rows (email text, name text, region text, print text)")
        t0 = time.perf_counter()
        with open(csv_path, "rb") as f, cur.copy("COPY raw_rows FROM STDIN (FORMAT csv, HEADER true)") as copy:
            while block := f.read(1 << 20):
                copy.write(block)
        conn.commit()
        seconds = time.perf_counter() - t0
        cur.execute("DROP TABLE raw_rows")
        conn.commit()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--baseline-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_child:
        dsn, path, batch = args.baseline_child
        return baseline(dsn, path, "weekly", int(batch))
    print(f"({load()} before)", flush=True)
    with tempfile.TemporaryDirectory() as tmp, pg.database("bench_import") as url:
        csv_path = Path(tmp) / "readers.csv"
        bad = generate(csv_path, args.rows)
        print(f"generated {args.rows:,} rows ({csv_path.stat().st_size / 1e6:.0f} MB, {bad} bad)", flush=True)
        root = folder_on(url)
        base_url = pgserver.database_url(url, "bench_import_baseline")
        with psycopg.connect(pgserver.libpq(url).rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench_import_baseline TEMPLATE bench_import")

        seconds, peak_mb, out = run_child([sys.executable, "-m", "digest", "subscribers", "import", str(csv_path)],
                                          cwd=root)
        print(out.splitlines()[0] if out else "")
        print(f"digest subscribers import: {seconds:.1f} s = {args.rows / seconds:,.0f} rows/s, "
              f"peak memory {peak_mb:.0f} MB (goal: < 150 MB) ({load()})", flush=True)

        base_seconds, base_peak, out = run_child([sys.executable, __file__, "--baseline-child",
                                                  pgserver.libpq(base_url), str(csv_path), "20000"],
                                                 what="baseline import")
        figures = json.loads(out.splitlines()[-1])
        print(f"baseline (parse, email-validator, COPY in batches): {base_seconds:.1f} s = "
              f"{args.rows / base_seconds:,.0f} rows/s, peak memory {base_peak:.0f} MB ({figures['bad']} bad)")
        print(f"digest / baseline: {seconds / base_seconds:.2f}x (goal: 1.5x or less; both whole processes) "
              f"({load()})", flush=True)
        bare = floor(url, csv_path)
        print(f"floor, one bare COPY of the file (no parsing, no index): {bare:.1f} s = "
              f"{args.rows / bare:,.0f} rows/s")
    print(f"({load()} after)")


if __name__ == "__main__":
    main()
