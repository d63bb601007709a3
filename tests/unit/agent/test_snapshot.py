"""Tests for bilge.agent.snapshot and the agent's control operations (``Agent.control``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from bilge.agent import Agent, AgentConfig
from bilge.model import STAGE_SNAPSHOT
from bilge.store.memory import MemoryStore


class Parcel:
    """What the test piles up in a module-level list between two snapshots."""


WAREHOUSE: list[Parcel] = []


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    """An agent on an in-memory store, registered, its thread not started (the test calls control itself)."""
    made = Agent(AgentConfig(data_dir=str(tmp_path), run_id=1), store=MemoryStore())
    made.register()
    yield made
    WAREHOUSE.clear()


def store_of(agent: Agent) -> MemoryStore:
    store = agent.store
    assert isinstance(store, MemoryStore)
    return store


def test_second_snapshot_names_what_grew_since_the_first_and_who_holds_it(agent: Agent) -> None:
    """500 Parcels appended to a module list between two snapshots: the second lists Parcel +500 first,
    searches its holders and finds this module's WAREHOUSE; both are stored with their census, holder rows
    and a run of the snapshot stage."""
    first = agent.control("snapshot", {})
    assert first["compared_with"] is None and first["holders"] == [] and first["objects"] > 1000
    WAREHOUSE.extend(Parcel() for _ in range(500))
    second = agent.control("snapshot", {"top": 5})
    name = "%s.Parcel" % __name__
    assert second["compared_with"].startswith("the previous snapshot")
    assert second["growing"][0]["type"] == name and second["growing"][0]["change"] == 500
    assert second["searched"][0] == name and len(second["top"]) == 5
    paths = [h["path"] for h in second["holders"] if h["type"] == name]
    assert paths and paths[0].startswith("%s.WAREHOUSE" % __name__), second["holders"]
    store = store_of(agent)
    assert [s[1] for s in store.snapshots] == [0, 0] and store.snapshots[1][3] == second
    assert len(store.censuses) == 2 and any(h[2] == name for h in store.holders)
    runs = [r for r in store.stage_runs if r.stage == STAGE_SNAPSHOT]
    assert len(runs) == 2 and all(r.reason == "requested" for r in runs)
    assert store.stage_costs[STAGE_SNAPSHOT].runs == 2


def test_census_counts_only_and_named_types_are_searched_as_asked(agent: Agent) -> None:
    """`census` searches no holders; `snapshot` with types searches those, whatever grew."""
    WAREHOUSE.extend(Parcel() for _ in range(50))
    counted = agent.control("census", {})
    assert counted["holders"] == [] and counted["holders_note"] == "not searched (a census only)"
    name = "%s.Parcel" % __name__
    asked = agent.control("snapshot", {"types": [name]})
    assert asked["searched"] == [name] and any(h["type"] == name for h in asked["holders"])


@pytest.mark.parametrize("args, message", [
    ({"top": 0}, '"top" must be a whole number'),
    ({"top": "5"}, '"top" must be a whole number'),
    ({"types": "dict"}, '"types" must be a list'),
    ({"types": ["x"] * 6}, '"types" must be a list'),
    ({"types": [""]}, '"types" must be a list'),
])
def test_bad_arguments_are_refused_with_what_is_expected(agent: Agent, args: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        agent.control("snapshot", args)


def test_status_unknown_ops_and_a_window_the_process_cannot_use(agent: Agent) -> None:
    """status says who and where; an unknown op lists the known ones; a window in a process with no task is
    refused with the reason; flush answers."""
    status = agent.control("status", {})
    assert status["pid"] == os.getpid() and status["tasks_done"] == 0 and status["explain"]["on"] is True
    with pytest.raises(ValueError, match="unknown op 'exec'; known: status, census, snapshot, window, flush, detach"):
        agent.control("exec", {})
    assert agent.control("window", {}) == {"window": "refused: this process has run no task to trace"}
    assert agent.control("flush", {}) == {}


def test_a_window_request_never_overspends_the_budget(agent: Agent) -> None:
    """With the budget spent, a requested window is refused and none opens."""
    for k in range(30):
        agent.task_started(k, "shop.task")
        agent.task_finished(k)
    agent.budget.charge(10_000.0)
    assert agent.control("window", {})["window"].startswith("refused: the cost budget")
    assert agent.explain.windows_opened == 0


def test_a_started_agent_serves_its_socket_and_each_forked_child_its_own(tmp_path: Path) -> None:
    """Under a real start: <dir>/<pid>.sock answers status; a forked child gets its own socket and the
    parent's keeps answering; stop removes the parent's."""
    sockets = tempfile.mkdtemp(prefix="bilge-t-")
    script = tmp_path / "forks.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        from bilge import live
        from bilge.agent import _runtime
        from bilge.agent import AgentConfig
        from bilge.store.sqlite import prepare_data_dir, start_run
        data = prepare_data_dir(sys.argv[1])
        agent = _runtime.start(AgentConfig(data_dir=data, run_id=start_run(data, "x"), socket_dir=sys.argv[2]))
        assert live.request(live.find(os.getpid()), "status")["pid"] == os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                for _ in range(100):
                    if os.path.exists(os.path.join(sys.argv[2], "%d.sock" % os.getpid())):
                        break
                    time.sleep(0.05)
                ok = live.request(live.find(os.getpid()), "status")["pid"] == os.getpid()
            finally:
                _runtime.current().stop()
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not os.path.exists(os.path.join(sys.argv[2], "%d.sock" % pid)), "the child removes its own"
        assert live.request(live.find(os.getpid()), "status")["pid"] == os.getpid()
        agent.stop()
        assert os.listdir(sys.argv[2]) == []
    """))
    try:
        done = subprocess.run([sys.executable, str(script), str(tmp_path / "data"), sockets], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "BILGE_SOCKET_DIR": sockets})
        assert done.returncode == 0, done.stderr
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def test_the_containers_growing_at_every_scan_lead_the_holders(agent: Agent) -> None:
    """A module list the container stage saw growing at every recent scan comes first among a snapshot's holders,
    with its length and growth: a holder search for `dict` samples tens of thousands of dicts and may miss the
    few the leak added."""
    from bilge.agent.snapshot import Snapshots
    from bilge.model import ContainerGrowth

    ledger = ContainerGrowth("billing._LEDGER", "list", "dict", first=400, last=700, tasks=300, scans=3)
    agent.snapshots = Snapshots(agent.outbox, agent.census, agent.counts, agent.ledger, lambda: 900,
                                growing_containers=lambda: [ledger])
    agent.control("snapshot", {})
    second = agent.control("snapshot", {})
    assert second["holders"][0] == {"type": "dict", "path": "billing._LEDGER", "root_kind": "module-global",
                                    "container": "list", "length": 700, "targets": 300,
                                    "grew": "+300 in 300 tasks"}
    assert agent.control("census", {})["holders"] == []  # a census only: no holders of any kind
