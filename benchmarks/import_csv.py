"""Import benchmark: generate N subscriber rows as CSV, import them with the real `digest subscribers import`
in a child process, and print rows per second and the child's peak memory (goal: >= 50,000 rows/s and
< 150 MB for 1,000,000 rows). Run by hand:

    /work/venv/bin/python benchmarks/import_csv.py            # 1,000,000 rows
    /work/venv/bin/python benchmarks/import_csv.py --rows 100000 --rerun

The generated file has a name, two attribute columns and a few bad rows (invalid addresses and
duplicates, about 0.2%) so the rejects path is exercised too. `--rerun` imports the same file a second
time (the idempotent path: every row looked up, nothing written).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYLLABLES = ["an", "bo", "ca", "de", "el", "fi", "go", "ha", "is", "jo", "ka", "li", "mo", "na", "ol", "pe",
             "qu", "ra", "si", "ta", "ul", "vi", "wu", "xa", "yo", "ze"]
REGIONS = ["NSW", "VIC", "QLD", "WA", "SA", "TAS", "ACT", "NT", "NZ"]


def _word(rnd: random.Random, parts: int) -> str:
    return "".join(rnd.choice(SYLLABLES) for _ in range(parts))


def generate(path: Path, rows: int, seed: int = 7) -> int:
    """Write the CSV in random address order (as real lists are); returns how many rows are bad."""
    rnd = random.Random(seed)
    domains = [f"{_word(rnd, 3)}.example.{rnd.choice(['com', 'com.au', 'org', 'net'])}" for _ in range(5000)]
    big = ["gmail.com", "outlook.com", "bigpond.com", "yahoo.com.au"]
    bad = 0
    prev = ""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "name", "region", "print_subscriber"])
        for i in range(rows):
            first, last = _word(rnd, 2), _word(rnd, 3)
            domain = rnd.choice(big) if i % 3 == 0 else rnd.choice(domains)
            email = f"{first}{rnd.choice(['.', '_', ''])}{last}{rnd.randrange(1000)}.{i}@{domain}"
            if i % 1000 == 500:
                email, bad = email.replace("@", " at "), bad + 1  # invalid
            elif i % 1000 == 999:
                email, bad = prev.upper(), bad + 1  # the row before again, in capitals: a duplicate
            prev = email
            w.writerow([email, f"{first.title()} {last.title()}", rnd.choice(REGIONS), rnd.choice(["yes", "no", ""])])
    return bad


def baseline(db: str, csv_path: str, list_slug: str, batch: int) -> None:
    """The least an importer must do, with the standard library and email-validator alone, in its own
    process: parse the CSV, validate each address (email-validator, as digest does), drop the file's own
    duplicates, and insert subscribers and their memberships into the same tables, with the same unique
    indexes, `batch` rows per transaction. No staging, no consent events, no rejects file, no re-run
    logic: the floor of the work, not an importer to use. Prints its seconds and peak memory as JSON."""
    import json
    import sqlite3
    from datetime import UTC, datetime

    from email_validator import EmailNotValidError, validate_email

    start = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    for pragma in ("foreign_keys=ON", "journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
        conn.execute(f"PRAGMA {pragma}")  # as digest.store sets them
    list_id = conn.execute("SELECT id FROM lists WHERE slug = ?", (list_slug,)).fetchone()[0]
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    next_id = (conn.execute("SELECT max(id) FROM subscribers").fetchone()[0] or 0) + 1
    seen: set[str] = set()
    people: list[tuple[object, ...]] = []
    members: list[tuple[object, ...]] = []
    rows = bad = 0

    def flush() -> None:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO subscribers (id, email, email_key, name, attributes, categories, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", people)
        conn.executemany("INSERT INTO memberships (subscriber_id, list_id, status, created_at, updated_at) "
                         "VALUES (?, ?, 'pending', ?, ?)", members)
        conn.execute("COMMIT")
        people.clear()
        members.clear()

    with open(csv_path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        email_at, name_at = header.index("email"), header.index("name")
        extra = [(i, h) for i, h in enumerate(header) if i not in (email_at, name_at)]
        for record in reader:
            rows += 1
            try:
                address = validate_email(record[email_at], check_deliverability=False).normalized
            except EmailNotValidError:
                bad += 1
                continue
            key = address.lower()
            if key in seen:
                bad += 1
                continue
            seen.add(key)
            attributes = json.dumps({h: record[i] for i, h in extra if record[i]})
            people.append((next_id, address, key, record[name_at], attributes, "[]", now))
            members.append((next_id, list_id, now, now))
            next_id += 1
            if len(people) >= batch:
                flush()
    if people:
        flush()
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_kb": _peak_kb(), "rows": rows, "bad": bad}))


def _peak_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_baseline(db: Path, csv_path: Path, batch: int) -> dict[str, float]:
    """The baseline in a child process, timed from outside as digest's import is (start-up included)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--baseline-child", str(db), str(csv_path), str(batch)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"baseline import failed:\n{out.stderr}")
    import json

    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process": time.perf_counter() - start}


