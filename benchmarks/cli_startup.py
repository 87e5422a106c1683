"""Start-up benchmark: how long a user waits for `digest --help`, `digest status` and `digest subscribers
show`, against the least a Typer program can take (`python -c "import typer"`). Run by hand:

    .venv/bin/python benchmarks/cli_startup.py            # 15 runs each, interleaved
    .venv/bin/python benchmarks/cli_startup.py --runs 40

Each command runs as a user runs it (the installed `digest` script next to this Python, else
`python -m digest`) in a fresh folder from `digest init` with one reader and a current schema. The runs
of every command are interleaved, so a change in the machine's load hits all of them alike; the median is
printed with its ratio to the `import typer` baseline (goal: 2x or less). `import sqlalchemy.orm` is
printed as well: the floor of any command that reads the database.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EMAIL = "reader@example.com"


def digest_command() -> list[str]:
    script = Path(sys.executable).with_name("digest")
    return [str(script)] if script.exists() else [sys.executable, "-m", "digest"]


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    digest = digest_command()
    env = {**os.environ, "DIGEST_SECRET_KEY": os.environ.get("DIGEST_SECRET_KEY", "bench-secret-key-0123456789abcdef"),
           "COLUMNS": "100"}
    with tempfile.TemporaryDirectory(prefix="digest-bench-cli-") as tmp:
        folder = Path(tmp)
        subprocess.run([*digest, "init", str(folder)], env=env, check=True, capture_output=True)
        subprocess.run([*digest, "subscribers", "add", EMAIL, "--confirmed", "--source", "benchmark"], cwd=folder,
                       env=env, check=True, capture_output=True)  # creates and migrates the database too
        cases = {
            "import typer (baseline)": [sys.executable, "-c", "import typer"],
            "import sqlalchemy.orm (floor of a DB command)": [sys.executable, "-c", "import sqlalchemy.orm"],
            "digest --help": [*digest, "--help"],
            "digest status": [*digest, "status"],
            "digest subscribers show": [*digest, "subscribers", "show", EMAIL],
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, argv in cases.items():
                times[name].append(timed(argv, folder, env))
    base = statistics.median(times["import typer (baseline)"])
    print(f"{'command':<46} {'median s':>8} {'min s':>6} {'ratio':>6}  (runs: {args.runs}, interleaved)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<46} {median:>8.3f} {min(values):>6.3f} {median / base:>5.2f}x")
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on {os.cpu_count()} "
          "cores (goal: each digest command within 2x of the baseline)")


if __name__ == "__main__":
    main()
