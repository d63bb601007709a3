"""What kind of memory leaks, decided from series the agent samples anyway.

In this order (the first that fits wins, and its readings are the evidence):

1. ``file-descriptors``: open fds grow steadily with the tasks (an fd leak
   also grows RSS through buffers, so it is checked first).
2. ``uncollectable``: ``gc.garbage`` grows, or the collector is disabled
   (``gc.disable()``) or objects keep being frozen (``gc.freeze()``) while
   the Python heap grows: cycles pile up that nothing will collect.
3. ``python-objects``: Python's allocated heap blocks grow steadily and
   account for a real share of the RSS growth (or grow overwhelmingly
   steadily, for big objects that live outside pymalloc's blocks).
4. ``native``: RSS grows with glibc's in-use bytes (``mallinfo2``) while the
   Python heap is flat: C extensions, ctypes, native libraries.
5. ``fragmentation``: RSS grows while glibc's in-use bytes and the Python
   heap stay flat and glibc's free-but-held bytes grow.
6. ``native`` again when no allocator counter explains the growth (memory
   mapped directly, or an allocator of its own), saying so.
"""

from __future__ import annotations

from collections.abc import Sequence

from bilge.analysis import trend
from bilge.analysis.stats import block_medians, mann_kendall, theil_sen
from bilge.model import (
    FILE_DESCRIPTORS,
    FRAGMENTATION,
    NATIVE,
    PYTHON_OBJECTS,
    TRACEMALLOC,
    UNCOLLECTABLE,
    AllocationWindow,
    FdSnapshot,
    Sample,
    TaskRecord,
)

__all__ = ["FILE_DESCRIPTORS", "FRAGMENTATION", "NATIVE", "PYTHON_OBJECTS", "UNCOLLECTABLE", "classify"]
MIN_GARBAGE_GROWTH = 10
# Below this share of the RSS growth, what tracemalloc saw survive is not the
# leak: the memory is allocated outside Python's allocators (a worker keeps
# ~10-20% of its per-task RSS growth in traced bookkeeping of its own).
MIN_TRACED_SHARE = 0.35
# At or above this share the leak is Python memory even when heap blocks
# barely move (big str/bytes live outside pymalloc's blocks).
PYTHON_TRACED_SHARE = 0.5
# Share of the RSS growth an allocator counter must explain to name the kind.
MIN_ALLOCATOR_SHARE = 0.30

MIN_FD_GROWTH = 4
# Fewer readings than this show no trend (6 strictly rising give p=0.0014).
MIN_KIND_READINGS = 6
MIN_BLOCK_GROWTH = 200
# Few samples fall in a short run (one every 0.5 s), and 6 strictly rising
# points already give p=0.0014 in the Mann-Kendall test; fd counts are exact.
FD_ALPHA = 0.01
BLOCK_ALPHA = 1e-3
# A trend this strong means objects are retained call after call even when
# they are big (str/bytes above 512 B live outside pymalloc blocks).
BLOCK_STRONG_ALPHA = 1e-8
MIN_BLOCKS_PER_TASK = 1.0
# pymalloc blocks are 8-512 bytes; a typical small object takes ~64. Heap
# growth must explain this share of the RSS growth to be the leak's kind:
# the interpreter's own churn moves a few hundred blocks in any process.
BLOCK_BYTES = 64
MIN_HEAP_SHARE = 0.10
# Heap blocks that account for this share of the RSS growth make it Python
# memory even when the allocation episodes traced little of it.
HEAP_EXPLAINS = 0.5


