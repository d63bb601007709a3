"""The agent's explain stage in-process: a window joins the growing type to its line, holders name the dict."""

from __future__ import annotations

import ctypes
import inspect
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from bilge.agent import Agent, AgentConfig
from bilge.agent.census_stage import Counts
from bilge.model import STAGE_ALLOCATION_EPISODE, STAGE_ALLOCATION_WINDOW, STAGE_HOLDER_SEARCH, STAGE_RECOUNT
from bilge.store.memory import MemoryStore

_INVOICES: dict[str, object] = {}


class Invoice:
    def __init__(self, number: int) -> None:
        self.number = number
        self.customer = "customer-%d@example.com" % number


def _leaky_task(i: int) -> None:
    _INVOICES["inv-%d" % i] = Invoice(i)  # the leak


LEAK_LINE = inspect.getsourcelines(_leaky_task)[1] + 1
INVOICE = "%s.Invoice" % __name__


# The conftest's fixtures: ``suspect_after`` (SuspectAfter(agent, tasks,
# per_task)) and ``drive`` (run_tasks).
FakeSuspicion = Callable[..., Any]
Drive = Callable[..., int]


def _agent(show_values: bool = False, explain: bool = True) -> tuple[Agent, MemoryStore]:
    """An agent on an in-memory store, driven by the test (no thread): ``tick()`` is its loop."""
    store = MemoryStore()
    agent = Agent(AgentConfig(data_dir="unused", run_id=1, census_min_interval=0.0, census_budget=1.0,
                              show_values=show_values, explain=explain), store=store)
    agent.register()
    # Escalation in these tests is the fake rings' alone (_INVOICES grows at
    # every container scan too: that evidence has a test of its own).
    agent.explain.growing_containers = lambda: []
    return agent, store


@pytest.fixture(autouse=True)
def _clean() -> None:
    yield
    _INVOICES.clear()
    if tracemalloc.is_tracing():
        tracemalloc.stop()
        pytest.fail("tracemalloc was left running")


def _explain(suspect_after: FakeSuspicion, drive: Drive, show_values: bool = False,
             task: Callable[[int], None] = _leaky_task,
             rss_per_task: float = 0.0,
             heap: bool = True, native: bool = False) -> MemoryStore:
    """A leaky process, suspect after 300 tasks: run until its windows closed and holders were searched."""
    agent, store = _agent(show_values)
    agent.watch.rss_suspicion = suspect_after(agent, 300, rss_per_task)  # type: ignore[assignment]
    agent.watch.heap_suspicion = suspect_after(agent, 300 if heap else 10**9, 8.0)  # type: ignore[assignment]
    trace_names = {w.tracer for w in store.windows}

    def explained() -> bool:
        trace_names.update(w.tracer for w in store.windows)
        return ("tracemalloc" in trace_names and agent.explain.holder_searches > 0
                and (not native or "malloc" in trace_names))

    ran = drive(agent, task, 20000, until=explained)
    agent.stop()
    assert ran < 20000, "the explain stage never finished"
    return store


def test_window_joins_the_growing_class_to_its_line_and_holders_stay_redacted(
    suspect_after: FakeSuspicion, drive: Drive
) -> None:
    """A leak of Invoice objects: episodes join the type to its line, the holder is the module dict, redacted."""
    # RSS grows about as much as the window traces: no native window follows
    store = _explain(suspect_after, drive, rss_per_task=400.0)
    (window,) = store.windows
    assert window.status == "done" and window.tasks >= 3, window
    assert window.sites[0].file == __file__ and window.sites[0].line == LEAK_LINE, window.sites
    joined = [t for t in window.type_sites if t.type == INVOICE]
    assert joined and (joined[0].file, joined[0].line) == (__file__, LEAK_LINE), window.type_sites
    held = [h for h in store.holders if h[2] == INVOICE]
    assert held and held[0][3] == __name__ + "._INVOICES[...]"
    assert all(h[8] is None for h in store.holders)


