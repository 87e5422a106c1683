"""The one retry policy (digest.retry): how many tries, how long the waits, whose word on the wait counts."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest
from tenacity import Retrying

from digest import retry


class Flaky(Exception):
    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("flaky")
        self.retry_after = retry_after


class Busy(Exception):
    """A 429: the server says slow down."""


class Fatal(Exception):
    pass


def failing(*errors: Exception, result: str = "done") -> Callable[[], str]:
    """A function that raises `errors` one per call, then returns `result`; it counts its calls."""
    queue = list(errors)

    def fn() -> str:
        fn.calls += 1  # type: ignore[attr-defined]
        if queue:
            raise queue.pop(0)
        return result

    fn.calls = 0  # type: ignore[attr-defined]
    return fn


def policy(slept: list[float], **kw: object) -> Retrying:
    options: dict[str, object] = {"attempts": 3, "first": 1.0, "retry_on": lambda e: isinstance(e, Flaky),
                                  "sleep": slept.append}
    return retry.policy(**{**options, **kw})  # type: ignore[arg-type]


def test_it_tries_at_most_the_attempts_then_raises_the_last_error_as_it_was() -> None:
    slept: list[float] = []
    fn = failing(*[Flaky() for _ in range(5)])
    with pytest.raises(Flaky):
        policy(slept, attempts=3)(fn)
    assert fn.calls == 3 and len(slept) == 2  # type: ignore[attr-defined]
    assert retry.tally(policy(slept)) == retry.Tally(0, 0)  # a policy not yet called has no counts

    slept.clear()
    fn = failing(Flaky(), Flaky())
    p = policy(slept, attempts=3)
    assert p(fn) == "done" and fn.calls == 3 and len(slept) == 2  # type: ignore[attr-defined]
    assert retry.tally(p) == retry.Tally(tries=3, throttled=0)

    once = failing(*[Flaky() for _ in range(3)])
    with pytest.raises(Flaky):
        policy(slept, attempts=1)(once)
    assert once.calls == 1  # type: ignore[attr-defined]


def test_an_error_not_worth_another_try_is_raised_at_once() -> None:
    slept: list[float] = []
    fn = failing(Fatal())
    with pytest.raises(Fatal):
        policy(slept)(fn)
    assert fn.calls == 1 and slept == []  # type: ignore[attr-defined]


def test_waits_double_with_equal_jitter_up_to_the_cap() -> None:
    slept: list[float] = []
    random.seed(11)  # the jitter is random; a fixed seed makes a failure here repeatable
    with pytest.raises(Flaky):
        policy(slept, attempts=8, first=0.5, cap=4.0)(failing(*[Flaky() for _ in range(8)]))
    assert len(slept) == 7
    for n, waited in enumerate(slept, start=1):
        ceiling = min(4.0, 0.5 * 2 ** (n - 1))
        assert ceiling / 2 <= waited <= ceiling, (n, waited)
    assert len(set(slept)) == len(slept), "jittered, not fixed"
    again: list[float] = []
    random.seed(11)
    with pytest.raises(Flaky):
        policy(again, attempts=8, first=0.5, cap=4.0)(failing(*[Flaky() for _ in range(8)]))
    assert again == slept


def test_a_server_given_delay_is_honoured_within_its_bound() -> None:
    slept: list[float] = []

    def server_delay(e: BaseException) -> float | None:
        return e.retry_after if isinstance(e, Flaky) else None

    p = policy(slept, attempts=5, first=0.01, server_delay=server_delay, max_server_delay=30.0)
    assert p(failing(Flaky(retry_after=7), Flaky(retry_after=120), Flaky(retry_after=-3), Flaky())) == "done"
    assert slept[:3] == [7, 30.0, 0.0]  # believed; capped; never negative
    assert 0.04 <= slept[3] <= 0.08  # no word from the server: the backoff (4th try: ceiling 0.08)


def test_throttled_answers_have_their_own_budget_and_do_not_use_up_attempts() -> None:
    slept: list[float] = []
    p = policy(slept, attempts=2, throttled=lambda e: isinstance(e, Busy), max_throttled=5)
    assert p(failing(Busy(), Busy(), Flaky(), Busy(), Busy(), Busy())) == "done"
    assert retry.tally(p) == retry.Tally(tries=2, throttled=5)

    fn = failing(*[Busy() for _ in range(10)])
    with pytest.raises(Busy):
        p(fn)
    assert fn.calls == 6 and retry.tally(p) == retry.Tally(tries=0, throttled=6)  # type: ignore[attr-defined]

    with pytest.raises(Flaky):  # two ordinary failures end it, however many 429s came between
        p(failing(Flaky(), Busy(), Busy(), Flaky(), Flaky()))
    assert retry.tally(p) == retry.Tally(tries=2, throttled=2)


def test_before_sleep_sees_each_wait_before_it_happens() -> None:
    slept: list[float] = []
    seen: list[float] = []
    p = policy(slept, server_delay=lambda e: 2.5, before_sleep=lambda state: seen.append(state.upcoming_sleep))
    p(failing(Flaky(), Flaky()))
    assert seen == slept == [2.5, 2.5]


def test_one_policy_serves_several_threads_each_with_its_own_counts() -> None:
    p = policy([], attempts=4, first=0.0, throttled=lambda e: isinstance(e, Busy), max_throttled=50)
    results: dict[int, retry.Tally] = {}
    start = threading.Barrier(6)

    def worker(i: int) -> None:
        start.wait()
        errors: list[Exception] = [Busy() for _ in range(i * 3)] + [Flaky() for _ in range(i % 4)]
        random.Random(i).shuffle(errors)
        p(failing(*errors))
        results[i] = retry.tally(p)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {i: retry.Tally(tries=i % 4 + 1, throttled=i * 3) for i in range(6)}
