"""A large pool raises the interpreter's switch interval while it is open, and puts it back."""

from __future__ import annotations

import sys
from typing import Iterator

import pytest

from deepseek_pool import DeepSeekClient, DeepSeekPool, switching


@pytest.fixture(autouse=True)
def default_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(before)


def pool(workers: int, **options: object) -> DeepSeekPool:
    client = DeepSeekClient("sk-test", base_url="http://127.0.0.1:9")  # never connected to
    return DeepSeekPool(client, max_workers=workers, **options)  # type: ignore[arg-type]


def test_a_large_pool_raises_the_interval_while_open_and_restores_it_at_close() -> None:
    with pool(switching.AUTO_FROM_WORKERS):
        assert sys.getswitchinterval() == pytest.approx(switching.SWITCH_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_small_pools_and_none_leave_it_alone_and_a_number_sets_it() -> None:
    with pool(switching.AUTO_FROM_WORKERS - 1):
        assert sys.getswitchinterval() == pytest.approx(0.005)
    with pool(4096, switch_interval=None):
        assert sys.getswitchinterval() == pytest.approx(0.005)
    with pool(2, switch_interval=0.02):
        assert sys.getswitchinterval() == pytest.approx(0.02)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_the_last_pool_to_close_restores_it() -> None:
    first, second = pool(512), pool(1024)
    first.close()
    assert sys.getswitchinterval() == pytest.approx(switching.SWITCH_INTERVAL)
    second.close()
    assert sys.getswitchinterval() == pytest.approx(0.005)
    second.close()  # closing twice changes nothing
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_an_interval_someone_else_set_meanwhile_is_left_as_they_set_it() -> None:
    with pool(512):
        sys.setswitchinterval(0.2)
    assert sys.getswitchinterval() == pytest.approx(0.2)


def test_a_higher_interval_is_never_lowered() -> None:
    sys.setswitchinterval(0.1)
    with pool(512):
        assert sys.getswitchinterval() == pytest.approx(0.1)
    assert sys.getswitchinterval() == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "fast", True])
def test_a_bad_switch_interval_is_named_before_anything_starts(bad: object) -> None:
    with pytest.raises(ValueError, match="switch_interval"):
        pool(8, switch_interval=bad)
    assert sys.getswitchinterval() == pytest.approx(0.005)
