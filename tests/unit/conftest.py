"""Shared fixtures of the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from bilge.store.sqlite import prepare_data_dir, start_run


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, int]:
    """A fresh data directory holding a store with one started run: (data dir, run id)."""
    data_dir = prepare_data_dir(str(tmp_path / "bilge-data"))
    run_id = start_run(data_dir, "python worker.py")
    return data_dir, run_id