def run_import(workdir: Path, csv_path: Path, env: dict[str, str], extra: list[str]) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "digest", "subscribers", "import", str(csv_path), *extra],
                          cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        sys.exit(f"import failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    if peak_kb <= before:
        print("(peak memory of this run did not exceed an earlier child's; figure below is the larger)")
    return seconds, peak_kb / 1024, proc.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rerun", action="store_true", help="import the same file a second time too")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--export", action="store_true", help="then export everyone with `digest subscribers export`")
    ap.add_argument("--batch-size", type=int, default=None, help="passed to the import (default: its own)")
    ap.add_argument("--baseline-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_child:
        db, path, batch = args.baseline_child
        return baseline(db, path, "weekly", int(batch))

    root = Path(tempfile.mkdtemp(prefix="digest-bench-import-"))
    env = {**os.environ, "DIGEST_SECRET_KEY": os.environ.get("DIGEST_SECRET_KEY", "bench-secret-key-0123456789abcdef")}
    subprocess.run([sys.executable, "-m", "digest", "init", str(root)], check=True, env=env, capture_output=True)
    csv_path = root / "readers.csv"
    t = time.perf_counter()
    bad = generate(csv_path, args.rows)
    print(f"generated {args.rows:,} rows ({csv_path.stat().st_size / 1e6:.1f} MB, {bad} bad) "
          f"in {time.perf_counter() - t:.1f} s")
    # the schema is created first (outside the timing), as on any real install
    subprocess.run([sys.executable, "-m", "digest", "subscribers", "lists"], cwd=root, env=env, check=True,
                   capture_output=True)

    # the baseline's database: the same schema, empty, copied before digest writes a row
    base_db = root / "baseline.db"
    import sqlite3

    with sqlite3.connect(root / "digest.db") as source, sqlite3.connect(base_db) as copy:
        source.backup(copy)  # the write-ahead log included (a file copy could miss it)
    extra = ["--batch-size", str(args.batch_size)] if args.batch_size else []
    seconds, peak_mb, out = run_import(root, csv_path, env, extra)
    print(out)
    print(f"first import: {args.rows:,} rows in {seconds:.1f} s = {args.rows / seconds:,.0f} rows/s; "
          f"peak memory {peak_mb:.0f} MB (goal: >= 50,000 rows/s, < 150 MB)")
    base = run_baseline(base_db, csv_path, args.batch_size or 20_000)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"baseline (parse, email-validator, insert in batches): {base['process']:.1f} s = "
          f"{args.rows / base['process']:,.0f} rows/s, peak memory {base['peak_kb'] / 1024:.0f} MB; "
          f"digest / baseline: {seconds / base['process']:.2f}x (goal: 1.5x or less; both timed as whole "
          f"processes) (load average {load} on {os.cpu_count()} cores)")
    if args.rerun:
        seconds, peak_mb, out = run_import(root, csv_path, env, extra)
        print(out)
        print(f"re-run (idempotent): {args.rows / seconds:,.0f} rows/s; peak memory {peak_mb:.0f} MB")
    db = root / "digest.db"
    print(f"database {db.stat().st_size / 1e6:.0f} MB")
    if args.export:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "digest", "subscribers", "export", "-o", "export.csv"],
                              cwd=root, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"export failed:\n{proc.stderr}")
        peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
        print(f"{proc.stdout.strip()}: {args.rows / seconds:,.0f} rows/s; peak memory (largest child so far) "
              f"{peak:.0f} MB")
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
