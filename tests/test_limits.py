"""Tests for deepseek_pool.budget.limiter: the shared gates, driven by a fake clock where possible."""

from __future__ import annotations

import bisect
import dataclasses
import importlib.util
import math
import random
import sys
import threading
import time
import uuid
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest

from deepseek_pool.budget import retries, waiting
from deepseek_pool.budget import rules as budget
from deepseek_pool.budget.limiter import Limiter, LimiterStats, Permit
from deepseek_pool.budget.sqlite_storage import SQLiteStorage
from deepseek_pool.errors import RetryBudgetExceeded

if importlib.util.find_spec("pytest_timeout") is not None:  # every wait below has its own bound too
    pytestmark = pytest.mark.timeout(20)


class FakeClock:
    """A clock that only moves when told to; its ``wait`` advances it instead of sleeping."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def wait(self, event: threading.Event, timeout: Optional[float]) -> bool:
        if event.is_set():
            return True
        if timeout is None:
            raise AssertionError("a single-threaded test would block forever here")
        # Never a zero step, so float rounding can't make a waiter spin.
        self.now += max(timeout, 1e-9)
        return False


def no_jitter(seconds: float) -> float:
    """Cool-downs end exactly on time, so the rules' times can be checked to the instant."""
    return 0.0


def fake_limiter(**kwargs: Any) -> tuple[Limiter, FakeClock]:
    clock = FakeClock()
    kwargs.setdefault("jitter", no_jitter)
    return Limiter(clock=clock, wait=clock.wait, **kwargs), clock


def new_limiter(**kwargs: Any) -> Limiter:
    """A limiter on a fake clock (on the storage under test, with ``every_storage``)."""
    return fake_limiter(**kwargs)[0]


class FakeClockSQLite(SQLiteStorage):
    """sqlite:// on an injected clock, so the rules can be checked there without sleeping."""

    def __init__(self, path: str, clock: Callable[[], float]) -> None:
        super().__init__(path)
        self._fake_clock = clock

    def clock(self) -> float:
        return self._fake_clock()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def every_storage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """One rule set, checked on every storage: ``fake_limiter`` builds on the storage of the param.

    The shared storages get the fake clock too (sqlite through a subclass, Redis through
    ``RedisStorage(clock=...)``, which then passes it to its scripts instead of ``TIME``).
    """
    kind = request.param
    made: List[Limiter] = []
    if kind == "sqlite":

        def storage(clock: FakeClock) -> Any:
            return FakeClockSQLite(str(tmp_path / "budget.db"), clock)

    elif kind == "redis":
        url = request.getfixturevalue("redis_url")
        import redis

        from deepseek_pool.budget.redis_storage import RedisStorage

        def storage(clock: FakeClock) -> Any:
            return RedisStorage(redis.Redis.from_url(url), clock=clock)

    if kind != "memory":

        def shared_fake_limiter(**kwargs: Any) -> tuple[Limiter, FakeClock]:
            clock = FakeClock()
            kwargs.setdefault("jitter", no_jitter)
            limiter = Limiter(clock=clock, wait=clock.wait, storage=storage(clock), name=uuid.uuid4().hex, **kwargs)
            made.append(limiter)
            return limiter, clock

        monkeypatch.setattr(sys.modules[__name__], "fake_limiter", shared_fake_limiter)
    yield kind
    for limiter in made:
        limiter.close()
        close = getattr(getattr(limiter.storage, "client", None), "close", None) or limiter.storage.close
        close()


def reserve(limiter: Limiter, now: float, tokens: int) -> float:
    """One start decision of the budget's rules at a chosen ``now`` (0.0: granted)."""
    with limiter.storage.transaction(limiter.name) as state:
        lease = budget.Lease(f"t{state.started}-{random.random()}", math.inf, 0)
        return budget.try_start(state, limiter._config, now, tokens, lease)


def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


