"""The agent's always-on stages alone: the watch, the counts the explain stage reasons on, the fd scan."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from bilge.agent.census_stage import MIN_TYPE_GROWTH, Counts
from bilge.agent.outbox import MAX_TASK_NAMES, OTHER_NAME, Outbox
from bilge.agent.watch import FULL_READ_TASKS, MAX_READ_EVERY, MAX_YOUNG_READ_EVERY, FdScan, Watch
from bilge.samplers import process as proc_sampler


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_watch_stores_one_row_per_finished_task_with_its_duration_and_memory() -> None:
    """Start and end hooks make one task row; the reading names the task and its duration; no reference kept."""
    outbox, clock = Outbox(), FakeClock()
    watch = Watch(outbox, clock=clock)
    watch.task_started("k1", "shop.a")
    clock.now += 0.25
    reading = watch.task_finished("k1")
    assert reading is not None and (reading.name, reading.seconds) == ("shop.a", 0.25)
    assert reading.rss is not None and reading.rss > 0 and reading.blocks > 0
    (row,) = outbox.tasks
    assert row[:4] == (1, "shop.a", 100.0, 100.25)
    assert watch.task_finished("never started") is None
    assert watch.tasks_done == 1


def test_the_first_task_end_after_a_full_collection_reads_the_floor_the_samples_carry() -> None:
    """What survives a full collection is read once, at the next task end (its number kept), and every sample
    carries the latest: (full collections seen, heap blocks, task)."""
    proc_sampler.count_gc_runs()
    gc.disable()  # no collection of the host's own while the test counts them
    try:
        outbox = Outbox()
        watch = Watch(outbox)
        watch.task_started(1, "shop.a")
        watch.task_finished(1)
        seen = proc_sampler.FULL_GC[0][0]
        assert watch.floor == (seen, None, None)
        gc.collect()
        assert proc_sampler.FULL_GC[0][0] == seen + 1
        watch.task_started(2, "shop.a")
        watch.task_finished(2)
        full, blocks, task = watch.floor
        assert (full, task) == (seen + 1, 2) and blocks is not None and blocks > 0
        watch.task_started(3, "shop.a")
        watch.task_finished(3)
        assert watch.floor == (full, blocks, 2)
        watch.sample()
        assert outbox.samples[-1][-3:] == (full, blocks, 2)
    finally:
        gc.enable()


def test_task_rows_leave_nothing_in_the_heap_between_flushes() -> None:
    """Buffered task rows allocate no heap blocks once the columns reached their size, and read back exactly."""
    import sys

    outbox = Outbox()
    rows = [(i, "shop.%d" % (i % 3), 1000.0 + i, 1000.5 + i, 50_000_000 + i, None if i % 2 else 7 * i,
             300_000 + i, 300_100 + i, i % 5 == 0, i % 4, None if i % 3 else i, None if i % 3 else i + 1)
            for i in range(2000)]
    for row in rows:
        outbox.add_task(*row)
    assert outbox.drain()["tasks"] == [row[:8] + (int(row[8]),) + row[9:] for row in rows]
    before = sys.getallocatedblocks()
    for row in rows:
        outbox.add_task(*row)
    grown = sys.getallocatedblocks() - before
    # A tuple of Python objects per row kept ~6 blocks each: 12,000 here.
    assert grown < 20, grown
    assert len(outbox.tasks) == 2000 and outbox.tasks[-1][0] == 1999


def test_no_task_row_is_lost_while_threads_add_and_the_agent_drains() -> None:
    """Task threads add rows while the agent's thread drains: every row comes out exactly once."""
    import threading

    outbox = Outbox(limit=100_000)
    per_thread, threads = 20_000, 3
    drained: list[tuple[object, ...]] = []
    done = threading.Event()

    def add(first: int) -> None:
        for seq in range(first, first + per_thread):
            outbox.add_task(seq, "shop.a", 0.0, 1.0, None, seq, None, seq, False, 0)

    def drain() -> None:
        while not done.is_set():
            drained.extend(outbox.drain()["tasks"])
        drained.extend(outbox.drain()["tasks"])

    drainer = threading.Thread(target=drain)
    drainer.start()
    adders = [threading.Thread(target=add, args=(k * per_thread,)) for k in range(threads)]
    for t in adders:
        t.start()
    for t in adders:
        t.join()
    done.set()
    drainer.join()
    assert sorted(row[0] for row in drained) == list(range(threads * per_thread))
    assert all(row[5] == row[0] for row in drained)


