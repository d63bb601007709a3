"""Tests for bilge.agent._runtime: the in-process agent thread, its error isolation, and fork handling."""

from __future__ import annotations

import gc
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bilge.agent import Agent, AgentConfig
from bilge.agent._runtime import MAX_FAILURES
from bilge.agent.watch import MAX_YOUNG_READ_EVERY
from bilge.model import RunData
from bilge.samplers import process as proc_sampler
from bilge.store.sqlite import load_run


def fast_config(store: tuple[str, int]) -> AgentConfig:
    """An agent configuration that samples every 20 ms and may census every 50 ms."""
    data_dir, run_id = store
    return AgentConfig(data_dir=data_dir, run_id=run_id, sample_interval=0.02, census_min_interval=0.05)


def agent_threads() -> list[threading.Thread]:
    """The live agent threads of this process."""
    return [t for t in threading.enumerate() if t.name == "bilge-agent"]


@pytest.fixture
def agent(store: tuple[str, int]) -> Iterator[Agent]:
    """A started agent on the test's store, stopped after the test."""
    started = Agent(fast_config(store))
    started.start()
    yield started
    started.stop()
    started.store.close()  # type: ignore[attr-defined]


def stored(store: tuple[str, int]) -> RunData:
    """The run as the store holds it now."""
    return load_run(store[0])


def test_agent_records_process_samples_tasks_and_a_census(
    store: tuple[str, int], agent: Agent, wait_for: Callable[..., bool]
) -> None:
    """300 tasks through the hooks, then stop: one process row, 300 task rows in order, samples and a census.

    Memory is read on every task or on one in N (what a read costs in this test process against a
    1 ms task decides); a read task carries readings at its end, and at its start too unless the
    previous task's end was read.
    """
    for i in range(300):
        agent.task_started(i, "shop.even" if i % 2 == 0 else "shop.odd")
        time.sleep(0.001)
        agent.task_finished(i, failed=i == 7)

    def recorded() -> bool:
        processes = stored(store).processes
        return (bool(processes) and len(processes[0].samples) >= 3 and bool(processes[0].censuses)
                and processes[0].samples[-1].tasks_done == 300)

    assert wait_for(recorded), stored(store).processes
    agent.stop()
    (proc,) = stored(store).processes
    assert (proc.info.pid, proc.info.ppid, proc.info.parent_id, proc.info.role) == (
        os.getpid(), os.getppid(), None, "main")
    assert proc.info.ended is not None
    assert [t.seq for t in proc.tasks] == list(range(1, 301))
    assert [t.name for t in proc.tasks[:4]] == ["shop.even", "shop.odd", "shop.even", "shop.odd"]
    assert [t.seq for t in proc.tasks if t.failed] == [8]
    # The first task has no "before" reading: a task's before is the previous task's after.
    assert proc.tasks[0].blocks_before is None and proc.tasks[0].rss_before is None
    assert proc.tasks[0].rss_after and proc.tasks[0].blocks_after
    read = [t for t in proc.tasks if t.rss_after is not None]
    assert len(read) >= 300 // (2 * MAX_YOUNG_READ_EVERY)
    assert all(t.blocks_after for t in read)
    assert all((t.rss_before, t.blocks_before) == (prev.rss_after, prev.blocks_after)
               or (t.rss_before and t.blocks_before)
               for prev, t in zip(proc.tasks, proc.tasks[1:]) if t.rss_after is not None)
    assert all(t.rss_before is None and t.blocks_before is None for t in proc.tasks if t.rss_after is None)
    assert all(t.gc_runs is not None and t.gc_runs >= 0 for t in proc.tasks)
    assert all(s.rss and s.rss > 0 and s.fds and s.threads and s.threads >= 2 for s in proc.samples)
    assert proc.samples[-1].tasks_done == 300
    census = proc.censuses[0]
    assert census.objects > 1000
    assert "dict" in census.types
    assert proc.errors == ()
    assert agent.tasks_done == 300
    # The gc's counters per generation, as of the last flush (the final one, at stop).
    assert len(proc.gc_generations) == 3
    now = gc.get_stats()
    assert all(0 <= runs <= now[g]["collections"] for g, (runs, _, _) in enumerate(proc.gc_generations))
    assert proc.gc_generations[0][0] > 0


