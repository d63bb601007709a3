"""The sampled window: one traced task per episode, pooled, names where the memory that stays was allocated."""

from __future__ import annotations

import inspect
import queue
import threading
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from bilge.samplers import sampled_allocations
from bilge.samplers.sampled_allocations import EXPLORE, SampledAllocations

_KEPT: list[object] = []


class Invoice:
    """A plain class: on CPython 3.11 its instances have a managed __dict__."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.lines = [number]


def _invoice_task(i: int) -> object:
    _KEPT.append(Invoice(i))  # the invoice line
    return None


def _leaky_task(i: int) -> object:
    _KEPT.append({"order": i, "lines": [str(i) * 50 for _ in range(20)]})  # the leak line
    return None


def _transient_task(i: int) -> object:
    # What a task returns is still alive at its end (Celery holds it): in flight, not left behind.
    return [str(i) * 100 for _ in range(50)]


# Code made at run time, as an ORM or attrs generates __init__: its filename
# is no file a user could open.
_GENERATED: dict[str, Any] = {}
exec(compile("def make(i):\n    return {'n': i, 'labels': [str(i) * 40 for _ in range(10)]}\n",
             "<generated __init__ for Shipment>", "exec"), _GENERATED)


def _shipment_task(i: int) -> object:
    _KEPT.append(_GENERATED["make"](i))  # the shipment line
    return None


LEAK_LINE = inspect.getsourcelines(_leaky_task)[1] + 1
SHIPMENT_LINE = inspect.getsourcelines(_shipment_task)[1] + 1
INVOICE_LINE = inspect.getsourcelines(_invoice_task)[1] + 1
INVOICE = "%s.Invoice" % __name__


@pytest.fixture(autouse=True)
def _no_tracing_left() -> Any:
    yield
    _KEPT.clear()
    if tracemalloc.is_tracing():
        tracemalloc.stop()
        pytest.fail("a test left tracemalloc running")


Task = Callable[[int], object]


def _drive(window: SampledAllocations, tasks: int, pick: Callable[[int], tuple[str, Task]], first: int = 0
           ) -> list[str]:
    """Run tasks ``first``… through the window's hooks; the names of the tasks that ran while tracing."""
    traced = []
    for i in range(first, first + tasks):
        name, task = pick(i)
        window.on_task_started(i, name)
        if tracemalloc.is_tracing():
            traced.append(name)
        result = task(i)
        window.on_task_finished(i)
        del result
    return traced


def _begin(window: SampledAllocations, key: object, name: str) -> None:
    """The end of an earlier task (tracing starts), a warm-up task, then the start of the measured one (A)."""
    window.on_task_finished("the task before")
    window.on_task_started("warm-up", "shop.warmup")
    _transient_task(0)
    window.on_task_finished("warm-up")
    window.on_task_started(key, name)


def _mixed(i: int) -> tuple[str, Task]:
    return ("shop.leaky", _leaky_task) if i % 3 == 0 else ("shop.render", _transient_task)


def test_episodes_name_the_line_whose_allocations_stay_and_not_what_a_task_returns() -> None:
    """Pooled episodes: the leak line leads; the in-flight return value of the other task is no site."""
    window = SampledAllocations(episodes=8)
    assert window.open()
    window.arm(8, frames=4)
    _drive(window, 200, _mixed)
    episodes, result = window.poll()
    assert len(episodes) == 8 and all(e.outcome == "done" for e in episodes)
    assert result is not None and result.status == "done" and result.tasks == 8
    assert (result.sites[0].file, result.sites[0].line) == (__file__, LEAK_LINE), result.sites[:3]
    assert result.sites[0].owner == "user"
    assert result.sites[0].task == "shop.leaky"  # the name whose measured calls left it
    transient = inspect.getsourcelines(_transient_task)[1] + 2
    assert not any(s.file == __file__ and s.line == transient for s in result.sites), result.sites
    assert not tracemalloc.is_tracing()


