"""A damaged store (truncated, overwritten in part) is reported from what can still be read."""

from __future__ import annotations

import os
import sqlite3

import pytest

from bilge.errors import StoreError
from bilge.store import sqlite as sqlite_store
from bilge.store.writer import StoreWriter

TASKS = 20000


def filled(data_dir: str, run_id: int) -> str:
    """The store with one process, 20,000 task rows and a sample per 100, checkpointed into the main file."""
    conn = sqlite3.connect(os.path.join(data_dir, "bilge.db"))
    task_width = len(conn.execute("PRAGMA table_info(tasks)").fetchall()) - 1
    sample_width = len(conn.execute("PRAGMA table_info(samples)").fetchall()) - 1
    conn.close()
    writer = StoreWriter(data_dir, run_id)
    try:
        process_id = writer.register_process(4242, 1, None, "celery-child", "worker")
        for start in range(0, TASKS, 100):
            tasks = [(seq, "shop.task", float(seq), seq + 0.5, 4096 * seq, 4096 * seq + 64, 10, 11, 0)
                     + (None,) * (task_width - 9) for seq in range(start, start + 100)]
            sample = (float(start), 4096 * start, None, None, 100, 0, 0, 0, start, 0, 8, 2, start)
            writer.flush(process_id, [sample + (None,) * (sample_width - len(sample))], tasks, [], None, [])
    finally:
        writer.close()
    path = sqlite_store.db_path(data_dir)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


def test_a_truncated_store_is_read_as_far_as_it_goes(store: tuple[str, int]) -> None:
    data_dir, run_id = store
    path = filled(data_dir, run_id)
    os.truncate(path, os.path.getsize(path) * 6 // 10)
    size = os.path.getsize(path)
    with pytest.raises(StoreError) as info:
        sqlite_store.load_run(data_dir)
    assert sqlite_store.damaged(info.value)
    run, found = sqlite_store.load_salvaged(data_dir)
    (process,) = run.processes
    assert 0 < len(process.tasks) < TASKS and process.info.pid == 4242
    tasks = next(t for t in found.tables if t.table == "tasks")
    assert tasks.rows == len(process.tasks) and tasks.stopped and "malformed" in tasks.stopped
    assert "tasks %d (then damaged)" % tasks.rows in found.summary()
    assert os.path.getsize(path) == size  # the damaged file is only read


def test_a_store_whose_first_pages_are_overwritten_has_nothing_to_salvage(store: tuple[str, int]) -> None:
    data_dir, run_id = store
    path = filled(data_dir, run_id)
    with open(path, "r+b") as f:
        f.write(os.urandom(8192))
    with pytest.raises(StoreError) as info:
        sqlite_store.load_run(data_dir)
    assert sqlite_store.damaged(info.value)
    with pytest.raises(StoreError, match="nothing could be read from the damaged store"):
        sqlite_store.load_salvaged(data_dir)


def test_errors_other_than_damage_are_not_salvaged() -> None:
    """A locked or full store is not damaged: no salvage is attempted for it."""
    try:
        raise sqlite3.OperationalError("database is locked")
    except sqlite3.OperationalError as cause:
        error = StoreError("reading store failed")
        error.__cause__ = cause
    assert not sqlite_store.damaged(error)