class Worker(threading.Thread):
    """A daemon thread that records what its target returned or raised."""

    def __init__(self, target: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._target_fn = target
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.finished_at: Optional[float] = None

    def run(self) -> None:
        try:
            self.result = self._target_fn()
        except BaseException as exc:  # recorded for the test to assert on
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def finish(self, timeout: float = 5.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "worker thread hung"


def max_starts_in_any_second(starts: List[float]) -> int:
    """The most starts in any half-open window [t, t + 1); the busiest one begins at a start.

    The window is a nanosecond short: ten additions of 0.1 make 0.9999999999999999.
    """
    return max(bisect.bisect_left(starts, s + 1.0 - 1e-9) - i for i, s in enumerate(starts))


# -- requests per minute ---------------------------------------------------------------


@pytest.mark.parametrize("rpm", [30, 90, 150, 600, 6000, 7000.5])
def test_rpm_spacing_caps_every_second_and_keeps_the_long_run_rate(rpm: float) -> None:
    limiter = Limiter(rpm=rpm, clock=lambda: 0.0)
    starts: List[float] = []
    now = 0.0
    while len(starts) < 500:  # callers that always want to start, woken exactly on time
        delay = reserve(limiter, now, 0)
        if delay == 0.0:
            starts.append(now)
        else:
            now += max(delay, 1e-9)  # never a zero step: rounding must not make this spin
    assert max_starts_in_any_second(starts) <= math.ceil(rpm / 60)
    rate = (len(starts) - 1) * 60.0 / (starts[-1] - starts[0])
    assert rate == pytest.approx(rpm, rel=0.01)


@pytest.mark.parametrize("rpm", [90, 600, 6000])
def test_rpm_cap_holds_with_random_arrivals_and_late_wakeups(rpm: float) -> None:
    rng = random.Random(rpm)
    limiter = Limiter(rpm=rpm, clock=lambda: 0.0)
    # Arrivals come in bursts and lulls at about twice the allowed rate.
    arrivals = sorted(rng.uniform(0, 600 * 60 / rpm) for _ in range(1200))
    starts: List[float] = []
    now = 0.0
    for arrival in arrivals:
        now = max(now, arrival)
        while True:
            delay = reserve(limiter, now, 0)
            if delay == 0.0:
                starts.append(now)
                break
            now += delay + rng.uniform(0, 0.3) * 60 / rpm  # a late wake-up
        assert starts[-1] >= arrival
    assert max_starts_in_any_second(starts) <= math.ceil(rpm / 60)


@pytest.mark.usefixtures("every_storage")
def test_acquire_waits_out_the_interval_on_the_injected_clock() -> None:
    limiter, _ = fake_limiter(rpm=60)
    permits = [limiter.acquire() for _ in range(3)]
    # (a shared storage is polled in small steps, so its fake clock adds up float steps)
    assert [p.started_at for p in permits] == pytest.approx([0.0, 1.0, 2.0])
    assert [p.waited for p in permits] == pytest.approx([0.0, 1.0, 1.0])
    stats = limiter.stats
    assert (stats.started, stats.in_flight, stats.throttled) == (3, 3, 2)
    assert stats.wait_seconds == pytest.approx(2.0)


# -- tokens per minute -----------------------------------------------------------------


def test_tpm_reserves_the_estimate_and_refunds_the_overestimate() -> None:
    limiter, _ = fake_limiter(tpm=600)  # refills 10 tokens a second
    first = limiter.acquire(400)
    assert reserve(limiter, 0.0, 400) == pytest.approx(20.0)  # 200 left, 200 short
    limiter.release(first, tokens_used=100)  # 300 given back: 500 available
    assert reserve(limiter, 0.0, 400) == 0.0
    assert limiter.stats.tokens_used == 100


def test_tpm_charges_an_underestimate_as_debt() -> None:
    limiter, _ = fake_limiter(tpm=600)
    permit = limiter.acquire(100)
    limiter.release(permit, tokens_used=700)  # 600 more than reserved: 100 in debt
    assert reserve(limiter, 0.0, 0) == pytest.approx(10.0)
    assert reserve(limiter, 0.0, 100) == pytest.approx(20.0)
    assert limiter.acquire(100).started_at == pytest.approx(20.0)


def test_tpm_release_without_usage_keeps_the_estimate() -> None:
    limiter, _ = fake_limiter(tpm=600)
    limiter.release(limiter.acquire(600))
    assert reserve(limiter, 0.0, 1) > 0.0


def test_tpm_refund_never_overfills_the_bucket() -> None:
    limiter, clock = fake_limiter(tpm=600)
    permit = limiter.acquire(100)
    clock.advance(60.0)  # bucket full again while the call ran
    limiter.release(permit, tokens_used=0)
    assert reserve(limiter, clock.now, 600) == 0.0
    assert reserve(limiter, clock.now, 1) > 0.0  # the refund of 100 added nothing on top


def test_tpm_oversize_request_passes_on_a_full_bucket_and_leaves_debt() -> None:
    limiter, _ = fake_limiter(tpm=1000)
    big = limiter.acquire(5000, timeout=3600)
    assert big.started_at == 0.0
    # 4000 in debt at 1000/60 a second: the next one-token call waits for 4001 tokens.
    assert reserve(limiter, 0.0, 1) == pytest.approx(4001 * 60 / 1000)
    assert limiter.acquire(1).started_at == pytest.approx(4001 * 60 / 1000)


@pytest.mark.usefixtures("every_storage")
def test_tpm_oversize_request_waits_for_a_full_bucket_without_deadlock() -> None:
    limiter, _ = fake_limiter(tpm=1000)
    limiter.acquire(10)
    big = limiter.acquire(5000, timeout=60)
    assert big.started_at == pytest.approx(10 * 60 / 1000)


@pytest.mark.usefixtures("every_storage")
def test_tpm_refunds_an_overestimate_charges_an_underestimate_and_never_overfills() -> None:
    limiter, clock = fake_limiter(tpm=600)  # refills 10 tokens a second
    limiter.release(limiter.acquire(400), tokens_used=100)  # 300 given back: 500 left
    second = limiter.acquire(500)
    assert second.started_at == 0.0
    limiter.release(second, tokens_used=1100)  # 600 more than reserved: 600 in debt
    third = limiter.acquire(100)  # needs 700 tokens: 70 s
    assert third.started_at == pytest.approx(70.0)
    clock.advance(120.0)  # full again while it ran
    limiter.release(third, tokens_used=0)  # the refund of 100 adds nothing on top
    now = clock.now
    assert limiter.acquire(600).started_at == now
    assert limiter.acquire(1).started_at == pytest.approx(now + 0.1)
    assert limiter.stats.tokens_used == 1200


# -- in-flight cap ---------------------------------------------------------------------


def test_in_flight_cap_holds_across_many_threads() -> None:
    limiter = Limiter(max_in_flight=4)
    guard = threading.Lock()
    running = 0
    peak = 0

    def call() -> None:
        nonlocal running, peak
        permit = limiter.acquire(timeout=5)
        with guard:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with guard:
            running -= 1
        limiter.release(permit)

    workers = [Worker(call) for _ in range(32)]
    for w in workers:
        w.start()
    for w in workers:
        w.finish()
    assert [w.error for w in workers] == [None] * 32
    assert 1 <= peak <= 4
    stats = limiter.stats
    assert (stats.started, stats.finished, stats.in_flight, stats.waiting) == (32, 32, 0, 0)


def test_full_cap_times_out_then_a_release_opens_it() -> None:
    limiter = Limiter(max_in_flight=2)
    a, b = limiter.acquire(), limiter.acquire()
    assert reserve(limiter, time.monotonic(), 0) == math.inf
    with pytest.raises(TimeoutError):
        limiter.acquire(timeout=0)
    limiter.release(a)
    limiter.release(limiter.acquire(timeout=0))
    stats = limiter.stats
    assert (stats.timeouts, stats.in_flight, stats.waiting) == (1, 1, 0)
    limiter.release(b)


@pytest.mark.usefixtures("every_storage")
def test_timeout_is_measured_on_the_injected_clock() -> None:
    limiter, clock = fake_limiter(max_in_flight=1)
    limiter.acquire()
    with pytest.raises(TimeoutError):
        limiter.acquire(timeout=2.0)
    assert clock.now == pytest.approx(2.0)
    stats = limiter.stats
    assert (stats.timeouts, stats.throttled, stats.waiting) == (1, 1, 0)
    assert stats.wait_seconds == pytest.approx(2.0)


def test_a_release_wakes_a_blocked_waiter_at_once() -> None:
    limiter = Limiter(max_in_flight=1)
    held = limiter.acquire()
    worker = Worker(lambda: limiter.acquire(timeout=5))
    worker.start()
    until(lambda: limiter.stats.waiting == 1)
    released_at = time.monotonic()
    limiter.release(held)
    worker.finish()
    assert isinstance(worker.result, Permit)
    assert worker.finished_at is not None and worker.finished_at - released_at < 1.0


def test_a_newcomer_does_not_jump_the_queue() -> None:
    limiter = Limiter(max_in_flight=1)
    held = limiter.acquire()
    queued = Worker(lambda: limiter.acquire(timeout=5))
    queued.start()
    until(lambda: limiter.stats.waiting == 1)
    limiter.release(held)
    with pytest.raises(TimeoutError):  # the slot is the queued thread's, free or not
        limiter.acquire(timeout=0)
    queued.finish()
    assert isinstance(queued.result, Permit)


def test_waiters_start_in_arrival_order() -> None:
    limiter = Limiter(max_in_flight=1)
    held = limiter.acquire()
    order: List[str] = []

    def call(name: str) -> None:
        permit = limiter.acquire(timeout=5)
        order.append(name)
        limiter.release(permit)

    workers = []
    for i, name in enumerate("ABCDE"):
        workers.append(Worker(lambda name=name: call(name)))  # type: ignore[misc]
        workers[-1].start()
        until(lambda i=i: limiter.stats.waiting == i + 1)  # type: ignore[misc]
    limiter.release(held)
    for w in workers:
        w.finish()
    assert order == list("ABCDE")


# -- cool-down -------------------------------------------------------------------------


@pytest.mark.usefixtures("every_storage")
def test_cool_down_holds_new_starts_until_it_ends_and_spares_running_calls() -> None:
    limiter, _ = fake_limiter()
    running = limiter.acquire()
    limiter.cool_down(5.0)
    limiter.cool_down(2.0)  # a shorter one does not cut the longer one
    stats = limiter.stats
    assert (stats.cool_downs, stats.cooling_for, stats.in_flight) == (2, 5.0, 1)
    limiter.release(running)  # the running call is untouched and ends normally
    assert limiter.stats.in_flight == 0
    held_back = limiter.acquire()
    assert held_back.started_at == pytest.approx(5.0)
    after = limiter.acquire()
    assert (after.started_at, after.waited) == (held_back.started_at, 0.0)
    assert limiter.stats.cooling_for == 0.0


@pytest.mark.usefixtures("every_storage")
def test_a_longer_cool_down_extends_the_current_one() -> None:
    limiter, clock = fake_limiter()
    limiter.cool_down(1.0)
    clock.advance(0.5)
    limiter.cool_down(3.0)
    assert limiter.acquire().started_at == pytest.approx(3.5)


@pytest.mark.usefixtures("every_storage")
def test_a_429_that_names_the_cap_sets_it_and_holds_it() -> None:
    limiter, clock = fake_limiter(max_in_flight=100)
    assert limiter.stats.cap == 100
    limiter.cool_down(0.0, message="Rate limit: concurrency limit of 3 based on your remaining balance")
    assert limiter.stats.cap == 3
    held = [limiter.acquire() for _ in range(3)]
    with pytest.raises(TimeoutError):
        limiter.acquire(timeout=1.0)
    limiter.release(held.pop())
    held.append(limiter.acquire(timeout=0))
    for permit in held:
        limiter.release(permit)
    # successes raise it again, slowly, once the named cap's hold has passed (and while
    # at least half of it is in use: one call kept running, and the one that ends)
    clock.advance(budget.NAMED_CAP_HOLD)
    running = limiter.acquire()
    for _ in range(int(budget.INCREASE_PATIENCE * 3)):
        limiter.release(limiter.acquire())
    assert limiter.stats.cap == 4
    limiter.release(running)


@pytest.mark.usefixtures("every_storage")
def test_a_named_cap_applies_without_a_ceiling() -> None:
    limiter, _ = fake_limiter()
    assert limiter.stats.cap is None
    limiter.cool_down(0.0, message="concurrency limit of 39")
    assert limiter.stats.cap == 39


@pytest.mark.usefixtures("every_storage")
def test_a_concurrency_429_without_a_number_lowers_the_cap_by_a_factor() -> None:
    limiter, _ = fake_limiter(max_in_flight=40)
    limiter.cool_down(0.0, message="too many concurrent requests")
    assert limiter.stats.cap == math.floor(40 * budget.DECREASE_FACTOR)
    limiter.cool_down(0.0, message="too many concurrent requests")
    assert limiter.stats.cap == math.floor(math.floor(40 * budget.DECREASE_FACTOR) * budget.DECREASE_FACTOR)


@pytest.mark.usefixtures("every_storage")
def test_a_sporadic_429_holds_new_starts_only_briefly_and_never_retries() -> None:
    limiter, clock = fake_limiter(max_in_flight=40)
    limiter.cool_down(5.0, message="Rate limit reached, try again later")
    assert limiter.stats.cap == 40  # nothing about concurrency: the cap stays
    assert limiter.acquire().started_at == pytest.approx(budget.SPORADIC_COOL_DOWN)
    start = clock.now
    limiter.wait_before_retry(0.0)  # retries are not held
    assert clock.now == start


@pytest.mark.usefixtures("every_storage")
def test_a_concurrency_429_holds_retries_too() -> None:
    limiter, clock = fake_limiter()
    limiter.cool_down(2.0)
    limiter.wait_before_retry(0.5)
    assert clock.now == pytest.approx(2.0)


@pytest.mark.usefixtures("every_storage")
def test_retry_wait_that_would_pass_its_timeout_raises_at_once() -> None:
    limiter, clock = fake_limiter()
    limiter.cool_down(10.0)
    with pytest.raises(TimeoutError):
        limiter.wait_before_retry(0.1, timeout=1.0)
    assert clock.now == 0.0


@pytest.mark.parametrize(
    "message, named, concurrency",
    [
        ("concurrency limit of 39 based on your remaining balance", 39, True),
        ("Concurrency limit of 2500 reached", 2500, True),
        ("too many concurrent requests", None, True),
        ("Rate limit reached for requests", None, False),
        ("", None, False),
        (None, None, False),
    ],
)
def test_what_a_429_message_says(message: Optional[str], named: Optional[int], concurrency: bool) -> None:
    assert budget.rate_limit_signal(message) == budget.RateLimitSignal(named, concurrency, not concurrency)


def test_retry_wait_is_cancellable() -> None:
    limiter = Limiter()
    limiter.cool_down(30)  # no message: retries wait too
    cancelled = threading.Event()
    waiter = Worker(lambda: limiter.wait_before_retry(0.0, cancelled=cancelled))
    waiter.start()
    time.sleep(0.05)
    cancelled.set()
    limiter.wake_waiters()
    waiter.finish(timeout=1)
    assert isinstance(waiter.error, CancelledError)


def test_retry_wait_without_cool_down_is_a_plain_sleep() -> None:
    limiter = Limiter()
    start = time.monotonic()
    limiter.wait_before_retry(0.05)
    assert 0.045 <= time.monotonic() - start < 0.5


# -- retry budget ----------------------------------------------------------------------


def test_an_api_that_always_fails_gets_budget_over_cost_retries_in_all() -> None:
    limiter = Limiter()  # budget 500, a status retry costs 5
    paid = 0
    guard = threading.Lock()

    def failing_call() -> None:
        nonlocal paid
        permit = limiter.acquire(timeout=5)
        try:
            for _ in range(10):  # max_retries=10 per call
                limiter.spend_retry("status", permit=permit)
                with guard:
                    paid += 1
        except RetryBudgetExceeded:
            pass
        finally:
            limiter.release(permit, ok=False)

    workers = [Worker(failing_call) for _ in range(64)]
    for w in workers:
        w.start()
    for w in workers:
        w.finish()
    assert paid == 500 // retries.RETRY_COST  # not 64 workers x 10 retries
    stats = limiter.stats
    assert (stats.retries, stats.retry_budget) == (100, 0)
    assert stats.retries_refused >= 1


@pytest.mark.usefixtures("every_storage")
def test_timeout_retries_cost_double() -> None:
    limiter = new_limiter(retry_budget=500)
    paid = 0
    with pytest.raises(RetryBudgetExceeded):
        while True:
            assert limiter.spend_retry("timeout") == retries.TIMEOUT_RETRY_COST
            paid += 1
    assert paid == 500 // retries.TIMEOUT_RETRY_COST


@pytest.mark.usefixtures("every_storage")
def test_exhausted_budget_says_why_calls_fail_fast() -> None:
    limiter = new_limiter(retry_budget=7)
    limiter.spend_retry()
    with pytest.raises(RetryBudgetExceeded) as info:
        limiter.spend_retry()
    message = str(info.value)
    assert "retry budget of 7 exhausted" in message
    assert "keeps failing" in message and "fail fast" in message


def test_a_quarter_failing_once_never_exhausts_the_budget() -> None:
    limiter = Limiter(max_in_flight=64)

    def calls(seed: int) -> None:
        for i in range(200):
            permit = limiter.acquire(timeout=5)
            retries = 0
            if (i + seed) % 4 == 0:  # fails once, then succeeds
                limiter.spend_retry("status", permit=permit)
                retries = 1
            limiter.release(permit, retries=retries, ok=True)

    workers = [Worker(lambda seed=seed: calls(seed)) for seed in range(64)]  # type: ignore[misc]
    for w in workers:
        w.start()
    for w in workers:
        w.finish()
    assert [w.error for w in workers] == [None] * 64
    stats = limiter.stats
    assert (stats.retries, stats.retries_refused, stats.retry_budget) == (64 * 50, 0, 500)


@pytest.mark.usefixtures("every_storage")
def test_successes_refill_an_exhausted_budget() -> None:
    limiter = new_limiter(retry_budget=10)
    failed = limiter.acquire()
    limiter.spend_retry(permit=failed)
    limiter.spend_retry(permit=failed)
    limiter.release(failed, retries=2, ok=False)  # a failed call earns nothing back
    assert limiter.stats.retry_budget == 0
    with pytest.raises(RetryBudgetExceeded):
        limiter.spend_retry()
    for _ in range(4):
        limiter.release(limiter.acquire())  # first-try successes: +1 each
    with pytest.raises(RetryBudgetExceeded):
        limiter.spend_retry()
    limiter.release(limiter.acquire())
    assert limiter.spend_retry() == 5


@pytest.mark.usefixtures("every_storage")
def test_a_success_after_retries_earns_back_exactly_what_they_cost() -> None:
    limiter = new_limiter(retry_budget=100)
    permit = limiter.acquire()
    limiter.spend_retry("status", permit=permit)
    limiter.spend_retry("timeout", permit=permit)
    assert (permit.retry_cost, limiter.stats.retry_budget) == (15, 85)
    limiter.release(permit, retries=2)
    assert limiter.stats.retry_budget == 100
    # Without the permit, the refund is retries x RETRY_COST.
    other = limiter.acquire()
    limiter.spend_retry("timeout")
    limiter.spend_retry("timeout")
    limiter.release(other, retries=2)
    assert limiter.stats.retry_budget == 90


@pytest.mark.usefixtures("every_storage")
def test_budget_off_never_refuses() -> None:
    limiter = new_limiter(retry_budget=None)
    for _ in range(1000):
        limiter.spend_retry("timeout")
    stats = limiter.stats
    assert (stats.retries, stats.retry_budget) == (1000, None)


def test_unknown_retry_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="'bogus'"):
        Limiter().spend_retry("bogus")


# -- cancellation ----------------------------------------------------------------------


def test_cancelling_a_waiter_returns_promptly() -> None:
    limiter = Limiter(max_in_flight=1)
    held = limiter.acquire()
    cancel = threading.Event()
    worker = Worker(lambda: limiter.acquire(cancelled=cancel, timeout=10))
    worker.start()
    until(lambda: limiter.stats.waiting == 1)
    cancelled_at = time.monotonic()
    cancel.set()  # noticed by the waiter's own poll
    worker.finish()
    assert isinstance(worker.error, CancelledError)
    assert worker.finished_at is not None and worker.finished_at - cancelled_at < 1.0
    stats = limiter.stats
    assert (stats.cancellations, stats.waiting, stats.in_flight) == (1, 0, 1)
    limiter.release(held)


def test_wake_waiters_makes_cancellation_immediate_and_keeps_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiting, "CANCEL_POLL_INTERVAL", 30.0)  # polling alone would be far too slow
    limiter = Limiter(max_in_flight=1)
    held = limiter.acquire()
    cancel = threading.Event()
    order: List[str] = []

    def call(name: str, event: Optional[threading.Event]) -> None:
        permit = limiter.acquire(cancelled=event, timeout=10)
        order.append(name)
        limiter.release(permit)

    head = Worker(lambda: call("head", cancel))
    middle = Worker(lambda: call("middle", None))
    tail = Worker(lambda: call("tail", cancel))
    for n, w in enumerate((head, middle, tail)):
        w.start()
        until(lambda n=n: limiter.stats.waiting == n + 1)  # type: ignore[misc]
    cancel.set()
    limiter.wake_waiters()
    head.finish(2.0)
    tail.finish(2.0)
    assert isinstance(head.error, CancelledError) and isinstance(tail.error, CancelledError)
    assert limiter.stats.waiting == 1
    limiter.release(held)
    middle.finish()
    assert order == ["middle"]