def test_an_episode_traces_a_warm_up_the_measured_and_a_cool_down_task_with_gaps_between() -> None:
    """Tracing covers three tasks per episode (warm-up, measured, cool-down); untraced tasks sit between."""
    window = SampledAllocations(episodes=4, gap_tasks=3)
    assert window.open()
    window.arm(4)
    traced = _drive(window, 80, lambda i: ("shop.task", _transient_task))
    assert len(traced) == 12
    episodes, _ = window.poll()
    assert [e.outcome for e in episodes] == ["done"] * 4
    assert all(e.traced_seconds > 0 and e.hook_seconds > 0 and len(e.warmups) == 2 for e in episodes)


def test_after_exploring_every_name_the_episodes_go_to_the_task_that_leaves_memory_behind() -> None:
    """Each name is measured EXPLORE times; after that only the leaky one (the others are warm-ups at most)."""
    window = SampledAllocations(episodes=12, gap_tasks=2)
    assert window.open()
    window.arm(12)
    measured: list[str] = []
    for chunk in range(60):
        _drive(window, 5, _mixed, first=5 * chunk)
        episodes, _ = window.poll()  # compares episodes: what they left behind steers the next ones
        measured += [e.name for e in episodes]
    assert len(measured) == 12
    # An episode may start before the last exploring one is compared: one more at most.
    assert EXPLORE <= measured.count("shop.render") <= EXPLORE + 1, measured
    assert set(measured[-6:]) == {"shop.leaky"}, measured


def test_the_growing_class_is_joined_to_the_line_that_made_it() -> None:
    """Objects of a growing type born in an episode are asked where they were born."""
    window = SampledAllocations(episodes=4)
    assert window.open([INVOICE])
    window.arm(4)
    _drive(window, 40, lambda i: ("shop.invoice", _invoice_task))
    _, result = window.poll()
    assert result is not None and result.status == "done"
    joined = [t for t in result.type_sites if t.type == INVOICE]
    assert joined and (joined[0].file, joined[0].line) == (__file__, INVOICE_LINE), result.type_sites
    assert joined[0].count == joined[0].sampled >= 4


def test_objects_made_by_generated_code_are_placed_at_the_calling_line() -> None:
    """What generated code allocates is placed at the user's line that called it, not at "<generated …>"."""
    window = SampledAllocations(episodes=4)
    assert window.open()
    window.arm(4)
    _drive(window, 40, lambda i: ("shop.ship", _shipment_task))
    _, result = window.poll()
    assert result is not None and result.status == "done"
    assert (result.sites[0].file, result.sites[0].line) == (__file__, SHIPMENT_LINE), result.sites[:3]


def test_a_join_that_fails_still_stops_tracing_and_ends_the_episode(monkeypatch: pytest.MonkeyPatch) -> None:
    """A join that raises halfway must not leave tracemalloc running in the host, nor the window stuck."""

    def broken(*_args: object, **_kwargs: object) -> tuple[()]:
        raise RuntimeError("injected")

    monkeypatch.setattr(sampled_allocations, "type_sites", broken)
    window = SampledAllocations(episodes=2)
    assert window.open([INVOICE])
    window.arm(2)
    with pytest.raises(RuntimeError):
        _drive(window, 6, lambda i: ("shop.invoice", _invoice_task))
    assert not tracemalloc.is_tracing()
    assert window.state == "armed"
    window.abort()


def test_the_window_refuses_when_the_host_already_traces() -> None:
    """A host that runs tracemalloc itself keeps it: the window does not open and does not stop it."""
    tracemalloc.start()
    try:
        window = SampledAllocations()
        assert not window.open()
        window.abort()
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


def test_a_host_stopping_tracemalloc_mid_episode_is_respected() -> None:
    """The host stops tracing during an episode: the episode is dropped and no further one is started."""
    window = SampledAllocations(episodes=4)
    assert window.open()
    window.arm(4)
    _begin(window, 1, "shop.task")
    assert tracemalloc.is_tracing()
    tracemalloc.stop()
    window.on_task_finished(1)
    _drive(window, 10, lambda i: ("shop.task", _transient_task))
    episodes, _ = window.poll()
    assert [e.outcome for e in episodes] == ["stopped by the host"]
    assert not tracemalloc.is_tracing() and window.state == "idle"


