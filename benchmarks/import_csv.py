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
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.callgrind import instructions, print_marginal  # noqa: E402
from benchmarks.installed import as_installed  # noqa: E402

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


@dataclass
class Tally:
    rows: int = 0
    bad: int = 0


def valid_people(csv_path: str, tally: Tally) -> Iterator[tuple[str, str, str, str]]:
    """The baselines' reading of the file: each row's address validated (email-validator, as digest does),
    the file's own duplicates dropped; yields (address, key, name, attributes as JSON)."""
    from email_validator import EmailNotValidError, validate_email

    seen: set[str] = set()
    with open(csv_path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        email_at, name_at = header.index("email"), header.index("name")
        extra = [(i, h) for i, h in enumerate(header) if i not in (email_at, name_at)]
        for record in reader:
            tally.rows += 1
            try:
                address = validate_email(record[email_at], check_deliverability=False).normalized
            except EmailNotValidError:
                tally.bad += 1
                continue
            key = address.lower()
            if key in seen:
                tally.bad += 1
                continue
            seen.add(key)
            yield address, key, record[name_at], json.dumps({h: record[i] for i, h in extra if record[i]})


def baseline(db: str, csv_path: str, list_slug: str, batch: int) -> None:
    """The least an importer must do, with the standard library and email-validator alone, in its own
    process: parse the CSV, validate each address (email-validator, as digest does), drop the file's own
    duplicates, and insert subscribers and their memberships into the same tables, with the same unique
    indexes, `batch` rows per transaction. No staging, no consent events, no rejects file, no re-run
    logic: the floor of the work, not an importer to use. Prints its seconds and peak memory as JSON."""
    import sqlite3
    from datetime import UTC, datetime

    start = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    for pragma in ("foreign_keys=ON", "journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
        conn.execute(f"PRAGMA {pragma}")  # as digest.store sets them
    list_id = conn.execute("SELECT id FROM lists WHERE slug = ?", (list_slug,)).fetchone()[0]
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    next_id = (conn.execute("SELECT max(id) FROM subscribers").fetchone()[0] or 0) + 1
    people: list[tuple[object, ...]] = []
    members: list[tuple[object, ...]] = []

    def flush() -> None:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO subscribers (id, email, email_key, name, attributes, categories, created_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", people)
        conn.executemany("INSERT INTO memberships (subscriber_id, list_id, status, created_at, updated_at) "
                         "VALUES (?, ?, 'pending', ?, ?)", members)
        conn.execute("COMMIT")
        people.clear()
        members.clear()

    tally = Tally()
    for address, key, name, attributes in valid_people(csv_path, tally):
        people.append((next_id, address, key, name, attributes, "[]", now))
        members.append((next_id, list_id, now, now))
        next_id += 1
        if len(people) >= batch:
            flush()
    if people:
        flush()
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_kb": _peak_kb(), "rows": tally.rows,
                      "bad": tally.bad}))


def _peak_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_child(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
              what: str = "import") -> tuple[float, float, str]:
    """One child process timed from outside, start-up included: (seconds, its own peak resident memory in
    MB, its output). wait4(2) gives this child's rusage alone (ru_maxrss: its peak RSS), not the largest
    of all children so far as RUSAGE_CHILDREN would. Linux carries the high-water mark over exec from the
    forked copy of this process, so the figure is at least this benchmark's own size (a few tens of MB,
    below every import's)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        text, error = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(f"{what} failed ({proc.returncode}):\n{text}\n{error}")
    return seconds, usage.ru_maxrss / 1024, text.strip()


def run_baseline(db: Path, csv_path: Path, batch: int, *,
                 wrap: Sequence[str] = ()) -> dict[str, float]:
    """The baseline in a child process, timed from outside as digest's import is (start-up included)."""
    import json

    seconds, _, out = run_child([*wrap, sys.executable, __file__, "--baseline-child", str(db), str(csv_path),
                                 str(batch)], what="baseline import")
    return {**json.loads(out.splitlines()[-1]), "process": seconds}


def run_import(workdir: Path, csv_path: Path, env: dict[str, str], extra: list[str], *,
               wrap: Sequence[str] = ()) -> tuple[float, float, str]:
    return run_child([*wrap, sys.executable, "-m", "digest", "subscribers", "import", str(csv_path), *extra],
                     cwd=workdir, env=env)


