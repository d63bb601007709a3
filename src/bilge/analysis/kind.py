"""What kind of memory leaks: file descriptors, Python objects, or native.

Decided from series the agent already samples, in this order:

1. ``file-descriptors``: open fds grow steadily with the tasks.
2. ``python-objects``: Python's allocated heap blocks grow steadily.
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
ALPHA = 1e-3


def classify(samples: Sequence[Sample], tasks: Sequence[TaskRecord]) -> tuple[str, tuple[str, ...]]:
    """Classify a leaking process from its post-warm-up samples and tasks.

    Returns:
        (kind, evidence): the kind and the readings that decided it.
    """
    fd_points = [(s.tasks_done if tasks else s.t, s.fds) for s in samples if s.fds is not None]
    grew, text = _steady_growth(fd_points, MIN_FD_GROWTH)
    if grew:
        return FILE_DESCRIPTORS, ("open file descriptors " + text,)
    if tasks:
        block_points = [(t.seq, t.blocks_after) for t in tasks if t.blocks_after is not None]
    else:
        block_points = [(s.t, s.heap_blocks) for s in samples if s.heap_blocks is not None]
    grew, text = _steady_growth(block_points, MIN_BLOCK_GROWTH)
    if grew:
        return PYTHON_OBJECTS, ("Python heap blocks " + text,)
    return NATIVE, ("RSS grows while open fds and Python heap blocks stay flat (%s)" % text,)


def _steady_growth(points: Sequence[tuple[float, float | None]], min_growth: float) -> tuple[bool, str]:
    kept = [(x, y) for x, y in points if y is not None]
    if len(kept) < 8:
        return False, "not enough readings"
    bx, by = block_medians([x for x, _ in kept], [y for _, y in kept], 60)
    _, p = mann_kendall(by)
    slope = theil_sen(bx, by)
    growth = float(by[-1] - by[0])
    text = "went from %d to %d (trend p=%.2g)" % (by[0], by[-1], p)
    return (p < ALPHA and slope > 0 and growth >= min_growth), text
