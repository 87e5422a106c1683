"""Instruction counts (valgrind --tool=callgrind) for the benchmarks' `--callgrind` modes: the marginal cost
per item between two sizes cancels start-up and fixed costs, and a count does not drift with the machine's
load as a time does."""

from __future__ import annotations

from pathlib import Path


def instructions(path: Path) -> int:
    """The instructions callgrind counted in a process (its `summary:` or `totals:` line)."""
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no instruction total in {path}")


def print_marginal(counts: dict[tuple[str, int], int], small: int, large: int, unit: str, goal: str) -> None:
    """digest's and the baseline's marginal instructions per `unit` between the two sizes, their ratio
    (against `goal`), and what is left at size zero: start-up and fixed cost."""
    per = {w: (counts[w, large] - counts[w, small]) / (large - small) for w in ("digest", "baseline")}
    fixed = {w: counts[w, small] - per[w] * small for w in ("digest", "baseline")}
    print(f"marginal instructions per {unit} ({small:,} -> {large:,}): digest {per['digest']:,.0f}, "
          f"baseline {per['baseline']:,.0f}, ratio {per['digest'] / per['baseline']:.2f}x (goal: {goal} or less)")
    print(f"start-up and fixed cost: digest {fixed['digest'] / 1e9:.2f} billion instructions, "
          f"baseline {fixed['baseline'] / 1e9:.2f} billion")
