"""The in-process leak check (bilge.guard) on callables with known ground truth."""

from __future__ import annotations

import collections
import ctypes
import functools
import gc
import itertools
from pathlib import Path

import pytest

from bilge.guard import GuardPolicy, check, describe
from bilge.model import INCONCLUSIVE, LEAK, NO_LEAK

_ORDERS: dict[int, Order] = {}


def line_of(marker: str) -> str:
    """``test_check.py:N`` of the line ending with ``marker``."""
    lines = Path(__file__).read_text().splitlines()
    return "test_check.py:%d" % next(n for n, line in enumerate(lines, 1) if line.endswith(marker))

_IDS = itertools.count()


class Order:
    def __init__(self, order_id: int) -> None:
        self.order_id = order_id
        self.lines = [{"sku": "SKU-%d" % order_id, "qty": n, "tags": ["a", "b"]} for n in range(6)]


def remember_order() -> None:
    order_id = next(_IDS)
    _ORDERS[order_id] = Order(order_id)  # the leak's line


def parse_order() -> int:
    lines = [{"sku": "SKU-%d" % n, "qty": n, "tags": ["a"]} for n in range(20)]
    return sum(line["qty"] for line in lines)


@functools.lru_cache(maxsize=64)
def _profile(key: int) -> list[int]:
    return [key] * 40


def warm_bounded_cache() -> None:
    _profile(next(_IDS))


def test_a_leaky_callable_is_a_leak_named_by_type_holder_and_line() -> None:
    result = check(remember_order, policy=GuardPolicy(calls=200))
    assert result.verdict == LEAK, describe(result)
    finding = result.finding
    assert finding is not None
    assert finding.type == "%s.Order" % __name__
    assert finding.holder is not None and "_ORDERS" in finding.holder
    assert finding.location is not None and finding.location.endswith(line_of("# the leak's line"))
    assert result.confirmed_after_calls is not None and result.confirmed_after_calls <= 200
    # Each call keeps an Order, its list and six dicts with their lists: about 40-60 blocks.
    assert result.blocks_per_call is not None and 20 <= result.blocks_per_call <= 120
    text = describe(result)
    assert "%s.Order" % __name__ in text and "_ORDERS" in text and line_of("# the leak's line") in text


def test_allocating_but_freeing_is_no_leak() -> None:
    result = check(parse_order, policy=GuardPolicy(calls=200))
    assert result.verdict == NO_LEAK, describe(result)
    assert result.finding is None
    assert result.blocks_per_call == 0


def test_a_bounded_cache_filling_during_warm_up_is_no_leak() -> None:
    result = check(warm_bounded_cache, policy=GuardPolicy(calls=300))
    assert result.verdict == NO_LEAK, describe(result)


class _Pool:
    """A connection pool that opens connections on demand, up to a bound, and reuses them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.idle: list[dict[str, object]] = []
        self.opened = 0

    def run(self) -> None:
        # Callers hold several connections at once while the pool warms up.
        held = [self.idle.pop() if self.idle else self._open() for _ in range(min(1 + self.opened // 5, self.size))]
        self.idle.extend(held)

    def _open(self) -> dict[str, object]:
        self.opened += 1
        return {"id": self.opened, "buffer": bytearray(2048), "settings": {"timeout": 5}}


def test_a_pool_filling_and_a_deque_at_its_maxlen_are_no_leak() -> None:
    pool = _Pool(size=12)
    assert check(pool.run, policy=GuardPolicy(calls=200)).verdict == NO_LEAK
    recent: collections.deque[dict[str, int]] = collections.deque(maxlen=100)
    result = check(lambda: recent.append({"n": next(_IDS)}), policy=GuardPolicy(calls=200))
    assert result.verdict == NO_LEAK, describe(result)


def test_the_checks_own_bookkeeping_is_not_growth() -> None:
    # Even a callable doing nothing: readings, timings and records must not
    # add a block per call to the heap being measured.
    result = check(lambda: None, policy=GuardPolicy(calls=600, readings=120))
    assert result.verdict == NO_LEAK, describe(result)
    assert result.blocks_per_call == 0


_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]


def native_frame() -> None:
    ptr = _libc.malloc(16384)  # never freed
    ctypes.memset(ptr, 7, 16384)


def test_native_growth_is_native_with_its_line() -> None:
    result = check(native_frame, policy=GuardPolicy(calls=200))
    assert result.verdict == LEAK, describe(result)
    assert result.finding is not None and result.finding.kind == "native"
    assert result.finding.location is not None and result.finding.location.endswith(line_of("# never freed"))
    assert result.native_bytes_per_call is not None and result.native_bytes_per_call > 12000


def test_a_native_leak_reusing_freed_memory_is_seen_by_glibc_before_rss() -> None:
    # Plenty of freed glibc memory (as in a long test session): the leak's
    # mallocs reuse it and RSS does not move; glibc's in-use bytes do.
    freed = [_libc.malloc(16384) for _ in range(2000)]
    for ptr in freed:
        ctypes.memset(ptr, 1, 16384)
    _libc.free.argtypes = [ctypes.c_void_p]
    for ptr in freed:
        _libc.free(ptr)
    result = check(native_frame, policy=GuardPolicy(calls=200))
    assert result.verdict == LEAK, describe(result)
    assert result.finding is not None and result.finding.kind == "native"
    assert result.native_bytes_per_call is not None and result.native_bytes_per_call > 12000


class _Node:
    def __init__(self) -> None:
        self.children = [_Child(self) for _ in range(3)]


class _Child:
    def __init__(self, parent: _Node) -> None:
        self.parent = parent


def test_cycles_are_garbage_while_the_collector_runs_and_a_leak_when_it_is_off() -> None:
    assert check(_Node, policy=GuardPolicy(calls=200)).verdict == NO_LEAK
    gc.disable()
    try:
        result = check(_Node, policy=GuardPolicy(calls=200))
    finally:
        gc.enable()
    assert result.verdict == LEAK, describe(result)
    assert result.finding is not None and result.finding.kind == "uncollectable"


def test_the_check_leaves_the_collector_as_it_found_it_even_when_the_callable_raises() -> None:
    calls = itertools.count()

    def fails_late() -> None:
        if next(calls) == 50:
            raise KeyError("boom")

    before = gc.get_freeze_count()  # 0, or what the interpreter keeps there (3.12 starts with a few hundred)
    with pytest.raises(KeyError):
        check(fails_late, policy=GuardPolicy(calls=200))
    assert gc.get_freeze_count() == before
    assert gc.isenabled()


def test_a_leak_verdict_must_survive_twice_the_calls() -> None:
    # A bounded cache still filling when the first calls end grows like a
    # leak; twice the calls see it level off.
    @functools.lru_cache(maxsize=150)
    def lookup(key: int) -> list[int]:
        return [key] * 40

    result = check(lambda: lookup(next(_IDS)), policy=GuardPolicy(calls=100, max_calls=400))
    assert result.verdict in (NO_LEAK, INCONCLUSIVE), describe(result)
    assert result.calls >= 200


@pytest.mark.parametrize("settings, message", [
    ({"calls": 10}, "calls must be at least"),
    ({"min_bytes_per_call": 0}, "min_bytes_per_call must be positive"),
    ({"calls": 2000}, r"max_calls \(1000\) must be at least calls \(2000\)"),
])
def test_bad_policies_say_what_to_change(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GuardPolicy(**settings)  # type: ignore[arg-type]