def test_an_episode_that_runs_too_long_is_stopped_from_the_agent_thread() -> None:
    """A traced task still running past max_episode_seconds: polling stops tracing; the task runs on."""
    window = SampledAllocations(max_episode_seconds=0.0)
    assert window.open()
    window.arm(1)
    _begin(window, 1, "shop.slow")
    assert tracemalloc.is_tracing()
    episodes, _ = window.poll()
    assert not tracemalloc.is_tracing()
    assert [e.outcome for e in episodes] == ["stopped: traced task ran over 0.0 s"]
    window.on_task_finished(1)  # the task ends later: nothing to do
    assert window.state == "idle"


def test_tracemalloc_memory_over_the_limit_drops_the_episode() -> None:
    """tracemalloc's own memory over max_memory ends the episode early."""
    window = SampledAllocations(max_memory=1, max_episode_seconds=60.0)
    assert window.open()
    window.arm(1)
    _begin(window, 1, "shop.big")
    _leaky_task(1)
    episodes, _ = window.poll()
    assert [e.outcome for e in episodes] == ["stopped: tracemalloc's own memory over 0 MiB"]
    assert not tracemalloc.is_tracing()
    window.on_task_finished(1)


def test_closing_now_keeps_what_enough_episodes_found() -> None:
    """The agent stops: a window with min_episodes pooled closes done; one with fewer closes empty, with why."""
    window = SampledAllocations(episodes=10, min_episodes=3)
    assert window.open()
    window.arm(3)
    _drive(window, 60, _mixed)
    _, result = window.close_now()
    assert result is not None and result.status == "done" and result.tasks == 3
    assert window.open()
    window.arm(1)
    _drive(window, 4, lambda i: ("shop.leaky", _leaky_task))
    _, result = window.close_now()
    assert result is not None and result.status == "1 of 10 episodes within 600 s (budget)" and not result.sites
    assert not tracemalloc.is_tracing()


def test_a_worker_idling_after_the_traced_task_ends_the_episode_on_poll() -> None:
    """No next task comes: the agent thread takes the second snapshot itself once the episode is old enough."""
    window = SampledAllocations(episodes=1, max_episode_seconds=0.0)
    assert window.open()
    window.arm(1)
    _begin(window, 1, "shop.leaky")
    _leaky_task(1)
    window.on_task_finished(1)
    episodes, result = window.poll()
    assert [e.outcome for e in episodes] == ["done"]
    assert not tracemalloc.is_tracing()
    assert result is not None and result.status == "done"
    assert (result.sites[0].file, result.sites[0].line) == (__file__, LEAK_LINE)


def test_an_episode_the_budget_does_not_admit_is_never_started() -> None:
    """``admit`` is asked before each episode: the first two are admitted, the third refused ends the grant."""
    answers = iter([True, True, False])
    window = SampledAllocations(episodes=8)
    assert window.open()
    window.arm(8, admit=lambda: next(answers))
    traced = _drive(window, 200, lambda i: ("shop.task", _transient_task))
    episodes, _ = window.poll()
    assert len(episodes) == 2 and len(traced) == 6
    assert window.state == "idle" and not tracemalloc.is_tracing()


_BULKY: list[object] = []


def _bulky_task(i: int) -> object:
    # Three lines that each keep far more than the leak: a task whose retried
    # calls leave megabytes of tracebacks until a full collection.
    _BULKY.append("a" * 40_000)
    _BULKY.append("b" * 30_000)
    _BULKY.append("c" * 20_000)
    return None


def test_a_task_whose_sites_fill_the_top_does_not_crowd_another_tasks_leak_out() -> None:
    """The window reports its top sites and each task name's largest: the small leak of one task survives
    beside three larger sites of another."""
    window = SampledAllocations(episodes=8, max_sites=2)
    assert window.open()
    window.arm(8, frames=4)
    try:
        _drive(window, 300, lambda i: ("shop.leaky", _leaky_task) if i % 2 else ("shop.bulky", _bulky_task))
    finally:
        _BULKY.clear()
    _, result = window.poll()
    assert result is not None and result.status == "done"
    assert (result.sites[0].task, result.sites[0].size > 30_000) == ("shop.bulky", True), result.sites
    leak = [s for s in result.sites if s.task == "shop.leaky"]
    assert leak and (leak[0].file, leak[0].line) == (__file__, LEAK_LINE), result.sites


