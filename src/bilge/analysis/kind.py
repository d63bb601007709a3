"""What kind of memory leaks: file descriptors, Python objects, or native.

Decided from series the agent already samples, in this order:

1. ``file-descriptors``: open fds grow steadily with the tasks.
2. ``python-objects``: Python's allocated heap blocks grow steadily and
   account for a real share of the RSS growth.
3. ``native``: RSS grows while neither of the above moves (C extensions,
   ctypes, anything allocating outside Python's object allocator).

Fragmentation and uncollectable cycles need allocator statistics and are
left to the explain stage (a later issue); until then they are not claimed.
"""

from __future__ import annotations

from collections.abc import Sequence

from bilge.analysis.stats import block_medians, mann_kendall, theil_sen
from bilge.model import Sample, TaskRecord

FILE_DESCRIPTORS = "file-descriptors"
PYTHON_OBJECTS = "python-objects"
NATIVE = "native"

MIN_FD_GROWTH = 4
MIN_BLOCK_GROWTH = 200
# Few samples fall in a short run (one every 0.5 s), and 6 strictly rising
# points already give p=0.0014 in the Mann-Kendall test; fd counts are exact.
FD_ALPHA = 0.01
BLOCK_ALPHA = 1e-3
# A trend this strong means objects are retained call after call even when
# they are big (str/bytes above 512 B live outside pymalloc blocks).
BLOCK_STRONG_ALPHA = 1e-8
# pymalloc blocks are 8-512 bytes; a typical small object takes ~64. Heap
# growth must explain this share of the RSS growth to be the leak's kind:
# the interpreter's own churn moves a few hundred blocks in any process.
BLOCK_BYTES = 64
MIN_HEAP_SHARE = 0.10


def classify(samples: Sequence[Sample], tasks: Sequence[TaskRecord]) -> tuple[str, tuple[str, ...]]:
    """Classify a leaking process from its post-warm-up samples and tasks.

    Returns:
        (kind, evidence): the kind and the readings that decided it.
    """
    fd_points = [(float(s.tasks_done) if tasks else s.t, s.fds) for s in samples if s.fds is not None]
    fd_growth, fd_p, text = _growth(fd_points)
    if fd_p < FD_ALPHA and fd_growth >= MIN_FD_GROWTH:
        return FILE_DESCRIPTORS, ("open file descriptors " + text,)
    block_points: list[tuple[float, int | None]]
    rss_points: list[tuple[float, int | None]]
    if tasks:
        block_points = [(float(t.seq), t.blocks_after) for t in tasks]
        rss_points = [(float(t.seq), t.rss_after) for t in tasks]
    else:
        block_points = [(s.t, s.heap_blocks) for s in samples]
        rss_points = [(s.t, s.rss) for s in samples]
    block_growth, block_p, text = _growth(block_points)
    rss_growth, _, _ = _growth(rss_points)
    share = block_growth * BLOCK_BYTES / rss_growth if rss_growth > 0 else 1.0
    heap_grows = block_p < BLOCK_STRONG_ALPHA or (block_p < BLOCK_ALPHA and share >= MIN_HEAP_SHARE)
    if heap_grows and block_growth >= MIN_BLOCK_GROWTH:
        return PYTHON_OBJECTS, ("Python heap blocks %s, ~%.0f%% of the RSS growth" % (text, 100 * min(share, 1)),)
    return NATIVE, ("RSS grew by %.0f KiB while open fds and the Python heap stayed flat (heap blocks %s, "
                    "~%.0f%% of the RSS growth)" % (rss_growth / 1024, text, 100 * min(share, 1)),)


def _growth(points: Sequence[tuple[float, int | None]]) -> tuple[float, float, str]:
    """(growth from first to last block median, trend p-value, description)."""
    kept = [(x, y) for x, y in points if y is not None]
    if len(kept) < 6:
        return 0.0, 1.0, "had too few readings"
    bx, by = block_medians([x for x, _ in kept], [y for _, y in kept], 60)
    _, p = mann_kendall(by)
    growth = float(by[-1] - by[0]) if theil_sen(bx, by) > 0 else 0.0
    return growth, p, "went from %d to %d (trend p=%.2g)" % (by[0], by[-1], p)
