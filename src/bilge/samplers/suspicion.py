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

from array import array

from bilge import trendtest

# One reading per read task (every task while a process is young, then one
# in N) is kept, decimated to at most RING readings by keeping every 2nd,
# 4th, … as the process ages.
RING = 600
BLOCKS = 20
# Tasks (or, for readings on a clock, readings) the ring must span before the
# process can be suspect at all, and readings it must hold: a process whose
# reads are sampled (one task in N, see bilge.agent.watch) holds fewer
# readings over the same tasks.
MIN_TASK_READINGS = 300
MIN_READINGS = 100
Z_SUSPECT = 3.3  # one-sided p ~ 5e-4
Z_TAIL = 2.3  # the most recent quarter must still be rising (p ~ 0.01)
MIN_GROWTH = 256 * 1024
# For readings of Python heap blocks (~64 B each): a leak of small objects
# (loggers, closures, weakrefs) grows the heap long before RSS moves by
# MIN_GROWTH, because it first refills memory that warm-up freed.
MIN_HEAP_GROWTH = 1024


class _Ring:
    """A fixed ring of doubles, preallocated: filling it allocates nothing.

    A deque of floats allocates an object per reading until it is full: a
    few thousand heap blocks over the process's first readings, which the
    heap's own suspicion (and the analysis) then saw as the host's growth.
    """

    def __init__(self, size: int) -> None:
        self._data = array("d", bytes(8 * size))
        self._size = size
        self._start = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def append(self, value: float) -> None:
        """Add a value at the end; when full, the oldest goes."""
        if self._len < self._size:
            self._data[(self._start + self._len) % self._size] = value
            self._len += 1
        else:
            self._data[self._start] = value
            self._start = (self._start + 1) % self._size

    def __getitem__(self, index: int) -> float:
        if not -self._len <= index < self._len:
            raise IndexError("ring index out of range")
        return self._data[(self._start + index % self._len) % self._size]

    def values(self) -> list[float]:
        """The values, oldest first."""
        end = self._start + self._len
        if end <= self._size:
            return self._data[self._start:end].tolist()
        return self._data[self._start:].tolist() + self._data[:end - self._size].tolist()

    def keep_every_other(self) -> None:
        """Keep the 1st, 3rd, 5th ... values (in place)."""
        kept = self.values()[::2]
        self._data[:len(kept)] = array("d", kept)
        self._start, self._len = 0, len(kept)


class Suspicion:
    """A bounded ring of readings with a cheap upward-trend test."""

    def __init__(self, min_growth: float = MIN_GROWTH) -> None:
        self._min_growth = min_growth
        self._ring = _Ring(RING)
        # Where each kept reading was taken (the task it followed): past a
        # process's young phase only some tasks are read, at uneven gaps.
        self._at = _Ring(RING)
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
            self._ring.keep_every_other()
            self._at.keep_every_other()

    def _enough(self) -> bool:
        ring = self._ring
        if len(ring) < MIN_READINGS:
            return False
        return self._at[-1] - self._at[0] + 1 >= MIN_TASK_READINGS

    def growth_per_reading(self) -> float:
        """Bytes per reading (per task, for task readings) over the recent half, from block medians; 0 if unknown."""
        if not self._enough():
            return 0.0
        half = len(self._ring) // 2
        values, at = self._ring.values()[half:], self._at.values()[half:]
        size = max(1, len(values) // BLOCKS)
        first, last = sorted(values[:size])[size // 2], sorted(values[-size:])[size // 2]
        # Between the middles of the first and the last block.
        return (last - first) / max(1.0, at[-size + size // 2] - at[size // 2])

    def level(self) -> float | None:
        """The median of the most recent block of readings (re-based across gaps); None before any."""
        if not self._ring:
            return None
        values = self._ring.values()
        size = max(1, len(values) // (2 * BLOCKS))
        return sorted(values[-size:])[size // 2]

    def suspect(self) -> bool:
        """True when the recent readings grow steadily and materially."""
        if self._judged[0] != self._seen:
            self._judged = (self._seen, self._judge())
        return self._judged[1]

    def _judge(self) -> bool:
        if not self._enough():
            return False
        values = self._ring.values()[len(self._ring) // 2:]
        size = max(1, len(values) // BLOCKS)
        medians = [sorted(values[i:i + size])[len(values[i:i + size]) // 2] for i in range(0, len(values), size)]
        if medians[-1] - medians[0] < self._min_growth:
            return False
        # A window costs ~10x per traced task: a cache still filling (growth
        # that is slowing down) must not open one, so the last quarter has to
        # keep rising too, as in the analysis's own verdict.
        tail = medians[len(medians) // 2:]
        return trendtest.mann_kendall(medians)[0] >= Z_SUSPECT and trendtest.mann_kendall(tail)[0] >= Z_TAIL
