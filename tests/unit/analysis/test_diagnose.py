"""Tests for bilge.analysis.diagnose: the whole pipeline from RunData to Diagnosis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from itertools import accumulate

import numpy as np
import pytest

from bilge.analysis import diagnose, health
from bilge.analysis.diagnose import _window_censuses
from bilge.analysis.kind import PYTHON_OBJECTS
from bilge.model import (
    INCONCLUSIVE,
    LEAK,
    NO_LEAK,
    Census,
    ContainerScan,
    Holder,
    ProcessData,
    ProcessInfo,
    RunData,
    RunInfo,
    Sample,
    TaskRecord,
)

PAGE = 4096
BASE = 60 * 2**20
NAMES = ("shop.checkout", "shop.search", "shop.thumbnail")
RUN = RunInfo(id=1, started=0.0, ended=100.0, command="celery worker", exit_code=0, hostname="test")


def process(pid: int, leaker: str | None, tasks: int = 1500, seed: int = 0) -> ProcessData:
    """A worker child that ran ``tasks`` interleaved tasks; ``leaker`` keeps 4 KiB and 64 blocks per call."""
    rng = np.random.default_rng(seed)
    rss, blocks, orders = BASE, 100_000, 1000
    records, sample_rows, census_rows = [], [], []
    for seq, name in enumerate(rng.choice(NAMES, size=tasks), 1):
        before = (rss + int(rng.normal(0, 8192)) // PAGE * PAGE, blocks + int(rng.normal(0, 20)))
        if name == leaker:
            rss, blocks, orders = rss + 4096, blocks + 64, orders + 1
        after = (rss + int(rng.normal(0, 8192)) // PAGE * PAGE, blocks + int(rng.normal(0, 20)))
        t = seq * 0.01
        records.append(TaskRecord(seq, str(name), t, t + 0.005, before[0], after[0], before[1], after[1], False))
        if seq % 10 == 0:
            sample_rows.append(Sample(t + 0.006, after[0], None, None, after[1], seq, 12, 2, seq))
        if seq % 100 == 0:
            census_rows.append(Census(t + 0.007, seq, 50_000, 0.02,
                                      {"shop.Order": (orders, 64 * orders), "dict": (5000, 5000 * 232)}))
    info = ProcessInfo(id=pid, pid=1000 + pid, ppid=1000, parent_id=1, role="celery-child", started=0.0,
                       ended=20.0, argv="celery worker")
    return ProcessData(info=info, samples=tuple(sample_rows), tasks=tuple(records), censuses=tuple(census_rows))


def test_leaking_run_names_task_type_and_kind() -> None:
    """A child leaking shop.Order objects in shop.search: LEAK, python-objects, task and type named."""
    diagnosis = diagnose(RunData(run=RUN, processes=(process(2, "shop.search"),)))
    assert diagnosis.verdict == LEAK
    assert diagnosis.kind == PYTHON_OBJECTS
    top = diagnosis.findings[0]
    assert top.task == "shop.search"
    assert top.type == "shop.Order"
    assert top.pids == (1002,)
    assert top.bytes_per_call is not None and 0.7 * 4096 <= top.bytes_per_call <= 1.3 * 4096
    assert top.count_per_call == 1.0
    child = diagnosis.processes[0]
    assert child.verdict == LEAK
    assert child.tasks_observed == 1500
    assert child.growth_bytes_per_task is not None and 0.7 * 4096 / 3 <= child.growth_bytes_per_task <= 1.3 * 4096 / 3
    assert child.confirmed_after_tasks is not None and child.confirmed_after_tasks <= 1500
    assert child.confirmed_after_calls == sum(
        1 for t in process(2, "shop.search").tasks[: child.confirmed_after_tasks] if t.name == "shop.search")


def test_flat_run_is_no_leak_without_findings() -> None:
    """Children with only transient noise: NO_LEAK, no findings, no kind."""
    diagnosis = diagnose(RunData(run=RUN, processes=(process(2, None), process(3, None, seed=1))))
    assert diagnosis.verdict == NO_LEAK
    assert diagnosis.findings == ()
    assert diagnosis.kind is None
    assert [p.verdict for p in diagnosis.processes] == [NO_LEAK, NO_LEAK]


def test_one_leaking_child_makes_the_run_leak() -> None:
    """One leaking child among two is enough for LEAK; the reason counts them."""
    diagnosis = diagnose(RunData(run=RUN, processes=(process(2, None), process(3, "shop.thumbnail", seed=1))))
    assert diagnosis.verdict == LEAK
    assert diagnosis.reason == "1 of 2 processes leak"
    assert diagnosis.findings[0].task == "shop.thumbnail"
    assert diagnosis.findings[0].pids == (1003,)


def test_process_diagnosis_carries_the_stored_cost() -> None:
    """bilge's own cost read from the store reaches the process's diagnosis unchanged, for the reporters."""
    from bilge.model import STAGE_CENSUS, AgentCost, StageCost

    cost = AgentCost(stages=(StageCost(STAGE_CENSUS, 0.3, 0.0, 15),))
    diagnosis = diagnose(RunData(run=RUN, processes=(replace(process(2, None), cost=cost), process(3, None))))
    assert [p.cost for p in diagnosis.processes] == [cost, AgentCost()]


def test_run_without_samples_is_inconclusive() -> None:
    """A run whose processes recorded nothing is INCONCLUSIVE with an explanation."""
    empty = ProcessData(info=ProcessInfo(1, 99, 1, None, "main", 0.0, None, "python x.py"), samples=(), tasks=(),
                        censuses=())
    diagnosis = diagnose(RunData(run=RUN, processes=(empty,)))
    assert diagnosis.verdict == INCONCLUSIVE
    assert diagnosis.processes == ()
    assert diagnosis.reason.startswith("no process recorded any sample")


def test_a_table_holding_more_than_the_type_ever_grew_is_not_the_holder() -> None:
    """One search found shop.Order in a 5000-entry library table and in the app's dict: the type grew by ~330
    objects by then, so the table held them before the leak; the app's dict is the holder."""
    from bilge.model import Holder

    leaking = process(2, "shop.search")
    found = tuple(Holder(t=10.0, started=9.9, type="shop.Order", path=path, root_kind="module-global",
                         container_type="dict", container_len=n, targets=n)
                  for path, n in (("lib.ORDER_TEMPLATES[...]", 5000), ("app._ORDERS[...]", 300)))
    diagnosis = diagnose(RunData(run=RUN, processes=(replace(leaking, holders=found),)))
    assert diagnosis.findings[0].type == "shop.Order"
    assert diagnosis.findings[0].holder == "app._ORDERS[...]"


