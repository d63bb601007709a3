"""The recycle stage: when this prefork child should leave, and leaving with its evidence. Stdlib-only.

The policy (``agent.recycle.RecyclePolicy``) says go; this stage confirms
(the growth must go on for ``CONFIRM_TASKS`` tasks and ``CONFIRM_GROWTH``
bytes after the policy first said go: warm-up stops, a leak does not),
claims the run's recycle slot in the store with a forensic snapshot, and
sets the child's pool sentinel at the next task boundary.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable

from bilge.agent import recycle
from bilge.agent.census_stage import Counts
from bilge.agent.outbox import Store
from bilge.agent.watch import Watch
from bilge.samplers import wallclock

log = logging.getLogger("bilge.agent")

CONFIRM_TASKS = 200
CONFIRM_GROWTH = 1 << 20
# Over the soft limit, the policy is consulted at every this many task
# boundaries (it runs the trend test: ~100 µs).
SOFT_LIMIT_EVERY = 8


class Recycler:
    """Decides and carries out this child's recycle.

    Args:
        policy: the recycling policy.
        watch: the child's readings and suspicion.
        counts: growing types, for the forensic snapshot.
        store: claims the recycle slot.
        store_lock: held around store calls (fork safety).
        evidence: (sites, holder paths) the explain stage found so far.
        monotonic: for the child's age.
    """

    def __init__(self, policy: recycle.RecyclePolicy, watch: Watch, counts: Counts, store: Store,
                 store_lock: threading.Lock,
                 evidence: Callable[[], tuple[list[tuple[str, int, int]], list[tuple[str, str]]]],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._watch, self._counts, self._store, self._store_lock = watch, counts, store, store_lock
        self._evidence = evidence
        self._monotonic = monotonic
        self._born = monotonic()
        self._lock = threading.Lock()
        self._candidate: tuple[int, int] | None = None
        self._hard_limit: int | None = None
        self.reason: str | None = None
        self.refused: str | None = None
        self.off = False

    def at_task_end(self, process_id: int | None, role: str) -> None:
        """In the task's thread at its end: decide over the soft limit, leave once claimed."""
        rss = self._watch.last_rss
        tasks = self._watch.tasks_done
        if (self.policy.enabled and self.reason is None and rss is not None and rss >= self.policy.soft_limit
                and tasks >= self.policy.min_tasks and not tasks % SOFT_LIMIT_EVERY):
            # Decide here, not up to a sample interval later (a fast leak overshoots).
            self.consider(process_id, role)
        if self.reason is not None and self.refused is None:
            # In task_postrun, in the child: it leaves before its next job.
            self.refused = recycle.request_child_exit() or ""

    def consider(self, process_id: int | None, role: str) -> None:
        """Claim a recycle when the policy says go and the growth is confirmed (agent or task thread)."""
        if self.off or not self._lock.acquire(blocking=False):
            return
        try:
            self._consider(process_id, role)
        finally:
            self._lock.release()

    def _consider(self, process_id: int | None, role: str) -> None:
        if self.reason is not None:
            if self.refused:
                with self._store_lock:
                    self._store.refuse_recycle(process_id or 0, self.refused)
                log.warning("bilge: pid %d cannot be recycled: %s", os.getpid(), self.refused)
                self.off = True
            return
        if role != "celery-child":
            return
        if self._hard_limit is None:
            self._hard_limit = self.policy.hard_limit or recycle.cgroup_memory_limit() or 0
        watch = self._watch
        rss = watch.last_rss if watch.last_rss is not None else watch.sampled_rss
        age = max(1e-3, self._monotonic() - self._born)
        per_second = watch.rss_suspicion.growth_per_reading() * watch.tasks_done / age
        reason = self.policy.decide(rss, watch.rss_suspicion.suspect(), per_second, watch.tasks_done,
                                    self._hard_limit or None)
        if reason is None or process_id is None or rss is None:
            return
        if self._candidate is None:
            self._candidate = (watch.tasks_done, rss)
            return
        if watch.tasks_done < self._candidate[0] + CONFIRM_TASKS or rss - self._candidate[1] < CONFIRM_GROWTH:
            return
        snapshot = self._forensic_snapshot(reason, rss, per_second)
        with self._store_lock:
            claimed = self._store.claim_recycle(process_id, wallclock.now(), reason, rss, watch.tasks_done, snapshot,
                                                self.policy.min_interval, urgent=reason.startswith("forecast"))
        if claimed:
            self.reason = reason
            log.warning("bilge: recycling pool child %d after its current task: %s", os.getpid(), reason)

    def _forensic_snapshot(self, reason: str, rss: int | None, per_second: float) -> str:
        """What this child knows about its leak, written before it leaves (names and numbers only)."""
        watch = self._watch
        sites, paths = self._evidence()
        return json.dumps({
            "reason": reason, "pid": os.getpid(), "rss": rss, "tasks_done": watch.tasks_done,
            "growth_bytes_per_task": round(watch.rss_suspicion.growth_per_reading(), 1),
            "growth_bytes_per_second": round(per_second, 1), "fds": watch.last_fds,
            "heap_blocks": watch.last_heap_blocks,
            "growing_types": [{"type": name, "objects_added": n}
                              for n, name in self._counts.growth_since_baseline()[:10]],
            "sites": [{"file": f, "line": n, "bytes": b} for f, n, b in sites],
            "holders": [{"type": t, "path": p} for t, p in paths],
        })