def test_task_names_past_the_table_are_stored_as_other() -> None:
    """The name table is bounded: names past it are stored as one shared name."""
    outbox = Outbox()
    for i in range(MAX_TASK_NAMES + 5):
        outbox.add_task(i, "task.%d" % i, 0.0, 1.0, None, None, None, None, False, 0)
    names = [row[1] for row in outbox.drain()["tasks"]]
    assert names[MAX_TASK_NAMES - 2] == "task.%d" % (MAX_TASK_NAMES - 2)
    assert names[-5:] == [OTHER_NAME] * 5


def test_readings_taken_while_the_agent_works_are_gaps_in_the_suspicion() -> None:
    """While the explain stage works in the process, task readings re-base the rings instead of adding to them."""
    outbox = Outbox()
    busy = [False]
    watch = Watch(outbox, paused=lambda: busy[0])
    added, gaps = [], []
    watch.rss_suspicion.add = lambda value, at=None: added.append(value)  # type: ignore[method-assign]
    watch.rss_suspicion.gap = lambda: gaps.append(1)  # type: ignore[method-assign]
    for i, working in enumerate((False, True, False)):
        busy[0] = working
        watch.task_started(i, "shop.a")
        watch.task_finished(i)
    assert len(added) == 2 and gaps == [1]


def test_outbox_buffers_are_bounded_and_count_what_they_drop() -> None:
    """Past its limit the outbox drops new rows and counts them; a drain empties it."""
    outbox = Outbox(limit=2)
    for i in range(5):
        outbox.add_task(i, "shop.a", 1.0, 2.0, None, 10, None, 20, False, 0)
    assert len(outbox.tasks) == 2 and outbox.dropped_rows == 3
    assert outbox.drain()["tasks"] == [(i, "shop.a", 1.0, 2.0, None, 10, None, 20, 0, 0, None, None)
                                       for i in (0, 1)]
    assert not outbox.tasks


def test_a_type_that_grows_in_every_count_is_steady_and_a_warm_up_that_stopped_is_not() -> None:
    """After the baseline, ``orders.Order`` rises in every count; ``dict`` rose once during warm-up, then stopped."""
    counts = Counts()
    counts.add({"orders.Order": 0, "dict": 100}, tasks_done=20)  # the baseline
    counts.add({"orders.Order": 30, "dict": 100 + 5 * MIN_TYPE_GROWTH}, tasks_done=40)
    counts.add({"orders.Order": 60, "dict": 100 + 5 * MIN_TYPE_GROWTH}, tasks_done=60)
    assert counts.growing_types() == ["orders.Order"]
    assert counts.steadily_growing() == ["orders.Order"]
    assert counts.growth_since_baseline() == [(5 * MIN_TYPE_GROWTH, "dict"), (60, "orders.Order")]


def test_a_recount_with_no_task_in_between_refreshes_but_does_not_shift_the_counts() -> None:
    """Two counts at the same task count: "still growing" keeps comparing counts that have tasks between them."""
    counts = Counts()
    counts.add({"orders.Order": 0}, tasks_done=20)
    counts.add({"orders.Order": 30}, tasks_done=40)
    counts.add({"orders.Order": 31}, tasks_done=40)
    assert counts.previous == {"orders.Order": 0} and counts.latest == {"orders.Order": 31}
    assert counts.growing_types() == ["orders.Order"]


def test_the_fd_scan_runs_when_the_descriptor_count_moved_and_its_interval_passed() -> None:
    """First reading: due; unchanged count: not due; moved by FD_SCAN_STEP but too soon: not due; later: due."""
    outbox, monotonic = Outbox(), FakeClock()
    watch = Watch(outbox)
    scan = FdScan(outbox, watch, min_interval=1.0, monotonic=monotonic)
    watch.last_fds = 10
    assert scan.due()
    scan.run()
    assert len(outbox.fd_targets) == 1
    monotonic.now += 5.0
    assert not scan.due()
    watch.last_fds = 14
    assert scan.due()
    scan.run()
    watch.last_fds = 30
    assert not scan.due()  # within the interval
    monotonic.now += 5.0
    assert scan.due()


class Steps:
    """A clock that moves by ``step`` on every read."""

    def __init__(self, step: float) -> None:
        self.step, self.now = step, 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _tasks(watch: Watch, count: int, first: int = 0) -> None:
    for i in range(first, first + count):
        watch.task_started(i, "shop.a")
        watch.task_finished(i)


