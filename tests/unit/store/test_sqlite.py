"""Tests for bilge.store.sqlite: data-dir set-up, runs, and reading (or refusing to read) a store."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bilge.errors import DataDirError, EmptyStoreError, StoreError
from bilge.model import (
    STAGE_ALLOCATION_WINDOW,
    STAGE_FD_SCAN,
    STAGE_WATCH,
    AgentCost,
    BudgetState,
    Finding,
    StageCost,
    StageRun,
)
from bilge.store import schema
from bilge.store.sqlite import db_path, end_run, load_run, prepare_data_dir, record_findings, start_run
from bilge.store.writer import StoreWriter


# ------------------------------------------------------------ prepare_data_dir --
def test_prepare_creates_a_missing_directory(tmp_path: Path) -> None:
    """A missing data dir (and its parents) is created; the absolute path is returned."""
    target = tmp_path / "a" / "b"
    assert prepare_data_dir(str(target)) == str(target)
    assert target.is_dir()


def test_prepare_accepts_an_existing_store(store: tuple[str, int]) -> None:
    """A directory that already holds bilge.db (and its WAL files) is accepted as is."""
    data_dir, _ = store
    assert prepare_data_dir(data_dir) == data_dir


def test_prepare_refuses_a_file(tmp_path: Path) -> None:
    """A path that is a regular file raises DataDirError saying so."""
    target = tmp_path / "notes.txt"
    target.write_text("hello")
    with pytest.raises(DataDirError) as info:
        prepare_data_dir(str(target))
    assert str(info.value) == "data dir %s is a file, not a directory; pass a directory path" % target


def test_prepare_refuses_a_directory_of_other_files(tmp_path: Path) -> None:
    """A directory holding foreign files (and no store) raises DataDirError naming the first three."""
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (tmp_path / name).write_text("x")
    with pytest.raises(DataDirError) as info:
        prepare_data_dir(str(tmp_path))
    assert str(info.value) == (
        "data dir %s holds other files (a.txt, b.txt, c.txt …), not a bilge store; use an empty directory or "
        "an existing bilge data dir" % tmp_path
    )


def test_prepare_refuses_a_path_under_a_file(tmp_path: Path) -> None:
    """A directory that cannot be created (its parent is a file) raises DataDirError, not OSError."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataDirError, match="cannot create data dir .*; choose a writable location"):
        prepare_data_dir(str(tmp_path / "file" / "sub"))


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: root bypasses permission bits, so os.access reports any directory writable",
)
def test_prepare_refuses_a_read_only_directory(tmp_path: Path) -> None:
    """A directory without write permission raises DataDirError saying it is not writable."""
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    try:
        with pytest.raises(DataDirError) as info:
            prepare_data_dir(str(target))
        assert str(info.value) == "data dir %s is not writable; choose a directory you can write to" % target
    finally:
        target.chmod(0o700)


# ---------------------------------------------------------------- runs --
def test_start_and_end_run(tmp_path: Path) -> None:
    """start_run numbers runs from 1; end_run stamps exit code and end; load_run reads the latest or a chosen one."""
    data_dir = prepare_data_dir(str(tmp_path / "d"))
    first = start_run(data_dir, "celery -A proj worker")
    second = start_run(data_dir, "python job.py")
    assert (first, second) == (1, 2)
    end_run(data_dir, first, 3)
    latest = load_run(data_dir)
    assert latest.run.id == 2
    assert latest.run.command == "python job.py"
    assert latest.run.ended is None
    assert latest.run.exit_code is None
    assert latest.processes == ()
    earlier = load_run(data_dir, run_id=1)
    assert earlier.run.command == "celery -A proj worker"
    assert earlier.run.exit_code == 3
    assert earlier.run.ended is not None and earlier.run.ended >= earlier.run.started


def test_start_run_uses_wal(store: tuple[str, int]) -> None:
    """The store is in WAL mode with the current schema version stamped."""
    data_dir, _ = store
    conn = sqlite3.connect(db_path(data_dir))
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(
            schema.SCHEMA_VERSION)
    finally:
        conn.close()