def test_the_type_the_growing_container_holds_leads_the_types_inside_it() -> None:
    """A list keeps exceptions, whose tracebacks keep frames that keep shop.Order objects: the exception type,
    held by the list itself, is the first finding, though the specific shop.Order grows as fast."""
    from bilge.model import Holder

    leaking = process(2, "shop.search")
    censuses = tuple(replace(c, types={**c.types, "app.PricingError": (c.types["shop.Order"][0] - 900, 0)})
                     for c in leaking.censuses)
    found = tuple(Holder(t=10.0, started=9.9, type=name, path=path, root_kind="module-global", container_type="list",
                         container_len=300, targets=300)
                  for name, path in (("shop.Order", "app._FAILED[...]->traceback.tb_frame local 'order'"),
                                     ("app.PricingError", "app._FAILED[...]")))
    diagnosis = diagnose(RunData(run=RUN, processes=(replace(leaking, censuses=censuses, holders=found),)))
    assert [(f.type, f.holder) for f in diagnosis.findings[:2]] == [
        ("app.PricingError", "app._FAILED[...]"), ("shop.Order", "app._FAILED[...]->traceback.tb_frame local 'order'")]


def test_with_the_collector_off_held_types_do_not_outrank_the_census() -> None:
    """gc disabled while the heap grows: uncollectable cycles have no holder, so a held, growing builtin
    (functions in a library's callback table) does not lead; the specific type the census ranks first does."""
    from bilge.analysis.kind import UNCOLLECTABLE
    from bilge.model import Holder

    leaking = process(2, "shop.search")
    censuses = tuple(replace(c, types={**c.types, "function": (c.types["shop.Order"][0] + 4000, 0)})
                     for c in leaking.censuses)
    found = tuple(Holder(t=t, started=t - 0.1, type="function", path="lib.CALLBACKS[...]", root_kind="module-global",
                         container_type="dict", container_len=n, targets=n) for t, n in ((6.0, 100), (12.0, 300)))
    off = tuple(replace(s, gc_enabled=0) for s in leaking.samples)
    diagnosis = diagnose(RunData(run=RUN, processes=(
        replace(leaking, censuses=censuses, holders=found, samples=off),)))
    assert diagnosis.kind == UNCOLLECTABLE
    assert diagnosis.findings[0].type == "shop.Order"


