"""Start-up benchmark: how long a user waits for `digest --help`, `digest status` and `digest subscribers
show`, against the least a Typer program can take (`python -c "import typer"`). Run by hand:

    .venv/bin/python benchmarks/cli_startup.py            # 15 runs each, interleaved
    .venv/bin/python benchmarks/cli_startup.py --runs 40
    .venv/bin/python benchmarks/cli_startup.py --instructions   # instructions (valgrind callgrind)

Each command runs as a user runs it (the installed `digest` script next to this Python, else
`python -m digest`) in a fresh folder from `digest init` with one reader and a current schema. The runs
of every command are interleaved, so a change in the machine's load hits all of them alike; the median is
printed with its ratio to the `import typer` baseline (goal: 2x or less). `import sqlalchemy.orm`,
`import sqlalchemy` (Core only) and pydantic's BaseModel are printed as well: the floor of a command that
reads the database through SQLAlchemy, or the settings through digest.config's pydantic schema. `status`
and `subscribers show` do neither (digest.dbapi, digest.config_file: README "Start-up"), which is why they
can start within 2x; the database here is current, so they take that light path.

Times on a shared 2-core machine drift with the load; `--instructions` counts the instructions each
command executes instead (valgrind's callgrind, one run each: the count barely moves from run to run, and
not with the load), so a ratio can be read even on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.installed import as_installed  # noqa: E402

EMAIL = "reader@example.com"


def digest_command() -> list[str]:
    script = Path(sys.executable).with_name("digest")
    return [str(script)] if script.exists() else [sys.executable, "-m", "digest"]


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def instructions(argv: list[str], cwd: Path, env: dict[str, str]) -> int:
    """The instructions one run executes, as callgrind counts them (its "Collected" line on stderr)."""
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv], cwd=cwd,
                         env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"valgrind printed no instruction count for {' '.join(argv)}:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def report_instructions(cases: dict[str, list[str]], folder: Path, env: dict[str, str]) -> None:
    counts = {name: instructions(argv, folder, env) for name, argv in cases.items()}
    base = counts[BASELINE]
    print(f"{'command':<46} {'instructions':>14} {'ratio':>6}  (valgrind callgrind, one run each)")
    for name, count in counts.items():
        print(f"{name:<46} {count:>14,} {count / base:>5.2f}x")
    print(f"load: {_load()} (instruction counts do not depend on it; goal: each digest command within 2x)")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


BASELINE = "import typer (baseline)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions under valgrind callgrind (one run each) instead of timing")
    args = ap.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        ap.error("--instructions needs valgrind (apt-get install valgrind)")
    digest = digest_command()
    as_installed()  # a user's Python reads its bytecode caches (pip writes them at install)
    env = dict(os.environ)
    env |= {"DIGEST_SECRET_KEY": env.get("DIGEST_SECRET_KEY", "bench-secret-key-0123456789abcdef"), "COLUMNS": "100"}
    with tempfile.TemporaryDirectory(prefix="digest-bench-cli-") as tmp:
        folder = Path(tmp)
        subprocess.run([*digest, "init", str(folder)], env=env, check=True, capture_output=True)
        subprocess.run([*digest, "subscribers", "add", EMAIL, "--confirmed", "--source", "benchmark"], cwd=folder,
                       env=env, check=True, capture_output=True)  # creates and migrates the database too
        cases = {
            BASELINE: [sys.executable, "-c", "import typer"],
            "import sqlalchemy (floor: Core)": [sys.executable, "-c", "import sqlalchemy"],
            "import sqlalchemy.orm (floor: ORM)": [sys.executable, "-c", "import sqlalchemy.orm"],
            "pydantic's BaseModel (floor: settings)": [sys.executable, "-c", "from pydantic import BaseModel"],
            "digest --help": [*digest, "--help"],
            "digest status": [*digest, "status"],
            "digest subscribers show": [*digest, "subscribers", "show", EMAIL],
        }
        for argv in cases.values():  # once each untimed: Python's bytecode caches are written, not measured
            subprocess.run(argv, cwd=folder, env=env, check=True, capture_output=True)
        if args.instructions:
            report_instructions(cases, folder, env)
            return
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, argv in cases.items():
                times[name].append(timed(argv, folder, env))
    base = statistics.median(times[BASELINE])
    print(f"{'command':<46} {'median s':>8} {'min s':>6} {'ratio':>6}  (runs: {args.runs}, interleaved)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<46} {median:>8.3f} {min(values):>6.3f} {median / base:>5.2f}x")
    print(f"load: {_load()} (goal: each digest command within 2x of the baseline)")


if __name__ == "__main__":
    main()
