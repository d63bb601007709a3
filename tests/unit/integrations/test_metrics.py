"""The metrics' names, labels and bounds: one series per (role, slot), pids on the info series only."""

from __future__ import annotations

import os
from dataclasses import replace

from runs import RUN, FixedView, process, scrape

from bilge.analysis import diagnose
from bilge.integrations.metrics import live_processes, slot
from bilge.model import Finding, RunData

DEAD_PID = 2**22 + 7  # above Linux's pid_max: never a live process

def test_slot_is_the_pool_index_or_main() -> None:
    assert slot(process(1, 10, "celery-child", 1.0, pool_index=3).info) == "3"
    assert slot(process(1, 10, "celery-main", 1.0).info) == "main"
    assert slot(process(1, 10, "main", 1.0).info) == "main"
    assert slot(process(1, 10, "fork", 1.0).info) == "pid-10"


def test_live_processes_keep_the_newest_of_a_slot_and_drop_the_dead() -> None:
    """A recycled child whose end was never stamped (SIGKILL) must not share its slot's series with its
    successor: Prometheus rejects a scrape with two samples of one series."""
    me = os.getpid()
    old = process(2, me, "celery-child", 10.0, pool_index=0)
    new = process(3, me, "celery-child", 20.0, pool_index=0)
    killed = process(4, DEAD_PID, "celery-child", 30.0, pool_index=1)
    ended = process(5, me, "celery-child", 5.0, pool_index=2, ended=6.0)
    main = process(1, me, "celery-main", 1.0)
    unborn = replace(process(6, me, "fork", 40.0), info=replace(process(6, me, "fork", 40.0).info, parent_id=1))
    live = live_processes(RunData(run=RUN, processes=(main, old, new, killed, ended, unborn)))
    assert sorted(p.info.id for p in live) == [1, 3]
    plain_fork = process(7, me, "fork", 50.0)  # a fork of a plain Python program: counted, by pid
    assert [slot(p.info) for p in live_processes(RunData(run=RUN, processes=(plain_fork,)))] == ["pid-%d" % me]


def test_exposition_names_labels_and_zeroed_recycles() -> None:
    me = os.getpid()
    data = RunData(run=RUN, processes=(process(1, me, "celery-main", 1.0),
                                       process(2, me, "celery-child", 2.0, pool_index=0),
                                       process(3, me, "celery-child", 3.0, pool_index=1)))
    metrics = scrape(FixedView(data, diagnose(data), hard_limit=2**30))
    rss = metrics["process_resident_memory_bytes"]
    assert sorted((s.labels["role"], s.labels["slot"]) for s in rss) == [
        ("celery-child", "0"), ("celery-child", "1"), ("celery-main", "main")]
    assert all(set(s.labels) == {"hostname", "role", "slot"} for s in rss)
    assert sorted(s.labels["pid"] for s in metrics["bilge_process_info"]) == [str(me)] * 3
    gc_runs = [s for s in metrics["python_gc_collections"] if s.name == "python_gc_collections_total"]
    assert sorted({(s.labels["generation"], s.value) for s in gc_runs}) == [("0", 40), ("1", 3), ("2", 1)]
    recycles = [s for s in metrics["bilge_recycles"] if s.name == "bilge_recycles_total"]
    assert {(s.labels["by"], s.labels["reason"], s.value) for s in recycles} == {
        ("bilge", "soft-limit", 0), ("bilge", "forecast", 0), ("celery", "max-per-child", 0)}
    assert [s.value for s in metrics["bilge_memory_limit_bytes"]] == [2**30]
    alive = {s.labels["role"]: s.value for s in metrics["bilge_live_processes"]}
    assert alive == {"celery-main": 1, "celery-child": 2}
    assert not metrics["bilge_finding_info"]  # no leak, no finding


def test_findings_are_exported_once_per_signature() -> None:
    me = os.getpid()
    data = RunData(run=RUN, processes=(process(1, me, "celery-main", 1.0),))
    finding = Finding(task="shop.render", type="shop.Invoice", kind="python-objects", bytes_per_call=512.0,
                      count_per_call=1.0, hint="", pids=(me,), holder="shop.cache._R[...]", signature="0123456789ab",
                      new=True)
    answer = replace(diagnose(data), findings=(finding, replace(finding, type="dict")))
    metrics = scrape(FixedView(data, answer))
    (info,) = metrics["bilge_finding_info"]
    assert info.labels == {"hostname": "box", "signature": "0123456789ab", "task": "shop.render",
                           "type": "shop.Invoice", "kind": "python-objects", "holder": "shop.cache._R[...]",
                           "new": "true"}
    assert [s.value for s in metrics["bilge_finding_bytes_per_call"]] == [512.0]