def test_growth_per_hour_is_growth_per_task_times_task_rate() -> None:
    """A leak of ~4 KiB every third task at 100 tasks/s grows ~1365 B/task, so ~490 MB/h."""
    child = diagnose(RunData(run=RUN, processes=(process(2, "shop.search"),))).processes[0]
    assert child.growth_bytes_per_task is not None and child.growth_bytes_per_hour is not None
    assert child.growth_bytes_per_hour > 0
    rate = child.growth_bytes_per_hour / child.growth_bytes_per_task
    assert 0.9 * 100 * 3600 <= rate <= 1.1 * 100 * 3600


def test_health_fails_a_process_over_the_hard_limit_whatever_its_trend() -> None:
    """Live run: a leaking child is degraded without a limit, failing once the limit is at or below its RSS,
    and failing within the horizon when its growth reaches a limit above it; a flat child stays healthy."""
    live = replace(RUN, ended=None, exit_code=None)
    leaking = process(2, "shop.search")
    leaking = replace(leaking, info=replace(leaking.info, ended=None))
    run = RunData(run=live, processes=(leaking,))
    found = diagnose(run)
    rss = found.processes[0].rss_end
    assert rss is not None
    assert health.assess(run, found, None).status == health.DEGRADED
    assert health.assess(run, found, rss).processes[0].seconds_to_limit == 0.0
    assert health.assess(run, found, rss).status == health.FAILING
    near = health.assess(run, found, rss + 2**20)  # ~8 s away at ~490 MB/h
    assert near.status == health.FAILING and near.processes[0].seconds_to_limit is not None
    assert 0 < near.processes[0].seconds_to_limit < 60
    assert health.assess(run, found, rss + 2**40).status == health.DEGRADED
    flat = process(3, None)
    flat_run = RunData(run=live, processes=(replace(flat, info=replace(flat.info, ended=None)),))
    assert health.assess(flat_run, diagnose(flat_run), None).status == health.HEALTHY


def _holders(type_name: str, path: str, lengths: tuple[int, ...]) -> tuple[Holder, ...]:
    return tuple(Holder(t=t, started=t - 0.1, type=type_name, path=path, root_kind="module-global",
                        container_type="dict", container_len=n, targets=n)
                 for t, n in zip((6.0, 12.0), lengths))


def test_native_growth_names_the_python_type_that_owns_it() -> None:
    """RSS grows with the heap flat (native bytes), while one connection object per leaky call piles up in a
    dict seen growing: the native finding names that type and holder and says to close them."""
    from bilge.analysis.kind import NATIVE

    leaking = process(2, "shop.search")
    flat = tuple(replace(t, blocks_before=100_000, blocks_after=100_000) for t in leaking.tasks)
    samples = tuple(replace(s, heap_blocks=100_000) for s in leaking.samples)
    censuses = tuple(replace(c, types={"sqlite3.Connection": c.types["shop.Order"], "dict": c.types["dict"]})
                     for c in leaking.censuses)
    found = _holders("sqlite3.Connection", "app._OPEN[...]", (200, 400))
    diagnosis = diagnose(RunData(run=RUN, processes=(
        replace(leaking, tasks=flat, samples=samples, censuses=censuses, holders=found),)))
    assert diagnosis.kind == NATIVE
    top = diagnosis.findings[0]
    assert (top.type, top.holder) == ("sqlite3.Connection", "app._OPEN[...]")
    assert "native" in top.hint and "close" in top.hint
    # Without a holder seen growing no type is named for native growth.
    diagnosis = diagnose(RunData(run=RUN, processes=(
        replace(leaking, tasks=flat, samples=samples, censuses=censuses),)))
    assert diagnosis.findings[0].type is None
    # Seen once by the holder search, in a module-level dict that grew at
    # every scan: that is a holder seen growing.
    scans = tuple(ContainerScan(c.t, c.tasks_done, (("app._OPEN", "dict", c.types["sqlite3.Connection"][0],
                                                     "sqlite3.Connection"),)) for c in censuses)
    diagnosis = diagnose(RunData(run=RUN, processes=(replace(
        leaking, tasks=flat, samples=samples, censuses=censuses, holders=found[-1:], container_scans=scans),)))
    assert (diagnosis.findings[0].type, diagnosis.findings[0].holder) == ("sqlite3.Connection", "app._OPEN[...]")
    # No holder search at all, and the census cut the type: the container names both.
    counted = tuple(replace(c, types={"dict": c.types["dict"]}) for c in censuses)
    diagnosis = diagnose(RunData(run=RUN, processes=(replace(
        leaking, tasks=flat, samples=samples, censuses=counted, container_scans=scans),)))
    top = diagnosis.findings[0]
    assert (top.kind, top.type, top.holder) == (NATIVE, "sqlite3.Connection", "app._OPEN")
    assert "native" in top.hint and "close" in top.hint