def test_an_already_cancelled_event_refuses_even_a_free_start() -> None:
    limiter = Limiter()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        limiter.acquire(cancelled=cancel)
    assert limiter.stats.started == 0


# -- thread safety ---------------------------------------------------------------------


def test_many_threads_keep_the_counters_consistent() -> None:
    limiter = Limiter(max_in_flight=8, tpm=10**9)
    guard = threading.Lock()
    running = 0
    peak = 0

    def calls() -> None:
        nonlocal running, peak
        for i in range(100):
            permit = limiter.acquire(5, timeout=5)
            with guard:
                running += 1
                peak = max(peak, running)
            retries = 0
            if i % 10 == 0:
                limiter.spend_retry(permit=permit)
                retries = 1
            with guard:
                running -= 1
            limiter.release(permit, tokens_used=3, retries=retries)

    workers = [Worker(calls) for _ in range(64)]
    for w in workers:
        w.start()
    for w in workers:
        w.finish(10.0)
    assert [w.error for w in workers] == [None] * 64
    assert peak <= 8
    stats = limiter.stats
    assert (stats.started, stats.finished, stats.in_flight, stats.waiting) == (6400, 6400, 0, 0)
    assert (stats.tokens_used, stats.retries, stats.retry_budget) == (6400 * 3, 640, 500)


