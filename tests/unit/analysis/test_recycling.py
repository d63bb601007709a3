"""Recycles made visible: bilge's, Celery's exit-155 recycles, and the recycle storm of a large parent."""

from __future__ import annotations

from bilge.analysis.recycling import summarise
from bilge.model import ProcessData, ProcessInfo, Recycle, RunData, RunInfo, Sample

RUN = RunInfo(id=1, started=0.0, ended=10.0, command="celery worker", exit_code=0, hostname="box")


def child(pid: int, first_rss: int, limit_kb: int | None, exit_code: int | None,
          recycles: tuple[Recycle, ...] = ()) -> ProcessData:
    info = ProcessInfo(id=pid, pid=pid, ppid=1, parent_id=1, role="celery-child", started=0.0, ended=1.0, argv="",
                       exit_code=exit_code, celery_max_memory_kb=limit_kb)
    sample = Sample(t=0.0, rss=first_rss, uss=None, pss=None, heap_blocks=1, gc_collections=0, fds=5, threads=2,
                    tasks_done=0)
    return ProcessData(info=info, samples=(sample,), tasks=(), censuses=(), recycles=recycles)


def test_children_starting_above_celerys_limit_are_a_recycle_storm() -> None:
    run = RunData(run=RUN, processes=tuple(child(p, 300 << 20, 200 * 1024, 155) for p in (10, 11, 12)))
    summary = summarise(run)
    assert summary is not None
    assert summary.by_celery == (10, 11, 12)
    assert summary.warnings[0].startswith("recycle storm: 3 pool child(ren) started above "
                                          "worker_max_memory_per_child (200 MiB), e.g. pid 10 at 300 MiB")
    assert "Celery recycled 3 pool child(ren)" in summary.warnings[1]


def test_bilge_recycles_are_listed_and_a_quiet_run_has_nothing() -> None:
    recycle = Recycle(process_id=20, pid=20, t=5.0, reason="soft-limit", rss=1, tasks_done=400, status="requested",
                      snapshot="{}")
    summary = summarise(RunData(run=RUN, processes=(child(20, 50 << 20, 200 * 1024, 0, (recycle,)),)))
    assert summary is not None and summary.by_bilge == (recycle,) and summary.warnings == ()
    assert summarise(RunData(run=RUN, processes=(child(21, 50 << 20, None, 0),))) is None