def test_weak_references_and_static_tables_do_not_lead_or_follow() -> None:
    """Weakrefs grow with the handlers they point to (logging's handler list): the held handlers lead; a type
    whose only holder is a table that never grew is not shown as a second finding."""
    leaking = process(2, "shop.search")
    censuses = tuple(replace(c, types={**c.types, "weakref.ReferenceType": (2 * c.types["shop.Order"][0], 0),
                                       "list": (c.types["shop.Order"][0] + 5, 0)})
                     for c in leaking.censuses)
    found = (_holders("weakref.ReferenceType", "logging._handlerList[...]", (300, 700))
             + _holders("shop.Order", "app.log.handlers[...]", (150, 350))
             + _holders("list", "pygments.Style._styles[...]", (80, 80)))
    diagnosis = diagnose(RunData(run=RUN, processes=(replace(leaking, censuses=censuses, holders=found),)))
    assert [f.type for f in diagnosis.findings] == ["shop.Order", "weakref.ReferenceType"]
    # One holder search saw each once (no growth between searches to go by);
    # both containers grew at every scan: the held handlers still lead.
    once = found[1::2]
    scans = tuple(ContainerScan(c.t, c.tasks_done, (
        ("logging._handlerList", "list", 2 * c.types["shop.Order"][0], "weakref.ReferenceType"),
        ("app.log.handlers", "list", c.types["shop.Order"][0], "shop.Order"))) for c in censuses)
    diagnosis = diagnose(RunData(run=RUN, processes=(
        replace(leaking, censuses=censuses, holders=once, container_scans=scans),)))
    assert [(f.type, f.holder) for f in diagnosis.findings][:1] == [("shop.Order", "app.log.handlers[...]")]
    # No holder search ran at all, and the weak references weigh more bytes:
    # the growing containers alone still put the held handlers first.
    heavy = tuple(replace(c, types={**c.types, "weakref.ReferenceType": (2 * c.types["shop.Order"][0],
                                                                         10**6 * c.types["shop.Order"][0])})
                  for c in censuses)
    diagnosis = diagnose(RunData(run=RUN, processes=(replace(leaking, censuses=heavy, container_scans=scans),)))
    assert [(f.type, f.holder) for f in diagnosis.findings][:1] == [("shop.Order", "app.log.handlers")]


def test_the_pool_parent_with_few_samples_says_when_it_will_be_judged() -> None:
    """Celery's MainProcess runs no tasks: with 26 samples the report says how many more it needs, plainly."""
    samples = tuple(Sample(t * 0.5, BASE, None, None, 100_000, 0, 12, 2, 0) for t in range(26))
    info = ProcessInfo(id=1, pid=1000, ppid=1, parent_id=None, role="celery-main", started=0.0, ended=13.0,
                       argv="celery worker")
    diagnosis = diagnose(RunData(run=RUN, processes=(
        ProcessData(info=info, samples=samples, tasks=(), censuses=()), process(2, None))))
    parent = diagnosis.processes[0]
    assert parent.verdict == INCONCLUSIVE
    assert parent.reason.startswith("the pool's parent runs no tasks and is judged on its memory over time: "
                                    "26 samples so far, 600 needed")
    assert diagnosis.verdict == NO_LEAK


