"""Import 1,000,000 subscriber rows into PostgreSQL (a throwaway server) with the real `digest subscribers
import`, whose staging goes through COPY (`subscribers.bulk.load_rows`). Run by hand:

    .venv/bin/python benchmarks/pg_import.py                          # 1,000,000 rows
    .venv/bin/python benchmarks/pg_import.py --rows 200000 --compare  # also staged by executemany

Baseline in the same run: the same file loaded by one bare `COPY ... FROM STDIN (FORMAT csv)` into a table
of four text columns: the database's floor for taking the file in, with no parsing, validation, consent
records or indexes. `--compare` imports the file again into a second database with the staging rows sent
by executemany instead of COPY (in this process), the way the import staged them before.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DIGEST_SECRET_KEY", "benchmark-secret-key-0123456789")

import psycopg  # noqa: E402

from benchmarks import pg  # noqa: E402
from tests import pgserver  # noqa: E402

REGIONS = ["NSW", "VIC", "QLD", "WA", "SA", "TAS", "ACT", "NT", "NZ"]


def generate(path: Path, rows: int) -> None:
    """Random address order, a name and two attribute columns, as real lists are."""
    rnd = random.Random(12)
    domains = [f"d{i}.example.com" for i in range(5000)] + ["gmail.com", "outlook.com", "bigpond.com"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "name", "region", "print_subscriber"])
        for i in range(rows):
            first = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))
            w.writerow([f"{first}.{i}@{rnd.choice(domains)}", f"{first.title()} Reader", rnd.choice(REGIONS),
                        rnd.choice(["yes", "no", ""])])


def folder_on(url: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix="digest-bench-pgimport-"))
    subprocess.run([sys.executable, "-m", "digest", "init", str(root)], check=True, capture_output=True)
    toml = root / "digest.toml"
    toml.write_text(toml.read_text().replace('url = "sqlite:///digest.db"', f'url = "{url}"', 1))
    # the schema first (outside the timing), as on any real install
    subprocess.run([sys.executable, "-m", "digest", "subscribers", "lists"], cwd=root, check=True,
                   capture_output=True)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--compare", action="store_true", help="also import with executemany staging")
    args = ap.parse_args()
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp, pg.database("bench_import") as url:
        csv_path = Path(tmp) / "readers.csv"
        generate(csv_path, args.rows)
        print(f"generated {args.rows:,} rows ({csv_path.stat().st_size / 1e6:.0f} MB)")

        with psycopg.connect(pgserver.libpq(url)) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE raw_rows (email text, name text, region text, print text)")
            t0 = time.perf_counter()
            with open(csv_path, "rb") as f, cur.copy("COPY raw_rows FROM STDIN (FORMAT csv, HEADER true)") as copy:
                while block := f.read(1 << 20):
                    copy.write(block)
            conn.commit()
            floor = time.perf_counter() - t0
            cur.execute("DROP TABLE raw_rows")
        print(f"baseline, bare COPY of the file: {floor:.1f} s = {args.rows / floor:,.0f} rows/s")

        root = folder_on(url)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "digest", "subscribers", "import", str(csv_path)], cwd=root,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"import failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "")
        print(f"digest subscribers import (COPY staging): {seconds:.1f} s = {args.rows / seconds:,.0f} rows/s; "
              f"ratio to the bare COPY {seconds / floor:.1f}x")

        if args.compare:
            compare(url, csv_path, args.rows, seconds)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def compare(url: str, csv_path: Path, rows: int, copy_seconds: float) -> None:
    """The same import with the staging rows sent by executemany (bulk.insert_rows), in this process."""
    from digest.config import load_settings
    from digest.store import session_factory
    from subscribers import bulk, staging
    from subscribers.csv_import import import_csv

    other = url.rsplit("/", 1)[0] + "/bench_import_executemany"
    with psycopg.connect(pgserver.libpq(url), autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench_import_executemany")
    root = folder_on(other)
    settings = load_settings(root / "digest.toml")
    staging.load_rows = bulk.insert_rows  # type: ignore[assignment]  (the old way, for the comparison only)
    with session_factory(settings.database_url)() as session:
        t0 = time.perf_counter()
        import_csv(session, csv_path)
        seconds = time.perf_counter() - t0
    print(f"the same import staged by executemany: {seconds:.1f} s = {rows / seconds:,.0f} rows/s; "
          f"COPY staging saves {seconds - copy_seconds:.1f} s ({seconds / copy_seconds:.2f}x)")


if __name__ == "__main__":
    main()
