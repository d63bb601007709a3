"""Leak kinds decided from allocator and collector readings: native, fragmentation, uncollectable."""

from __future__ import annotations

from bilge.analysis.kind import FRAGMENTATION, NATIVE, PYTHON_OBJECTS, UNCOLLECTABLE, classify
from bilge.model import Sample, TaskRecord

BASE = 60 * 2**20
N = 80


def sample(i: int, *, rss: int = 0, blocks: int = 0, used: int | None = 0, free: int | None = 0,
           garbage: int = 0, enabled: int = 1, frozen: int = 0) -> Sample:
    return Sample(t=float(i), rss=BASE + rss * i, uss=None, pss=None, heap_blocks=100_000 + blocks * i,
                  gc_collections=i, fds=12, threads=2, tasks_done=0,
                  malloc_used=None if used is None else 5_000_000 + used * i,
                  malloc_free=None if free is None else 200_000 + free * i,
                  gc_garbage=garbage * i, gc_enabled=enabled, gc_frozen=frozen * i)


def series(**kw: int | None) -> list[Sample]:
    return [sample(i, **kw) for i in range(N)]  # type: ignore[arg-type]


NO_TASKS: list[TaskRecord] = []


def test_rss_growing_with_glibc_in_use_bytes_is_native() -> None:
    """RSS and mallinfo2's in-use bytes grow together, the Python heap is flat: native."""
    kind, evidence = classify(series(rss=65536, used=65536), NO_TASKS)
    assert kind == NATIVE
    assert "glibc in-use bytes (mallinfo2) went from" in evidence[0]


def test_rss_growing_with_free_but_held_bytes_is_fragmentation() -> None:
    """In-use bytes flat, free-but-held bytes growing with RSS: fragmentation."""
    kind, evidence = classify(series(rss=65536, used=0, free=65536), NO_TASKS)
    assert kind == FRAGMENTATION
    assert "free-but-held bytes went from" in evidence[0]


def test_rss_growing_with_no_allocator_counter_is_native_outside_malloc() -> None:
    """Nothing in glibc moves: still native, and the evidence says no allocator counter explains it."""
    kind, evidence = classify(series(rss=65536, used=0, free=0), NO_TASKS)
    assert kind == NATIVE
    assert "no allocator counter explains it" in evidence[0]


def test_without_allocator_statistics_native_says_so() -> None:
    """On a libc without mallinfo2 the kind falls back to native and says the statistics were missing."""
    kind, evidence = classify(series(rss=65536, used=None, free=None), NO_TASKS)
    assert kind == NATIVE
    assert "allocator statistics unavailable" in evidence[0]


def test_growing_gc_garbage_is_uncollectable() -> None:
    """gc.garbage growing steadily: uncollectable, whatever the heap does."""
    kind, evidence = classify(series(rss=65536, blocks=500, garbage=2), NO_TASKS)
    assert kind == UNCOLLECTABLE
    assert evidence[0].startswith("gc.garbage went from 0 to")


def test_disabled_collector_with_growing_heap_is_uncollectable() -> None:
    """gc.disable() while heap blocks grow: cycles that are never collected."""
    kind, evidence = classify(series(rss=65536, blocks=500, enabled=0), NO_TASKS)
    assert kind == UNCOLLECTABLE
    assert "gc.disable()" in evidence[0]


def test_repeated_freezing_with_growing_heap_is_uncollectable() -> None:
    """gc.freeze() moving ever more objects out of collection while the heap grows."""
    kind, evidence = classify(series(rss=65536, blocks=500, frozen=300), NO_TASKS)
    assert kind == UNCOLLECTABLE
    assert "gc.freeze()" in evidence[0]


def test_growing_heap_with_collector_on_is_python_objects() -> None:
    """The same heap growth with the collector enabled and nothing frozen: python-objects."""
    kind, _ = classify(series(rss=65536, blocks=500), NO_TASKS)
    assert kind == PYTHON_OBJECTS


def _tasks(n: int, rss_per_task: int, blocks_per_task: int) -> list[TaskRecord]:
    return [TaskRecord(i, "t", float(i), i + 0.1, BASE + rss_per_task * i, BASE + rss_per_task * i,
                       100_000 + blocks_per_task * i, 100_000 + blocks_per_task * i, False, 0) for i in range(1, n)]