def test_a_leak_nothing_explains_is_inconclusive_and_says_what_it_may_be() -> None:
    """RSS and heap drift up after every task whatever its name, and no type grows: not a leak to report
    (issue 9: a leak verdict with nothing attributed is a warning sign) but an inconclusive verdict saying
    what the growth may be and what more is needed: memory bilge's explain stage left when it ran in the
    process meanwhile, garbage when no full collection ran, else a cache still filling."""
    from bilge.model import AgentCost, StageRun

    flat = process(2, None)
    drifting = tuple(replace(t, rss_before=(t.rss_before or 0) + 1500 * t.seq, rss_after=(t.rss_after or 0)
                             + 1500 * t.seq, blocks_before=(t.blocks_before or 0) + 20 * t.seq,
                             blocks_after=(t.blocks_after or 0) + 20 * t.seq) for t in flat.tasks)
    drifting_process = replace(flat, tasks=drifting)
    quiet = diagnose(RunData(run=RUN, processes=(drifting_process,)))
    assert quiet.verdict == INCONCLUSIVE
    assert quiet.findings == () and quiet.processes[0].confirmed_after_tasks is None
    assert "no task, object type or holder explains the growth: a cache still filling" in quiet.processes[0].reason
    searches = tuple(StageRun("holder-search", "suspect", t, t + 0.05, 0.05, 0.0, "done") for t in (6.0, 9.0))
    diagnosis = diagnose(RunData(run=RUN, processes=(replace(drifting_process, cost=AgentCost(runs=searches)),)))
    assert diagnosis.verdict == INCONCLUSIVE
    assert diagnosis.findings == ()
    assert "explains the growth: bilge's own explain stage ran" in diagnosis.processes[0].reason
    awaiting = replace(drifting_process, samples=tuple(replace(s, gc_full=2, gc_enabled=1, heap_after_full=1)
                                                       for s in drifting_process.samples))
    diagnosis = diagnose(RunData(run=RUN, processes=(awaiting,)))
    assert diagnosis.verdict == INCONCLUSIVE and "garbage waiting for" in diagnosis.processes[0].reason
    # A type alone (no task, no holder) does not explain it either while no full collection ran: garbage
    # waiting for one has growing types too (a dropped minidom tree's nodes); once collections ran, it does.
    nodes = tuple(replace(c, types={**c.types, "xml.dom.minidom.Element": (20 * c.tasks_done, 2000 * c.tasks_done)})
                  for c in flat.censuses)
    typed = replace(drifting_process, censuses=nodes)
    assert diagnose(RunData(run=RUN, processes=(typed,))).findings[0].type == "xml.dom.minidom.Element"
    assert diagnose(RunData(run=RUN, processes=(typed,))).verdict == LEAK
    assert diagnose(RunData(run=RUN, processes=(replace(typed, samples=awaiting.samples),))).verdict == INCONCLUSIVE
    # A leak its task explains stays one once full collections ran, or once bilge searched for holders and the
    # leak is not of Python objects nothing holds. Before either, its task and type alone do not tell it from the
    # cyclic garbage the task makes (xml_invoices: minidom trees dropped without unlink()): inconclusive.
    named = process(2, "shop.search")
    assert diagnose(RunData(run=RUN, processes=(named,))).verdict == LEAK
    waiting = replace(named, samples=tuple(replace(s, gc_full=2, gc_enabled=1, heap_after_full=1)
                                           for s in named.samples))
    diagnosis = diagnose(RunData(run=RUN, processes=(waiting,)))
    assert diagnosis.verdict == INCONCLUSIVE, diagnosis.processes[0].reason
    assert "bilge has not searched for what holds the growing objects yet" in diagnosis.processes[0].reason
    searched = replace(waiting, cost=AgentCost(runs=searches[:1]))
    assert diagnose(RunData(run=RUN, processes=(searched,))).verdict == LEAK


def test_a_native_leak_its_task_alone_explains_waits_for_a_full_collection_or_a_line() -> None:
    """xml_invoices (second five-repeat run, 1 of 5): a child's RSS grew with its heap flat, so the kind said
    native, and the task making the growth was named; no line, no type, no holder, no search, and no full
    collection had run: cyclic garbage outside pymalloc looks just so. Inconclusive, saying what it may be.
    Once a native window gave the line, or a full collection ran, it is a leak."""
    from bilge.analysis.kind import NATIVE
    from bilge.model import MALLOC, AllocationSite, AllocationWindow

    leaking = process(2, "shop.search")
    flat = replace(leaking, tasks=tuple(replace(t, blocks_before=100_000, blocks_after=100_000)
                                        for t in leaking.tasks),
                   censuses=tuple(replace(c, types={"dict": c.types["dict"]}) for c in leaking.censuses))
    collected = replace(flat, samples=tuple(replace(s, heap_blocks=100_000, gc_full=2 + s.tasks_done // 200,
                                                    gc_enabled=1, heap_after_full=100_000) for s in flat.samples))
    diagnosis = diagnose(RunData(run=RUN, processes=(collected,)))
    assert (diagnosis.verdict, diagnosis.kind, diagnosis.findings[0].task) == (LEAK, NATIVE, "shop.search")
    waiting = replace(collected, samples=tuple(replace(s, gc_full=2) for s in collected.samples))
    diagnosis = diagnose(RunData(run=RUN, processes=(waiting,)))
    assert diagnosis.verdict == INCONCLUSIVE, diagnosis.processes[0].reason
    assert "garbage waiting for a collection" in diagnosis.processes[0].reason
    native = AllocationWindow(started=8.0, ended=9.0, tasks=40, status="done", peak_memory=0, tracer=MALLOC,
                              sites=(AllocationSite("app.py", 30, 40 * 4096, 40, "user", (), native=40 * 4096),))
    diagnosis = diagnose(RunData(run=RUN, processes=(replace(waiting, windows=(native,)),)))
    assert diagnosis.verdict == LEAK, diagnosis.processes[0].reason
    assert diagnosis.findings[0].location is not None and diagnosis.findings[0].location.endswith("app.py:30")


