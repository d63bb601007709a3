"""Tests for bilge.store.writer: batched writes from many processes, and surviving a killed writer."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from bilge.model import (
    STAGE_ALLOCATION_WINDOW,
    STAGE_CENSUS,
    STAGE_HOLDER_SEARCH,
    AgentCost,
    BudgetState,
    StageCost,
    StageRun,
)
from bilge.store.sqlite import load_run
from bilge.store.writer import CHUNK_ROWS, PAD_PARAMS, StoreWriter, _insert, _max_variables

FORK = multiprocessing.get_context("fork")


def widths(data_dir: str) -> tuple[int, int]:
    """Values per sample row and per task row the writer takes: the table's columns but process_id.

    Columns are only ever appended, so rows built from the first fields below
    and padded with None stay valid as the agent learns to read more.
    """
    conn = sqlite3.connect(os.path.join(data_dir, "bilge.db"))
    try:
        sample = len(conn.execute("PRAGMA table_info(samples)").fetchall()) - 1
        task = len(conn.execute("PRAGMA table_info(tasks)").fetchall()) - 1
    finally:
        conn.close()
    return sample, task


def task_row(seq: int, width: int, name: str = "shop.search") -> tuple[object, ...]:
    """One task row as the agent buffers it (seq, name, times, RSS and blocks before/after, failed, ...)."""
    row = (seq, name, float(seq), seq + 0.5, 4096 * seq, 4096 * (seq + 1), 100 + seq, 101 + seq, 0)
    return row + (None,) * (width - len(row))


def sample_row(seq: int, width: int) -> tuple[object, ...]:
    """One sample row as the agent buffers it (t, rss, uss, pss, heap blocks, gc, fds, threads, tasks done, ...)."""
    row = (float(seq), 4096 * seq, None, None, 100 + seq, 0, 0, 0, seq, 0, 8, 2, seq)
    return row + (None,) * (width - len(row))


def write_tasks(data_dir: str, run_id: int, tasks: int, batch: int) -> None:
    """A worker process: register, then write ``tasks`` task rows ``batch`` at a time, one flush each."""
    sample_width, task_width = widths(data_dir)
    writer = StoreWriter(data_dir, run_id)
    try:
        process_id = writer.register_process(os.getpid(), os.getppid(), None, "celery-child", "worker")
        for start in range(1, tasks + 1, batch):
            rows = [task_row(seq, task_width) for seq in range(start, min(start + batch, tasks + 1))]
            writer.flush(process_id, [sample_row(start, sample_width)], rows, [], None, [])
        writer.flush(process_id, [], [], [], None, [], ended=time.time())
    finally:
        writer.close()


def test_four_processes_writing_concurrently_lose_nothing(store: tuple[str, int]) -> None:
    """4 forked processes each flush 500 task rows in batches of 5: all 2000 rows are stored, in order."""
    data_dir, run_id = store
    procs = [FORK.Process(target=write_tasks, args=(data_dir, run_id, 500, 5)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    data = load_run(data_dir)
    assert sorted(p.info.pid for p in data.processes) == sorted(p.pid for p in procs)
    for proc in data.processes:
        assert [t.seq for t in proc.tasks] == list(range(1, 501))
        assert len(proc.samples) == 100
        assert proc.info.ended is not None
        assert proc.info.parent_id is None


def write_forever(data_dir: str, run_id: int, batch: int, report: Connection) -> None:
    """A writer that never stops: after each committed flush it reports the rows committed so far."""
    sample_width, task_width = widths(data_dir)
    writer = StoreWriter(data_dir, run_id)
    process_id = writer.register_process(os.getpid(), os.getppid(), None, "main", "loop")
    done = 0
    while True:
        writer.flush(process_id, [sample_row(done, sample_width)],
                     [task_row(seq, task_width) for seq in range(done + 1, done + batch + 1)],
                     [(time.time(), done, 1000, 0.001, [("dict", 10, 1000), ("shop.Order", done, 64 * done)])],
                     None, [])
        done += batch
        report.send(done)


def test_a_writer_killed_mid_run_leaves_a_readable_store(store: tuple[str, int]) -> None:
    """SIGKILL of a process busy writing: the store still loads, with every acknowledged flush and no torn one."""
    data_dir, run_id = store
    batch = 25
    receiver, sender = FORK.Pipe(duplex=False)
    proc = FORK.Process(target=write_forever, args=(data_dir, run_id, batch, sender))
    proc.start()
    sender.close()
    acknowledged = 0
    deadline = time.monotonic() + 20
    while acknowledged < 1000 and time.monotonic() < deadline:
        if receiver.poll(0.1):
            acknowledged = receiver.recv()
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    while True:  # commits that happened after our last read
        try:
            acknowledged = receiver.recv()
        except EOFError:
            break
    receiver.close()
    assert acknowledged >= 1000
    data = load_run(data_dir)
    (written,) = data.processes
    seqs = [t.seq for t in written.tasks]
    # Whole transactions only: every committed flush, and a partial one never.
    assert len(seqs) >= acknowledged
    assert len(seqs) % batch == 0
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(written.samples) == len(written.censuses) == len(seqs) // batch
    assert all(set(c.types) == {"dict", "shop.Order"} for c in written.censuses)
    assert written.info.ended is None  # it never got to say goodbye


def test_writer_needs_an_existing_database(tmp_path: Path) -> None:
    """A writer pointed at a directory without bilge.db raises FileNotFoundError on first use and creates nothing."""
    writer = StoreWriter(str(tmp_path), 1)
    with pytest.raises(FileNotFoundError, match="bilge database .* is missing"):
        writer.register_process(1, 0, None, "main", "")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_flush_rolls_back_everything(store: tuple[str, int]) -> None:
    """A flush whose task rows are malformed writes none of its samples either, and the writer stays usable."""
    data_dir, run_id = store
    sample_width, task_width = widths(data_dir)
    writer = StoreWriter(data_dir, run_id)
    try:
        process_id = writer.register_process(os.getpid(), os.getppid(), None, "main", "")
        with pytest.raises(Exception):  # noqa: B017 - which sqlite3 error is not the point
            writer.flush(process_id, [sample_row(1, sample_width)], [("too", "short")], [], None, [])
        writer.flush(process_id, [sample_row(2, sample_width)], [task_row(1, task_width)], [], None, [])
    finally:
        writer.close()
    (proc,) = load_run(data_dir).processes
    assert [s.t for s in proc.samples] == [2.0]
    assert [t.seq for t in proc.tasks] == [1]


def test_role_and_end_are_updated_by_flush(store: tuple[str, int]) -> None:
    """A flush carrying a role renames the process; one carrying ``ended`` stamps its end."""
    data_dir, run_id = store
    writer = StoreWriter(data_dir, run_id)
    try:
        process_id = writer.register_process(7, 1, None, "main", "celery worker")
        writer.flush(process_id, [], [], [], "celery-main", [], ended=123.0)
    finally:
        writer.close()
    (proc,) = load_run(data_dir).processes
    assert (proc.info.role, proc.info.ended) == ("celery-main", 123.0)


def test_agent_cost_totals_are_replaced_runs_appended_and_budget_replaced(store: tuple[str, int]) -> None:
    """Two flushes of cost: per-stage totals and the budget hold the second flush's values, runs accumulate."""
    data_dir, run_id = store
    writer = StoreWriter(data_dir, run_id)
    first_run = StageRun(stage=STAGE_ALLOCATION_WINDOW, reason="heap blocks grow", started=10.0, ended=12.0,
                         cpu_seconds=0.1, slowed_seconds=0.02, outcome="done")
    second_run = StageRun(stage=STAGE_HOLDER_SEARCH, reason="shop.Order grows", started=20.0, ended=20.5,
                          cpu_seconds=0.25, slowed_seconds=0.0, outcome="found")
    try:
        process_id = writer.register_process(7, 1, None, "celery-child", "celery worker")
        writer.flush(process_id, [], [], [], None, [],
                     stage_costs=[StageCost(STAGE_CENSUS, 0.2, 0.0, 3),
                                  StageCost(STAGE_ALLOCATION_WINDOW, 0.1, 0.02, 1)],
                     stage_runs=[first_run],
                     budget=BudgetState(t=12.5, cpu_left=2.9, cpu_limit=6.0, cpu_period=600.0, slowed_left=0.48,
                                        slowed_limit=1.0, slowed_period=3600.0))
        writer.flush(process_id, [], [], [], None, [],
                     stage_costs=[StageCost(STAGE_CENSUS, 0.3, 0.0, 5), StageCost(STAGE_HOLDER_SEARCH, 0.25, 0.0, 1)],
                     stage_runs=[second_run],
                     budget=BudgetState(t=21.0, cpu_left=2.65, cpu_limit=6.0, cpu_period=600.0, slowed_left=0.5,
                                        slowed_limit=1.0, slowed_period=3600.0))
    finally:
        writer.close()
    (proc,) = load_run(data_dir).processes
    assert proc.cost == AgentCost(
        stages=(StageCost(STAGE_CENSUS, 0.3, 0.0, 5), StageCost(STAGE_ALLOCATION_WINDOW, 0.1, 0.02, 1),
                StageCost(STAGE_HOLDER_SEARCH, 0.25, 0.0, 1)),
        runs=(first_run, second_run),
        budget=BudgetState(t=21.0, cpu_left=2.65, cpu_limit=6.0, cpu_period=600.0, slowed_left=0.5,
                           slowed_limit=1.0, slowed_period=3600.0))