def prepare(rows: int) -> tuple[Path, Path, Path, dict[str, str]]:
    """A fresh folder: digest.toml, the schema created (outside any timing, as on a real install), the CSV,
    and the baseline's database, a copy of the same empty schema. (root, csv, baseline db, env)."""
    root = Path(tempfile.mkdtemp(prefix="digest-bench-import-"))
    env = {**os.environ, "DIGEST_SECRET_KEY": os.environ.get("DIGEST_SECRET_KEY", "bench-secret-key-0123456789abcdef")}
    subprocess.run([sys.executable, "-m", "digest", "init", str(root)], check=True, env=env, capture_output=True)
    csv_path = root / "readers.csv"
    t = time.perf_counter()
    bad = generate(csv_path, rows)
    print(f"generated {rows:,} rows ({csv_path.stat().st_size / 1e6:.1f} MB, {bad} bad) "
          f"in {time.perf_counter() - t:.1f} s", flush=True)
    subprocess.run([sys.executable, "-m", "digest", "subscribers", "lists"], cwd=root, env=env, check=True,
                   capture_output=True)
    base_db = root / "baseline.db"
    import sqlite3

    with sqlite3.connect(root / "digest.db") as source, sqlite3.connect(base_db) as copy:
        source.backup(copy)  # the write-ahead log included (a file copy could miss it)
    return root, csv_path, base_db, env


def load() -> str:
    return f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores"


def callgrind(sizes: list[int]) -> None:
    """Instructions of the whole import process, digest's and the baseline's, at two sizes: the difference
    over the difference in rows is the marginal cost of one row, start-up and fixed costs cancelled; a count
    of instructions does not drift with the machine's load as a time does. Threads are counted too
    (valgrind runs them one at a time), and SQLite's own work, which runs in the process."""
    small, large = sorted(sizes)[:2] if len(sizes) >= 2 else (5_000, 25_000)
    counts: dict[tuple[str, int], int] = {}
    for n in (small, large):
        root, csv_path, base_db, env = prepare(n)
        try:
            for which in ("digest", "baseline"):
                out = root / f"{which}.callgrind"
                wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
                if which == "digest":
                    run_import(root, csv_path, env, [], wrap=wrap)
                else:
                    run_baseline(base_db, csv_path, 20_000, wrap=wrap)
                counts[which, n] = instructions(out)
                print(f"  {which:<8} {n:>9,} rows: {counts[which, n]:>16,} instructions", flush=True)
        finally:
            shutil.rmtree(root)
    print_marginal(counts, small, large, "row", "1.5x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, action="append", help="rows (default 1,000,000; twice with --callgrind)")
    ap.add_argument("--rerun", action="store_true", help="import the same file a second time too")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--export", action="store_true", help="then export everyone with `digest subscribers export`")
    ap.add_argument("--batch-size", type=int, default=None, help="passed to the import (default: its own)")
    ap.add_argument("--callgrind", action="store_true",
                    help="count instructions (valgrind) at two sizes (--rows twice; default 5,000 and 25,000)")
    ap.add_argument("--baseline-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_child:
        db, path, batch = args.baseline_child
        return baseline(db, path, "weekly", int(batch))
    as_installed()
    if args.callgrind:
        print(f"callgrind ({load()})", flush=True)
        callgrind(args.rows or [])
        print(f"({load()} at the end)")
        return
    rows = (args.rows or [1_000_000])[0]
    root, csv_path, base_db, env = prepare(rows)
    print(f"({load()} before)", flush=True)
    extra = ["--batch-size", str(args.batch_size)] if args.batch_size else []
    seconds, peak_mb, out = run_import(root, csv_path, env, extra)
    print(out)
    print(f"first import: {rows:,} rows in {seconds:.1f} s = {rows / seconds:,.0f} rows/s; "
          f"peak memory {peak_mb:.0f} MB (goal: < 150 MB)", flush=True)
    base = run_baseline(base_db, csv_path, args.batch_size or 20_000)
    print(f"baseline (parse, email-validator, insert in batches): {base['process']:.1f} s = "
          f"{rows / base['process']:,.0f} rows/s, peak memory {base['peak_kb'] / 1024:.0f} MB; "
          f"digest / baseline: {seconds / base['process']:.2f}x (goal: 1.5x or less; both timed as whole "
          f"processes) ({load()})")
    if args.rerun:
        seconds, peak_mb, out = run_import(root, csv_path, env, extra)
        print(out)
        print(f"re-run (idempotent): {rows / seconds:,.0f} rows/s; peak memory {peak_mb:.0f} MB")
    db = root / "digest.db"
    print(f"database {db.stat().st_size / 1e6:.0f} MB")
    if args.export:
        seconds, peak_mb, out = run_child([sys.executable, "-m", "digest", "subscribers", "export", "-o",
                                           "export.csv"], cwd=root, env=env, what="export")
        print(f"{out}: {rows / seconds:,.0f} rows/s; peak memory {peak_mb:.0f} MB")
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