def test_past_the_young_phase_one_task_in_about_n_reads_memory_at_both_ends() -> None:
    """Read tasks carry exact before/after RSS and blocks; the others only their name and times; all are rows.

    A read costs 4.4 µs in the task's thread (timed there, one read in READ_TIMING_EVERY) and a task
    lasts 1 ms: 2 x 4.4 µs against 0.1 % of 1 ms is one task in 9."""
    outbox = Outbox()
    watch = Watch(outbox, clock=Steps(1e-3), thread_clock=Steps(4.4e-6))
    outbox.tasks.on_grow = lambda: None  # 4000 unflushed rows grow the buffer: no re-basing here (see below)
    heap: list[tuple[float, float]] = []
    watch.heap_suspicion.add = lambda value, at=None: heap.append((value, at))  # type: ignore[method-assign]
    watch.tasks_done = FULL_READ_TASKS
    _tasks(watch, 4000)
    assert watch.read_every == 9
    rows = list(outbox.tasks)
    assert [row[0] for row in rows] == list(range(FULL_READ_TASKS + 1, FULL_READ_TASKS + 4001))
    # The first task is read at its end only: its timing is what sets N.
    rows = rows[1:]
    read = [row[0] for row in rows if None not in (row[4], row[5], row[6], row[7])]
    assert all(row[4:8] == (None, None, None, None) for row in rows if row[0] not in set(read))
    assert 380 < len(read) < 520  # one in 9, at random gaps
    gaps = {b - a for a, b in zip(read, read[1:])}
    assert min(gaps) == 1 and max(gaps) == 17  # 1 .. 2N-1: never in step with a repeating order
    assert [at for _, at in heap][-len(read):] == read  # the ring knows which task each reading followed


def test_the_rings_skip_the_reading_after_the_agent_took_memory_and_re_base_across_it() -> None:
    """A census, a scan or a young process's flush keeps some of the agent's own bookkeeping, and the task rows'
    buffer grows to its high-water mark: the reading right after is skipped and the next one re-based, so the
    step is not the host's growth (in a process of empty tasks, it opened windows)."""
    outbox = Outbox()
    watch = Watch(outbox, clock=Steps(1e-3), thread_clock=Steps(1e-7))
    added: list[float] = []
    gaps: list[int] = []
    watch.heap_suspicion.add = lambda value, at=None: added.append(at)  # type: ignore[method-assign]
    watch.heap_suspicion.gap = lambda: gaps.append(watch.tasks_done)  # type: ignore[method-assign]
    _tasks(watch, 10)
    assert gaps == [2]  # the first row grew the (empty) buffer
    added.clear()
    gaps.clear()
    watch.own_work()
    _tasks(watch, 3, first=10)
    assert gaps == [11] and added == [12, 13]
    outbox.tasks.on_grow()
    _tasks(watch, 2, first=13)
    assert gaps == [11, 14] and added == [12, 13, 15]


def test_reads_are_weighed_against_the_task_one_percent_while_young_a_tenth_of_a_percent_after() -> None:
    """What a read costs (the median of the latest timings) against a task's duration sets how often
    tasks are read: every task while within the share, else one in N (capped lower while young)."""
    watch = Watch(Outbox())
    watch.task_seconds = 5e-3
    for _ in range(5):
        watch.note_read_cost(40e-6)
    assert watch.read_every == 1  # young: 40 µs is 0.8 % of 5 ms
    for _ in range(5):
        watch.note_read_cost(120e-6)
    assert watch.read_every == 5  # 2 x 120 / 50 µs
    for _ in range(5):
        watch.note_read_cost(1e-3)
    assert watch.read_every == MAX_YOUNG_READ_EVERY
    watch.tasks_done = FULL_READ_TASKS
    for _ in range(5):
        watch.note_read_cost(4e-6)
    assert watch.read_every == 1  # 4 µs is 0.08 % of 5 ms
    for _ in range(5):
        watch.note_read_cost(40e-6)
    assert watch.read_every == 16  # 2 x 40 / 5 µs
    watch.note_read_cost(5e-3)  # a thread switch inside one timing is not the read's cost
    assert watch.read_every == 16
    for _ in range(5):
        watch.note_read_cost(1e-3)
    assert watch.read_every == MAX_READ_EVERY


def test_a_short_task_in_a_busy_process_is_weighed_against_the_process_cpu_per_task() -> None:
    """A task body of 0.1 ms whose process spends 5 ms of CPU per task (Celery's own work per message):
    the reads are weighed against the 5 ms."""
    cpu = Steps(0.0)
    watch = Watch(Outbox(), cpu_clock=cpu)
    watch.task_seconds = 1e-4
    for _ in range(5):
        watch.note_read_cost(40e-6)
    assert watch.read_every == MAX_YOUNG_READ_EVERY
    watch.sample()
    watch.tasks_done += 10
    cpu.now += 0.05
    watch.sample()
    assert watch.cpu_per_task == pytest.approx(5e-3)
    watch.note_read_cost(40e-6)
    assert watch.read_every == 1


