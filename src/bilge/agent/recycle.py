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

# The policy and its settings live with the other settings (``bilge.config``,
# stdlib-only, which reads the ``BILGE_RECYCLE*`` variables); re-exported here.
from bilge.config import HORIZON, MIN_INTERVAL, MIN_TASKS, SOFT_LIMIT, RecyclePolicy, parse_size

__all__ = ["HORIZON", "MIN_INTERVAL", "MIN_TASKS", "SOFT_LIMIT", "RecyclePolicy", "cgroup_memory_limit",
           "parse_size", "request_child_exit"]


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