def test_every_run_of_the_stage_is_accounted_with_its_reason(suspect_after: FakeSuspicion, drive: Drive) -> None:
    """The window's opening says why; each episode is a run with its slowed time; the budget left is stored."""
    store = _explain(suspect_after, drive, rss_per_task=400.0)
    opened = [r for r in store.stage_runs if r.stage == STAGE_ALLOCATION_WINDOW]
    assert opened[0].reason.startswith("opened: the Python heap kept growing for "), opened[0]
    assert INVOICE in opened[0].reason
    runs = [r for r in store.stage_runs if r.stage == STAGE_ALLOCATION_EPISODE]
    episodes = [r for r in runs if r.reason.startswith("episode: one shop.render_invoice task measured (3 traced)")]
    assert len(episodes) >= 3 and all(r.slowed_seconds > 0 for r in episodes)
    total = store.stage_costs[STAGE_ALLOCATION_EPISODE]
    assert total.slowed_seconds == pytest.approx(sum(r.slowed_seconds for r in runs))
    assert store.stage_costs[STAGE_HOLDER_SEARCH].runs >= 1
    assert store.budget is not None and store.budget.slowed_left < store.budget.slowed_limit / 2


def test_show_values_stores_renderings_of_held_items(suspect_after: FakeSuspicion, drive: Drive) -> None:
    """Under --show-values the holder search keeps short renderings of held items."""
    store = _explain(suspect_after, drive, show_values=True)
    held = [h for h in store.holders if h[2] == INVOICE]
    assert held and held[0][8], store.holders
    assert held[0][8].startswith("'inv-") and "customer='customer-" in held[0][8]


def test_no_explain_opens_no_window_and_searches_no_holder(suspect_after: FakeSuspicion, drive: Drive) -> None:
    """With explain off, a suspect process is still watched, but never traced or searched."""
    agent, store = _agent(explain=False)
    agent.watch.rss_suspicion = suspect_after(agent, 0, 400.0)  # type: ignore[assignment]
    agent.watch.heap_suspicion = suspect_after(agent, 0, 8.0)  # type: ignore[assignment]
    drive(agent, _leaky_task, 600)
    agent.stop()
    assert len(store.tasks) == 600 and store.samples
    assert store.windows == [] and store.holders == []
    assert not {r.stage for r in store.stage_runs} & {STAGE_ALLOCATION_WINDOW, STAGE_ALLOCATION_EPISODE,
                                                      STAGE_HOLDER_SEARCH}


def test_a_suspicion_that_does_not_persist_opens_nothing(suspect_after: FakeSuspicion, drive: Drive) -> None:
    """Warm-up: the trend test fires, but the memory stops rising: no window, no holder search, no recount."""
    agent, store = _agent()
    agent.watch.rss_suspicion = suspect_after(agent, 300, 0.0)  # type: ignore[assignment]
    agent.watch.heap_suspicion = suspect_after(agent, 300, 0.0)  # type: ignore[assignment]
    drive(agent, _leaky_task, 1500)
    agent.stop()
    assert store.windows == [] and store.holders == [] and store.stage_runs == []


def test_a_slowed_time_budget_of_zero_traces_nothing(suspect_after: FakeSuspicion, drive: Drive) -> None:
    """With no slowed-task budget, a suspect process gets no episode (the budget is never overspent)."""
    store = MemoryStore()
    agent = Agent(AgentConfig(data_dir="unused", run_id=1, census_min_interval=0.0, census_budget=1.0,
                              slowed_per_hour=0.0), store=store)
    agent.register()
    agent.watch.rss_suspicion = suspect_after(agent, 300, 400.0)  # type: ignore[assignment]
    agent.watch.heap_suspicion = suspect_after(agent, 300, 8.0)  # type: ignore[assignment]
    drive(agent, _leaky_task, 1500)
    agent.stop()
    assert not [r for r in store.stage_runs if r.stage == STAGE_ALLOCATION_EPISODE]
    assert STAGE_ALLOCATION_WINDOW not in store.stage_costs


_LIBC = ctypes.CDLL(None)
_LIBC.malloc.restype = ctypes.c_void_p
_LIBC.malloc.argtypes = [ctypes.c_size_t]
_LIBC.free.argtypes = [ctypes.c_void_p]
_FRAMES: list[int] = []


def _explain_native(suspect_after: FakeSuspicion, drive: Drive, task: Callable[[int], None]) -> MemoryStore:
    """``_explain`` of a task that leaks through malloc (RSS grows by it, the heap stays flat), freed after."""
    try:
        # RSS grows by what malloc takes per task; tracemalloc traces none of it
        return _explain(suspect_after, drive, task=task, rss_per_task=16400.0, heap=False, native=True)
    finally:
        for pointer in _FRAMES:
            _LIBC.free(pointer)
        _FRAMES.clear()


