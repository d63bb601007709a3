"""A census and a holder search now, because someone asked (``bilge snapshot``). Stdlib-only.

Answers "what is in this worker right now, and who holds it" without
waiting for the explain stage: the objects counted by type, each type's
change since the previous snapshot (or, for the first, since the counts
taken after warm-up), and the holder paths of the types that grew. A
snapshot is stored like the agent's own work (its census and holder rows,
and a summary row for the report) and its cost is booked to its own stage.
It is not refused for budget (a person asked for it once), but it is
bounded: the holder search stops after ``HOLDER_SECONDS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bilge.agent.budget import Ledger, Meter
from bilge.agent.census_stage import MIN_TYPE_GROWTH, CensusStage, Counts
from bilge.agent.outbox import Outbox
from bilge.model import GENERIC_TYPES, STAGE_SNAPSHOT, ContainerGrowth, StageRun
from bilge.samplers import holders as holder_sampler
from bilge.samplers import wallclock

# Types listed, at most, by count and by growth.
TOP_TYPES = 15
# Types whose holders are searched, at most. One walk counts every wanted
# type at once, so five cost about what three do; with three, two small
# interpreter types (22 more weakrefs, 22 more builtin methods: "specific"
# types rank first) pushed the dicts a leak added out of the search.
MAX_SEARCHED = 5
# Types a request may name, at most.
MAX_ASKED = 5
# The holder search's own bound (a 1M-object worker counts in ~0.2 s).
HOLDER_SECONDS = 1.2
HOLDER_INDEX_BYTES = 64 << 20
# A type named in a request, at most this long (a qualified class name).
MAX_TYPE_NAME = 300


class Snapshots:
    """Takes snapshots on request; remembers the previous one's counts to report change.

    Args:
        outbox: where the census, holder and snapshot rows go.
        census: counts objects now.
        counts: the counts after warm-up (the first snapshot's reference).
        ledger: where the snapshot's cost is booked.
        tasks_done: the process's finished tasks so far.
        show_values: holder paths render a few held items (``--show-values``).
        clock: wall clock.
        growing_containers: the module-level containers the container stage
            sees growing at every recent scan. They lead the holders: a
            search for a builtin type (dict, list) samples its objects and
            can miss the few the leak added among tens of thousands.
    """

    def __init__(self, outbox: Outbox, census: CensusStage, counts: Counts, ledger: Ledger,
                 tasks_done: Callable[[], int], show_values: bool = False,
                 clock: Callable[[], float] = wallclock.now,
                 growing_containers: Callable[[], Sequence[ContainerGrowth]] = lambda: ()) -> None:
        self._outbox, self._census, self._counts, self._ledger = outbox, census, counts, ledger
        self._growing_containers = growing_containers
        self._tasks_done = tasks_done
        self._show_values = show_values
        self._clock = clock
        self._previous: tuple[float, int, dict[str, int]] | None = None
        self.taken = 0

    def take(self, types: Sequence[str] = (), top: int = TOP_TYPES, search_holders: bool = True) -> dict[str, Any]:
        """Count now, search the holders of the grown types (or of ``types``), store and return the summary.

        ``search_holders=False`` counts only (``census`` on the control channel).

        Raises:
            ValueError: ``types`` or ``top`` are not what a request may ask.
        """
        wanted_asked = _checked_types(types)
        if not isinstance(top, int) or not 1 <= top <= 200:
            raise ValueError('"top" must be a whole number from 1 to 200')
        meter = Meter(wall_clock=self._clock)
        with meter:
            census = self._census.count_now()
            now = {name: count for name, count, _ in census.types}
            tasks = self._tasks_done()
            reference, compared_with = self._reference(census.t, tasks)
            growth = sorted(((count - reference.get(name, 0), name) for name, count in now.items()
                             if reference and count > reference.get(name, 0)), reverse=True)
            wanted = (wanted_asked or self._grown(growth, now)) if search_holders else []
            containers = list(self._growing_containers()) if search_holders else []
            search = holder_sampler.find_holders(wanted, max_seconds=HOLDER_SECONDS,
                                                 max_index_bytes=HOLDER_INDEX_BYTES,
                                                 show_values=self._show_values,
                                                 first=[c.path for c in containers]) if wanted else None
            t = self._clock()
            if search is not None:
                self._outbox.add_holders(t, meter.started, search.paths)
        seconds = round(t - meter.started, 4)
        summary: dict[str, Any] = {
            "t": t,
            "tasks_done": tasks,
            "objects": census.objects,
            "seconds": seconds,
            "census_seconds": round(census.duration, 4),
            "holder_seconds": round(search.duration, 4) if search is not None else 0.0,
            "compared_with": compared_with,
            "top": [{"type": name, "count": count, "change": count - reference.get(name, 0) if reference else None}
                    for name, count, _ in sorted(census.types, key=lambda row: -row[1])[:top]],
            "growing": [{"type": name, "count": now[name], "change": added} for added, name in growth[:top]],
            "searched": list(wanted),
            "holders": [{"type": c.element_type, "path": c.path, "root_kind": "module-global",
                         "container": c.container_type, "length": c.last, "targets": c.last - c.first,
                         "grew": "+%d in %d tasks" % (c.last - c.first, c.tasks)} for c in containers] + [
                        {"type": h.type_name, "path": h.path, "root_kind": h.root_kind,
                         "container": h.container_type or None,
                         "length": h.container_length if h.container_length >= 0 else None,
                         "targets": h.targets}
                        # The paths that hold most of what was found first.
                        for h in sorted(search.paths if search is not None else (), key=lambda h: -h.targets)],
            "holders_complete": search.complete if search is not None else True,
            "holders_note": (search.reason if search is not None else
                             "not searched (a census only)" if not search_holders else
                             "no type grew since %s" % compared_with if compared_with else
                             "the first snapshot of a young process: no counts to compare with yet"),
        }
        self._outbox.snapshots.append((t, tasks, seconds, summary))
        self._ledger.record(StageRun(STAGE_SNAPSHOT, "requested", meter.started, meter.ended or t, meter.cpu, 0.0,
                                     "done" if search is None or search.complete else "partial"))
        self._previous = (t, tasks, now)
        self.taken += 1
        return summary

    def _reference(self, t: float, tasks: int) -> tuple[dict[str, int], str | None]:
        """The counts a snapshot is compared with, and what they are."""
        if self._previous is not None:
            t0, tasks0, counts = self._previous
            return counts, "the previous snapshot (%d tasks and %.0f s earlier)" % (tasks - tasks0, t - t0)
        if self._counts.baseline is not None:
            return self._counts.baseline, "the counts after warm-up"
        return {}, None

    @staticmethod
    def _grown(growth: list[tuple[int, str]], now: dict[str, int]) -> list[str]:
        """The grown types worth a holder search, best first.

        Specific types first (a class that piles up names the leak), then
        builtin ones by growth relative to their number: a hundred more
        dicts among fifty thousand is what any process does between two
        looks; a few hundred more lists among three thousand is not. A type
        must have grown by ``MIN_TYPE_GROWTH`` objects at least.
        """
        grown = [(name in GENERIC_TYPES, -added / max(1, now[name]), name) for added, name in growth
                 if added >= MIN_TYPE_GROWTH]
        return [name for _, _, name in sorted(grown)][:MAX_SEARCHED]


def _checked_types(types: Any) -> list[str]:
    if types in (None, ()):
        return []
    if not isinstance(types, (list, tuple)) or len(types) > MAX_ASKED or not all(
            isinstance(name, str) and 0 < len(name) <= MAX_TYPE_NAME for name in types):
        raise ValueError('"types" must be a list of at most %d type names, e.g. ["myapp.models.Order"]'
                         % MAX_ASKED)
    return list(types)