def classify(
    samples: Sequence[Sample], tasks: Sequence[TaskRecord], windows: Sequence[AllocationWindow] = (),
    fd_snapshots: Sequence[FdSnapshot] = (),
    earlier: Sequence[Sample] = (),
) -> tuple[str, tuple[str, ...]]:
    """Classify a leaking process from its post-warm-up samples and tasks.

    Args:
        samples: periodic readings of the explanation window.
        tasks: task records of the explanation window.
        windows: the agent's allocation windows: when one completed, the share
            of the RSS growth that tracemalloc saw survive decides between
            Python and native memory more directly than heap blocks can (big
            Python objects live in malloc, outside pymalloc's blocks, and
            tracemalloc sees them; a ctypes or C-extension malloc it does not).
        fd_snapshots: what the descriptors pointed to over time; they name
            the targets of a descriptor leak.
        earlier: the process's samples before ``samples`` (after its first
            task): a fast worker may take too few readings in the window to
            test its fds (one every 0.5 s), and fd counts have no warm-up
            noise to cut.

    Returns:
        (kind, evidence): the kind and the readings that decided it.
    """
    fd_samples = samples if sum(s.fds is not None for s in samples) >= MIN_KIND_READINGS else (*earlier, *samples)
    fd_points = [(float(s.tasks_done) if tasks else s.t, s.fds) for s in fd_samples if s.fds is not None]
    fd_growth, fd_p, text = _growth(fd_points)
    if fd_p < FD_ALPHA and fd_growth >= MIN_FD_GROWTH:
        return FILE_DESCRIPTORS, ("open file descriptors " + text,) + growing_fd_targets(fd_snapshots)
    block_points: list[tuple[float, int | None]]
    rss_points: list[tuple[float, int | None]]
    if tasks:
        block_points = [(float(t.seq), t.blocks_after) for t in tasks]
        rss_points = [(float(t.seq), t.rss_after) for t in tasks]
    else:
        block_points = [(s.t, s.heap_blocks) for s in samples]
        rss_points = [(s.t, s.rss) for s in samples]
    block_growth, block_p, text = _growth(block_points, per_task=bool(tasks))
    rss_growth, _, _ = _growth(rss_points, per_task=bool(tasks))
    share = block_growth * BLOCK_BYTES / rss_growth if rss_growth > 0 else 1.0
    span = (block_points[-1][0] - block_points[0][0]) if tasks and block_points else 0.0
    per_task = block_growth / span if span > 0 else 0.0
    # A steady trend of big objects (outside pymalloc's blocks) still leaves
    # at least a block per task behind (their container's slot, a wrapper);
    # a trickle below that is interpreter churn, whatever its p-value.
    strong = block_p < BLOCK_STRONG_ALPHA and (per_task >= MIN_BLOCKS_PER_TASK if tasks else
                                               block_growth >= 10 * MIN_BLOCK_GROWTH)
    heap_grows = block_growth >= MIN_BLOCK_GROWTH and (strong or (block_p < BLOCK_ALPHA and share >= MIN_HEAP_SHARE))
    traced = _traced(windows, tasks)
    if traced is not None:
        traced_bytes, native_bytes, rss_bytes, traced_text = traced
        # Native bytes the episodes saw survive (an extension's own, e.g.
        # numpy's array data) outweighing both the Python bytes they saw and
        # what the heap's new blocks hold: small Python owners of large
        # native buffers. Measured, so they stand even where RSS stayed flat
        # in the window (glibc reusing freed memory).
        if native_bytes > max(traced_bytes, per_task * BLOCK_BYTES) and (
                rss_bytes <= 0 or native_bytes >= MIN_ALLOCATOR_SHARE * rss_bytes):
            return _outside_python(samples, rss_growth, "heap blocks %s; %s" % (text, traced_text), True)
        # Sampled episodes see what a task allocated itself; a leak that keeps
        # what was allocated before it (its message's payload) escapes them.
        # A strong, steady growth of heap blocks that accounts for most of
        # the RSS growth is Python memory whatever the episodes traced.
        # Without RSS growth over the window's read tasks there is no share to judge.
        if rss_bytes > 0:
            traced_share = traced_bytes / rss_bytes
            if traced_share < MIN_TRACED_SHARE and not (strong and heap_grows and share >= HEAP_EXPLAINS):
                return _outside_python(samples, rss_growth, "heap blocks %s; %s" % (text, traced_text),
                                       native_bytes >= MIN_ALLOCATOR_SHARE * rss_bytes)
            if not heap_grows and traced_share >= PYTHON_TRACED_SHARE:
                heap_grows = True
                text += "; " + traced_text
    uncollectable = _uncollectable(samples, heap_grows)
    if uncollectable:
        return UNCOLLECTABLE, (uncollectable,)
    if heap_grows:
        return PYTHON_OBJECTS, ("Python heap blocks %s, ~%.0f%% of the RSS growth" % (text, 100 * min(share, 1)),)
    return _outside_python(samples, rss_growth, "heap blocks %s" % text)


def _traced(windows: Sequence[AllocationWindow], tasks: Sequence[TaskRecord]
            ) -> tuple[float, float, float, str] | None:
    """Bytes per task the allocation episodes saw survive, in Python's allocators and in C extensions' own
    tracemalloc domains, the RSS growth per task, and their description."""
    done = [w for w in windows if w.status == "done" and w.tasks and w.tracer == TRACEMALLOC]
    usable = [t for t in tasks if t.rss_after is not None]
    if not done or len(usable) < 2:
        return None
    per_task_rss = (usable[-1].rss_after - usable[0].rss_after) / max(1, usable[-1].seq - usable[0].seq)  # type: ignore[operator]
    episodes = sum(w.tasks for w in done)
    # Bytes a C extension allocated itself and registered with tracemalloc
    # (numpy's array data) are native memory, whoever owns them.
    per_task_native = sum(sum(s.native for s in w.sites) for w in done) / episodes
    per_task_traced = sum(sum(s.size for s in w.sites) for w in done) / episodes - per_task_native
    text = "allocations traced by tracemalloc kept %+.0f bytes per task" % per_task_traced
    if per_task_rss > 0:
        text += ", ~%.0f%% of the RSS growth (%+.0f bytes per task)" % (
            100 * min(per_task_traced / per_task_rss, 9.99), per_task_rss)
    if per_task_native > 0:
        text += ", besides %+.0f bytes per task of native memory a C extension allocated itself and registered " \
                "with tracemalloc (such as numpy's array data)" % per_task_native
    return per_task_traced, per_task_native, per_task_rss, text


