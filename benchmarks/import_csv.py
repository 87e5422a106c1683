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
    args = ap.parse_args()

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

    extra = ["--batch-size", str(args.batch_size)] if args.batch_size else []
    seconds, peak_mb, out = run_import(root, csv_path, env, extra)
    print(out)
    print(f"first import: {args.rows:,} rows in {seconds:.1f} s = {args.rows / seconds:,.0f} rows/s; "
          f"peak memory {peak_mb:.0f} MB (goal: >= 50,000 rows/s, < 150 MB)")
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
        import shutil

        shutil.rmtree(root)


if __name__ == "__main__":
    main()
