"""The agent's own, cheap "is this process suspect?" check. Stdlib-only.

The analysis gives the real verdict, later and outside the process; the
agent only needs a cheap, early signal to decide whether to open an
allocation window. It keeps a decimated ring of memory readings (RSS after
each task, or periodic RSS for processes that run no tasks; or heap blocks
after each task) and calls a
process suspect when the recent half of the ring trends up (``bilge.trendtest``,
the analysis's own test, on block medians) by a material amount.
"""

from __future__ import annotations

from collections import deque

from bilge import trendtest

# One reading per read task (every task while a process is young, then one
# in N) is kept, decimated to at most RING readings by keeping every 2nd,
# 4th, … as the process ages.
RING = 600
BLOCKS = 20
# Task readings (one per task) before the process can be suspect at all.
MIN_TASK_READINGS = 300
Z_SUSPECT = 3.3  # one-sided p ~ 5e-4
Z_TAIL = 2.3  # the most recent quarter must still be rising (p ~ 0.01)
MIN_GROWTH = 256 * 1024
# For readings of Python heap blocks (~64 B each): a leak of small objects
# (loggers, closures, weakrefs) grows the heap long before RSS moves by
# MIN_GROWTH, because it first refills memory that warm-up freed.
MIN_HEAP_GROWTH = 1024


class Suspicion:
    """A bounded ring of readings with a cheap upward-trend test."""

    def __init__(self, min_growth: float = MIN_GROWTH) -> None:
        self._min_growth = min_growth
        self._ring: deque[float] = deque(maxlen=RING)
        # Where each kept reading was taken (the task it followed): past a
        # process's young phase only some tasks are read, at uneven gaps.
        self._at: deque[float] = deque(maxlen=RING)
        self._seen = 0
        self._stride = 1
        # The agent asks several times per loop (window, fleet state,
        # recycling); the answer only changes with a new reading.
        self._judged: tuple[int, bool] = (-1, False)
        # Readings are kept relative to the memory the agent's own work
        # (a window's tables, a holder search's peak) left behind: see gap().
        self._offset = 0.0
        self._last: float | None = None
        self._rebase = False

    def gap(self) -> None:
        """Readings are being skipped while the agent works in the process; the next one re-bases.

        Whatever the memory moved by across the gap (the work's own tables,
        what it left resident after freeing) is taken out of every later
        reading, so the trend sees the process, not the agent.
        """
        self._rebase = True

    def add(self, value: float | None, at: float | None = None) -> None:
        """Record one reading (None is ignored), taken after task ``at`` (default: the next reading's number)."""
        if value is None:
            return
        if self._rebase and self._last is not None:
            self._offset += value - self._last
        self._rebase, self._last = False, value
        value -= self._offset
        self._seen += 1
        # Decimated by where readings were taken, not by how many came: a
        # process read after every task while young and after one task in N
        # later keeps a ring that spans its life evenly in tasks (counted by
        # readings, its young phase would fill the ring for ~100k tasks).
        x = self._seen if at is None else at
        if self._at and x < self._at[-1] + self._stride:
            return
        self._ring.append(value)
        self._at.append(x)
        if len(self._ring) == RING and x >= RING * self._stride * 2:
            # Halve the resolution so the ring spans the whole life again.
            self._stride *= 2
            for ring in (self._ring, self._at):
                kept = list(ring)[::2]
                ring.clear()
                ring.extend(kept)

    def growth_per_reading(self) -> float:
        """Bytes per reading (per task, for task readings) over the recent half, from block medians; 0 if unknown."""
        if len(self._ring) < MIN_TASK_READINGS:
            return 0.0
        half = len(self._ring) // 2
        values, at = list(self._ring)[half:], list(self._at)[half:]
        size = max(1, len(values) // BLOCKS)
        first, last = sorted(values[:size])[size // 2], sorted(values[-size:])[size // 2]
        # Between the middles of the first and the last block.
        return (last - first) / max(1.0, at[-size + size // 2] - at[size // 2])

    def level(self) -> float | None:
        """The median of the most recent block of readings (re-based across gaps); None before any."""
        if not self._ring:
            return None
        values = list(self._ring)
        size = max(1, len(values) // (2 * BLOCKS))
        return sorted(values[-size:])[size // 2]

    def suspect(self) -> bool:
        """True when the recent readings grow steadily and materially."""
        if self._judged[0] != self._seen:
            self._judged = (self._seen, self._judge())
        return self._judged[1]

    def _judge(self) -> bool:
        if len(self._ring) < MIN_TASK_READINGS:
            return False
        values = list(self._ring)[len(self._ring) // 2:]
        size = max(1, len(values) // BLOCKS)
        medians = [sorted(values[i:i + size])[len(values[i:i + size]) // 2] for i in range(0, len(values), size)]
        if medians[-1] - medians[0] < self._min_growth:
            return False
        # A window costs ~10x per traced task: a cache still filling (growth
        # that is slowing down) must not open one, so the last quarter has to
        # keep rising too, as in the analysis's own verdict.
        tail = medians[len(medians) // 2:]
        return trendtest.mann_kendall(medians)[0] >= Z_SUSPECT and trendtest.mann_kendall(tail)[0] >= Z_TAIL
