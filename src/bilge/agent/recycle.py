"""Leak-aware recycling of one prefork child, at a task boundary. Stdlib-only.

Celery's ``worker_max_memory_per_child`` compares *peak* RSS (``ru_maxrss``,
memory shared with the parent included) after every task, so one spike or a
large parent recycles every child after every task (celery#4125, #4809).
bilge recycles a child only when

- its own suspicion says its memory keeps growing (the agent's trend test:
  Mann-Kendall on block medians, material growth, the tail still rising),
  and still does later (200 tasks on, at least 1 MiB more: warm-up stops,
  a leak does not), **and**
- its current RSS is over the soft limit, **or** its growth rate says it
  reaches the hard limit (configured, else the cgroup's memory limit) within
  the horizon.

How the child leaves (notes/celery-internals.md §4, billiard ``pool.py``):
the task finishes and its ``task_postrun`` runs in the child; there bilge
sets the child's own pool sentinel (``current_process()._target._shutdown``,
an Event that exists only with ``worker_pool_restarts=True``, which bilge
turns on at ``worker_init`` when recycling is enabled). The child then sends
the task's result, asks for the next job, sees the sentinel and exits with
``EX_OK``; billiard forks a replacement. No task is interrupted, nothing is
killed. If the sentinel is missing (another billiard layout, restarts off),
the child is not recycled and the store says why.

Recycles are rate-limited per run through the store (one transaction
decides, so concurrent children cannot both take the slot), and before the
child leaves its evidence is written down (the forensic snapshot).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

SOFT_LIMIT = 512 << 20
HORIZON = 3600.0
MIN_INTERVAL = 60.0
# A child's first few hundred tasks hold its warm-up (lazy imports, caches
# filling): the trend test looks at the recent half of what it has seen, so
# by 500 tasks warm-up has left its window.
MIN_TASKS = 500
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RecyclePolicy:
    """When a leaking prefork child is recycled.

    Args:
        enabled: recycling is opt-in (``bilge run --recycle``).
        soft_limit: bytes of RSS over which a child whose memory keeps
            growing is recycled.
        hard_limit: bytes a child must never reach; None means the cgroup's
            memory limit, if there is one.
        horizon: seconds; a growing child forecast to reach the hard limit
            within this long is recycled, whatever the soft limit.
        min_interval: seconds between two soft-limit recycles in the whole
            worker (a forecast limit hit does not wait). Whatever the
            reason, only one child is recycled at a time, so the pool is
            never emptied.
        min_tasks: a child serves at least this many tasks before it may be
            recycled (a fresh child's warm-up is not a leak).
    """

    enabled: bool = False
    soft_limit: int = SOFT_LIMIT
    hard_limit: int | None = None
    horizon: float = HORIZON
    min_interval: float = MIN_INTERVAL
    min_tasks: int = MIN_TASKS

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> RecyclePolicy:
        """Read ``BILGE_RECYCLE*`` variables (set by ``bilge run --recycle...``); bad values keep the defaults."""
        policy = cls(enabled=env.get("BILGE_RECYCLE") == "1")
        values: dict[str, Any] = {}
        parsers: tuple[tuple[str, str, Callable[[str], float]], ...] = (
            ("soft_limit", "BILGE_RECYCLE_SOFT_LIMIT", parse_size),
            ("hard_limit", "BILGE_RECYCLE_HARD_LIMIT", parse_size),
            ("horizon", "BILGE_RECYCLE_HORIZON", float), ("min_interval", "BILGE_RECYCLE_MIN_INTERVAL", float),
            ("min_tasks", "BILGE_RECYCLE_MIN_TASKS", int))
        for field, var, parse in parsers:
            if env.get(var):
                try:
                    values[field] = parse(env[var])
                except ValueError:
                    pass  # the CLI validated it; a hand-set bad value keeps the default
        return replace(policy, **values)

    def decide(self, rss: int | None, growing: bool, bytes_per_second: float, tasks_done: int,
               hard_limit: int | None) -> str | None:
        """The reason to recycle now, or None.

        Args:
            rss: the child's current RSS.
            growing: the agent's suspicion (steady, material, still rising).
            bytes_per_second: the child's recent growth rate.
            tasks_done: tasks the child has served.
            hard_limit: the effective hard limit (policy's, else cgroup's).
        """
        if not self.enabled or not growing or rss is None or tasks_done < self.min_tasks:
            return None
        if rss >= self.soft_limit:
            return "soft-limit: RSS %d MiB >= %d MiB with memory still growing" % (rss >> 20, self.soft_limit >> 20)
        if hard_limit and bytes_per_second > 0:
            eta = (hard_limit - rss) / bytes_per_second
            if eta <= self.horizon:
                return "forecast: %d MiB limit reached in %.0f s at %.0f KiB/s (horizon %.0f s)" % (
                    hard_limit >> 20, max(0.0, eta), bytes_per_second / 1024, self.horizon)
        return None


def parse_size(text: str) -> int:
    """``512M``, ``1.5GiB``, ``800000`` -> bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError("not a size: %r (use e.g. 512MiB, 2G or a number of bytes)" % text)
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * (1 << (10 * " kmgt".index(unit or " "))))


def cgroup_memory_limit(root: str = "/") -> int | None:
    """This process's cgroup memory limit in bytes (v2 ``memory.max`` or v1), None if unlimited or unknown."""
    try:
        with open(os.path.join(root, "proc/self/cgroup")) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidate = os.path.join(root, "sys/fs/cgroup", path.lstrip("/"), "memory.max")
        elif "memory" in controllers.split(","):
            candidate = os.path.join(root, "sys/fs/cgroup/memory", path.lstrip("/"), "memory.limit_in_bytes")
        else:
            continue
        try:
            with open(candidate) as f:
                text = f.read().strip()
        except OSError:
            continue
        # v1 reports "no limit" as a huge page-aligned number.
        if text != "max" and text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def request_child_exit() -> str | None:
    """Ask billiard to let this pool child leave after the current task; None on success, else why not.

    Private billiard API, checked at every step: ``current_process()._target``
    is the pool's ``Worker`` and its ``_shutdown`` the per-child sentinel
    Event, polled before the child reads its next job (billiard 4.x).
    """
    import sys

    process_module = sys.modules.get("billiard.process")
    if process_module is None:
        return "not a billiard pool child"
    target = getattr(process_module.current_process(), "_target", None)
    sentinel = getattr(target, "_shutdown", None)
    if sentinel is None:
        return "billiard pool restarts are off (worker_pool_restarts); the child cannot leave between tasks"
    if not callable(getattr(sentinel, "set", None)):
        return "unknown billiard layout (%s has no usable _shutdown)" % type(target).__name__
    sentinel.set()
    return None