def _uncollectable(samples: Sequence[Sample], heap_grows: bool) -> str | None:
    garbage_growth, garbage_p, text = _growth([(s.t, s.gc_garbage) for s in samples])
    if garbage_p < FD_ALPHA and garbage_growth >= MIN_GARBAGE_GROWTH:
        return "gc.garbage %s: objects the collector found but could not free" % text
    if not heap_grows:
        return None
    enabled = [s.gc_enabled for s in samples if s.gc_enabled is not None]
    if enabled and sum(enabled) <= len(enabled) / 2:
        return "the garbage collector is disabled (gc.disable()) while Python heap blocks grow: reference " \
               "cycles are never collected"
    frozen_growth, frozen_p, text = _growth([(s.t, s.gc_frozen) for s in samples])
    if frozen_p < FD_ALPHA and frozen_growth > 0:
        return "gc.freeze() keeps moving objects out of collection (frozen objects %s)" % text
    return None


def _outside_python(samples: Sequence[Sample], rss_growth: float, heap_text: str, native_traced: bool = False
                    ) -> tuple[str, tuple[str, ...]]:
    used_growth, used_p, used_text = _growth([(s.t, s.malloc_used) for s in samples])
    free_growth, free_p, free_text = _growth([(s.t, s.malloc_free) for s in samples])
    flat = "RSS grew by %.0f KiB while open fds and the Python heap stayed flat (%s)" % (rss_growth / 1024, heap_text)
    if not any(s.malloc_used is not None for s in samples):
        return NATIVE, (flat + "; allocator statistics unavailable",)
    if used_p < BLOCK_ALPHA and used_growth >= MIN_ALLOCATOR_SHARE * rss_growth:
        return NATIVE, (flat + "; glibc in-use bytes (mallinfo2) %s" % used_text,)
    if native_traced:
        # The extension's own bytes were traced: they are the leak, whatever glibc's counters showed in time.
        return NATIVE, (flat + "; glibc in-use bytes %s" % used_text,)
    if free_p < BLOCK_ALPHA and free_growth >= MIN_ALLOCATOR_SHARE * rss_growth:
        return FRAGMENTATION, (flat + "; glibc in-use bytes stayed flat (%s) while free-but-held bytes %s: "
                               "freed memory is kept, not reused" % (used_text, free_text),)
    return NATIVE, (flat + "; no allocator counter explains it (glibc in-use %s): memory mapped directly or by "
                    "an allocator of its own" % used_text,)


def _growth(points: Sequence[tuple[float, int | None]], per_task: bool = False) -> tuple[float, float, str]:
    """(growth from first to last block median, trend p-value, description).

    ``per_task``: points after tasks, spread evenly first (``trend.evenly``:
    an old process's memory is read after one task in N).
    """
    xs, ys = trend.as_arrays(points)
    if per_task:
        xs, ys = trend.evenly(xs, ys)
    if len(xs) < MIN_KIND_READINGS:
        return 0.0, 1.0, "had too few readings"
    bx, by = block_medians(xs, ys, 60)
    _, p = mann_kendall(by)
    growth = float(by[-1] - by[0]) if theil_sen(bx, by) > 0 else 0.0
    return growth, p, "went from %d to %d (trend p=%.2g)" % (by[0], by[-1], p)


def growing_fd_targets(snapshots: Sequence[FdSnapshot], limit: int = 3) -> tuple[str, ...]:
    """What the descriptors that piled up point to: targets whose count grew from the first snapshot to the last."""
    if len(snapshots) < 2:
        return ()
    first, last = dict(snapshots[0].targets), dict(snapshots[-1].targets)
    grown = sorted(((n - first.get(target, 0), target, n) for target, n in last.items()
                    if n > first.get(target, 0) and target != "(not inspected)"), reverse=True)[:limit]
    if not grown:
        return ()
    return ("descriptors that piled up point to: " + ", ".join(
        "%s (+%d, %d open)" % (target, delta, n) for delta, target, n in grown),)
