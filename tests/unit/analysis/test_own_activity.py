"""Tests for bilge.analysis.own_activity: which spans count as the agent's own memory-changing work."""

from __future__ import annotations

from bilge.analysis.own_activity import activity, disturbed, without_activity, without_disturbed
from bilge.model import (
    STAGE_ALLOCATION_EPISODE,
    STAGE_ALLOCATION_WINDOW,
    STAGE_CENSUS,
    STAGE_FD_SCAN,
    STAGE_HOLDER_SEARCH,
    STAGE_NATIVE_WINDOW,
    STAGE_RECOUNT,
    AgentCost,
    AllocationWindow,
    Holder,
    ProcessData,
    ProcessInfo,
    StageRun,
    TaskRecord,
)

INFO = ProcessInfo(id=1, pid=4242, ppid=1, parent_id=None, role="celery-child", started=0.0, ended=None,
                   argv="celery worker")
# What an older store holds: one window (10-12) and one holder search (30-31).
WINDOW = AllocationWindow(started=10.0, ended=12.0, tasks=5, status="done", peak_memory=4096, sites=())
HOLDER = Holder(t=31.0, started=30.0, type="shop.Order", path="app._ORDERS[...]", root_kind="module-global",
                container_type="dict", container_len=10, targets=10)


def run(stage: str, started: float, ended: float) -> StageRun:
    """A budgeted run of ``stage`` between those times."""
    return StageRun(stage=stage, reason="suspect", started=started, ended=ended, cpu_seconds=0.01,
                    slowed_seconds=0.0, outcome="done")


def process(*runs: StageRun) -> ProcessData:
    """A process with the older store's window and holder search, and these runs in its cost."""
    return ProcessData(info=INFO, samples=(), tasks=(), censuses=(), windows=(WINDOW,), holders=(HOLDER,),
                       cost=AgentCost(runs=runs))


def test_activity_is_the_runs_of_memory_stages_when_there_are_any() -> None:
    """Runs of allocation windows, native windows and holder searches are the activity, merged where they
    overlap; other stages' runs and the stored windows and holders are not."""
    p = process(run(STAGE_HOLDER_SEARCH, 50.0, 51.0), run(STAGE_ALLOCATION_WINDOW, 20.0, 23.0),
                run(STAGE_NATIVE_WINDOW, 22.0, 25.0), run(STAGE_FD_SCAN, 40.0, 41.0),
                run(STAGE_RECOUNT, 60.0, 61.0), run(STAGE_CENSUS, 70.0, 71.0))
    assert activity(p) == [(20.0, 25.0), (50.0, 51.0)]


def test_activity_falls_back_to_windows_and_holders_without_memory_stage_runs() -> None:
    """A store without runs (older bilge), or with runs of other stages only, uses its windows and holder searches."""
    assert activity(process()) == [(10.0, 12.0), (30.0, 31.0)]
    assert activity(process(run(STAGE_FD_SCAN, 40.0, 41.0))) == [(10.0, 12.0), (30.0, 31.0)]


def test_tasks_overlapping_a_run_are_dropped() -> None:
    """With runs stored, a task overlapping a holder-search run is dropped, and one inside the stored window's span
    (which no memory-stage run covers) is kept."""
    tasks = tuple(TaskRecord(seq=i, name="shop.search", started=float(i), ended=i + 0.5, rss_before=4096 * i,
                             rss_after=4096 * i, blocks_before=100, blocks_after=100, failed=False, gc_runs=0)
                  for i in (5, 11, 20, 21))
    kept = without_activity(tasks, activity(process(run(STAGE_HOLDER_SEARCH, 19.8, 20.2))))
    assert [t.seq for t in kept] == [5, 11, 21]


def test_tasks_an_episode_overlapped_are_dropped_and_only_the_rss_step_is_subtracted() -> None:
    """An allocation episode's tasks go; the heap blocks after it stand (the measured task's leak is real),
    the RSS step across it (tracemalloc's freed tables, kept by the allocators) is taken out."""
    tasks = [TaskRecord(seq=i, name="shop.a", started=float(i), ended=i + 0.5, rss_before=1000 * i,
                        rss_after=1000 * (i + 1), blocks_before=10 * i, blocks_after=10 * (i + 1), failed=False)
             for i in range(6)]
    p = process(run(STAGE_ALLOCATION_EPISODE, 1.9, 3.6))
    assert disturbed(p) == [(1.9, 3.6)]
    kept = without_disturbed(tasks, disturbed(p))
    assert [t.seq for t in kept] == [0, 1, 4, 5]
    # RSS 2000 -> 5000 across the gap: the 3000 go from everything after it.
    assert [t.rss_after for t in kept] == [1000, 2000, 2000, 3000]
    assert [t.blocks_after for t in kept] == [10, 20, 50, 60]
    assert kept[2].rss_before is None and kept[2].blocks_before is None
    assert kept[3].rss_before == 2000 and kept[3].blocks_before == 50
    assert activity(p) == [(10.0, 12.0), (30.0, 31.0)]  # episodes are no memory activity