def test_a_failed_flush_stores_none_of_its_cost(store: tuple[str, int]) -> None:
    """Cost travels in the flush's transaction: malformed task rows roll back its totals, runs and budget too."""
    data_dir, run_id = store
    writer = StoreWriter(data_dir, run_id)
    try:
        process_id = writer.register_process(7, 1, None, "main", "")
        with pytest.raises(Exception):  # noqa: B017 - which sqlite3 error is not the point
            writer.flush(process_id, [], [("too", "short")], [], None, [],
                         stage_costs=[StageCost(STAGE_CENSUS, 0.2, 0.0, 3)],
                         stage_runs=[StageRun(STAGE_HOLDER_SEARCH, "growth", 1.0, 2.0, 0.1, 0.0, "found")],
                         budget=BudgetState(3.0, 1.0, 6.0, 600.0, 1.0, 1.0, 3600.0))
    finally:
        writer.close()
    (proc,) = load_run(data_dir).processes
    assert proc.cost == AgentCost()


@pytest.mark.parametrize("rows", [1, 2, 3, 8, 9, 100, 128, 129, 500, 511, 512, 513, 1000, 3000])
def test_rows_go_in_as_few_multi_row_inserts_and_all_arrive_in_order(rows: int,
                                                                     request: pytest.FixtureRequest) -> None:
    """The multi-row INSERTs store exactly the rows executemany would, in order, padding included (NULL rows
    are dropped, NULLs inside real rows kept): a few statements of at most four distinct texts (each text is an
    object in the connection's statement cache), padded by at most PAD_PARAMS parameters."""
    conn = sqlite3.connect(":memory:")
    request.addfinalizer(conn.close)
    conn.execute("CREATE TABLE t (a NOT NULL, b, c)")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    data = [(i, None if i % 5 == 0 else "name-%d" % i, None if i % 3 else i * 0.5) for i in range(rows)]
    _insert(conn.cursor(), "INSERT INTO t (a, b, c) VALUES (?, ?, ?)", data)
    conn.set_trace_callback(None)
    assert conn.execute("SELECT a, b, c FROM t ORDER BY rowid").fetchall() == data
    inserts = [sql for sql in statements if sql.startswith("INSERT")]
    sizes = [sql.count("(") - 2 for sql in inserts]  # the column list and "(VALUES" open one each
    assert len(set(sizes)) <= 4 and set(sizes) <= set(CHUNK_ROWS)
    assert (sum(sizes) - rows) * 3 <= PAD_PARAMS
    # The biggest statement this SQLite takes: 512 rows, or 128 under a 999-parameter limit (Python 3.10
    # cannot ask SQLite its limit and assumes the old 999); then at most one per smaller size.
    biggest = max(size for size in CHUNK_ROWS if size <= _max_variables(conn.cursor()) // 3)
    assert len(inserts) <= rows // biggest + len(CHUNK_ROWS)
    assert rows > 100 or len(inserts) == 1


def test_a_low_parameter_limit_splits_the_inserts_below_it(request: pytest.FixtureRequest) -> None:
    """An SQLite built with a small bound-parameter limit still takes every row (chunks stay under it)."""
    conn = sqlite3.connect(":memory:")
    request.addfinalizer(conn.close)
    if not hasattr(conn, "setlimit"):
        pytest.skip("Python < 3.11 has no Connection.setlimit (the writer then assumes SQLite's old 999)")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 30)
    conn.execute("CREATE TABLE t (a, b, c)")
    data = [(i, i, i) for i in range(100)]
    _insert(conn.cursor(), "INSERT INTO t (a, b, c) VALUES (?, ?, ?)", data)
    assert conn.execute("SELECT a, b, c FROM t ORDER BY rowid").fetchall() == data


def test_snapshots_round_trip_with_their_summary(store: tuple[str, int]) -> None:
    """A flushed snapshot is read back on its process, summary intact, in time order."""
    data_dir, run_id = store
    writer = StoreWriter(data_dir, run_id)
    summary = {"objects": 1234, "growing": [{"type": "shop.Order", "count": 40, "change": 30}], "holders": []}
    try:
        process_id = writer.register_process(7, 1, None, "celery-child", "celery worker")
        writer.flush(process_id, [], [], [], None, [], snapshots=[(20.0, 9, 0.2, {"objects": 2}), (10.0, 5, 0.1,
                                                                                                    summary)])
    finally:
        writer.close()
    (proc,) = load_run(data_dir).processes
    assert [(s.t, s.tasks_done, s.seconds) for s in proc.snapshots] == [(10.0, 5, 0.1), (20.0, 9, 0.2)]
    assert proc.snapshots[0].summary == summary