def test_agent_thread_ends_on_stop(agent: Agent, wait_for: Callable[..., bool]) -> None:
    """stop() ends the agent thread within its timeout."""
    assert wait_for(lambda: agent.process_id is not None)
    assert len(agent_threads()) == 1
    agent.stop()
    assert agent_threads() == []


def test_unfinished_and_unknown_tasks_are_ignored(store: tuple[str, int], agent: Agent) -> None:
    """A finish without a start is ignored; a start without a finish records nothing."""
    agent.task_finished("never-started")
    agent.task_started("never-finished", "shop.hang")
    agent.task_started("ok", "shop.ok")
    agent.task_finished("ok")
    agent.stop()
    (proc,) = stored(store).processes
    assert [(t.seq, t.name) for t in proc.tasks] == [(1, "shop.ok")]


def test_a_failing_sampler_is_contained_and_switched_off(
    store: tuple[str, int], monkeypatch: pytest.MonkeyPatch, wait_for: Callable[..., bool]
) -> None:
    """A sampler that raises: errors recorded MAX_FAILURES times, then it is off; tasks and census carry on."""

    def broken(proc_root: str = "/proc") -> tuple[int | None, int | None]:
        raise RuntimeError("smaps exploded")

    monkeypatch.setattr(proc_sampler, "read_uss_pss", broken)
    agent = Agent(fast_config(store))
    agent.start()
    try:

        def failed_enough() -> bool:
            processes = stored(store).processes
            return bool(processes) and len(processes[0].errors) >= MAX_FAILURES

        assert wait_for(failed_enough)
        time.sleep(0.2)  # give it the chance to fail again, which it must not take
        assert len(agent_threads()) == 1
        for i in range(20):
            agent.task_started(i, "shop.after")
            agent.task_finished(i)
        assert wait_for(lambda: bool(stored(store).processes[0].censuses))
    finally:
        agent.stop()
        agent.store.close()  # type: ignore[attr-defined]
    (proc,) = stored(store).processes
    assert proc.errors == ("sample: RuntimeError: smaps exploded",) * MAX_FAILURES
    assert proc.samples == ()
    assert [t.name for t in proc.tasks] == ["shop.after"] * 20


def test_task_hooks_never_raise_into_the_host(
    store: tuple[str, int], monkeypatch: pytest.MonkeyPatch, wait_for: Callable[..., bool]
) -> None:
    """A reading that raises inside task_started is recorded as an error; the host's call returns normally."""


    agent = Agent(fast_config(store))
    agent.start()
    try:
        assert wait_for(lambda: agent.process_id is not None)
        monkeypatch.setattr(proc_sampler, "GC_RUNS", [])  # reading it raises IndexError
        agent.task_started("k", "shop.task")  # must not raise
        agent.task_finished("k")  # never started, so ignored
        monkeypatch.undo()
    finally:
        agent.stop()
        agent.store.close()  # type: ignore[attr-defined]
    (proc,) = stored(store).processes
    assert "task_started: IndexError: list index out of range" in proc.errors
    assert proc.tasks == ()


@contextmanager
def registered(store: tuple[str, int], wait_for: Callable[..., bool]) -> Iterator[Agent]:
    """A started agent whose process is registered in the store; its store is closed after (stop it inside)."""
    agent = Agent(fast_config(store))
    agent.start()
    try:
        assert wait_for(lambda: agent.process_id is not None)
        yield agent
    finally:
        agent.store.close()  # type: ignore[attr-defined]


def test_a_store_that_fails_at_the_final_flush_never_raises_into_the_host(
    store: tuple[str, int], monkeypatch: pytest.MonkeyPatch, wait_for: Callable[..., bool]
) -> None:
    """stop() runs in the host's shutdown hooks: a full disk there is contained (a Celery child would log a
    traceback for its worker_process_shutdown handler)."""
    with registered(store, wait_for) as agent:
        agent.task_started("k", "shop.task")
        agent.task_finished("k")

        def full(*_: object, **__: object) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(agent.store, "flush", full)
        agent.stop()  # must not raise


