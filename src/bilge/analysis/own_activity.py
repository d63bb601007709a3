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
before it** (its slope over its last ``LOOKBACK`` kept readings, times
the tasks across the gap), is subtracted from every reading after it. A benign
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

# Kept readings before a gap that give the pace to expect across it;
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
    """Tasks with those overlapping ``spans`` dropped and later readings shifted back by each gap's step.

    Each series (RSS, heap blocks) is re-based on its own readings: heap
    blocks are read on one task in N on big heaps, so the step of a gap is
    taken between the last task before it and the first task after it that
    have a reading.
    """
    if not spans:
        return tuple(tasks)
    out: list[TaskRecord] = []
    rss, blocks = _Rebase(), _Rebase()
    span_index = 0
    gap = False
    for t in tasks:
        while span_index < len(spans) and spans[span_index][1] < t.started:
            span_index += 1
            gap = True
        overlaps = span_index < len(spans) and t.ended >= spans[span_index][0] and t.started <= spans[span_index][1]
        if overlaps:
            gap = True
            continue
        if gap:
            rss.gap()
            blocks.gap()
        gap = False
        # A "before" taken right after the activity (or carried over from a
        # dropped task) still holds its transient peak: cleared.
        rss_before, rss_after = rss.shift(t.seq, t.rss_before, t.rss_after)
        blocks_before, blocks_after = blocks.shift(t.seq, t.blocks_before, t.blocks_after)
        out.append(replace(t, rss_before=rss_before, rss_after=rss_after, blocks_before=blocks_before,
                           blocks_after=blocks_after))
    return tuple(out)


class _Rebase:
    """One memory series' running shift: each gap's step, less the pace the series showed before it."""

    def __init__(self) -> None:
        self.offset = 0
        self.pending = False  # a gap since the last reading
        self.before_cleared = False
        self.last: tuple[int, int] | None = None  # (seq, raw reading) of the last kept reading
        self.recent: deque[tuple[int, int]] = deque(maxlen=LOOKBACK)  # (seq, shifted reading)

    def gap(self) -> None:
        self.pending = self.before_cleared = True

    def shift(self, seq: int, before: int | None, after: int | None) -> tuple[int | None, int | None]:
        """The task's (before, after) readings shifted; ``before`` cleared on the first task after a gap."""
        clear = self.before_cleared
        self.before_cleared = False
        if after is None:
            return None if clear else _minus(before, self.offset), None
        if self.pending and self.last is not None:
            last_seq, last_value = self.last
            self.offset += _step(last_value, after, _pace(self.recent), seq - last_seq)
            clear = True
        self.pending = False
        self.last = (seq, after)
        shifted = after - self.offset
        self.recent.append((seq, shifted))
        return None if clear else _minus(before, self.offset), shifted


def _pace(recent: deque[tuple[int, int]]) -> float:
    """Growth per task over the recent kept readings (never negative: shrinking is not extrapolated)."""
    if len(recent) < 2 * EDGE:
        return 0.0
    points = list(recent)
    first, last = points[:EDGE], points[-EDGE:]
    span = statistics.median(s for s, _ in last) - statistics.median(s for s, _ in first)
    if span <= 0:
        return 0.0
    rise = statistics.median(v for _, v in last) - statistics.median(v for _, v in first)
    return max(0.0, rise / span)


def _step(before: int, after: int, pace: float, tasks_across: int) -> int:
    """The change across a gap beyond what the process's own pace explains."""
    return int(round((after - before) - pace * max(0, tasks_across)))


def _minus(value: int | None, shift: int) -> int | None:
    return None if value is None else value - shift
