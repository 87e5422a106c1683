"""The one retry policy of every network call (feeds, SMTP, SendGrid), built on tenacity.

Waits grow exponentially with "equal jitter": the ceiling starts at `first` seconds and doubles with
every try, up to `cap`; half of it is waited for sure and the other half at random, so clients that
failed together do not come back together, yet never retry at once (AWS Architecture Blog,
"Exponential Backoff And Jitter", 2015). A server that says when to come back (HTTP Retry-After,
RFC 9110 §10.2.3; SendGrid's X-RateLimit-Reset) is believed instead, up to `max_server_delay`.

Two budgets: `attempts` bounds the tries in all; answers that only say "slow down" (HTTP 429 from an
API whose limit is the account's, not the request's) may be given their own budget, `max_throttled`,
and then do not use up attempts. What is worth another try is the caller's decision (`retry_on`):
only the caller knows whether a failed request may have been carried out all the same.

A policy is a `tenacity.Retrying`, so one object serves a transport's worker threads: tenacity keeps
the counts of each call per thread, and `tally` reads them after a call (to say "… 4 times").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import BaseRetrying, RetryCallState, Retrying, wait_exponential, wait_random_exponential

#: our count in tenacity's per-call (and per-thread) statistics: the throttled answers so far
THROTTLED = "digest_throttled"


def _never(error: BaseException) -> bool:
    return False


def _no_delay(error: BaseException) -> float | None:
    return None


@dataclass(frozen=True)
class Tally:
    """What the last call in this thread took: `tries` made (throttled ones not counted) and 429s met."""

    tries: int
    throttled: int


def tally(policy: BaseRetrying) -> Tally:
    stats = policy.statistics
    throttled = int(stats.get(THROTTLED, 0))
    return Tally(int(stats.get("attempt_number", 0)) - throttled, throttled)


def backoff(first: float, cap: float = 60.0) -> Callable[[RetryCallState], float]:
    """Equal jitter: half of min(cap, first * 2^(n-1)) for sure, the other half at random (n: the try
    that failed). tenacity's two exponential waits, each over half the ceiling, add up to exactly that."""
    return wait_exponential(multiplier=first / 2, max=cap / 2) + wait_random_exponential(
        multiplier=first / 2, max=cap / 2)


def policy(*, attempts: int, first: float, retry_on: Callable[[BaseException], bool], cap: float = 60.0,
           server_delay: Callable[[BaseException], float | None] = _no_delay, max_server_delay: float = 300.0,
           throttled: Callable[[BaseException], bool] = _never, max_throttled: int = 0,
           sleep: Callable[[float], None] = time.sleep,
           before_sleep: Callable[[RetryCallState], None] | None = None) -> Retrying:
    """Call `policy(fn, *args)`: `fn` is tried up to `attempts` times while it raises what `retry_on`
    accepts (and up to `max_throttled` more times while it raises what `throttled` accepts); then the
    last exception is raised as it was, as is at once any exception the predicates do not accept.

    `server_delay` reads the wait a failure names (None: use the backoff); `sleep` is replaceable so
    tests wait for nothing; `before_sleep` sees each wait before it happens (retry_state.upcoming_sleep).
    """
    wait_for = backoff(first, cap)

    def retry(state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome is not None and state.outcome.failed else None
        if error is None:
            return False
        if throttled(error):
            stats = state.retry_object.statistics
            stats[THROTTLED] = stats.get(THROTTLED, 0) + 1
            return True
        return retry_on(error)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        delay = server_delay(error) if error is not None else None
        return wait_for(state) if delay is None else min(max_server_delay, max(0.0, delay))

    def stop(state: RetryCallState) -> bool:
        # each count grows only with a failure of its kind, so the budget met is the failure's own
        done = tally(state.retry_object)
        return done.tries >= attempts or done.throttled > max_throttled

    return Retrying(retry=retry, wait=wait, stop=stop, sleep=sleep, before_sleep=before_sleep, reraise=True)
