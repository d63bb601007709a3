"""The agent's explain stage in-process: a window joins the growing type to its line, holders name the dict."""

from __future__ import annotations

import ctypes
import inspect
import time
import tracemalloc
from collections.abc import Callable

import pytest

from bilge.agent import Agent, AgentConfig
from bilge.store.sqlite import load_run

_INVOICES: dict[str, object] = {}


class Invoice:
    def __init__(self, number: int) -> None:
        self.number = number
        self.customer = "customer-%d@example.com" % number


def _leaky_task(i: int) -> None:
    _INVOICES["inv-%d" % i] = Invoice(i)  # the leak


LEAK_LINE = inspect.getsourcelines(_leaky_task)[1] + 1
INVOICE = "%s.Invoice" % __name__


class SuspectAfter:
    """The agent's suspicion, made to fire once the process has run enough tasks to have a baseline."""

    def __init__(self, agent: Agent, tasks: int, rss_per_task: float = 0.0) -> None:
        self.agent, self.tasks, self.rss_per_task = agent, tasks, rss_per_task

    def add(self, value: float | None) -> None:
        pass

    def gap(self) -> None:
        pass

    def suspect(self) -> bool:
        return self.agent.tasks_done >= self.tasks

    def growth_per_reading(self) -> float:
        return self.rss_per_task




@pytest.fixture(autouse=True)
def _clean() -> None:
    yield
    _INVOICES.clear()
    if tracemalloc.is_tracing():
        tracemalloc.stop()
        pytest.fail("tracemalloc was left running")


def _explain(store: tuple[str, int], show_values: bool, wait_for: Callable[..., bool],
             task: Callable[[int], None] = _leaky_task, rss_per_task: float = 0.0, native: bool = False) -> None:
    agent = Agent(AgentConfig(data_dir=store[0], run_id=store[1], sample_interval=0.02, census_min_interval=0.05,
                              census_budget=1.0, show_values=show_values))
    agent._suspicion = SuspectAfter(agent, 300, rss_per_task)  # type: ignore[assignment]
    agent.start()
    try:
        i = 0
        # Tasks run until the windows have closed and a holder search has stored its paths.
        while not (agent._windows_opened and not agent._window.active and agent._holder_searches
                   and (agent._native.opened or not native) and not agent._native.active) and i < 20000:
            agent.task_started(i, "shop.render_invoice")
            task(i)
            agent.task_finished(i)
            i += 1
            if i % 20 == 0:
                time.sleep(0.01)  # let the agent thread census between tasks
        assert wait_for(lambda: not agent._pending_holders and not agent._pending_windows)
    finally:
        agent.stop()
        agent._writer.close()


def test_window_joins_the_growing_class_to_its_line_and_holders_stay_redacted(
    store: tuple[str, int], wait_for: Callable[..., bool]
) -> None:
    # RSS grows about as much as the window traces: no native window follows
    _explain(store, show_values=False, wait_for=wait_for, rss_per_task=400.0)
    (proc,) = load_run(store[0]).processes
    (window,) = proc.windows
    assert window.status == "done", window
    joined = [t for t in window.type_sites if t.type == INVOICE]
    assert joined and (joined[0].file, joined[0].line) == (__file__, LEAK_LINE), window.type_sites
    held = [h for h in proc.holders if h.type == INVOICE]
    assert held and held[0].path == __name__ + "._INVOICES[...]"
    assert all(not h.values for h in proc.holders)


def test_show_values_stores_renderings_of_held_items(store: tuple[str, int], wait_for: Callable[..., bool]) -> None:
    _explain(store, show_values=True, wait_for=wait_for)
    (proc,) = load_run(store[0]).processes
    held = [h for h in proc.holders if h.type == INVOICE]
    assert held and held[0].values, proc.holders
    assert held[0].values[0].startswith("'inv-") and "customer='customer-" in held[0].values[0]


def test_no_explain_opens_no_window_and_searches_no_holder(store: tuple[str, int]) -> None:
    """With explain off, a suspect process is still watched, but never traced or searched."""
    agent = Agent(AgentConfig(data_dir=store[0], run_id=store[1], sample_interval=0.02, census_min_interval=0.05,
                              explain=False))
    agent._suspicion = SuspectAfter(agent, 0)  # type: ignore[assignment]
    agent.start()
    try:
        for i in range(400):
            agent.task_started(i, "shop.render_invoice")
            _leaky_task(i)
            agent.task_finished(i)
            if i % 20 == 0:
                time.sleep(0.01)
    finally:
        agent.stop()
        agent._writer.close()
    (proc,) = load_run(store[0]).processes
    assert len(proc.tasks) == 400 and proc.samples
    assert proc.windows == () and proc.holders == ()


_LIBC = ctypes.CDLL(None)
_LIBC.malloc.restype = ctypes.c_void_p
_LIBC.malloc.argtypes = [ctypes.c_size_t]
_LIBC.free.argtypes = [ctypes.c_void_p]
_FRAMES: list[int] = []


def _native_task(i: int) -> None:
    _FRAMES.append(_LIBC.malloc(16384))  # the native leak


NATIVE_LINE = inspect.getsourcelines(_native_task)[1] + 1


def test_a_native_leak_gets_a_native_window_that_names_the_line(
    store: tuple[str, int], wait_for: Callable[..., bool]
) -> None:
    """tracemalloc cannot see ctypes' malloc: the window traces little, so a native window follows and charges
    glibc's in-use growth to the line that called malloc."""
    try:
        # RSS grows by what malloc takes per task; tracemalloc traces none of it
        _explain(store, show_values=False, wait_for=wait_for, task=_native_task, rss_per_task=16400.0,
                 native=True)
    finally:
        for pointer in _FRAMES:
            _LIBC.free(pointer)
        _FRAMES.clear()
    (proc,) = load_run(store[0]).processes
    tracers = {w.tracer: w for w in proc.windows}
    assert set(tracers) == {"tracemalloc", "malloc"}, proc.windows
    native = tracers["malloc"]
    assert native.status == "done" and native.tasks == 24, native
    top = native.sites[0]
    assert (top.file, top.line) == (__file__, NATIVE_LINE), native.sites
    assert top.count >= 20 and top.size >= 20 * 16384