def test_start_run_refuses_a_foreign_database(tmp_path: Path) -> None:
    """start_run on an SQLite file that is not a bilge store raises StoreError and leaves it alone."""
    path = tmp_path / schema.DB_FILENAME
    foreign = sqlite3.connect(path)
    foreign.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    foreign.commit()
    foreign.close()
    with pytest.raises(StoreError, match="is an SQLite database but not a bilge store"):
        start_run(str(tmp_path), "x")
    check = sqlite3.connect(path)
    try:
        tables = {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        check.close()
    assert tables == {"users"}


# ---------------------------------------------------------------- load_run --
def test_load_run_reads_what_the_writer_wrote(store: tuple[str, int]) -> None:
    """Samples, tasks, a census and agent errors written by StoreWriter come back as model objects."""
    data_dir, run_id = store
    conn = sqlite3.connect(db_path(data_dir))
    # Columns are only appended: pad the rows the agent buffers to the current width.
    sample_pad = (None,) * (len(conn.execute("PRAGMA table_info(samples)").fetchall()) - 14)
    task_pad = (None,) * (len(conn.execute("PRAGMA table_info(tasks)").fetchall()) - 11)
    conn.close()
    writer = StoreWriter(data_dir, run_id)
    try:
        pid = writer.register_process(4242, 1, None, "main", "python worker.py")
        writer.flush(pid, [(10.0, 100 * 4096, 50, 60, 1234, 1, 2, 3, 4, 5, 9, 2, 0) + sample_pad],
                     [(1, "shop.search", 10.1, 10.2, 4096, 8192, 100, 164, 0, 0) + task_pad,
                      (2, "shop.checkout", 10.3, 10.4, 8192, 8192, 164, 160, 1, 2) + task_pad],
                     [(10.5, 2, 5000, 0.01, [("dict", 300, 30000), ("shop.Order", 7, 448)])], "celery-child",
                     [(10.6, "census", "RuntimeError: boom")], ended=11.0)
    finally:
        writer.close()
    data = load_run(data_dir)
    (proc,) = data.processes
    assert (proc.info.pid, proc.info.ppid, proc.info.parent_id, proc.info.role, proc.info.ended) == (
        4242, 1, None, "celery-child", 11.0)
    assert proc.info.argv == "python worker.py"
    (sample,) = proc.samples
    assert (sample.t, sample.rss, sample.uss, sample.pss, sample.heap_blocks, sample.gc_collections, sample.fds,
            sample.threads, sample.tasks_done) == (10.0, 409600, 50, 60, 1234, 4, 9, 2, 0)
    assert [(t.seq, t.name, t.rss_after - t.rss_before, t.blocks_after - t.blocks_before, t.failed, t.gc_runs)
            for t in proc.tasks] == [(1, "shop.search", 4096, 64, False, 0), (2, "shop.checkout", 0, -4, True, 2)]
    (census,) = proc.censuses
    assert dict(census.types) == {"dict": (300, 30000), "shop.Order": (7, 448)}
    assert (census.tasks_done, census.objects) == (2, 5000)
    assert proc.errors == ("census: RuntimeError: boom",)


def test_load_run_reads_each_process_its_own_cost(store: tuple[str, int]) -> None:
    """Stage totals come back in pipeline order, runs by start time; a process that stored no cost has none."""
    data_dir, run_id = store
    late = StageRun(STAGE_ALLOCATION_WINDOW, "rss grows", 30.0, 31.0, 0.2, 0.05, "done")
    early = StageRun(STAGE_FD_SCAN, "fds grow", 10.0, 10.1, 0.01, 0.0, "done")
    budget = BudgetState(t=31.5, cpu_left=1.5, cpu_limit=6.0, cpu_period=600.0, slowed_left=0.45, slowed_limit=1.0,
                         slowed_period=3600.0)
    writer = StoreWriter(data_dir, run_id)
    try:
        main = writer.register_process(100, 1, None, "celery-main", "celery worker")
        child = writer.register_process(101, 100, main, "celery-child", "celery worker")
        writer.flush(child, [], [], [], None, [], stage_runs=[late, early], budget=budget,
                     stage_costs=[StageCost(STAGE_FD_SCAN, 0.01, 0.0, 1), StageCost(STAGE_WATCH, 0.5, 0.0, 60),
                                  StageCost(STAGE_ALLOCATION_WINDOW, 0.2, 0.05, 1)])
        writer.flush(main, [], [], [], None, [], stage_costs=[StageCost(STAGE_WATCH, 0.4, 0.0, 50)])
    finally:
        writer.close()
    by_pid = {p.info.pid: p.cost for p in load_run(data_dir).processes}
    assert by_pid == {
        100: AgentCost(stages=(StageCost(STAGE_WATCH, 0.4, 0.0, 50),)),
        101: AgentCost(stages=(StageCost(STAGE_WATCH, 0.5, 0.0, 60), StageCost(STAGE_ALLOCATION_WINDOW, 0.2, 0.05, 1),
                               StageCost(STAGE_FD_SCAN, 0.01, 0.0, 1)),
                       runs=(early, late), budget=budget),
    }


def test_load_run_of_a_store_without_cost_tables(one_process: tuple[str, int]) -> None:
    """A store from before bilge measured its own cost (no stage_costs, stage_runs, budget_state) reads as no cost."""
    data_dir, _ = one_process
    conn = sqlite3.connect(db_path(data_dir))
    conn.executescript("DROP TABLE stage_costs; DROP TABLE stage_runs; DROP TABLE budget_state;")
    conn.close()
    (proc,) = load_run(data_dir).processes
    assert proc.info.pid == 4242
    assert proc.cost == AgentCost()


def test_load_run_without_a_data_dir(tmp_path: Path) -> None:
    """A data dir that does not exist raises DataDirError pointing at --data-dir."""
    missing = str(tmp_path / "nope")
    with pytest.raises(DataDirError) as info:
        load_run(missing)
    assert str(info.value) == "data dir %s does not exist; pass the --data-dir used with `bilge run`" % missing


def test_load_run_on_a_directory_without_a_store(tmp_path: Path) -> None:
    """An empty directory raises DataDirError naming the expected database file."""
    with pytest.raises(DataDirError) as info:
        load_run(str(tmp_path))
    assert str(info.value) == "no bilge store in %s (expected %s); pass the --data-dir used with `bilge run`" % (
        tmp_path, tmp_path / "bilge.db")


def test_load_run_on_an_empty_file(tmp_path: Path) -> None:
    """A zero-byte bilge.db raises EmptyStoreError telling the user to run a worker first."""
    (tmp_path / schema.DB_FILENAME).write_bytes(b"")
    with pytest.raises(EmptyStoreError) as info:
        load_run(str(tmp_path))
    assert str(info.value) == "store %s is empty; run a worker with `bilge run` first" % (
        tmp_path / schema.DB_FILENAME)


def test_load_run_on_a_corrupt_file(tmp_path: Path) -> None:
    """Random bytes named bilge.db raise StoreError (not EmptyStoreError), chained from the sqlite3 error."""
    rng = np.random.default_rng(7)
    (tmp_path / schema.DB_FILENAME).write_bytes(rng.integers(0, 256, size=8192, dtype=np.uint8).tobytes())
    with pytest.raises(StoreError) as info:
        load_run(str(tmp_path))
    assert type(info.value) is StoreError
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    message = str(info.value)
    assert message.startswith("reading store %s failed: " % (tmp_path / schema.DB_FILENAME))
    assert "damaged (truncated or overwritten?) or not a bilge store" in message


@pytest.mark.parametrize(("error", "advice"), [
    ("database or disk is full", "filesystem is full: free space there"),
    ("attempt to write a readonly database", "read-only: make it writable"),
    ("database is locked", "Another process holds the store locked"),
    ("unable to open database file", "was the data dir deleted"),
    ("database disk image is malformed", "damaged (truncated or overwritten?)"),
    ("no such table: runs", "not a readable bilge store"),
])
def test_store_errors_say_what_to_do_about_them(error: str, advice: str) -> None:
    """The data dir failing under a run (full, read-only, locked, deleted, damaged) is named for what it is."""
    from bilge.store.sqlite import _translated

    with pytest.raises(StoreError) as info, _translated("updating store", "/d/bilge.db"):
        raise sqlite3.OperationalError(error)
    assert str(info.value).startswith("updating store /d/bilge.db failed: %s. " % error) and advice in str(info.value)


def test_load_run_on_a_foreign_sqlite_database(tmp_path: Path) -> None:
    """An SQLite database of another application raises StoreError saying it is not a bilge store."""
    conn = sqlite3.connect(tmp_path / schema.DB_FILENAME)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError) as info:
        load_run(str(tmp_path))
    assert type(info.value) is StoreError
    assert str(info.value) == "%s is an SQLite database but not a bilge store; use another data dir" % (
        tmp_path / schema.DB_FILENAME)


