"""Counts in words: "1 feed", "2 feeds", never "1 feed(s)"."""

from __future__ import annotations


def plural(n: int, word: str, words: str | None = None) -> str:
    """`n` and the word, singular for exactly one (and minus one), plural otherwise (`words`, else word + s)."""
    return f"{n:,} {word if abs(n) == 1 else (words or word + 's')}"