def test_a_verdict_resting_on_the_heap_is_never_native() -> None:
    """The heap grows with every leaky call; RSS after tasks climbed 24 MiB between a quarter and half of the
    run (what explain-stage steps leave) and is flat after it, and traced episodes kept little: alone, the kind
    test would say "outside Python". The verdict rests on the heap (RSS has not followed in the judged half),
    so the kind is python-objects."""
    from bilge.model import AllocationSite, AllocationWindow

    leaking = process(2, "shop.search")
    n = len(leaking.tasks)

    def climbed(seq: int) -> int:
        return BASE + int((24 << 20) * min(1.0, max(0.0, (seq - n / 4) / (n / 4))))

    rss = tuple(replace(t, rss_before=climbed(t.seq - 1), rss_after=climbed(t.seq)) for t in leaking.tasks)
    samples = tuple(replace(s, rss=climbed(s.tasks_done)) for s in leaking.samples)
    traced = (AllocationWindow(started=8.0, ended=8.5, tasks=16, status="done", peak_memory=1 << 20,
                               sites=(AllocationSite("app.py", 12, 16 * 600, 16 * 9, "user", ()),)),)
    diagnosis = diagnose(RunData(run=RUN, processes=(replace(leaking, tasks=rss, samples=samples, windows=traced),)))
    child = diagnosis.processes[0]
    assert child.verdict == LEAK and child.reason.startswith("the Python heap grows steadily")
    assert diagnosis.kind == PYTHON_OBJECTS


def test_a_slow_heap_trend_is_a_leak_when_a_task_explains_it_and_inconclusive_when_nothing_does() -> None:
    """RSS flat; the heap grows 12 blocks per call of shop.search (4 a task, ~3,000 over the judged half: under
    the old 4000-block floor; ~2 GiB a day at this process's ~100 tasks a second). A task whose calls grow
    explains it: a leak. The same creep after every task whatever its name, with no type or holder, is a
    library cache filling as readily as a leak: inconclusive."""
    base = process(2, None)
    per_call = tuple(accumulate(12 if t.name == "shop.search" else 0 for t in base.tasks))
    slow = tuple(replace(t, blocks_before=(t.blocks_before or 0) + (per_call[i - 1] if i else 0),
                         blocks_after=(t.blocks_after or 0) + per_call[i]) for i, t in enumerate(base.tasks))
    diagnosis = diagnose(RunData(run=RUN, processes=(replace(base, tasks=slow),)))
    child = diagnosis.processes[0]
    assert child.verdict == LEAK, child.reason
    assert "a day at" in child.reason
    assert diagnosis.findings[0].task == "shop.search"
    # RSS has not moved: the growth per task shown is the heap's (4 blocks at ~64 B), not RSS's ~0.
    assert child.growth_bytes_per_task is not None and 200 <= child.growth_bytes_per_task <= 320
    creep = tuple(replace(t, blocks_before=(t.blocks_before or 0) + 2 * (t.seq - 1),
                          blocks_after=(t.blocks_after or 0) + 2 * t.seq) for t in base.tasks)
    diagnosis = diagnose(RunData(run=RUN, processes=(replace(base, tasks=creep),)))
    assert diagnosis.verdict == INCONCLUSIVE
    assert "no task, object type or holder explains the growth" in diagnosis.processes[0].reason


def _seen_keys(base: ProcessData, per_call: int, scans_of: str | None) -> ProcessData:
    """``base`` with one block a call of shop.search kept (a short str key in a set: ~0.33 blocks a task,
    ~250 over the judged half, far under the heap's 1500-block floor), and a container scan every 100 tasks:
    ``myapp.tasks._SEEN`` grows by ``per_call`` per call of ``scans_of`` (None: no scans at all)."""
    kept = tuple(accumulate(1 if t.name == "shop.search" else 0 for t in base.tasks))
    tasks = tuple(replace(t, blocks_before=(t.blocks_before or 0) + (kept[i - 1] if i else 0),
                          blocks_after=(t.blocks_after or 0) + kept[i]) for i, t in enumerate(base.tasks))
    scans = ()
    if scans_of is not None:
        calls = tuple(accumulate(per_call if t.name == scans_of else 0 for t in base.tasks))
        scans = tuple(ContainerScan(t.ended + 0.001, t.seq, (
            ("myapp.tasks._SEEN", "set", 64 + calls[i], "str"), ("myapp.tables.COUNTRIES", "dict", 250, "str")))
            for i, t in enumerate(base.tasks) if t.seq % 100 == 0)
        # The task hooks count the set's items around each task once the scans saw it grow.
        tasks = tuple(replace(t, items_before=64 + (calls[i - 1] if i else 0), items_after=64 + calls[i])
                      if t.seq > 300 else t for i, t in enumerate(tasks))
    return replace(base, tasks=tasks, container_scans=scans)


