"""A large pool raises the interpreter's switch interval and collector threshold while it is
open, and puts them back; each invariant is checked for both settings."""

from __future__ import annotations

import gc
import sys
from typing import Callable, Iterator, NamedTuple

import pytest

from deepseek_pool import DeepSeekClient, DeepSeekPool, interpreter
from deepseek_pool.testing import FakeDeepSeek


class Case(NamedTuple):
    setting: interpreter.Setting
    read: Callable[[], float]
    write: Callable[[float], None]
    default: float  # CPython's own default
    other: float  # a value a pool option may ask for, above the default and below "auto"'s
    higher: float  # a value above "auto"'s


def _write_threshold(value: float) -> None:
    gc.set_threshold(int(value), *gc.get_threshold()[1:])


CASES = [
    Case(interpreter.SWITCH_INTERVAL, sys.getswitchinterval, sys.setswitchinterval, 0.005, 0.02, 0.2),
    Case(interpreter.GC_THRESHOLD, lambda: gc.get_threshold()[0], _write_threshold, 700, 2000, 50_000),
]


@pytest.fixture(params=CASES, ids=lambda case: case.setting.name)
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    case: Case = request.param
    before_interval, before_threshold = sys.getswitchinterval(), gc.get_threshold()
    case.write(case.default)
    yield case
    sys.setswitchinterval(before_interval)
    gc.set_threshold(*before_threshold)


def pool(workers: int, **options: object) -> DeepSeekPool:
    client = DeepSeekClient("sk-test", base_url="http://127.0.0.1:9")  # never connected to
    return DeepSeekPool(client, max_workers=workers, **options)  # type: ignore[arg-type]


def test_a_large_pool_raises_it_while_open_and_restores_it_at_close(case: Case) -> None:
    with pool(interpreter.AUTO_FROM_WORKERS):
        assert case.read() == pytest.approx(case.setting.raised)
    assert case.read() == pytest.approx(case.default)


def test_small_pools_and_none_leave_it_alone_and_a_number_sets_it(case: Case) -> None:
    with pool(interpreter.AUTO_FROM_WORKERS - 1):
        assert case.read() == pytest.approx(case.default)
    with pool(4096, **{case.setting.name: None}):
        assert case.read() == pytest.approx(case.default)
    with pool(2, **{case.setting.name: case.other}):
        assert case.read() == pytest.approx(case.other)
    assert case.read() == pytest.approx(case.default)


def test_the_last_pool_to_close_restores_it(case: Case) -> None:
    first, second = pool(512), pool(1024)
    first.close()
    assert case.read() == pytest.approx(case.setting.raised)
    second.close()
    assert case.read() == pytest.approx(case.default)
    second.close()  # closing twice changes nothing
    assert case.read() == pytest.approx(case.default)


def test_a_value_someone_else_set_meanwhile_is_left_as_they_set_it(case: Case) -> None:
    with pool(512):
        case.write(case.higher)
    assert case.read() == pytest.approx(case.higher)


def test_a_higher_value_is_never_lowered(case: Case) -> None:
    case.write(case.higher)
    with pool(512):
        assert case.read() == pytest.approx(case.higher)
    assert case.read() == pytest.approx(case.higher)


def test_the_collectors_older_thresholds_are_kept() -> None:
    before = gc.get_threshold()
    gc.set_threshold(700, 11, 12)
    try:
        with pool(512):
            assert gc.get_threshold() == (interpreter.GC_THRESHOLD.raised, 11, 12)
        assert gc.get_threshold() == (700, 11, 12)
    finally:
        gc.set_threshold(*before)


def test_a_collector_turned_off_with_threshold_0_stays_off() -> None:
    before = gc.get_threshold()
    gc.set_threshold(0, *before[1:])
    try:
        with pool(512):
            assert gc.get_threshold()[0] == 0
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*before)


BAD = {
    "switch_interval": [0, -1, float("inf"), float("nan"), "fast", True],
    "gc_threshold": [0, -1, 1.5, float("inf"), "many", True],
}


@pytest.mark.parametrize(
    "name, bad", [(name, bad) for name, values in BAD.items() for bad in values], ids=lambda value: repr(value)
)
def test_a_bad_value_is_named_before_anything_is_raised(name: str, bad: object) -> None:
    before = sys.getswitchinterval(), gc.get_threshold()
    with pytest.raises(ValueError, match=name):
        pool(4096, **{name: bad})
    assert (sys.getswitchinterval(), gc.get_threshold()) == before


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_pool_call_leaves_no_cyclic_garbage(stream: bool) -> None:
    """Why a larger young generation is safe: the collector has nothing of ours to find.

    Every object of a call is freed by its reference count when the call ends; if one
    formed a cycle, a raised threshold would keep such garbage alive longer.
    """
    requests = [{"prompt": f"question {n}", "stream": stream} for n in range(40)]
    with FakeDeepSeek() as fake:
        client = DeepSeekClient("sk-test", base_url=fake.base_url, max_retries=0)
        with client, DeepSeekPool(client, max_workers=8) as pool:
            assert all(result.ok for result in pool.map(requests[:8]))  # warm: connections, lazy state
            gc.collect()
            flags, was_enabled = gc.get_debug(), gc.isenabled()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector would free lands in gc.garbage
            try:
                results = pool.map(requests)
                del results
                gc.collect()
                garbage = [type(thing).__qualname__ for thing in gc.garbage]
            finally:
                gc.set_debug(flags)
                gc.garbage.clear()
                if was_enabled:
                    gc.enable()
    assert garbage == []
