"""What the agent's stages produced and the next flush writes. Stdlib-only.

Stages append here and never touch the store; the scheduler drains the
outbox into the store in one transaction (``Store.flush``). Every buffer is
bounded: what overflows is counted (``dropped_rows``), not kept.
"""

from __future__ import annotations

import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bilge.model import AllocationWindow, BudgetState, StageCost, StageRun

HolderRow = tuple[float, float, str, str, str, "str | None", "int | None", int, "str | None"]


class Store(Protocol):
    """Where an agent writes: ``store.writer.StoreWriter`` in production, an in-memory store in tests."""

    def register_process(self, pid: int, ppid: int, parent_id: int | None, role: str, argv: str) -> int: ...

    def flush(self, process_id: int, samples: Sequence[Any], tasks: Sequence[Any], censuses: Sequence[Any],
              role: str | None, errors: Sequence[tuple[float, str, str]], ended: float | None = None,
              windows: Sequence[Any] = (), fd_targets: Sequence[Any] = (), facts: dict[str, int] | None = None,
              holders: Sequence[Any] = (), stage_costs: Sequence[StageCost] = (),
              stage_runs: Sequence[StageRun] = (), budget: BudgetState | None = None,
              containers: Sequence[Any] = (), snapshots: Sequence[Any] = (),
              gc_stats: Sequence[tuple[int, int, int]] = ()) -> None: ...

    def claim_recycle(self, process_id: int, t: float, reason: str, rss: int | None, tasks_done: int,
                      snapshot: str, min_interval: float, urgent: bool = False) -> bool: ...

    def refuse_recycle(self, process_id: int, why: str) -> None: ...

    def abandon(self) -> None: ...


# Task names a process's rows may name; past it, "<other>" (a bounded table).
MAX_TASK_NAMES = 1000
OTHER_NAME = "<other>"
# What a missing reading (a task whose memory was not read) is stored as in
# the packed integer fields: a reading is never negative.
_NONE = -1


# One task row in machine numbers: seq, name id, rss0, rss1, blocks0, blocks1,
# gc runs, items0, items1, started, ended, failed.
_ROW = struct.Struct("=9q2d?")
# Rows the buffer grows by, at least (it keeps its high-water mark).
_GROW_ROWS = 256


class _PackedRows:
    """One buffer of task rows: packed rows in one bytearray, reused once drained.

    One ``pack_into`` per row (``TaskRows.add``) writes one contiguous run
    of bytes: after a task body has evicted the caches, a row in a dozen
    separate arrays cost a cache miss per array.
    """

    def __init__(self) -> None:
        self.n = 0
        self.buf = bytearray()

    def row(self, i: int) -> tuple[Any, ...]:
        """Row ``i`` (negative: from the end), as ``rows`` gives it."""
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return _ROW.unpack_from(self.buf, (i % self.n) * _ROW.size)

    def rows(self) -> list[tuple[Any, ...]]:
        """The rows as tuples (seq, name id, rss0, rss1, blocks0, blocks1, gc runs, items0, items1, started,
        ended, failed)."""
        with memoryview(self.buf) as view:
            return list(_ROW.iter_unpack(view[:self.n * _ROW.size]))