def test_the_rows_of_a_failed_flush_wait_for_the_next_one(
    store: tuple[str, int], monkeypatch: pytest.MonkeyPatch, wait_for: Callable[..., bool]
) -> None:
    """A store locked (or full) for one flush loses no task row: they go in with the next flush, in order."""
    with registered(store, wait_for) as agent:
        real = agent.store.flush
        failures = [sqlite3.OperationalError("database is locked")]

        def busy_once(*args: object, **kwargs: object) -> None:
            if failures:
                raise failures.pop()
            real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(agent.store, "flush", busy_once)
        for i in range(20):
            agent.task_started(i, "shop.before")
            agent.task_finished(i)
        with pytest.raises(sqlite3.OperationalError):
            agent.flush()
        for i in range(20, 30):
            agent.task_started(i, "shop.after")
            agent.task_finished(i)
        agent.stop()
    (proc,) = stored(store).processes
    assert [t.name for t in proc.tasks] == ["shop.before"] * 20 + ["shop.after"] * 10


def test_agent_without_a_store_does_not_crash(tmp_path: Path, wait_for: Callable[..., bool]) -> None:
    """No database in the data dir: the thread records the failure and ends; the host keeps running."""
    agent = Agent(AgentConfig(data_dir=str(tmp_path), run_id=1, sample_interval=0.02))
    agent.start()
    assert wait_for(lambda: agent_threads() == [])
    agent.task_started(1, "shop.task")
    agent.task_finished(1)
    agent.stop()  # nothing registered: nothing to flush, and no exception
    assert agent.process_id is None
    assert list(tmp_path.iterdir()) == []


FORK_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from bilge.agent import AgentConfig, current, start
    from bilge.store.sqlite import prepare_data_dir, start_run

    data_dir = prepare_data_dir(sys.argv[1])
    run_id = start_run(data_dir, "fork test")
    agent = start(AgentConfig(data_dir=data_dir, run_id=run_id, sample_interval=0.02, census_min_interval=0.05))
    deadline = time.monotonic() + 10
    while agent.process_id is None and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(50):
        agent.task_started(i, "parent.task")
        agent.task_finished(i)
    pid = os.fork()
    if pid == 0:
        child = current()
        ok = child is not None and child is not agent and child.pid == os.getpid() and child.role == "fork"
        if ok:
            for i in range(30):
                child.task_started(i, "child.task")
                child.task_finished(i)
            time.sleep(0.2)
            child.stop()
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"parent": os.getpid(), "child": pid, "status": os.waitstatus_to_exitcode(status)}))
    # No explicit stop: the atexit hook must flush and stamp the end.