class _Reporter:
    """A thread that keeps every timing it is handed, as a metrics reporter that never reports."""

    def __init__(self) -> None:
        self.inbox: queue.Queue[tuple[str, int]] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="metrics-reporter", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        samples = []
        while True:
            item = self.inbox.get()
            if item is None:
                self.inbox.task_done()
                return
            samples.append({"task": item[0], "n": item[1], "note": str(item[1]) * 30})  # the reporter's line
            self.inbox.task_done()


REPORTER_LINE = inspect.getsourcelines(_Reporter._run)[1] + 7


def test_what_a_task_hands_to_a_thread_that_keeps_it_after_the_task_ends_is_left_behind() -> None:
    """The reporter thread appends after the measured task's end (after snapshot C, before B): its line is a
    site of the timed task."""
    reporter = _Reporter()
    window = SampledAllocations(episodes=6)
    assert window.open()
    window.arm(6, frames=6)

    def timed(i: int) -> object:
        reporter.inbox.put(("shop.timed", i))
        return None

    try:
        for i in range(200):
            name, task = ("shop.timed", timed) if i % 3 == 0 else ("shop.render", _transient_task)
            window.on_task_started(i, name)
            result = task(i)
            window.on_task_finished(i)
            del result
            reporter.inbox.join()  # the thread runs only now, after the task's end
    finally:
        reporter.inbox.put(None)  # type: ignore[arg-type]
        reporter.thread.join(5)
    _, result = window.poll()
    assert result is not None and result.status == "done"
    kept = [(s.file, s.line, s.task) for s in result.sites]
    assert (__file__, REPORTER_LINE, "shop.timed") in kept, result.sites


def _array_task(i: int) -> object:
    import numpy as np

    _KEPT.append(np.full(512, float(i)))  # the array line: 4 KiB of numpy's own malloc, registered with tracemalloc
    return None


ARRAY_LINE = inspect.getsourcelines(_array_task)[1] + 3


def test_the_bytes_a_c_extension_registered_are_told_apart_from_pythons_own() -> None:
    """numpy tracks its array data in its own tracemalloc domain: the array line's kept bytes are mostly
    native; the dict line's are Python's."""
    pytest.importorskip("numpy")
    window = SampledAllocations(episodes=8)
    assert window.open()
    window.arm(8, frames=4)
    _drive(window, 200, lambda i: ("shop.embed", _array_task) if i % 2 else ("shop.leaky", _leaky_task))
    _, result = window.poll()
    assert result is not None and result.status == "done"
    by_line = {(s.file, s.line): s for s in result.sites}
    array, leak = by_line[(__file__, ARRAY_LINE)], by_line[(__file__, LEAK_LINE)]
    assert array.native >= 4096 and 0.9 * array.size <= array.native <= array.size, array
    assert leak.native == 0, leak


def test_a_finalizer_that_runs_a_task_inside_a_snapshot_does_not_deadlock_the_window(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A collection during a snapshot runs the host's finalizers on the task's thread; one that runs a task
    eagerly comes back into the hooks while the window holds its lock. The re-entered hooks return at once."""
    window = SampledAllocations(episodes=4)
    real = tracemalloc.take_snapshot
    reentered = []

    def snapshot_with_a_finalizer() -> tracemalloc.Snapshot:
        window.on_task_started("from a __del__", "shop.cleanup")  # task.apply() inside a finalizer
        window.on_task_finished("from a __del__")
        reentered.append(window.poll())
        return real()

    monkeypatch.setattr(sampled_allocations.tracemalloc, "take_snapshot", snapshot_with_a_finalizer)
    assert window.open()
    window.arm(4)
    worker = threading.Thread(target=_drive, args=(window, 80, lambda i: ("shop.task", _transient_task)),
                              daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the window deadlocked on its own lock"
    assert reentered and all(r == ([], None) for r in reentered)
    episodes, _ = window.poll()
    assert [e.outcome for e in episodes] == ["done"] * 4