def test_a_slow_heap_trend_under_the_floor_is_a_leak_when_a_module_level_container_keeps_growing() -> None:
    """A key per call kept in a module-level set: no counted type grows (str is untracked), the heap trend is
    under the block floor. The growing set corroborates it: a leak, with task, the set's element type and
    the set as holder. Without the scans it stays dismissed as too small (what bilge said before)."""
    base = process(2, None)
    diagnosis = diagnose(RunData(run=RUN, processes=(_seen_keys(base, 1, "shop.search"),)))
    child = diagnosis.processes[0]
    assert child.verdict == LEAK, child.reason
    assert "myapp.tasks._SEEN (a set of str)" in child.reason
    top = diagnosis.findings[0]
    assert (top.task, top.type, top.holder, top.kind) == ("shop.search", "str", "myapp.tasks._SEEN", PYTHON_OBJECTS)
    assert top.count_per_call is not None and 0.8 <= top.count_per_call <= 1.2
    assert "myapp.tasks._SEEN" in top.hint
    diagnosis = diagnose(RunData(run=RUN, processes=(_seen_keys(base, 1, None),)))
    assert diagnosis.processes[0].verdict == NO_LEAK


def test_a_corroborated_heap_trend_confirms_a_leak_rss_confirms_later() -> None:
    """detection.py's 1 KiB leak (a dict and an 824-byte str per call, kept in a module-level list): RSS confirms
    the leak late (its noise against ~300 B a task), the heap's ~0.5 blocks a task is under the block floor
    alone, and the list grew at every scan. The corroborated heap trend confirms it sooner, as it does when RSS
    has not moved at all: ``confirmed_after`` takes whichever series confirms first."""
    base = process(2, None)
    kept = _seen_keys(base, 1, "shop.search")
    grown = tuple(accumulate(1024 if t.name == "shop.search" else 0 for t in kept.tasks))
    tasks = tuple(replace(t, rss_before=(t.rss_before or 0) + (grown[i - 1] if i else 0),
                          rss_after=(t.rss_after or 0) + grown[i]) for i, t in enumerate(kept.tasks))
    child = diagnose(RunData(run=RUN, processes=(replace(kept, tasks=tasks),))).processes[0]
    assert child.verdict == LEAK and child.reason.startswith("memory grows steadily"), child.reason
    alone = diagnose(RunData(run=RUN, processes=(replace(kept, tasks=tasks, container_scans=()),))).processes[0]
    assert alone.confirmed_after_tasks is not None and child.confirmed_after_tasks is not None
    assert child.confirmed_after_tasks < alone.confirmed_after_tasks


