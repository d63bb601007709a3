"""Shared fixtures of the unit tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bilge.store.sqlite import prepare_data_dir, start_run
from bilge.store.writer import StoreWriter


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, int]:
    """A fresh data directory holding a store with one started run: (data dir, run id)."""
    data_dir = prepare_data_dir(str(tmp_path / "bilge-data"))
    run_id = start_run(data_dir, "python worker.py")
    return data_dir, run_id


@pytest.fixture
def one_process(store: tuple[str, int]) -> tuple[str, int]:
    """``store`` with one registered process (pid 4242, role main) and nothing else."""
    data_dir, run_id = store
    writer = StoreWriter(data_dir, run_id)
    try:
        writer.register_process(4242, 1, None, "main", "python worker.py")
    finally:
        writer.close()
    return data_dir, run_id


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``condition`` every 50 ms until it holds or ``timeout`` seconds pass.

    Polling gently matters: reading the store takes the GIL from the agent
    thread it is waiting for, which on a loaded machine can starve it.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def wait_for() -> Callable[..., bool]:
    """``wait_for(condition, timeout=30.0)``: poll until the condition holds; True if it did."""
    return _wait_for