def _window(kept_bytes: int, tasks: int = 20, native: int = 0):
    from bilge.model import AllocationSite, AllocationWindow

    site = AllocationSite("app.py", 10, kept_bytes, 100, "user", ("app.py:10",), native=native)
    return AllocationWindow(0.0, 1.0, tasks, "done", 1 << 20, (site,))


def test_allocation_window_that_saw_little_survive_means_native() -> None:
    """Heap blocks creep up, but tracemalloc saw only ~5% of the RSS growth survive: native, not Python."""
    tasks = _tasks(600, rss_per_task=8192, blocks_per_task=3)
    window = _window(kept_bytes=20 * 400)  # 400 B per task against 8 KiB of RSS per task
    kind, evidence = classify(series(rss=65536, used=65536), tasks, [window])
    assert kind == NATIVE
    assert "allocations traced by tracemalloc kept +400 bytes per task, ~5% of the RSS growth" in evidence[0]


def test_allocation_window_that_saw_the_growth_means_python_objects() -> None:
    """Big Python objects (outside pymalloc) leave few heap blocks, but tracemalloc sees them survive."""
    tasks = _tasks(600, rss_per_task=4096, blocks_per_task=0)
    window = _window(kept_bytes=20 * 4000)
    kind, evidence = classify(series(rss=65536, used=65536), tasks, [window])
    assert kind == PYTHON_OBJECTS
    assert "~98% of the RSS growth" in evidence[0]


def test_heap_blocks_that_explain_most_of_the_growth_outweigh_a_small_traced_share() -> None:
    """Episodes traced little (the leak keeps what its message allocated before the task), but heap blocks
    account for most of the RSS growth: Python objects."""
    tasks = _tasks(600, rss_per_task=4096, blocks_per_task=60)
    window = _window(kept_bytes=20 * 400)
    kind, _ = classify(series(rss=65536, used=65536), tasks, [window])
    assert kind == PYTHON_OBJECTS


def test_traced_bytes_a_c_extension_registered_are_native_memory_with_a_python_owner() -> None:
    """embedding_cache: numpy registers its array data with tracemalloc, so the episodes saw ~4.1 KiB per call
    survive, but 4 KiB of it is numpy's own malloc (another domain): the heap barely moves, the bytes are
    native. The same sizes in Python's own domain (big str) are Python objects."""
    tasks = _tasks(600, rss_per_task=4096, blocks_per_task=1)
    arrays = _window(kept_bytes=20 * 4200, native=20 * 4096)
    kind, evidence = classify(series(rss=65536, used=65536), tasks, [arrays])
    assert kind == NATIVE
    assert "+4096 bytes per task of native memory a C extension allocated itself" in evidence[0]
    strings = _window(kept_bytes=20 * 4200)
    assert classify(series(rss=65536, used=65536), tasks, [strings])[0] == PYTHON_OBJECTS


def test_traced_native_bytes_outweigh_allocator_counters_that_did_not_move_in_time() -> None:
    """glibc's counters are read twice a second and may not show the extension's bytes in a short window: the
    traced native bytes name the kind, where the counters alone would say fragmentation."""
    tasks = _tasks(600, rss_per_task=4096, blocks_per_task=1)
    arrays = _window(kept_bytes=20 * 4200, native=20 * 4096)
    kind, evidence = classify(series(rss=65536, used=0, free=65536), tasks, [arrays])
    assert kind == NATIVE and "no allocator counter" not in evidence[0]
    assert classify(series(rss=65536, used=0, free=65536), tasks, [_window(kept_bytes=20 * 200)])[0] == FRAGMENTATION


def test_traced_native_bytes_name_the_kind_where_rss_stayed_flat_in_the_window() -> None:
    """embedding_cache, 1 run of 5: glibc reused freed memory, so one child's RSS barely moved over its window
    while a heap block per call (the arrays' owners) rose steadily; the episodes saw 4 KiB of numpy's data
    survive per call against ~70 bytes of Python's. Native, not Python objects."""
    tasks = _tasks(600, rss_per_task=0, blocks_per_task=1)
    arrays = _window(kept_bytes=20 * 4170, native=20 * 4096)
    kind, evidence = classify(series(rss=0, blocks=300, used=0), tasks, [arrays])
    assert kind == NATIVE, evidence
    assert classify(series(rss=0, blocks=300, used=0), tasks, [_window(kept_bytes=20 * 4170)])[0] == PYTHON_OBJECTS