def test_load_run_on_another_schema_version(store: tuple[str, int]) -> None:
    """A store stamped with another schema version raises StoreError naming both versions and what to do."""
    data_dir, _ = store
    conn = sqlite3.connect(db_path(data_dir))
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError) as info:
        load_run(data_dir)
    assert type(info.value) is StoreError
    assert str(info.value) == (
        "%s was written by another bilge version (schema 99, this bilge reads %d); report it with that version or "
        "start a new run in an empty data dir" % (db_path(data_dir), schema.SCHEMA_VERSION)
    )


def test_load_run_on_a_store_without_runs(tmp_path: Path) -> None:
    """A store with its tables but no run raises EmptyStoreError."""
    conn = schema.connect(str(tmp_path / schema.DB_FILENAME))
    schema.create(conn)
    conn.close()
    with pytest.raises(EmptyStoreError, match="holds no record of any run; run a worker with `bilge run` first"):
        load_run(str(tmp_path))


def test_load_run_of_an_unknown_run_id(store: tuple[str, int]) -> None:
    """Asking for a run id the store does not hold raises EmptyStoreError naming it."""
    data_dir, _ = store
    with pytest.raises(EmptyStoreError, match="holds no record of run 7;"):
        load_run(data_dir, run_id=7)


def test_error_exit_codes_are_distinct() -> None:
    """Each error class carries its own exit code for the CLI."""
    assert (DataDirError.exit_code, StoreError.exit_code, EmptyStoreError.exit_code) == (2, 3, 4)