def test_ungated_calls_keep_exact_counts_across_threads_and_a_cap_that_arrives_midway() -> None:
    # No gate at first, so starts and finishes take MemoryStorage's lock-free path; a
    # 429 naming a cap halfway sends the rest through the lock. Every count stays exact.
    limiter = Limiter()
    guard = threading.Lock()
    running = peak_after_cap = 0
    capped = threading.Event()

    def calls(worker: int) -> Callable[[], None]:
        def run() -> None:
            nonlocal running, peak_after_cap
            for i in range(200):
                if worker == 0 and i == 100:
                    limiter.cool_down(0.0, message="concurrency limit of 16 reached")
                    capped.set()
                permit = limiter.acquire(7, timeout=5)
                with guard:
                    running += 1
                    if capped.is_set():
                        peak_after_cap = max(peak_after_cap, running)
                retries = 0
                if i % 20 == 0:
                    limiter.spend_retry(permit=permit)
                    retries = 1
                with guard:
                    running -= 1
                limiter.release(permit, tokens_used=i % 5, retries=retries)

        return run

    workers = [Worker(calls(w)) for w in range(64)]
    for w in workers:
        w.start()
    for w in workers:
        w.finish(15.0)
    assert [w.error for w in workers] == [None] * 64
    stats = limiter.stats
    assert (stats.started, stats.finished, stats.in_flight, stats.waiting) == (12800, 12800, 0, 0)
    assert stats.tokens_used == 64 * 40 * sum(range(5))
    assert (stats.retries, stats.retry_budget, stats.cap) == (640, 500, 16)
    # Calls started before the cap was learnt may still run, never more than the workers.
    assert peak_after_cap <= 64