class TaskRows:
    """Task rows packed as machine numbers, reused from one flush to the next.

    A task row is added after every task, in the host's task thread, and a
    row of Python objects (a tuple, its floats and large ints: ~6 heap
    blocks) stayed in the heap until the next flush: the heap-block series
    the verdict reads then rose by a few blocks per task and fell at every
    flush, a sawtooth bigger than a slow leak. Packed rows allocate nothing
    once the buffer reaches its high-water mark (bounded by the limit), and
    a row costs one ``pack_into`` instead of eight objects.
    Task names are kept once each, in a bounded table.

    Rows come from any task thread (a threads pool has several) and are
    drained by the agent's thread: two buffers, swapped under a lock that is
    only ever held for one row's stores or for the swap, never while rows are
    read out (a task thread never waits for a flush).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._active = _PackedRows()
        self._spare = _PackedRows()
        self._names: list[str] = []
        self._ids: dict[str, int] = {}
        self.dropped = 0  # rows refused because the buffer was full
        # Called (in the task's thread) when a buffer grows past its high-water mark: memory the agent takes.
        self.on_grow: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return self._active.n

    def add(self, seq: int, name: str, started: float, ended: float, rss0: int | None, rss1: int | None,
            blocks0: int | None, blocks1: int | None, failed: bool, gc_runs: int, items0: int | None = None,
            items1: int | None = None) -> bool:
        """Add one row; False (nothing added, one more dropped) when the buffer is full.

        The one call a task end makes into the outbox (in the host's task
        thread, caches cold after the task: each call layer costs there).
        """
        with self._lock:
            active = self._active
            n = active.n
            if n >= self.limit:
                self.dropped += 1
                return False
            name_id = self._ids.get(name)
            if name_id is None:
                name_id = self._name_id(name)
            offset = n * _ROW.size
            if offset + _ROW.size > len(active.buf):
                # Past the high-water mark only: a malloc'd buffer, no pymalloc blocks.
                active.buf.extend(bytes(max(_GROW_ROWS, n) * _ROW.size))
                self.on_grow()
            _ROW.pack_into(active.buf, offset, seq, name_id, _NONE if rss0 is None else rss0,
                           _NONE if rss1 is None else rss1, _NONE if blocks0 is None else blocks0,
                           _NONE if blocks1 is None else blocks1, gc_runs, _NONE if items0 is None else items0,
                           _NONE if items1 is None else items1, started, ended, failed)
            active.n = n + 1
        return True

    def _name_id(self, name: str) -> int:
        if len(self._names) >= MAX_TASK_NAMES:
            name = OTHER_NAME
            if name in self._ids:
                return self._ids[name]
        self._ids[name] = len(self._names)
        self._names.append(name)
        return self._ids[name]

    def _row(self, packed: tuple[Any, ...]) -> tuple[Any, ...]:
        seq, name_id, rss0, rss1, blocks0, blocks1, gc_runs, items0, items1, started, ended, failed = packed
        return (seq, self._names[name_id], started, ended,
                None if rss0 == _NONE else rss0, None if rss1 == _NONE else rss1,
                None if blocks0 == _NONE else blocks0, None if blocks1 == _NONE else blocks1,
                int(failed), gc_runs, None if items0 == _NONE else items0, None if items1 == _NONE else items1)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        """Row ``i`` of those waiting, as the store takes it (seq, name, started, ended, rss0, rss1, blocks0,
        blocks1, failed, gc runs, items0, items1)."""
        return self._row(self._active.row(i))

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return (self._row(packed) for packed in self._active.rows())

    def drain(self) -> list[tuple[Any, ...]]:
        """Every row, oldest first; the buffer is left empty (its buffer is kept for reuse)."""
        with self._lock:
            full, self._active = self._active, self._spare
        out = [self._row(packed) for packed in full.rows()]
        full.n = 0
        self._spare = full
        return out


@dataclass
class Outbox:
    """Rows waiting for the next flush, one bounded buffer per kind."""

    limit: int = 20000
    samples: deque[tuple[Any, ...]] = field(default_factory=deque)
    tasks: TaskRows = field(init=False)
    # Task ends add their rows straight into the buffer (``TaskRows.add``): one call a task.
    add_task: Callable[..., bool] = field(init=False, repr=False)
    # (t, tasks done, objects, duration, types): a scheduled census and the
    # explain stage's own counts may both come between two flushes.
    censuses: deque[tuple[Any, ...]] = field(default_factory=lambda: deque(maxlen=8))
    windows: list[AllocationWindow] = field(default_factory=list)
    holders: deque[HolderRow] = field(default_factory=lambda: deque(maxlen=200))
    fd_targets: deque[tuple[float, int, tuple[tuple[str, int], ...]]] = field(
        default_factory=lambda: deque(maxlen=100))
    # (t, tasks done, seconds, ((path, container type, length, element type) …)): one per scan.
    containers: deque[tuple[float, int, float, tuple[tuple[str, str, int, str], ...]]] = field(
        default_factory=lambda: deque(maxlen=8))
    # (t, tasks done, seconds, summary): snapshots a user asked for (few: one per request).
    snapshots: deque[tuple[float, int, float, dict[str, Any]]] = field(default_factory=lambda: deque(maxlen=8))
    errors: list[tuple[float, str, str]] = field(default_factory=list)
    facts: dict[str, int] = field(default_factory=dict)
    role: str | None = None
    # Samples refused past the limit (task rows count theirs in ``tasks``).
    dropped_samples: int = 0

    def __post_init__(self) -> None:
        self.tasks = TaskRows(self.limit)
        self.add_task = self.tasks.add

    @property
    def dropped_rows(self) -> int:
        """Rows (task rows and samples) refused because their buffer was full."""
        return self.tasks.dropped + self.dropped_samples

    def add_sample(self, row: tuple[Any, ...]) -> None:
        """Buffer one process sample (dropped and counted past the limit)."""
        self._bounded(self.samples, row)

    def add_holders(self, t: float, started: float, paths: Sequence[Any]) -> None:
        """Buffer the paths of one holder search (``samplers.holders.HolderPath``), found at ``t``."""
        for h in paths:
            self.holders.append((t, started, h.type_name, h.path, h.root_kind, h.container_type or None,
                                 h.container_length if h.container_length >= 0 else None, h.targets,
                                 "\n".join(h.values) if h.values else None))

    def add_error(self, t: float, source: str, message: str) -> None:
        """Buffer an error record (at most 100 between flushes)."""
        if len(self.errors) < 100:
            self.errors.append((t, source, message))

    def requeue(self, tasks: Sequence[tuple[Any, ...]], samples: Sequence[tuple[Any, ...]]) -> None:
        """Put back the task rows and samples of a flush that failed, for the next one (rows are ``drain``'s)."""
        for row in tasks:
            self.add_task(*row)
        for sample in samples:
            self._bounded(self.samples, sample)

    def _bounded(self, buffer: deque[tuple[Any, ...]], row: tuple[Any, ...]) -> None:
        if len(buffer) >= self.limit:
            self.dropped_samples += 1
            return
        buffer.append(row)

    def drain(self) -> dict[str, Any]:
        """Everything buffered, as keyword arguments of ``Store.flush``; the buffers are left empty."""
        out: dict[str, Any] = {
            "samples": _drain(self.samples), "tasks": self.tasks.drain(), "censuses": _drain(self.censuses),
            "windows": self.windows, "holders": _drain(self.holders), "fd_targets": _drain(self.fd_targets),
            "containers": _drain(self.containers), "snapshots": _drain(self.snapshots),
            "errors": self.errors, "facts": self.facts, "role": self.role,
        }
        self.windows, self.errors, self.facts, self.role = [], [], {}, None
        return out


def _drain(buffer: deque[Any]) -> list[Any]:
    out = []
    while buffer:
        out.append(buffer.popleft())
    return out
