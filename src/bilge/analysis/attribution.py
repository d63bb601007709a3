"""Which task the growth follows: per-call memory left behind by each task name.

Each task record carries the process's RSS and Python heap blocks just
before and just after the task. Over the post-warm-up window, a task that
leaks leaves a positive mean delta; tasks that only allocate temporaries
average out to ~0, because what they free is reused by the next task.
Deltas from every process are pooled, so tasks interleaved across prefork
children still add up.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from bilge.model import TaskGrowth, TaskRecord

# A t statistic this high on >= MIN_CALLS calls is not noise.
MIN_T = 3.0
MIN_CALLS = 10


def task_growth(records: Iterable[TaskRecord]) -> tuple[TaskGrowth, ...]:
    """Per task name, the mean memory left behind per call, ranked.

    Args:
        records: post-warm-up task records (any number of processes).

    Returns:
        Task growths, most significant leaker first; ``score`` is the larger
        of the RSS and heap-block t statistics (0 when neither is positive).
    """
    rss: dict[str, list[float]] = defaultdict(list)
    blocks: dict[str, list[float]] = defaultdict(list)
    for rec in records:
        if rec.rss_before is not None and rec.rss_after is not None:
            rss[rec.name].append(rec.rss_after - rec.rss_before)
        if rec.blocks_before is not None and rec.blocks_after is not None:
            blocks[rec.name].append(rec.blocks_after - rec.blocks_before)
    out = []
    for name in set(rss) | set(blocks):
        r = np.asarray(rss.get(name, []), dtype=float)
        b = np.asarray(blocks.get(name, []), dtype=float)
        calls = max(len(r), len(b))
        score = max(_t_stat(r), _t_stat(b))
        out.append(TaskGrowth(task=name, calls=calls, bytes_per_call=float(r.mean()) if len(r) else 0.0,
                              blocks_per_call=float(b.mean()) if len(b) else 0.0, score=score))
    return tuple(sorted(out, key=lambda g: (-_significant(g), -g.bytes_per_call, -g.score)))


def leaking_task(growths: tuple[TaskGrowth, ...]) -> TaskGrowth | None:
    """The task the growth follows, if one stands out significantly."""
    for g in growths:
        if _significant(g) and (g.bytes_per_call > 0 or g.blocks_per_call > 0):
            return g
    return None


def _significant(g: TaskGrowth) -> bool:
    return g.calls >= MIN_CALLS and g.score >= MIN_T


def _t_stat(values: np.ndarray) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = float(values.mean())
    if mean <= 0:
        return 0.0
    sd = float(values.std(ddof=1))
    if sd == 0:
        return math.inf
    return mean / (sd / math.sqrt(n))
