"""Take the agent's own explain activity out of a process's task series.

After a process turns suspect the agent opens allocation windows
(tracemalloc, or glibc's in-use bytes per line) and searches for holders.
These run inside the process and can raise its RSS high-water mark
(tracemalloc's tables, the search's bookkeeping) and leave a few heap
blocks behind (``__dict__``s materialised while naming paths). Left in,
those steps would look like growth to the trend and to the attribution.

The agent stores every budgeted run with its span, so the activity is the
runs of the stages in ``MEMORY_STAGES``; a store written before runs were
recorded falls back to the spans of the stored windows and holder searches.
Here the tasks that overlapped the activity are dropped and
the memory change across each such gap is subtracted from everything after
it. The leak's own growth during a gap (a few tasks' worth) is lost, which
biases slopes down by that much: a price worth paying for never blaming the
user for bilge's own memory.

Allocation episodes (``DROP_ONLY_STAGES``) are different. Their tasks are
dropped (the traced tasks' readings hold snapshots in flight). The heap
blocks are not shifted: tracemalloc's tables are not Python blocks, and the
measured task is the leaky one by design, so subtracting sixteen episodes'
worth of its blocks would flatten the very trend being measured. RSS is
shifted: tracemalloc's tables, freed when an episode ends, leave a step of
up to megabytes in RSS (pages glibc and pymalloc keep), which a run of
episodes spread over the window would turn into a slope; the few tasks'
worth of a real leak lost with it is the smaller error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from bilge.model import DROP_ONLY_STAGES, MEMORY_STAGES, ProcessData, TaskRecord


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
    """Tasks with those overlapping ``spans`` dropped and later memory readings shifted back."""
    if not spans:
        return tuple(tasks)
    out: list[TaskRecord] = []
    rss_shift = blocks_shift = 0
    span_index = 0
    last_kept: TaskRecord | None = None
    pending_gap = False
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
            # holds its transient peak. One task's own growth goes with it.
            assert last_kept is not None
            rss_shift += _delta(last_kept.rss_after, t.rss_after)
            blocks_shift += _delta(last_kept.blocks_after, t.blocks_after)
        pending_gap = False
        shifted = replace(t, rss_before=None if after_gap else _minus(t.rss_before, rss_shift),
                          rss_after=_minus(t.rss_after, rss_shift),
                          blocks_before=None if after_gap else _minus(t.blocks_before, blocks_shift),
                          blocks_after=_minus(t.blocks_after, blocks_shift))
        out.append(shifted)
        last_kept = t
    return tuple(out)


def _delta(before: int | None, after: int | None) -> int:
    return after - before if before is not None and after is not None else 0


def _minus(value: int | None, shift: int) -> int | None:
    return None if value is None else value - shift


def disturbed(p: ProcessData) -> list[tuple[float, float]]:
    """Time intervals of the agent's runs that only disturb the tasks they overlap (allocation episodes)."""
    return sorted((r.started, r.ended) for r in p.cost.runs if r.stage in DROP_ONLY_STAGES)


def without_disturbed(tasks: Sequence[TaskRecord], spans: Sequence[tuple[float, float]]) -> tuple[TaskRecord, ...]:
    """Tasks with those overlapping ``spans`` dropped, the next task's "before" readings (taken then)
    cleared, and RSS after each gap shifted back by the change across it (heap blocks are not shifted)."""
    if not spans:
        return tuple(tasks)
    out: list[TaskRecord] = []
    dropped = False
    rss_shift = 0
    last_kept: TaskRecord | None = None
    i = 0
    for t in tasks:
        while i < len(spans) and spans[i][1] < t.started:
            i += 1
        if i < len(spans) and t.ended >= spans[i][0] and t.started <= spans[i][1]:
            dropped = True
            continue
        if dropped and last_kept is not None:
            rss_shift += _delta(last_kept.rss_after, t.rss_after)
        if dropped or rss_shift:
            out.append(replace(t, rss_before=None if dropped else _minus(t.rss_before, rss_shift),
                               rss_after=_minus(t.rss_after, rss_shift),
                               blocks_before=None if dropped else t.blocks_before))
        else:
            out.append(t)
        dropped = False
        last_kept = t
    return tuple(out)
