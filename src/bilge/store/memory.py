"""An in-memory store: what an agent wrote, kept in lists (for tests). Stdlib-only.

Implements the agent's ``Store`` protocol (``agent.outbox.Store``) the way
``store.writer.StoreWriter`` does, without SQLite: every flush is appended
as it came, cost totals replace the previous ones, recycles are claimed
once per ``min_interval``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bilge.model import BudgetState, StageCost, StageRun


@dataclass
class MemoryStore:
    """Keeps every row an agent flushes."""

    processes: list[tuple[int, int, int | None, str, str]] = field(default_factory=list)
    samples: list[Any] = field(default_factory=list)
    tasks: list[Any] = field(default_factory=list)
    censuses: list[Any] = field(default_factory=list)
    windows: list[Any] = field(default_factory=list)
    holders: list[Any] = field(default_factory=list)
    fd_targets: list[Any] = field(default_factory=list)
    containers: list[Any] = field(default_factory=list)
    snapshots: list[Any] = field(default_factory=list)
    errors: list[tuple[float, str, str]] = field(default_factory=list)
    facts: dict[str, int] = field(default_factory=dict)
    roles: list[str] = field(default_factory=list)
    stage_costs: dict[str, StageCost] = field(default_factory=dict)
    stage_runs: list[StageRun] = field(default_factory=list)
    budget: BudgetState | None = None
    gc_stats: tuple[tuple[int, int, int], ...] = ()
    recycles: list[tuple[int, float, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    flushes: int = 0
    ended: float | None = None
    abandoned: bool = False

    def register_process(self, pid: int, ppid: int, parent_id: int | None, role: str, argv: str) -> int:
        """A new process id (1, 2, …)."""
        self.processes.append((pid, ppid, parent_id, role, argv))
        return len(self.processes)

    def flush(self, process_id: int, samples: Sequence[Any], tasks: Sequence[Any], censuses: Sequence[Any],
              role: str | None, errors: Sequence[tuple[float, str, str]], ended: float | None = None,
              windows: Sequence[Any] = (), fd_targets: Sequence[Any] = (), facts: dict[str, int] | None = None,
              holders: Sequence[Any] = (), stage_costs: Sequence[StageCost] = (),
              stage_runs: Sequence[StageRun] = (), budget: BudgetState | None = None,
              containers: Sequence[Any] = (), snapshots: Sequence[Any] = (),
              gc_stats: Sequence[tuple[int, int, int]] = ()) -> None:
        """Keep one flush's rows."""
        self.flushes += 1
        self.samples.extend(samples)
        self.tasks.extend(tasks)
        self.censuses.extend(censuses)
        self.windows.extend(windows)
        self.holders.extend(holders)
        self.fd_targets.extend(fd_targets)
        self.containers.extend(containers)
        self.snapshots.extend(snapshots)
        self.errors.extend(errors)
        self.facts.update(facts or {})
        if gc_stats:
            self.gc_stats = tuple(gc_stats)
        if role:
            self.roles.append(role)
        self.stage_costs.update({c.stage: c for c in stage_costs})
        self.stage_runs.extend(stage_runs)
        self.budget = budget or self.budget
        if ended is not None:
            self.ended = ended

    def claim_recycle(self, process_id: int, t: float, reason: str, rss: int | None, tasks_done: int,
                      snapshot: str, min_interval: float, urgent: bool = False) -> bool:
        """Claim unless another recycle happened less than ``min_interval`` ago (urgent ones always)."""
        if not urgent and self.recycles and t - self.recycles[-1][1] < min_interval:
            return False
        self.recycles.append((process_id, t, reason))
        return True

    def refuse_recycle(self, process_id: int, why: str) -> None:
        """Keep why a recycle could not happen."""
        self.refused.append(why)

    def abandon(self) -> None:
        """Forget connections (after fork): nothing to forget here."""
        self.abandoned = True
