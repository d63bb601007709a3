"""Tests for bilge.analysis.own_activity: which spans count as the agent's own memory-changing work."""

from __future__ import annotations

from dataclasses import replace

from bilge.analysis.own_activity import activity, without_activity
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


def _series(n: int, rss_per_task: int, blocks_per_task: int, step_at: int = -1, step: int = 0,
            gap: tuple[int, int] = (-1, -1)) -> list[TaskRecord]:
    """Tasks 0..n-1 one second apart, growing steadily, with an extra step of memory from task ``step_at`` on."""
    out = []
    for i in range(n):
        extra = step if i >= step_at >= 0 else 0
        out.append(TaskRecord(seq=i, name="shop.a", started=float(i), ended=i + 0.5,
                              rss_before=rss_per_task * i + extra, rss_after=rss_per_task * (i + 1) + extra,
                              blocks_before=blocks_per_task * i + extra // 100,
                              blocks_after=blocks_per_task * (i + 1) + extra // 100, failed=False))
    return out


def test_an_episode_in_a_flat_process_has_its_whole_step_taken_out() -> None:
    """A benign process: flat memory, an episode at tasks 300-302 leaves 3 MB of RSS and 30,000 blocks behind
    (tracemalloc's freed tables, caches): every reading after it is shifted back by all of it."""
    tasks = _series(600, 0, 0, step_at=301, step=3_000_000)
    kept = without_activity(tasks, activity(process(run(STAGE_ALLOCATION_EPISODE, 299.9, 302.6))))
    assert [t.seq for t in kept if 299 <= t.seq <= 303] == [299, 303]
    assert {t.rss_after for t in kept} == {0} and {t.blocks_after for t in kept} == {0}
    assert [t for t in kept if t.seq == 303][0].rss_before is None  # its "before" was taken in the gap


def test_an_episode_in_a_leaking_process_keeps_the_leak_across_the_gap() -> None:
    """A leaking process (+2000 bytes and +20 blocks per task) with the same step: only the step beyond the
    process's own pace goes, so the series stays one straight line through the gap."""
    tasks = _series(600, 2000, 20, step_at=301, step=3_000_000)
    kept = without_activity(tasks, activity(process(run(STAGE_ALLOCATION_EPISODE, 299.9, 302.6))))
    after = [t for t in kept if t.seq == 303][0]
    assert after.rss_after == 2000 * 304 and after.blocks_after == 20 * 304
    assert kept[-1].rss_after == 2000 * 600 and kept[-1].blocks_after == 20 * 600


def test_a_gap_in_a_sparsely_read_heap_is_rebased_on_the_readings_around_it() -> None:
    """Heap blocks read on one task in 4 (a big heap): the step is taken between the last reading before the
    gap and the first after it, though neither is the task right next to the gap."""
    tasks = [replace(t, blocks_before=t.blocks_before if t.seq % 4 == 0 else None,
                     blocks_after=t.blocks_after if t.seq % 4 == 0 else None)
             for t in _series(600, 0, 0, step_at=301, step=3_000_000)]
    kept = without_activity(tasks, activity(process(run(STAGE_ALLOCATION_EPISODE, 299.9, 302.6))))
    assert {t.blocks_after for t in kept if t.blocks_after is not None} == {0}
    assert [t for t in kept if t.seq == 304][0].blocks_before is None  # first reading after the gap
    assert [t for t in kept if t.seq == 308][0].blocks_before == 0