def _ticked_agent(census_min_interval: float) -> tuple[Any, Any, FakeClock]:
    """A registered agent without explain stage on an in-memory store and a fake clock, after its first tick."""
    from bilge.agent import Agent, AgentConfig
    from bilge.store.memory import MemoryStore

    clock = FakeClock()
    store = MemoryStore()
    agent = Agent(AgentConfig(data_dir="unused", run_id=1, explain=False, census_min_interval=census_min_interval),
                  store=store, monotonic=clock)
    agent.register()
    agent.tick()
    return agent, store, clock


def test_the_agent_writes_rows_every_flush_interval_and_what_others_act_on_at_once() -> None:
    """Task rows wait up to FLUSH_INTERVAL between transactions (each is a few GIL releases); a role does not."""
    from bilge.agent._runtime import FLUSH_INTERVAL

    agent, store, clock = _ticked_agent(census_min_interval=1e6)
    flushes = store.flushes
    agent.task_started(1, "shop.a")
    agent.task_finished(1)
    clock.now += FLUSH_INTERVAL / 2
    agent.tick()
    assert store.flushes == flushes and not store.tasks  # buffered
    agent.set_role("celery-child")
    agent.tick()
    assert store.flushes == flushes + 1 and store.roles == ["celery-child"] and len(store.tasks) == 1
    agent.task_started(2, "shop.a")
    agent.task_finished(2)
    clock.now += FLUSH_INTERVAL
    agent.tick()
    assert len(store.tasks) == 2


def test_a_census_is_written_at_once() -> None:
    """A census's rows do not wait for the flush interval (they would sit in the heap the tasks are read against)."""
    from bilge.agent._runtime import FLUSH_INTERVAL

    agent, store, clock = _ticked_agent(census_min_interval=0.5)
    flushes = store.flushes
    clock.now += FLUSH_INTERVAL / 2
    agent.tick()
    assert store.flushes == flushes + 1 and len(store.censuses) == 1 and not agent.outbox.censuses


def test_the_census_budget_follows_the_process_cpu_time_not_the_wall_clock() -> None:
    """Over the same 10 minutes a busy process is counted far more often than one that used little CPU."""
    from bilge.agent.census_stage import CensusStage

    def censuses(cpu_share_of_wall: float) -> int:
        wall, cpu = FakeClock(0.0), FakeClock(0.0)
        outbox = Outbox()
        stage = CensusStage(outbox, Counts(), lambda: 100, share=0.005, min_interval=1.0, clock=wall, cpu_clock=cpu)
        taken = 0
        for _ in range(600):
            wall.now += 1.0
            cpu.now += cpu_share_of_wall
            if stage.due():
                stage.run()
                taken += len(outbox.drain()["censuses"])
        return taken

    busy, idle = censuses(1.0), censuses(0.0)
    assert busy > 3 * idle >= 3  # the wall-time floor still counts an idle process now and then


