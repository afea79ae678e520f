"""The watchdog that ends attempts at their deadline: on time, never lost, memory bounded."""

from __future__ import annotations

import threading
import time
from typing import Any, List

from deepseek_pool.wire.calls import _COMPACT_AT, Watchdog


class Handle:
    """Stands in for a CallHandle: records when the watchdog expired it."""

    def __init__(self, name: Any = None) -> None:
        self.name = name
        self.expired_at: List[float] = []
        self.done = threading.Event()

    def expire(self) -> None:
        self.expired_at.append(time.monotonic())
        self.done.set()


def test_deadlines_expire_on_time_even_one_earlier_than_the_thread_sleeps_for() -> None:
    watchdog = Watchdog()
    start = time.monotonic()
    late, early = Handle("late"), Handle("early")
    watchdog.watch(start + 0.6, late)  # starts the thread, which sleeps until then
    time.sleep(0.05)
    watchdog.watch(start + 0.2, early)  # earlier: the watcher must wake the thread
    assert early.done.wait(2.0) and late.done.wait(2.0)
    assert 0.2 <= early.expired_at[0] - start < 0.45
    assert 0.6 <= late.expired_at[0] - start < 0.85
    assert len(early.expired_at) == len(late.expired_at) == 1


def test_a_cancelled_watch_never_expires_and_cancelled_ones_do_not_pile_up() -> None:
    watchdog = Watchdog()
    kept = Handle()
    watchdog.watch(time.monotonic() + 0.3, kept)
    far = time.monotonic() + 3600
    dropped = Handle()
    for _ in range(10 * _COMPACT_AT):
        watchdog.cancel(watchdog.watch(far, dropped))
    assert kept.done.wait(2.0)
    time.sleep(0.1)
    assert dropped.expired_at == []
    # Attempts made, not attempts in flight, would be 10 * _COMPACT_AT entries.
    assert len(watchdog._heap) <= 3 * _COMPACT_AT


def test_no_watch_is_lost_when_many_threads_watch_at_once() -> None:
    watchdog = Watchdog()
    handles = [Handle(i) for i in range(64 * 40)]
    begin = time.monotonic()

    def watch_some(part: List[Handle]) -> None:
        for k, handle in enumerate(part):
            watchdog.watch(begin + 0.2 + 0.001 * (k % 50), handle)

    threads = [threading.Thread(target=watch_some, args=(handles[i::64],), daemon=True) for i in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5.0)
    assert all(handle.done.wait(5.0) for handle in handles)
    assert all(len(handle.expired_at) == 1 for handle in handles)
    assert max(h.expired_at[0] for h in handles) - begin < 2.0
