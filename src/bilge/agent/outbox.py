"""What the agent's stages produced and the next flush writes. Stdlib-only.

Stages append here and never touch the store; the scheduler drains the
outbox into the store in one transaction (``Store.flush``). Every buffer is
bounded: what overflows is counted (``dropped_rows``), not kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
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
              stage_runs: Sequence[StageRun] = (), budget: BudgetState | None = None) -> None: ...

    def claim_recycle(self, process_id: int, t: float, reason: str, rss: int | None, tasks_done: int,
                      snapshot: str, min_interval: float, urgent: bool = False) -> bool: ...

    def refuse_recycle(self, process_id: int, why: str) -> None: ...

    def abandon(self) -> None: ...


@dataclass
class Outbox:
    """Rows waiting for the next flush, one bounded buffer per kind."""

    limit: int = 20000
    samples: deque[tuple[Any, ...]] = field(default_factory=deque)
    tasks: deque[tuple[Any, ...]] = field(default_factory=deque)
    # (t, tasks done, objects, duration, types): a scheduled census and the
    # explain stage's own counts may both come between two flushes.
    censuses: deque[tuple[Any, ...]] = field(default_factory=lambda: deque(maxlen=8))
    windows: list[AllocationWindow] = field(default_factory=list)
    holders: deque[HolderRow] = field(default_factory=lambda: deque(maxlen=200))
    fd_targets: deque[tuple[float, int, tuple[tuple[str, int], ...]]] = field(
        default_factory=lambda: deque(maxlen=100))
    errors: list[tuple[float, str, str]] = field(default_factory=list)
    facts: dict[str, int] = field(default_factory=dict)
    role: str | None = None
    dropped_rows: int = 0

    def add_sample(self, row: tuple[Any, ...]) -> None:
        """Buffer one process sample (dropped and counted past the limit)."""
        self._bounded(self.samples, row)

    def add_task(self, row: tuple[Any, ...]) -> None:
        """Buffer one task row (dropped and counted past the limit)."""
        self._bounded(self.tasks, row)

    def add_error(self, t: float, source: str, message: str) -> None:
        """Buffer an error record (at most 100 between flushes)."""
        if len(self.errors) < 100:
            self.errors.append((t, source, message))

    def _bounded(self, buffer: deque[tuple[Any, ...]], row: tuple[Any, ...]) -> None:
        if len(buffer) >= self.limit:
            self.dropped_rows += 1
            return
        buffer.append(row)

    def drain(self) -> dict[str, Any]:
        """Everything buffered, as keyword arguments of ``Store.flush``; the buffers are left empty."""
        out: dict[str, Any] = {
            "samples": _drain(self.samples), "tasks": _drain(self.tasks), "censuses": _drain(self.censuses),
            "windows": self.windows, "holders": _drain(self.holders), "fd_targets": _drain(self.fd_targets),
            "errors": self.errors, "facts": self.facts, "role": self.role,
        }
        self.windows, self.errors, self.facts, self.role = [], [], {}, None
        return out


def _drain(buffer: deque[Any]) -> list[Any]:
    out = []
    while buffer:
        out.append(buffer.popleft())
    return out
