"""Object-type census: how many gc-tracked objects of each type, and bytes.

Stdlib-only. Two flavours, both ending with no reference to any inspected
object (only type names and numbers leave this module):

- a **counting** census: exact counts by type at C speed (``map(type, …)``),
  about 0.1 µs an object; bytes are estimated from the mean size per type
  that the last sizing census measured;
- a **sizing** census: also ``sys.getsizeof`` of every object (a strided
  sample above ``size_sample`` objects), about 0.4 µs an object, which
  refreshes those mean sizes.

``Census`` (the object) owns the mean sizes between censuses; it is bounded
by the number of distinct types.
"""

from __future__ import annotations

import gc
import sys
import time
from collections import Counter
from dataclasses import dataclass

from bilge.samplers import wallclock


@dataclass(frozen=True)
class CensusResult:
    """One census: per type (qualified name, count, estimated bytes)."""

    t: float
    objects: int
    duration: float
    sized: bool
    types: tuple[tuple[str, int, int], ...]


def type_name(cls: type) -> str:
    """The qualified name a developer would write, e.g. ``myapp.cache.Order``."""
    module = getattr(cls, "__module__", None) or "?"
    qualname = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", "?")
    if module == "builtins":
        return str(qualname)
    return "%s.%s" % (module, qualname)


# Distinct type names remembered for reuse (bounded: cleared past it).
MAX_NAMES = 4096

_OWN = "bilge."
_DEMO = "bilge.demo."


class Census:
    """Takes censuses and remembers each type's mean size between them.

    Args:
        max_types: keep only the largest types (by count and by bytes), which
            bounds what is stored per census.
        size_sample: objects sized by a sizing census; below this every
            object is sized (sizes are skewed: one big dict can outweigh
            thousands of small ones, so sampling is a last resort).
    """

    def __init__(self, max_types: int = 400, size_sample: int = 250_000) -> None:
        self.max_types = max_types
        self.size_sample = size_sample
        self._mean_size: dict[str, float] = {}
        # One string per type name across censuses: the counts the agent
        # keeps (a baseline and the latest two) would otherwise each hold
        # their own copy of every name, hundreds of heap blocks a census,
        # which the heap-block series read after tasks sees as growth.
        self._names: dict[str, str] = {}

    def take(self, sized: bool) -> CensusResult:
        """Count gc-tracked objects by type; size them too when ``sized``."""
        # CPU time of this thread, not wall time: the census shares the GIL
        # with the host's threads, and only its own CPU is its cost.
        started = time.thread_time()
        objects = gc.get_objects()
        try:
            total = len(objects)
            counts = Counter(map(type, objects))
            sampled_bytes: dict[type, int] = {}
            sampled_count: Counter[type] | None = None
            if sized:
                stride = max(1, total // self.size_sample)
                sample = objects[::stride] if stride > 1 else objects
                sampled_bytes, sampled_count = _sizes(sample)
                if sampled_count is None:
                    sampled_count = counts if stride == 1 else Counter(map(type, sample))
                del sample
        finally:
            # Drop the only strong list of every object before anything else.
            del objects
        rows = []
        names = self._names
        if len(names) > MAX_NAMES:
            names.clear()
        for cls, count in counts.items():
            name = type_name(cls)
            name = names.setdefault(name, name)
            if name.startswith(_OWN) and not name.startswith(_DEMO):
                continue  # bilge's own records (sites, results) are never the host's growth
            if sampled_count is not None:
                n = sampled_count.get(cls, 0)
                if n:
                    self._mean_size[name] = sampled_bytes.get(cls, 0) / n
            mean = self._mean_size.get(name)
            if mean is None:
                mean = float(getattr(cls, "__basicsize__", 16) or 16)
            rows.append((name, count, int(mean * count)))
        del counts, sampled_bytes, sampled_count
        return CensusResult(t=wallclock.now(), objects=total, duration=time.thread_time() - started, sized=sized,
                            types=tuple(_keep_largest(rows, self.max_types)))


def take_census(sized: bool = True) -> CensusResult:
    """A one-off census (no remembered sizes)."""
    return Census().take(sized)


def _sizes(objects: list[object]) -> tuple[dict[type, int], Counter[type] | None]:
    """Bytes by type (and, when sizing had to skip objects, counts of those sized).

    The fast path keeps the per-object work in C (``map``) and one dict
    update in Python; a ``__sizeof__`` that raises sends us to the slow
    path, which skips just that object.
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
