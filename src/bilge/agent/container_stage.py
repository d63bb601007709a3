"""The container stage: the lengths of module-level containers, on its own schedule. Stdlib-only.

What a census cannot count (untracked keys, numbers, strings piling up in
one set or dict) shows as one container's length; see
``samplers/containers.py``. The stage hands the containers it sees growing
to the watch (which counts their items around each read task) and to the
explain stage (a container growing at every scan is evidence to escalate on).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from bilge.agent.census_stage import WALL_FLOOR
from bilge.agent.outbox import Outbox
from bilge.model import ContainerGrowth
from bilge.samplers import wallclock
from bilge.samplers.budget import CpuBudget
from bilge.samplers.containers import ContainerScanner, keeps_pace

# A container is steadily growing when it grew at each of this many scans
# in a row; the histories kept are bounded like the containers followed.
STEADY_SCANS = 3
MAX_HISTORIES = 256
# CPU seconds the stage may spend at once, from the start: a first discovery's worth.
FIRST_DISCOVERY = 0.1


class ContainerStage:
    """Reads the lengths of module-level containers on its own schedule, within its own share of CPU.

    A census cannot count untracked objects (keys, numbers, strings piling
    up in one set or dict); their container's length shows them. A scan
    mostly reads the containers a discovery found (~0.5-1 ms; a discovery,
    now and then, reads every module's names: ~5-25 ms), so it runs more
    often than a census (a slow leak needs several readings within a short
    child's life), on a share of its own.

    Args:
        outbox: where the readings go.
        tasks_done: the process's finished tasks so far.
        on_counted: told the containers seen growing whenever they change
            (the watch counts their items around each read task).
        share: the share of the process's CPU time the scans may use.
        min_interval: seconds; never more often.
        pace: the part of ``share`` the scans may use now (as the census's).
        clock: monotonic seconds.
        cpu_clock: the process's CPU seconds (all threads).
    """

    def __init__(self, outbox: Outbox, tasks_done: Callable[[], int], on_counted: Callable[[tuple[Any, ...]], None],
                 share: float = 0.005,
                 min_interval: float = 0.5, pace: Callable[[], float] = lambda: 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.process_time) -> None:
        self._outbox = outbox
        self._tasks_done = tasks_done
        self._on_counted = on_counted
        self._min_interval = min_interval
        self._clock = clock
        self._born = clock()
        self._scanner = ContainerScanner()
        # The burst pays for the first discovery at once: in a process with a
        # Celery worker's modules loaded it cost 8-56 ms in our measurements
        # (it is the first to read every module-level object's attributes),
        # a later full one ~7-14 ms, one that reads only changed modules ~1 ms.
        # With a 40 ms burst a costly first one left the stage in debt for
        # seconds of a short child's life (zoo run 0f8a7a2, throttle_last_seen:
        # no scan for 5.7 s).
        self._budget = CpuBudget(share, burst=FIRST_DISCOVERY, clock=lambda: cpu_clock() + WALL_FLOOR * clock(),
                                 pace=pace)
        self._next = clock() + min_interval
        # The latest (tasks done, length) of each container followed.
        self._history: dict[str, deque[tuple[int, int]]] = {}
        self._kinds: dict[str, tuple[str, str]] = {}  # path -> (container type, newest element's type)
        self._latest = -1  # tasks done at the latest scan that read any
        self._previous: tuple[float, int] | None = None  # (time, tasks done) of the latest scan
        # What each flavour cost last time (a discovery, a plain re-read).
        self._cost = {True: 0.01, False: 0.001}

    def due(self) -> bool:
        """True when the schedule says scan now."""
        return self._clock() >= self._next

    def run(self) -> None:
        """Scan if the budget allows; the interval stretches with age (~age/60, as the census's)."""
        age = self._clock() - self._born
        self._next = self._clock() + min(max(self._min_interval, age / 60.0), 300.0)
        # A discovery the budget cannot pay for yet waits; the containers
        # already found are read meanwhile.
        if self._scanner.discovery_due() and self._budget.can_spend(self._cost[True]):
            discovery = True
        elif self._budget.can_spend(self._cost[False]):
            discovery = False
        else:
            return
        started = wallclock.now()
        counted = self._scanner.counted
        seconds, readings = self._scanner.scan(discovery)
        if self._scanner.counted is not counted:
            self._on_counted(self._scanner.counted)
        self._budget.spend(seconds)
        self._cost[discovery] = seconds
        tasks = self._tasks_done()
        previous, self._previous = self._previous, (started, tasks)
        if self._scanner.starting and previous is not None:
            # A container just followed starts its series at the scan before
            # (its length then is known): one reading sooner to judge it by.
            self._keep(*previous, 0.0, self._scanner.starting)
        if readings:  # none until a container's length has moved
            ended = wallclock.now()
            self._keep(ended, tasks, ended - started, readings)

    def _keep(self, t: float, tasks: int, seconds: float, readings: tuple[tuple[str, str, int, str], ...]) -> None:
        self._latest = max(self._latest, tasks)
        self._outbox.containers.append((t, tasks, seconds, readings))
        history = self._history
        for path, container, length, element in readings:
            if path in history or len(history) < MAX_HISTORIES:
                history.setdefault(path, deque(maxlen=STEADY_SCANS)).append((tasks, length))
                if element != "?" or path not in self._kinds:
                    self._kinds[path] = (container, element)

    def growing_now(self) -> list[ContainerGrowth]:
        """The steadily growing containers (see ``steadily_growing``) over their recent scans, most grown first."""
        out = []
        for path in self.steadily_growing():
            points = self._history[path]
            (first_tasks, first), (last_tasks, last) = points[0], points[-1]
            container, element = self._kinds.get(path, ("?", "?"))
            out.append(ContainerGrowth(path, container, element, first, last, last_tasks - first_tasks, len(points)))
        return sorted(out, key=lambda g: g.first - g.last)

    def steadily_growing(self) -> list[str]:
        """Containers that grew at every one of the latest STEADY_SCANS scans, at a pace that keeps up (the
        last step at least a quarter of the first, per task): evidence that survives warm-up, where a cache
        filling up grows ever slower and a bounded one stops."""
        out = []
        for path, points in self._history.items():
            if len(points) < STEADY_SCANS or points[-1][0] != self._latest:
                continue  # too few readings, or not read at the latest scan (gone)
            if keeps_pace(tuple(points), every_step=True):
                out.append(path)
        return out