def _native_task(i: int) -> None:
    _FRAMES.append(_LIBC.malloc(16384))  # the native leak


NATIVE_LINE = inspect.getsourcelines(_native_task)[1] + 1


def test_a_native_leak_gets_a_native_window_that_names_the_line(suspect_after: FakeSuspicion, drive: Drive) -> None:
    """tracemalloc cannot see ctypes' malloc: the window traces little, so a native window follows and charges
    glibc's in-use growth to the line that called malloc."""
    store = _explain_native(suspect_after, drive, _native_task)
    tracers = {w.tracer: w for w in store.windows}
    assert set(tracers) == {"tracemalloc", "malloc"}, store.windows
    native = tracers["malloc"]
    assert native.status == "done" and native.tasks == 24, native
    top = native.sites[0]
    assert (top.file, top.line) == (__file__, NATIVE_LINE), native.sites
    assert top.count >= 20 and top.size >= 20 * 16384


def test_a_window_opened_on_rss_with_the_heap_flat_runs_few_episodes_then_the_native_window(
    suspect_after: FakeSuspicion, drive: Drive
) -> None:
    """Opened on RSS growth with the heap flat, the window runs at most NATIVE_FIRST_EPISODES episodes (sixteen
    left the native window no allowance), and the native window follows even when the RSS ring, re-based across
    the window's own work, says nothing about the growth afterwards (it opened on that growth)."""
    from bilge.agent.explain import NATIVE_FIRST_EPISODES

    class ReBased(suspect_after):  # type: ignore[misc, valid-type]
        def growth_per_reading(self) -> float:
            return 0.0

    store = _explain_native(ReBased, drive, _native_task)
    tracers = {w.tracer: w for w in store.windows}
    assert set(tracers) == {"tracemalloc", "malloc"}, store.windows
    assert 1 <= tracers["tracemalloc"].tasks <= NATIVE_FIRST_EPISODES, tracers["tracemalloc"]
    assert len([r for r in store.stage_runs if r.stage == STAGE_ALLOCATION_EPISODE]) <= NATIVE_FIRST_EPISODES
    assert (tracers["malloc"].sites[0].file, tracers["malloc"].sites[0].line) == (__file__, NATIVE_LINE)


def _slow_native_task(i: int) -> None:
    time.sleep(0.005)
    _FRAMES.append(_LIBC.malloc(16384))  # the native leak, in a task slow enough that episodes cost much


SLOW_NATIVE_LINE = inspect.getsourcelines(_slow_native_task)[1] + 2


def test_native_growth_in_slow_tasks_goes_to_the_native_window_when_no_episode_is_affordable(
    suspect_after: FakeSuspicion, drive: Drive
) -> None:
    """RSS grows with the heap flat in 5 ms tasks: the native window's share of the slowed-time allowance
    leaves no traced episode affordable, so the allocation window closes with none at once and the holder
    search and the native window follow (the window used to wait for the budget to refill, for hours)."""
    store = _explain_native(suspect_after, drive, _slow_native_task)
    tracers = {w.tracer: w for w in store.windows}
    assert set(tracers) == {"tracemalloc", "malloc"}, store.windows
    assert tracers["tracemalloc"].tasks == 0 and tracers["tracemalloc"].status.startswith("0 of "), tracers
    native = tracers["malloc"]
    assert native.status == "done", native
    assert (native.sites[0].file, native.sites[0].line) == (__file__, SLOW_NATIVE_LINE), native.sites
    assert not [r for r in store.stage_runs if r.stage == STAGE_ALLOCATION_EPISODE]


def test_growth_that_slows_down_after_the_first_suspicion_opens_nothing(
    suspect_after: FakeSuspicion, drive: Drive
) -> None:
    """A cache filling until task 360, then rising at a hundredth of that pace (arenas settling)."""
    agent, store = _agent()
    for ring in ("rss_suspicion", "heap_suspicion"):
        slowing = suspect_after(agent, 300, 40.0 if ring == "heap_suspicion" else 4000.0)
        slowing.level = lambda s=slowing: s.per_task * (min(s.agent.tasks_done, 360) + s.agent.tasks_done / 100)
        setattr(agent.watch, ring, slowing)
    drive(agent, _leaky_task, 1500)
    agent.stop()
    assert store.windows == [] and store.holders == []
    assert not [r for r in store.stage_runs if r.stage in (STAGE_ALLOCATION_WINDOW, STAGE_ALLOCATION_EPISODE)]