def test_an_ungated_start_and_release_never_wait_for_the_storage_lock() -> None:
    # The storage's lock taken by every worker for every call is what made the pool's
    # cost per item grow with max_workers (a convoy behind a thread switched out while
    # holding it): without a gate the per-call path must not touch it.
    ungated, gated = Limiter(), Limiter(max_in_flight=4)
    for limiter in (ungated, gated):
        limiter.release(limiter.acquire(timeout=1))  # the budget exists and is filled

    def one_call(limiter: Limiter) -> Worker:
        return Worker(lambda: limiter.release(limiter.acquire(timeout=5)))

    with ungated.storage._lock:  # type: ignore[attr-defined]
        free = one_call(ungated)
        free.start()
        free.join(5.0)
        assert not free.is_alive() and free.error is None
    lock = gated.storage._lock  # type: ignore[attr-defined]
    with lock:
        blocked = one_call(gated)
        blocked.start()
        blocked.join(0.3)
        assert blocked.is_alive(), "a gated start decides under the lock"
    blocked.finish(5.0)
    assert blocked.error is None
    assert (ungated.stats.started, ungated.stats.finished, gated.stats.finished) == (2, 2, 2)


def test_the_counts_of_lock_free_calls_are_settled_as_they_go() -> None:
    from deepseek_pool.budget.storage import SETTLE_EVERY

    limiter = Limiter()
    for _ in range(10 * SETTLE_EVERY):
        limiter.release(limiter.acquire(), tokens_used=1)
    state = limiter.storage._states[limiter.name]  # type: ignore[attr-defined]
    assert len(state.unsettled) < SETTLE_EVERY  # bounded memory without any stats() call
    assert (limiter.stats.started, limiter.stats.tokens_used) == (10 * SETTLE_EVERY, 10 * SETTLE_EVERY)
    assert not state.unsettled  # a locked operation settles the rest


