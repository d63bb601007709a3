"""Prometheus metrics of a run, named after the conventions a metrics stack already knows.

Quantities every process exporter has keep their conventional names and
units (the Prometheus client's process and gc collectors, which the
OpenTelemetry process and CPython runtime conventions map onto):
``process_resident_memory_bytes``, ``process_open_fds``,
``process_start_time_seconds``, ``python_gc_collections_total``,
``python_gc_objects_collected_total`` and
``python_gc_objects_uncollectable_total`` by ``generation``. What only
bilge knows is under ``bilge_``: the verdict, growth per hour, per task
and per call of each task name, time to the limit, findings by leak
signature, recycles by reason and the agent's own cost. docs/metrics.md
lists them all.

Labels stay few and stable, because every new label value is a new series
in Prometheus: a process is ``hostname``, ``role`` and ``slot``, where a
prefork child's slot is its index in the pool (its successor after a
recycle takes the same one) and the main process's is ``main``. The pid,
which changes with every recycle, is only on ``bilge_process_info``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bilge.analysis.health import assess
from bilge.integrations.monitor import RunView
from bilge.model import LEAK, Diagnosis, ProcessData, ProcessDiagnosis, ProcessInfo, RunData

VERDICTS = ("leak", "no-leak", "inconclusive")
# Who recycles a child and why; exported at 0 from the start, so a rate or
# an alert over them has a series before the first recycle.
RECYCLE_REASONS = (("bilge", "soft-limit"), ("bilge", "forecast"), ("celery", "max-per-child"))
PROCESS_LABELS = ["hostname", "role", "slot"]


def slot(info: ProcessInfo) -> str:
    """The process's stable place in its worker: a pool index, ``main``, or (for anything else) its pid."""
    if info.pool_index is not None:
        return str(info.pool_index)
    if info.role in ("celery-main", "main"):
        return "main"
    return "pid-%d" % info.pid