def _heap_suspect_with_no_steady_type(suspect_after: FakeSuspicion, monkeypatch: pytest.MonkeyPatch,
                                      now: list[float]) -> tuple[Agent, MemoryStore]:
    """An agent on a fake clock whose heap turns suspect after 300 tasks while no type grows in every count."""
    store = MemoryStore()
    agent = Agent(AgentConfig(data_dir="unused", run_id=1, census_min_interval=0.0, census_budget=1.0), store=store,
                  monotonic=lambda: now[0])
    agent.register()
    agent.watch.rss_suspicion = suspect_after(agent, 300, 0.0)  # type: ignore[assignment]
    agent.watch.heap_suspicion = suspect_after(agent, 300, 8.0)  # type: ignore[assignment]
    # The in-memory store's own rows would grow in every count: no type is steady here by construction.
    monkeypatch.setattr(Counts, "steadily_growing", lambda self: [])
    return agent, store


def test_a_heap_growing_with_no_steady_type_is_recounted_less_and_less(
    suspect_after: FakeSuspicion, drive: Drive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heap's blocks rise, but no type grows in every count (arenas, a cache churning): the recounts that
    ask for a steady type back off (1, 2, 4 ... s), so ten minutes of ticks cost a handful, and nothing opens."""
    now = [0.0]
    agent, store = _heap_suspect_with_no_steady_type(suspect_after, monkeypatch, now)

    def task(i: int) -> None:
        now[0] += 0.025  # a tick (every 20 tasks) each half second

    drive(agent, task, 24_000)
    agent.stop()
    recounts = [r for r in store.stage_runs if r.stage == STAGE_RECOUNT]
    assert 3 <= len(recounts) <= 12, len(recounts)  # 600 s of ticks: 1+2+4+...+120 s apart
    assert store.windows == [] and store.holders == []


def test_recounts_of_a_costly_heap_take_at_most_their_share_of_the_time_between_them(
    suspect_after: FakeSuspicion, drive: Drive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A count that costs 2 s (a huge heap) waits RECOUNT_SHARE's worth between recounts, not 1, 2, 4 ... s."""
    from bilge.agent.explain import RECOUNT_SHARE
    from bilge.samplers import census as census_sampler

    now = [0.0]
    agent, store = _heap_suspect_with_no_steady_type(suspect_after, monkeypatch, now)
    monkeypatch.setattr(census_sampler.Census, "take",
                        lambda self, sized: census_sampler.CensusResult(now[0], 1000, 2.0, sized, (("x.Y", 1, 64),)))

    def task(i: int) -> None:
        now[0] += 0.025

    drive(agent, task, 24_000)  # 600 s
    agent.stop()
    recounts = [r for r in store.stage_runs if r.stage == STAGE_RECOUNT]
    assert RECOUNT_SHARE == 0.01
    assert 1 <= len(recounts) <= 4, len(recounts)  # 1 % of 600 s is 6 s: three 2-second counts, and the first


def test_rss_growing_while_glibc_hands_out_nothing_more_opens_nothing(
    suspect_after: FakeSuspicion, drive: Drive
) -> None:
    """RSS rises steadily (the fake), the heap is flat and the tasks malloc nothing: glibc's in-use bytes stay
    flat, so it is freed pages settling, not a native leak; nothing is traced."""
    if Agent(AgentConfig(data_dir="unused", run_id=1), store=MemoryStore()).watch.malloc.in_use() is None:
        pytest.skip("glibc's mallinfo2 is not available here: the gate falls back to RSS alone")
    agent, store = _agent()
    agent.watch.rss_suspicion = suspect_after(agent, 300, 16400.0)  # type: ignore[assignment]
    agent.watch.heap_suspicion = suspect_after(agent, 10**9, 0.0)  # type: ignore[assignment]
    drive(agent, lambda i: None, 1500)
    agent.stop()
    assert store.windows == [] and store.holders == []
    assert not [r for r in store.stage_runs if r.stage in (STAGE_ALLOCATION_WINDOW, STAGE_ALLOCATION_EPISODE)]


_SEEN_KEYS: set[str] = set()


def _remember_key(i: int) -> None:
    _SEEN_KEYS.add("carrier:%06d" % i)  # the slow leak: a short key per call, no tracked object


SEEN_LINE = inspect.getsourcelines(_remember_key)[1] + 1


def test_a_module_level_container_growing_at_every_scan_opens_a_window_without_suspicion(drive: Drive) -> None:
    """A key per call kept in a set: far under the rings' thresholds (real rings, nothing faked), no type grows
    in a count; the set grows at every scan, at its pace: a window opens, says why, and finds the line."""
    store = MemoryStore()
    agent = Agent(AgentConfig(data_dir="unused", run_id=1, census_min_interval=0.0, census_budget=1.0),
                  store=store)
    agent.register()
    try:
        drive(agent, _remember_key, 20000, until=lambda: bool(store.windows))
    finally:
        agent.stop()
        _SEEN_KEYS.clear()
    opened = [r for r in store.stage_runs if r.stage == STAGE_ALLOCATION_WINDOW]
    assert opened and opened[0].reason.startswith("opened: %s._SEEN_KEYS grew at each of the latest" % __name__), \
        opened
    assert (store.windows[0].sites[0].file, store.windows[0].sites[0].line) == (__file__, SEEN_LINE)


class _Node:
    def __init__(self, parent: _Node | None) -> None:
        self.parent = parent
        self.children: list[_Node] = []


def _tree(size: int) -> _Node:
    """A tree whose nodes refer to each other (minidom's parentNode): once dropped, only the collector frees it."""
    root = _Node(None)
    for _ in range(size):
        root.children.append(_Node(root))
    return root


def test_a_full_collection_tells_garbage_waiting_for_it_from_a_leak() -> None:
    """No full collection since the process looked suspect: the stage runs one, paid from the budget. Trees
    dropped in cycles are taken back (garbage: the suspicion starts over); kept invoices are not. Never with
    the collector off, and at most once per COLLECT_EVERY_TASKS."""
    import gc
    import sys

    from bilge.agent.explain import COLLECT_EVERY_TASKS
    from bilge.model import STAGE_FULL_COLLECTION
    from bilge.samplers import process as proc_sampler

    proc_sampler.count_gc_runs()
    agent, store = _agent()
    explain = agent.explain

    def suspect_since_now() -> None:
        explain._first_suspect = (300, 0.0, 0.0, None)
        explain._full_at_suspect = proc_sampler.FULL_GC[0][0]

    gc.collect()
    heap0 = sys.getallocatedblocks()
    trees = [_tree(200) for _ in range(50)]
    gc.collect()  # they live through a full collection: in the oldest generation now
    del trees  # garbage that waits for the next full collection
    heap = sys.getallocatedblocks()
    gc.disable()
    try:
        suspect_since_now()
        assert not explain._collected_garbage(600, 300, heap0, heap)  # the host turned the collector off
        gc.enable()
        assert explain._collected_garbage(600, 300, heap0, heap)
        assert explain._first_suspect is None and explain.collections == 1
        # Its floor is the watch's now, and a sample carries it at once.
        full, floor, _ = agent.watch.floor
        assert full == proc_sampler.FULL_GC[0][0] and floor is not None and floor < heap
        suspect_since_now()
        assert not explain._collected_garbage(600 + COLLECT_EVERY_TASKS - 1, 300, heap0, heap)  # too soon
        gc.collect()
        assert not explain._collected_garbage(600 + COLLECT_EVERY_TASKS, 300, heap0, heap)  # one ran meanwhile
        heap0 = sys.getallocatedblocks()
        for i in range(2000):
            _leaky_task(i)
        suspect_since_now()
        assert not explain._collected_garbage(600 + COLLECT_EVERY_TASKS, 300, heap0, sys.getallocatedblocks())
        assert explain.collections == 2 and explain._first_suspect is not None
    finally:
        gc.enable()
    agent.stop()
    assert any(row[-3] == full and row[-2] is not None for row in store.samples)
    runs = [r for r in store.stage_runs if r.stage == STAGE_FULL_COLLECTION]
    assert [r.outcome.split(":")[0] for r in runs] == ["garbage", "not garbage"], runs
    assert all(r.cpu_seconds > 0 and r.slowed_seconds > 0 for r in runs)