# -- the rest of the surface -----------------------------------------------------------


def test_repr_shows_the_configured_limits() -> None:
    assert repr(Limiter(max_in_flight=4, rpm=600, tpm=100_000, retry_budget=50)) == (
        "Limiter(max_in_flight=4, rpm=600, tpm=100000, retry_budget=50)"
    )
    assert repr(Limiter()) == "Limiter(max_in_flight=None, rpm=None, tpm=None, retry_budget=500)"


def test_stats_is_a_frozen_snapshot() -> None:
    limiter = Limiter()
    before = limiter.stats
    limiter.acquire()
    assert isinstance(before, LimiterStats) and before.in_flight == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.in_flight = 3  # type: ignore[misc]


def test_permit_as_context_manager_releases_with_the_outcome() -> None:
    limiter = Limiter(retry_budget=10)
    limiter.spend_retry()
    with limiter.acquire() as permit:
        assert limiter.stats.in_flight == 1
    assert permit.released and limiter.stats.retry_budget == 6  # success earned 1
    with pytest.raises(KeyError), limiter.acquire():
        raise KeyError("boom")
    stats = limiter.stats
    assert (stats.in_flight, stats.retry_budget) == (0, 6)  # failure earned nothing


def test_release_twice_or_to_another_limiter_is_refused() -> None:
    limiter = Limiter()
    permit = limiter.acquire()
    limiter.release(permit)
    with pytest.raises(RuntimeError, match="already released"):
        limiter.release(permit)
    assert limiter.stats.in_flight == 0
    with pytest.raises(ValueError, match="another Limiter"):
        Limiter().release(limiter.acquire())


