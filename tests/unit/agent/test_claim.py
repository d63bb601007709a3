"""One explainer per run at a time: the claim file in the data directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bilge.agent import Agent, AgentConfig
from bilge.agent.claim import RETRY_AFTER, SHARED_FOR, ExplainClaim, lock_path
from bilge.model import STAGE_ALLOCATION_WINDOW
from bilge.store.memory import MemoryStore

_HELD: list[object] = []


class Order:
    def __init__(self, number: int) -> None:
        self.number = number


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    _HELD.clear()


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_one_process_explains_then_the_others_wait_for_the_period(tmp_path: Path) -> None:
    """A holds the claim: B is refused and told why; after A is done B still waits SHARED_FOR, then may."""
    mono, wall = Clock(), Clock(1.7e9)
    path = lock_path(str(tmp_path), 7)
    a, b = ExplainClaim(path, mono, wall), ExplainClaim(path, mono, wall)
    assert a.take() and a.held
    assert not b.take() and "is explaining" in (b.refused or "")
    assert not b.may_try()  # asks again only after RETRY_AFTER
    mono.now += RETRY_AFTER
    a.done()
    assert not a.held
    wall.now += 60
    assert b.may_try() and not b.take()
    assert "explained its growth 60 s ago" in (b.refused or "")
    mono.now += SHARED_FOR
    wall.now += SHARED_FOR
    assert b.take() and b.held and b.refused is None
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    b.release()


def test_a_killed_explainer_leaves_the_claim_free(tmp_path: Path) -> None:
    """The kernel drops the lock when the explaining process dies, however it dies (kill -9 here)."""
    path = lock_path(str(tmp_path), 1)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from bilge.agent.claim import ExplainClaim
        claim = ExplainClaim(sys.argv[1], time.monotonic)
        assert claim.take()
        print("held", flush=True)
        time.sleep(60)
        """), path], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        mono = Clock()
        mine = ExplainClaim(path, mono)
        assert not mine.take()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        mono.now += RETRY_AFTER
        assert mine.take()
        mine.release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_a_forked_child_lets_go_of_its_copy_without_unlocking_the_parents(tmp_path: Path) -> None:
    path = lock_path(str(tmp_path), 1)
    parent = ExplainClaim(path, Clock())
    assert parent.take()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            parent.release()  # what Agent.for_child does with the inherited claim
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not ExplainClaim(path, Clock()).take()  # the parent still holds it
    parent.release()
    assert ExplainClaim(path, Clock()).take()


def test_no_lock_file_means_every_process_explains(tmp_path: Path) -> None:
    """A data directory that cannot hold the lock file: explaining everywhere costs more; never explaining
    would lose the answer."""
    claim = ExplainClaim(str(tmp_path / "gone" / "explain-1.lock"), Clock())
    assert claim.take() and claim.held and "FileNotFoundError" in (claim.unlockable or "")


def test_a_stamp_that_is_not_a_time_is_ignored(tmp_path: Path) -> None:
    path = lock_path(str(tmp_path), 1)
    Path(path).write_bytes(b"\x00garbage")
    claim = ExplainClaim(path, Clock())
    assert claim.take()
    claim.release()


def test_a_sibling_explaining_keeps_this_process_from_opening_a_window(
        tmp_path: Path, suspect_after: Callable[..., Any], drive: Callable[..., int]) -> None:
    """The explain stage asks the claim before a window: refused, it opens none, says why once in its runs,
    and asks again after RETRY_AFTER."""
    mono = Clock()
    store = MemoryStore()
    agent = Agent(AgentConfig(data_dir=str(tmp_path), run_id=3, census_min_interval=0.0, census_budget=1.0),
                  store=store, monotonic=mono)
    agent.register()
    sibling = ExplainClaim(lock_path(str(tmp_path), 3), mono)
    assert sibling.take()
    agent.watch.rss_suspicion = suspect_after(agent, 300, 400.0)
    agent.watch.heap_suspicion = suspect_after(agent, 300, 8.0)

    def ticking(i: int) -> None:
        _HELD.append(Order(i))
        mono.now += 0.01

    drive(agent, ticking, 3000)
    assert agent.explain.windows_opened == 0 and not store.windows
    refused = [r for r in store.stage_runs if r.stage == STAGE_ALLOCATION_WINDOW]
    assert len(refused) == 1 and refused[0].outcome == "skipped", refused
    assert "another process of this run is explaining" in refused[0].reason
    sibling.release()
    mono.now += RETRY_AFTER
    drive(agent, ticking, 3000)
    assert agent.explain.windows_opened == 1
    agent.stop()