""")


def test_a_forked_child_gets_its_own_agent_and_process_row(tmp_path: Path) -> None:
    """After os.fork the child runs a fresh agent with its own process row whose parent_id is the parent's row."""
    script = tmp_path / "fork_agent.py"
    script.write_text(FORK_SCRIPT)
    data_dir = tmp_path / "data"
    done = subprocess.run([sys.executable, str(script), str(data_dir)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    pids = json.loads(done.stdout)
    assert pids["status"] == 0
    parent, child = load_run(str(data_dir)).processes
    assert (parent.info.pid, parent.info.parent_id, parent.info.role) == (pids["parent"], None, "main")
    assert (child.info.pid, child.info.ppid, child.info.parent_id, child.info.role) == (
        pids["child"], pids["parent"], parent.info.id, "fork")
    assert parent.info.ended is not None  # written by the atexit hook
    assert child.info.ended is not None
    assert [t.name for t in parent.tasks] == ["parent.task"] * 50
    assert [(t.seq, t.name) for t in child.tasks] == [(i, "child.task") for i in range(1, 31)]
    assert child.samples
    assert parent.errors == child.errors == ()


def test_a_scheduled_census_and_the_explain_stages_counts_between_two_flushes_are_both_stored(
    store: tuple[str, int],
) -> None:
    """Neither overwrites the other, and each keeps the task count it was taken at."""
    agent = Agent(AgentConfig(data_dir=store[0], run_id=store[1], sample_interval=60.0))
    try:
        agent.register()
        agent.census.run()
        for i in range(3):
            agent.task_started(i, "shop.task")
            agent.task_finished(i)
        agent.census.count_now()
        agent.flush(final=True)
    finally:
        agent.store.close()  # type: ignore[attr-defined]
    (proc,) = stored(store).processes
    assert [c.tasks_done for c in proc.censuses] == [0, 3]
    assert all(c.types for c in proc.censuses)


def test_the_task_hooks_own_cost_is_estimated_from_both_hooks_whole(tmp_path: Path) -> None:
    """One call of each hook in HOOK_TIMING_EVERY is timed whole (start and end alike), and counted that many times."""
    from bilge.agent._runtime import HOOK_TIMING_EVERY
    from bilge.store.memory import MemoryStore

    cost = {"start": 3e-6, "end": 5e-6}
    now = [0.0]
    agent = Agent(AgentConfig(data_dir=str(tmp_path), run_id=1), store=MemoryStore(), thread_clock=lambda: now[0])
    real_started, real_finished = agent.watch.task_started, agent.watch.task_finished

    def started(key: object, name: str) -> None:
        now[0] += cost["start"]
        real_started(key, name)

    def finished(key: object, failed: bool = False) -> object:
        now[0] += cost["end"]
        return real_finished(key, failed)

    agent.watch.task_started, agent.watch.task_finished = started, finished  # type: ignore[method-assign]
    tasks = 10 * HOOK_TIMING_EVERY
    for k in range(tasks):
        agent.task_started(k, "proj.task")
        agent.task_finished(k)
    assert agent.hook_seconds == pytest.approx(tasks * (cost["start"] + cost["end"]))


def test_the_task_hooks_cost_leaves_out_calls_in_which_an_episode_works(tmp_path: Path) -> None:
    """An episode takes its snapshots in the task hooks and charges them to its own stage: a timed hook call that
    ran one (50 ms here) must not be counted HOOK_TIMING_EVERY times as the hooks' own cost (seen: 5.4 s of
    "task-hooks" in one zoo child, 0.1 s in its twin)."""
    from bilge.agent._runtime import HOOK_TIMING_EVERY
    from bilge.store.memory import MemoryStore

    now = [0.0]
    agent = Agent(AgentConfig(data_dir=str(tmp_path), run_id=1), store=MemoryStore(), thread_clock=lambda: now[0])
    working = [False]
    real_finished = agent.explain.task_finished

    def finished(key: object, reading: object) -> None:
        if working[0]:
            now[0] += 0.05  # the episode's snapshots
        real_finished(key, reading)  # type: ignore[arg-type]

    agent.explain.task_finished = finished  # type: ignore[method-assign]
    agent.explain.at_hooks = lambda: working[0]  # type: ignore[method-assign]
    for k in range(4 * HOOK_TIMING_EVERY):
        working[0] = k % HOOK_TIMING_EVERY == HOOK_TIMING_EVERY - 1  # every timed end call
        agent.task_started(k, "proj.task")
        agent.task_finished(k)
    assert agent.hook_seconds < 0.05


def test_a_forked_child_never_sees_its_parents_agent_in_the_slot(tmp_path: Path) -> None:
    """The slot the task hooks read is emptied at fork (no getpid per read): the parent's agent is only inherited."""
    script = tmp_path / "slot.py"
    script.write_text(textwrap.dedent("""
        import os
        from bilge.agent import _current
        parents = object()
        _current.put(parents)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if _current.get() is None and _current.inherited() is parents else 3)
        _, status = os.waitpid(pid, 0)
        raise SystemExit(os.waitstatus_to_exitcode(status) or (0 if _current.get() is parents else 4))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_bilges_own_cost_is_rewritten_every_cost_interval_not_at_every_flush(tmp_path: Path) -> None:
    """Three statements (stage totals, budget, collector counts) fewer in most flushes: each is two GIL releases
    in the agent's thread, and each release makes it wait on a busy host thread. A final flush always writes them."""
    from bilge.agent._runtime import COST_INTERVAL
    from bilge.store.memory import MemoryStore

    store = MemoryStore()
    written: list[bool] = []
    real_flush = store.flush

    def flush(*args: Any, **kwargs: Any) -> None:
        written.append(kwargs["budget"] is not None and bool(kwargs["gc_stats"]))
        real_flush(*args, **kwargs)

    store.flush = flush  # type: ignore[method-assign]
    now = [100.0]
    agent = Agent(AgentConfig(data_dir=str(tmp_path), run_id=1), store=store, monotonic=lambda: now[0])
    agent.register()
    for step in (0.0, 1.0, 2.0, COST_INTERVAL, 1.0):
        now[0] += step
        agent.task_started(step, "proj.task")
        agent.task_finished(step)
        agent.flush()
    agent.flush(final=True)
    assert written == [True, False, False, True, False, True]