def _release_paused(limiter: Limiter, permit: Permit, line: int) -> Optional[List[str]]:
    """Release ``permit`` in a thread that stops at its ``line``-th line of ``Limiter.release``
    while this thread releases it in full; each one's outcome, or None if there is no such line."""
    code = Limiter.release.__code__
    paused, go = threading.Event(), threading.Event()
    outcomes: List[str] = []

    def trace(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None
        seen = [0]

        def each_line(frame: Any, event: str, arg: Any) -> Any:
            if event == "line":
                seen[0] += 1
                if seen[0] == line:
                    paused.set()
                    go.wait(5)
            return each_line

        return each_line

    def release() -> None:
        try:
            limiter.release(permit)
            outcomes.append("released")
        except RuntimeError:
            outcomes.append("refused")

    def traced() -> None:
        sys.settrace(trace)
        try:
            release()
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=traced)
    thread.start()
    stopped = paused.wait(5)
    if stopped:
        release()
    go.set()
    thread.join(5)
    assert not thread.is_alive()
    return outcomes if stopped else None


def test_two_threads_releasing_one_permit_release_it_once_whatever_the_interleaving() -> None:
    # The second release of a permit is refused; two at once must not both pass the check.
    # Every line of release() is tried as the point where the other thread releases in full.
    limiter = Limiter()
    line = 0
    while True:
        line += 1
        permit = limiter.acquire()
        outcomes = _release_paused(limiter, permit, line)
        if outcomes is None:
            break
        assert sorted(outcomes) == ["refused", "released"], (line, outcomes)
        assert permit.released and limiter.stats.in_flight == 0
    assert line > 5  # the walk went through release() line by line


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"rpm": -1}, ValueError, "rpm must be > 0, got -1"),
        ({"rpm": 0}, ValueError, "rpm must be > 0, got 0"),
        ({"rpm": float("nan")}, ValueError, "rpm must be > 0, got nan"),
        ({"rpm": float("inf")}, ValueError, "rpm must be > 0, got inf"),
        ({"rpm": "60"}, TypeError, "rpm must be a number, got '60'"),
        ({"max_in_flight": 0}, ValueError, "max_in_flight must be >= 1, got 0"),
        ({"max_in_flight": 2.5}, TypeError, "max_in_flight must be an int, got 2.5"),
        ({"max_in_flight": True}, TypeError, "max_in_flight must be an int, got True"),
        ({"tpm": 0}, ValueError, "tpm must be >= 1, got 0"),
        ({"tpm": 1e6}, TypeError, "tpm must be an int, got 1000000.0"),
        ({"retry_budget": -1}, ValueError, "retry_budget must be >= 0, got -1"),
        ({"clock": 3}, TypeError, "clock must be callable, got 3"),
    ],
)
def test_bad_settings_are_named_in_the_error(kwargs: Any, error: type, message: str) -> None:
    with pytest.raises(error) as info:
        Limiter(**kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda lim: lim.acquire(-1), ValueError, "tokens must be >= 0, got -1"),
        (lambda lim: lim.acquire(1.5), TypeError, "tokens must be an int, got 1.5"),
        (lambda lim: lim.acquire(True), TypeError, "tokens must be an int, got True"),
        (lambda lim: lim.acquire(timeout=-1), ValueError, "timeout must be >= 0 or None, got -1"),
        (lambda lim: lim.release(lim.acquire(), tokens_used=-5), ValueError, "tokens_used must be >= 0, got -5"),
        (lambda lim: lim.release(lim.acquire(), retries=-1), ValueError, "retries must be >= 0, got -1"),
        (lambda lim: lim.cool_down(-1), ValueError, "finite number >= 0, got -1"),
        (lambda lim: lim.cool_down(float("nan")), ValueError, "finite number >= 0, got nan"),
    ],
)
def test_bad_arguments_are_named_in_the_error(call: Callable[[Limiter], Any], error: type, message: str) -> None:
    limiter = Limiter(tpm=1000)
    with pytest.raises(error) as info:
        call(limiter)
    assert message in str(info.value)
    assert limiter.stats.started <= 1  # nothing reserved for a refused call