def test_a_task_read_after_unread_ones_reads_its_own_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads go from one task in N back to every task (tasks got longer): the first task read after unread
    ones reads memory at its start too, so its delta is its own and not the growth of the unread tasks."""
    from bilge.samplers import process as proc_sampler

    heap = [1000]
    monkeypatch.setattr(proc_sampler, "heap_blocks", lambda: heap[0])
    outbox = Outbox()
    thread_clock = Steps(4.4e-6)
    watch = Watch(outbox, clock=Steps(1e-3), thread_clock=thread_clock)
    watch.tasks_done = FULL_READ_TASKS
    for phase in range(2):
        for i in range(1000):
            if phase == 0 and i >= 500 and outbox.tasks[-1][7] is None:
                break  # the flip comes right after an unread task
            key = phase * 1000 + i
            watch.task_started(key, "shop.a")
            heap[0] += 10  # each task keeps 10 blocks
            watch.task_finished(key)
        if phase == 0:
            assert watch.read_every == 9
            thread_clock.step = 1e-7  # reads became cheap: every task again
            for _ in range(5):
                watch.note_read_cost(1e-7)
            assert watch.read_every == 1
    deltas = [row[7] - row[6] for row in list(outbox.tasks)[1:] if row[6] is not None and row[7] is not None]
    assert len(deltas) > 1000 and set(deltas) == {10}


def test_a_container_growing_at_each_scan_at_its_pace_is_steady_one_filling_up_is_not() -> None:
    """The container stage follows module-level containers: one that grows by the same step at every scan is
    steadily growing (and its items are handed to the watch to count around tasks); a cache that fills and
    slows to a crawl is not."""
    import sys
    import types

    from bilge.agent.container_stage import STEADY_SCANS, ContainerStage

    mod = types.ModuleType("stage_app")
    mod._SEEN = set()  # type: ignore[attr-defined]
    mod._CACHE = {}  # type: ignore[attr-defined]
    sys.modules["stage_app"] = mod
    clock, tasks, counted = FakeClock(), [0], []
    outbox = Outbox()
    stage = ContainerStage(outbox, lambda: tasks[0], counted.append, share=1.0, min_interval=0.5, clock=clock)
    try:
        # The cache fills ever slower: +100, +40, +8, +1, then not at all.
        for scan, filled in enumerate((100, 40, 8, 1, 0, 0)[: STEADY_SCANS + 3]):
            for i in range(100):
                mod._SEEN.add("k-%d-%d" % (scan, i))
            for i in range(filled):
                mod._CACHE[(scan, i)] = i
            tasks[0] += 300
            clock.now += 0.5
            assert stage.due()
            stage.run()
            if scan == STEADY_SCANS - 1:
                # The first scan only finds it; its series starts there once it moves: steady at the third.
                assert "stage_app._SEEN" in stage.steadily_growing()
    finally:
        del sys.modules["stage_app"]
    assert stage.steadily_growing() == ["stage_app._SEEN"]
    (seen,) = stage.growing_now()
    assert (seen.path, seen.container_type, seen.element_type, seen.last) == ("stage_app._SEEN", "set", "str", 600)
    assert seen.last - seen.first == 100 * (STEADY_SCANS - 1) and seen.tasks == 300 * (STEADY_SCANS - 1)
    assert counted and counted[-1][0] == ("stage_app", "_SEEN")
    scans = list(outbox.containers)
    assert scans and all(seconds >= 0 for _, _, seconds, _ in scans)
    assert [n for _, _, _, rows in scans for path, _, n, _ in rows if path == "stage_app._SEEN"][-1] == 600


def test_the_census_spends_the_part_of_its_share_its_pace_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    """At a quarter pace a busy process whose counts cost 50 ms each gets a quarter of the census's CPU share."""
    from bilge.agent.census_stage import CensusStage
    from bilge.samplers import census as census_sampler

    monkeypatch.setattr(census_sampler.Census, "take",
                        lambda self, sized: census_sampler.CensusResult(0.0, 1000, 0.05, sized, (("x.Y", 1, 64),)))

    def censuses(pace: float) -> int:
        wall, cpu = FakeClock(0.0), FakeClock(0.0)
        outbox = Outbox()
        stage = CensusStage(outbox, Counts(), lambda: 100, share=0.005, min_interval=1.0, pace=lambda: pace,
                            clock=wall, cpu_clock=cpu)
        taken = 0
        for _ in range(3600):
            wall.now += 1.0
            cpu.now += 1.0
            if stage.due():
                stage.run()
                taken += len(outbox.drain()["censuses"])
        return taken

    full, calm = censuses(1.0), censuses(0.25)
    # At full pace the schedule binds first; at a quarter the budget: a
    # quarter of 0.5 % of ~3,670 CPU seconds (the wall-time floor included)
    # plus the first burst, 50 ms each.
    assert calm <= (0.25 * 0.005 * 3600 * 1.02 + 0.08) / 0.05 + 1 < full


def test_counting_goes_at_full_pace_while_young_or_suspect_and_slower_once_calm() -> None:
    """The census and container scans slow down in a settled process with no sign of growth, and only there."""
    from bilge.agent._runtime import CALM_PACE, YOUNG_SECONDS

    agent, _, clock = _ticked_agent(census_min_interval=1e6)
    assert agent._counting_pace() == 1.0  # young: a leak is confirmed and named in these tasks
    clock.now += YOUNG_SECONDS + 1
    for i in range(FULL_READ_TASKS):
        agent.task_started(i, "shop.a")
        agent.task_finished(i)
    assert agent._counting_pace() == CALM_PACE  # flat memory, nothing growing
    for i in range(FULL_READ_TASKS, FULL_READ_TASKS + 400):
        agent.watch.heap_suspicion.add(1_000_000 + 500 * i, i)
        agent.watch.rss_suspicion.add(50_000_000 + 4096 * i, i)
    assert agent._counting_pace() == 1.0
