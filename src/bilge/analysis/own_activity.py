"""Take the agent's own explain activity out of a process's task series.

After a process turns suspect the agent runs allocation episodes
(tracemalloc on a few tasks), native windows and holder searches inside
it. They leave steps in its memory: tracemalloc's tables are freed when an
episode ends, but glibc and pymalloc keep pages of them; naming sites fills
caches; a holder search's bookkeeping raises the high-water mark. Left in,
steps spread over the trend window would look like growth to the verdict
and the attribution.

The agent stores every budgeted run with its span (a store written before
runs were recorded falls back to the spans of its windows and holder
searches). The tasks that overlapped a run are dropped, and the memory
change across each such gap, **less the growth the process showed just
before it** (its slope over the last ``LOOKBACK`` kept tasks, times the
tasks in the gap), is subtracted from every reading after it. A benign
process (flat before) has its whole step taken out; a leaking one keeps
its own growth across the gap, so the episode that measures the leaky
task by design does not flatten the very trend being measured.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from bilge.model import MEMORY_STAGES, ProcessData, TaskRecord

# Kept tasks before a gap whose readings give the pace to expect across it;
# the pace is the difference of the medians of its first and last EDGE.
LOOKBACK = 200
EDGE = 20


def activity(p: ProcessData) -> list[tuple[float, float]]:
    """Time intervals during which the agent's memory-changing stages ran in this process, merged and sorted.

    Args:
        p: the stored process.

    Returns:
        (start, end) spans of its runs of ``MEMORY_STAGES``; for a store
        without such runs (older bilge), those of its windows and holder searches.
    """
    spans = [(r.started, r.ended) for r in p.cost.runs if r.stage in MEMORY_STAGES]
    if not spans:
        spans = [(w.started, w.ended) for w in p.windows]
        spans += [(h.started, h.t) for h in p.holders]
    spans.sort()
    merged: list[tuple[float, float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def without_activity(tasks: Sequence[TaskRecord], spans: Sequence[tuple[float, float]]) -> tuple[TaskRecord, ...]:
    """Tasks with those overlapping ``spans`` dropped and later readings shifted back by each gap's step."""
    if not spans:
        return tuple(tasks)
    out: list[TaskRecord] = []
    rss_shift = blocks_shift = 0
    span_index = 0
    last_kept: TaskRecord | None = None
    pending_gap = False
    # (seq, shifted rss_after, shifted blocks_after) of the last kept tasks.
    recent: deque[tuple[int, int | None, int | None]] = deque(maxlen=LOOKBACK)
    for t in tasks:
        while span_index < len(spans) and spans[span_index][1] < t.started:
            span_index += 1
            pending_gap = True
        overlaps = span_index < len(spans) and t.ended >= spans[span_index][0] and t.started <= spans[span_index][1]
        if overlaps:
            pending_gap = True
            continue
        after_gap = pending_gap and last_kept is not None
        if after_gap:
            # Readings at the end of kept tasks only: a "before" taken right
            # after the activity (or carried over from a dropped task) still
            # holds its transient peak.
            assert last_kept is not None
            tasks_across = t.seq - last_kept.seq
            rss_shift += _step(last_kept.rss_after, t.rss_after, _pace(recent, 1), tasks_across)
            blocks_shift += _step(last_kept.blocks_after, t.blocks_after, _pace(recent, 2), tasks_across)
        pending_gap = False
        shifted = replace(t, rss_before=None if after_gap else _minus(t.rss_before, rss_shift),
                          rss_after=_minus(t.rss_after, rss_shift),
                          blocks_before=None if after_gap else _minus(t.blocks_before, blocks_shift),
                          blocks_after=_minus(t.blocks_after, blocks_shift))
        out.append(shifted)
        recent.append((t.seq, shifted.rss_after, shifted.blocks_after))
        last_kept = t
    return tuple(out)


def _pace(recent: deque[tuple[int, int | None, int | None]], field: int) -> float:
    """Growth per task over the recent kept tasks (never negative: shrinking is not extrapolated)."""
    points: list[tuple[int, int]] = []
    for r in recent:
        value = r[field]
        if value is not None:
            points.append((r[0], value))
    if len(points) < 2 * EDGE:
        return 0.0
    first, last = points[:EDGE], points[-EDGE:]
    span = statistics.median(s for s, _ in last) - statistics.median(s for s, _ in first)
    if span <= 0:
        return 0.0
    rise = statistics.median(v for _, v in last) - statistics.median(v for _, v in first)
    return max(0.0, rise / span)


def _step(before: int | None, after: int | None, pace: float, tasks_across: int) -> int:
    """The change across a gap beyond what the process's own pace explains."""
    if before is None or after is None:
        return 0
    return int(round((after - before) - pace * max(0, tasks_across)))


def _minus(value: int | None, shift: int) -> int | None:
    return None if value is None else value - shift