def test_recorded_findings_are_what_the_next_run_compares_with(store: tuple[str, int]) -> None:
    """A run's recorded signatures reach the next run as earlier findings; a run never diagnosed gives nothing."""
    data_dir, first = store
    assert load_run(data_dir).earlier_findings is None
    finding = Finding(task="shop.render", type="shop.Invoice", kind="python-objects", bytes_per_call=100.0,
                      count_per_call=1.0, hint="", pids=(7, 8), signature="abcdef012345")
    record_findings(data_dir, first, [finding, replace(finding, signature=None)], at=1000.0)
    record_findings(data_dir, first, [replace(finding, pids=(7,))], at=2000.0)  # found again: first_seen stays
    conn = sqlite3.connect(db_path(data_dir))
    rows = conn.execute("SELECT signature, first_seen, last_seen, processes FROM findings").fetchall()
    conn.close()
    assert rows == [("abcdef012345", 1000.0, 2000.0, 1)]
    assert load_run(data_dir, first).earlier_findings is None  # only earlier runs count
    second = start_run(data_dir, "python worker.py")
    assert load_run(data_dir, second).earlier_findings == {"abcdef012345": 1000.0}
    third = start_run(data_dir, "python worker.py")
    record_findings(data_dir, second, [], at=3000.0)  # diagnosed, found nothing
    assert load_run(data_dir, third).earlier_findings == {"abcdef012345": 1000.0}


def test_load_run_of_a_store_without_findings_table(store: tuple[str, int]) -> None:
    """A store from before signatures were recorded reads as never diagnosed."""
    data_dir, _ = store
    conn = sqlite3.connect(db_path(data_dir))
    conn.executescript("DROP TABLE findings; ALTER TABLE runs DROP COLUMN diagnosed;")
    conn.close()
    assert load_run(data_dir).earlier_findings is None


def test_a_new_data_dir_and_store_are_private_to_their_owner(tmp_path: Path) -> None:
    """The store holds command lines, task names and code paths: a new data dir is 0700, the store 0600 (and
    SQLite's -wal and -shm take the store's mode); an existing directory keeps the mode its owner gave it."""
    data_dir = prepare_data_dir(str(tmp_path / "new"))
    start_run(data_dir, "python worker.py")
    conn = sqlite3.connect(db_path(data_dir))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
    assert os.stat(data_dir).st_mode & 0o777 == 0o700
    modes = {p.name: p.stat().st_mode & 0o777 for p in Path(data_dir).iterdir()}
    conn.close()
    assert modes and set(modes.values()) == {0o600}, modes
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    prepare_data_dir(str(shared))
    assert os.stat(shared).st_mode & 0o777 == 0o750