def test_scans_since_a_quarter_in_corroborate_a_heap_trend_the_second_half_has_few_scans_of() -> None:
    """A short, busy child: its container stage's budget paid for scans in the first part of the run only (two
    in the judged second half). The set grew at every scan from a quarter in, at the same pace, and still at
    the latest: that corroborates the heap trend."""
    base = process(2, None)
    scanned = _seen_keys(base, 1, "shop.search")
    last = len(base.tasks)
    early = tuple(s for s in scanned.container_scans if s.tasks_done <= 0.6 * last)
    assert len([s for s in early if s.tasks_done >= last // 2]) < 3  # too few for the second half alone
    diagnosis = diagnose(RunData(run=RUN, processes=(replace(scanned, container_scans=early),)))
    assert diagnosis.processes[0].verdict == LEAK, diagnosis.processes[0].reason
    assert diagnosis.findings[0].holder == "myapp.tasks._SEEN"


def test_a_container_that_stopped_growing_corroborates_nothing() -> None:
    """The same heap trend, but the set filled during the first part of the window and stayed flat (a bounded
    cache): no leak is confirmed from it."""
    base = process(2, None)
    filled = _seen_keys(base, 1, "shop.search")
    scans = tuple(replace(s, lengths=((s.lengths[0][0], "set", min(s.lengths[0][2], 300), "str"),) + s.lengths[1:])
                  for s in filled.container_scans)
    diagnosis = diagnose(RunData(run=RUN, processes=(replace(filled, container_scans=scans),)))
    assert diagnosis.processes[0].verdict == NO_LEAK


def test_a_growing_container_names_the_leak_before_a_builtin_type_nothing_holds() -> None:
    """A clear leak of shop.search whose only counted growth is tuples (bilge's own window left some, say) that
    no holder search found: the set that grows through the window is the better answer. Without the scans the
    finding is the bare tuple."""
    leaking = process(2, "shop.search")
    scanned = _seen_keys(leaking, 1, "shop.search")
    counted = tuple(replace(c, types={"dict": c.types["dict"],
                                      "tuple": (9000 + c.tasks_done, 64 * (9000 + c.tasks_done))})
                    for c in leaking.censuses)
    top = diagnose(RunData(run=RUN, processes=(replace(scanned, censuses=counted),))).findings[0]
    assert (top.task, top.type, top.holder) == ("shop.search", "str", "myapp.tasks._SEEN")
    bare = diagnose(RunData(run=RUN, processes=(replace(leaking, censuses=counted),))).findings[0]
    assert (bare.type, bare.holder) == ("tuple", None)
    # A holder search found tuples only in a constant table (the same count at both searches): still the set.
    static = _holders("tuple", "_ssl.err_codes_to_names[...]", (1682, 1682))
    top = diagnose(RunData(run=RUN, processes=(replace(scanned, censuses=counted, holders=static),))).findings[0]
    assert (top.type, top.holder) == ("str", "myapp.tasks._SEEN")


def test_censuses_counted_while_the_explain_stage_ran_are_left_out_of_the_window() -> None:
    """A census inside a holder search counts the search's own tuples: not evidence of what the worker grows
    (unless too few censuses would be left)."""
    cs = [Census(t=float(t), tasks_done=100 * t, objects=1, duration=0.05, types={}) for t in range(8)]
    window = _window_censuses(cs, 2.0, busy=[(4.98, 5.5)])
    assert [c.t for c in window] == [2.0, 3.0, 4.0, 6.0, 7.0]
    assert len(_window_censuses(cs[:3], 0.0, busy=[(0.0, 9.0)])) == 3


def test_children_of_one_leak_report_one_memory_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two children leaking the same shop.Order objects, one of whose windows reads as native (its allocator
    kept pages): both processes report the run's kind, not one python-objects and one native."""
    from bilge.analysis import kind as kind_module

    classify = kind_module.classify
    calls: list[int] = []

    def one_native(*args: object, **kwargs: object) -> tuple[str | None, tuple[str, ...]]:
        calls.append(1)
        found, evidence = classify(*args, **kwargs)  # type: ignore[arg-type]
        return (kind_module.NATIVE if len(calls) == 2 else found), evidence

    monkeypatch.setattr(kind_module, "classify", one_native)
    diagnosis = diagnose(RunData(run=RUN, processes=(process(2, "shop.search"), process(3, "shop.search", seed=1))))
    assert len(calls) == 2 and diagnosis.kind == PYTHON_OBJECTS
    assert [p.kind for p in diagnosis.processes] == [PYTHON_OBJECTS, PYTHON_OBJECTS]


def test_growth_held_by_a_cache_filling_at_a_slowing_pace_is_inconclusive() -> None:
    """The leak's holder is a module-level dict whose scans show it filling ever more slowly (300 keys drawn
    again and again: a coupon collector): a cache still filling, inconclusive with how many more tasks would
    tell. The same dict gaining one entry per call at a steady pace stays a leak."""
    leaking = process(2, "shop.search")
    found = _holders("shop.Order", "app._DEFINITIONS[...]", (150, 350))

    def scanned(lengths: Callable[[int], int]) -> ProcessData:
        scans = tuple(ContainerScan(t.ended + 0.001, t.seq, (("app._DEFINITIONS", "dict", lengths(t.seq), "dict"),))
                      for t in leaking.tasks if t.seq % 100 == 0)
        return replace(leaking, holders=found, container_scans=scans)

    filling = diagnose(RunData(run=RUN, processes=(scanned(lambda seq: round(300 * (1 - (299 / 300) ** seq))),)))
    assert filling.verdict == INCONCLUSIVE and not filling.findings
    assert "app._DEFINITIONS, fills at a slowing pace" in filling.processes[0].reason
    steady = diagnose(RunData(run=RUN, processes=(scanned(lambda seq: seq // 3),)))
    assert steady.verdict == LEAK and steady.findings[0].holder == "app._DEFINITIONS[...]"
