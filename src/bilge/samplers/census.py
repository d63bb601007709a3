"""Object-type census: how many gc-tracked objects of each type, and bytes.

Stdlib-only. Counting is exact and runs at C speed (``map(type, ...)``);
sizes are estimated from a strided sample of at most ``size_sample`` objects,
so a census costs roughly 10 ms per 100k objects. Nothing here keeps a
reference to an inspected object once the census returns: only type names
and numbers leave this module.
"""

from __future__ import annotations

import gc
import sys
import time
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class CensusResult:
    """One census: per type (qualified name, count, estimated bytes)."""

    t: float
    objects: int
    duration: float
    types: tuple[tuple[str, int, int], ...]


def type_name(cls: type) -> str:
    """The qualified name a developer would write, e.g. ``myapp.cache.Order``."""
    module = getattr(cls, "__module__", None) or "?"
    qualname = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", "?")
    if module == "builtins":
        return str(qualname)
    return "%s.%s" % (module, qualname)


def take_census(max_types: int = 400, size_sample: int = 250_000) -> CensusResult:
    """Count gc-tracked objects by type and estimate their bytes.

    Args:
        max_types: keep only the largest types (by count and by bytes), which
            bounds what is stored per census.
        size_sample: how many objects to size with ``sys.getsizeof``; below
            this every object is sized (sizes are skewed: one big dict can
            outweigh thousands of small ones, so sampling is a last resort).

    Returns:
        The census, with no references to any inspected object.
    """
    # CPU time of this thread, not wall time: the census shares the GIL with
    # the host's threads, and only its own CPU is its cost.
    started = time.thread_time()
    objects = gc.get_objects()
    try:
        total = len(objects)
        counts = Counter(map(type, objects))
        stride = max(1, total // size_sample)
        sized = objects[::stride] if stride > 1 else objects
        sampled_bytes, sampled_count = _sizes(sized)
        if sampled_count is None:
            sampled_count = counts if stride == 1 else Counter(map(type, sized))
        del sized
    finally:
        # Drop the only strong list of every object before anything else.
        del objects
    rows = []
    for cls, count in counts.items():
        n = sampled_count.get(cls, 0)
        mean = sampled_bytes.get(cls, 0) / n if n else _fallback_size(cls)
        rows.append((type_name(cls), count, int(mean * count)))
    del counts, sampled_bytes, sampled_count
    rows = _keep_largest(rows, max_types)
    return CensusResult(
        t=time.time(), objects=total, duration=time.thread_time() - started, types=tuple(rows)
    )


def _sizes(objects: list[object]) -> tuple[dict[type, int], Counter[type] | None]:
    """Bytes by type (and, when sizing had to skip objects, counts of those sized).

    The fast path keeps the per-object work in C (``map``) and one dict
    update in Python, ~0.3 µs an object; a ``__sizeof__`` that raises sends
    us to the slow path, which skips just that object.
    """
    sizes: dict[type, int] = {}
    get = sizes.get
    try:
        for cls, size in zip(map(type, objects), map(sys.getsizeof, objects)):
            sizes[cls] = get(cls, 0) + size
        return sizes, None
    except Exception:  # a broken __sizeof__ in user code must not stop the census
        sizes.clear()
    sized: Counter[type] = Counter()
    for obj in objects:
        cls = type(obj)
        try:
            sizes[cls] = get(cls, 0) + sys.getsizeof(obj)
        except Exception:
            continue
        sized[cls] += 1
    return sizes, sized


def _fallback_size(cls: type) -> int:
    return int(getattr(cls, "__basicsize__", 16) or 16)


def _keep_largest(rows: list[tuple[str, int, int]], limit: int) -> list[tuple[str, int, int]]:
    """The union of the top types by count and by bytes, merged by name."""
    merged: dict[str, list[int]] = {}
    for name, count, size in rows:
        # Two classes can share a qualified name (re-imported modules): add up.
        slot = merged.setdefault(name, [0, 0])
        slot[0] += count
        slot[1] += size
    items = [(name, c, b) for name, (c, b) in merged.items()]
    if len(items) <= limit:
        return items
    by_count = sorted(items, key=lambda r: -r[1])[: limit // 2]
    by_bytes = sorted(items, key=lambda r: -r[2])[: limit // 2]
    keep = {r[0]: r for r in by_count}
    keep.update({r[0]: r for r in by_bytes})
    return list(keep.values())
