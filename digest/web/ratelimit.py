"""Sliding-window rate limits (per key, e.g. per IP): `SharedWindow` counts in the database, so every
`digest serve` worker (and every web node) shares one window and the limit stays the configured one;
`SlidingWindow` is the same rule in one process's memory.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select, text

from digest.store import RateHit, core_table, engine_for, utcnow

HITS = core_table(RateHit)


class SlidingWindow:
    """At most `limit` hits per key within any `window` seconds."""

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> bool:
        """Record a hit; False when the key is over its limit (the hit is then not counted)."""
        now = self.clock()
        with self._lock:
            hits = self._hits.get(key)
            if hits is None:
                if len(self._hits) >= self.max_keys:
                    self._prune(now)
                hits = self._hits[key] = deque()
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return False
            hits.append(now)
            return True

    def _prune(self, now: float) -> None:
        """Forget keys with no hit inside the window, so memory stays bounded under many IPs."""
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window]:
            del self._hits[key]
        if len(self._hits) >= self.max_keys:  # still full of live keys: drop the oldest
            oldest = sorted(self._hits, key=lambda k: self._hits[k][-1])[: len(self._hits) // 10 or 1]
            for key in oldest:
                del self._hits[key]


class SharedWindow:
    """At most `limit` hits per key within any `window` seconds, counted in the `rate_hits` table.

    A hit is inserted first and then counted, in one short transaction: on SQLite the insert takes the
    write lock, so two processes count one after the other; on PostgreSQL a transaction-scoped advisory
    lock per key does the same. Over the limit, the transaction is rolled back (the hit is not counted).
    """

    def __init__(self, url: str, scope: str, limit: int, window: float, *,
                 clock: Callable[[], datetime] = utcnow, prune_every: int = 200) -> None:
        self.url = url
        self.scope = scope
        self.limit = limit
        self.window = timedelta(seconds=window)
        self.clock = clock
        self.prune_every = prune_every
        self._hits = 0
        self._lock = threading.Lock()

    def hit(self, key: str) -> bool:
        """Record a hit; False when the key is over its limit (the hit is then not counted)."""
        now, key = self.clock(), key[:255]
        t = HITS.c
        with engine_for(self.url).connect() as conn:
            with conn.begin() as tx:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"{self.scope}:{key}"})
                conn.execute(insert(HITS).values(scope=self.scope, key=key, at=now))
                n = conn.execute(select(func.count()).where(t.scope == self.scope, t.key == key,
                                                            t.at > now - self.window)).scalar_one()
                if n > self.limit:
                    tx.rollback()
                    return False
                conn.execute(delete(HITS).where(t.scope == self.scope, t.key == key, t.at <= now - self.window))
            with self._lock:
                self._hits += 1
                prune = self._hits % self.prune_every == 0
            if prune:  # now and then, the hits of keys that stopped coming: the table stays small
                with conn.begin():
                    conn.execute(delete(HITS).where(t.scope == self.scope, t.at <= now - self.window))
        return True