def live_processes(run: RunData) -> list[ProcessData]:
    """The run's processes still alive, one per (role, slot): the newest when a slot was reused.

    A process killed with SIGKILL never stamps its end in the store, so the
    pid is checked too (the supervisor runs on the worker's host). A pool
    child not yet initialised (role ``fork``) is left out until it is.
    """
    roles = {p.info.id: p.info.role for p in run.processes}
    newest: dict[tuple[str, str], ProcessData] = {}
    for p in run.processes:
        if p.info.role == "fork" and roles.get(p.info.parent_id or 0) == "celery-main":
            # A pool child between its fork and worker_process_init: its role and slot are not known yet, and
            # a series labelled by its pid would be one more series per recycle.
            continue
        if p.info.ended is None and _alive(p.info.pid):
            key = (p.info.role, slot(p.info))
            if key not in newest or p.info.started >= newest[key].info.started:
                newest[key] = p
    return sorted(newest.values(), key=lambda p: (p.info.role, slot(p.info)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreCollector(Collector):
    """Every metric of the view's run, read from the store at each scrape (the view bounds the rates)."""

    def __init__(self, view: RunView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        run = self.view.run()
        diagnosis = self.view.diagnosis()
        live = live_processes(run)
        host = run.run.hostname or ""
        yield from _process_metrics(live, host)
        yield from _judgement_metrics(run, diagnosis, live, host, self.view)
        yield from _cost_metrics(live, host)


def _key(p: ProcessData, host: str) -> list[str]:
    return [host, p.info.role, slot(p.info)]


def _process_metrics(live: Sequence[ProcessData], host: str) -> Iterator[Metric]:
    """What any process exporter would say of each live process, plus USS and the Python heap."""
    rss = GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.",
                            labels=PROCESS_LABELS)
    fds = GaugeMetricFamily("process_open_fds", "Number of open file descriptors.", labels=PROCESS_LABELS)
    start = GaugeMetricFamily("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                              labels=PROCESS_LABELS)
    uss = GaugeMetricFamily("bilge_process_unique_memory_bytes",
                            "Unique set size in bytes: memory only this process holds.", labels=PROCESS_LABELS)
    heap = GaugeMetricFamily("bilge_process_python_heap_blocks", "Blocks held by Python's object allocator.",
                             labels=PROCESS_LABELS)
    labels = PROCESS_LABELS + ["generation"]
    collections = CounterMetricFamily("python_gc_collections", "Number of times this generation was collected.",
                                      labels=labels)
    collected = CounterMetricFamily("python_gc_objects_collected", "Objects collected during gc.", labels=labels)
    uncollectable = CounterMetricFamily("python_gc_objects_uncollectable", "Uncollectable objects found during GC.",
                                        labels=labels)
    info = GaugeMetricFamily("bilge_process_info", "1 for each live process; its pid, which changes at a recycle.",
                             labels=PROCESS_LABELS + ["pid"])
    for p in live:
        key = _key(p, host)
        info.add_metric(key + [str(p.info.pid)], 1.0)
        start.add_metric(key, p.info.started)
        last = p.samples[-1] if p.samples else None
        if last is not None:
            if last.rss is not None:
                rss.add_metric(key, last.rss)
            if last.fds is not None:
                fds.add_metric(key, last.fds)
            if last.heap_blocks is not None:
                heap.add_metric(key, last.heap_blocks)
        recent_uss = next((s.uss for s in reversed(p.samples) if s.uss is not None), None)
        if recent_uss is not None:
            uss.add_metric(key, recent_uss)
        for generation, (runs, freed, stuck) in enumerate(p.gc_generations):
            collections.add_metric(key + [str(generation)], runs)
            collected.add_metric(key + [str(generation)], freed)
            uncollectable.add_metric(key + [str(generation)], stuck)
    yield from (rss, fds, start, uss, heap, collections, collected, uncollectable, info)


def _judgement_metrics(run: RunData, diagnosis: Diagnosis, live: Sequence[ProcessData], host: str,
                       view: RunView) -> Iterator[Metric]:
    """The verdicts, growth, forecast, findings and recycles: what only bilge knows."""
    judged: dict[tuple[int, str], ProcessDiagnosis] = {(d.pid, d.role): d for d in diagnosis.processes}
    hard_limit = view.hard_limit
    health = {(h.pid, h.role): h for h in assess(run, diagnosis, hard_limit, view.horizon).processes}
    verdict = GaugeMetricFamily("bilge_process_verdict", "1 for the process's current verdict, 0 for the others.",
                                labels=PROCESS_LABELS + ["verdict"])
    per_hour = GaugeMetricFamily("bilge_process_growth_bytes_per_hour",
                                 "Memory growth rate after warm-up (the verdict's trend), bytes per hour.",
                                 labels=PROCESS_LABELS)
    per_task = GaugeMetricFamily("bilge_process_growth_bytes_per_task",
                                 "Memory growth per task after warm-up (the verdict's trend), bytes.",
                                 labels=PROCESS_LABELS)
    to_limit = GaugeMetricFamily("bilge_process_time_to_limit_seconds",
                                 "Seconds until the process reaches the hard memory limit at its growth rate "
                                 "(leaking processes, when a limit is known).", labels=PROCESS_LABELS)
    tasks = CounterMetricFamily("bilge_process_tasks", "Tasks this process ran.", labels=PROCESS_LABELS)
    for p in live:
        key = _key(p, host)
        tasks.add_metric(key, len(p.tasks))
        d = judged.get((p.info.pid, p.info.role))
        if d is None:
            continue
        for name in VERDICTS:
            verdict.add_metric(key + [name], 1.0 if d.verdict == name else 0.0)
        if d.growth_bytes_per_hour is not None:
            per_hour.add_metric(key, d.growth_bytes_per_hour)
        if d.growth_bytes_per_task is not None:
            per_task.add_metric(key, d.growth_bytes_per_task)
        h = health.get((p.info.pid, p.info.role))
        if h is not None and h.seconds_to_limit is not None:
            to_limit.add_metric(key, h.seconds_to_limit)
    leaking = GaugeMetricFamily("bilge_leaking_processes", "Live processes whose verdict is leak.",
                                labels=["hostname"])
    leaking.add_metric([host], sum(1 for p in live if getattr(judged.get((p.info.pid, p.info.role)), "verdict",
                                                                 None) == LEAK))
    alive = GaugeMetricFamily("bilge_live_processes", "Live processes of the worker, by role.",
                              labels=["hostname", "role"])
    for role in sorted({p.info.role for p in live} | {"celery-main", "celery-child"}):
        alive.add_metric([host, role], sum(1 for p in live if p.info.role == role))
    limit = GaugeMetricFamily("bilge_memory_limit_bytes", "The hard memory limit the forecast is made against "
                              "(--recycle-hard-limit, else the cgroup's), when there is one.", labels=["hostname"])
    if hard_limit:
        limit.add_metric([host], hard_limit)
    task_growth = GaugeMetricFamily("bilge_task_growth_bytes_per_call",
                                    "Memory each call of a task leaves behind in the leaking processes, bytes.",
                                    labels=["hostname", "task"])
    for g in diagnosis.task_growth:
        task_growth.add_metric([host, g.task], g.bytes_per_call)
    yield from (verdict, per_hour, per_task, to_limit, tasks, leaking, alive, limit, task_growth)
    yield from _finding_metrics(diagnosis, host)
    yield _recycles(run, host)


def _finding_metrics(diagnosis: Diagnosis, host: str) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "bilge_finding_info", "1 for each finding of the latest diagnosis, labelled by its leak signature "
        "(values are never exported: types, names and paths only).",
        labels=["hostname", "signature", "task", "type", "kind", "holder", "new"])
    size = GaugeMetricFamily("bilge_finding_bytes_per_call", "Bytes each call of the leaking task keeps, by "
                             "leak signature.", labels=["hostname", "signature"])
    processes = GaugeMetricFamily("bilge_finding_processes", "Processes that show the leak, by leak signature.",
                                  labels=["hostname", "signature"])
    seen: set[str] = set()
    for f in diagnosis.findings:
        if f.signature is None or f.signature in seen:
            continue
        seen.add(f.signature)
        info.add_metric([host, f.signature, f.task or "", f.type or "", f.kind or "", f.holder or "",
                         "" if f.new is None else str(f.new).lower()], 1.0)
        if f.bytes_per_call is not None:
            size.add_metric([host, f.signature], f.bytes_per_call)
        processes.add_metric([host, f.signature], len(f.pids))
    yield from (info, size, processes)


def _recycles(run: RunData, host: str) -> Metric:
    recycles = CounterMetricFamily("bilge_recycles", "Pool children recycled, by whom and why.",
                                   labels=["hostname", "by", "reason"])
    by_reason: dict[tuple[str, str], int] = dict.fromkeys(RECYCLE_REASONS, 0)
    for p in run.processes:
        for r in p.recycles:
            if r.status == "requested":
                reason = r.reason.split(":", 1)[0]
                by_reason[("bilge", reason)] = by_reason.get(("bilge", reason), 0) + 1
        if p.info.exit_code == 155:
            by_reason[("celery", "max-per-child")] = by_reason.get(("celery", "max-per-child"), 0) + 1
    for (by, reason), n in sorted(by_reason.items()):
        recycles.add_metric([host, by, reason], n)
    return recycles


def _cost_metrics(live: Sequence[ProcessData], host: str) -> Iterator[Metric]:
    """bilge's own cost per live process and stage, and the budget each has left."""
    labels = PROCESS_LABELS + ["stage"]
    cpu = CounterMetricFamily("bilge_agent_cpu_seconds", "CPU time bilge's own work took, by stage.", labels=labels)
    slowed = CounterMetricFamily("bilge_agent_slowed_task_seconds",
                                 "Wall time tasks took beyond their usual duration because of bilge, by stage.",
                                 labels=labels)
    cpu_left = GaugeMetricFamily("bilge_agent_budget_cpu_left_seconds",
                                 "CPU seconds bilge's budgeted stages may still spend (at the last flush).",
                                 labels=PROCESS_LABELS)
    slowed_left = GaugeMetricFamily("bilge_agent_budget_slowed_left_seconds",
                                    "Seconds of slowed task time bilge's budgeted stages may still add "
                                    "(at the last flush).", labels=PROCESS_LABELS)
    for p in live:
        key = _key(p, host)
        for c in p.cost.stages:
            cpu.add_metric(key + [c.stage], c.cpu_seconds)
            slowed.add_metric(key + [c.stage], c.slowed_seconds)
        if p.cost.budget is not None:
            cpu_left.add_metric(key, p.cost.budget.cpu_left)
            slowed_left.add_metric(key, p.cost.budget.slowed_left)
    yield from (cpu, slowed, cpu_left, slowed_left)
