"""The agent's write side of the store: batched inserts from one process.

Stdlib-only. One ``StoreWriter`` belongs to one process; after a fork the
child builds its own (SQLite connections must never cross a fork).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from bilge.model import BudgetState, StageCost, StageRun
from bilge.samplers import wallclock
from bilge.store import schema

SampleRow = tuple[Any, ...]
TaskRow = tuple[Any, ...]


class StoreWriter:
    """Writes one process's telemetry into the run's database.

    Args:
        data_dir: the bilge data directory (must already hold the database).
        run_id: the run this process belongs to.
    """

    def __init__(self, data_dir: str, run_id: int) -> None:
        self.path = os.path.join(data_dir, schema.DB_FILENAME)
        self.run_id = run_id
        self._conn: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None

    def _connection(self) -> sqlite3.Cursor:
        # One cursor for the process's lifetime: every new cursor leaves a
        # weak reference in the connection (pruned only every 200), which
        # the census would otherwise see as a slowly growing type.
        if self._cursor is None:
            if not os.path.exists(self.path):
                raise FileNotFoundError("bilge database %s is missing" % self.path)
            self._conn = schema.connect(self.path)
            # SQLite's page cache fills lazily up to its size (2 MiB by
            # default) as the store grows: the agent's own memory, rising in
            # every child for minutes, which the watch then saw as the
            # host's native growth. Appending needs only the right edge of
            # each table and index.
            self._conn.execute("PRAGMA cache_size=-%d" % WRITER_CACHE_KIB)
            self._cursor = self._conn.cursor()
        return self._cursor

    def register_process(self, pid: int, ppid: int, parent_id: int | None, role: str, argv: str) -> int:
        """Insert this process's row and return its store id."""
        conn = self._connection()
        conn.execute(
            "INSERT INTO processes (run_id, pid, ppid, parent_id, role, started, argv, python) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self.run_id, pid, ppid, parent_id, role, wallclock.now(), argv, _python_version()),
        )
        return int(conn.lastrowid or 0)

    def claim_recycle(self, process_id: int, t: float, reason: str, rss: int | None, tasks_done: int,
                      snapshot: str, min_interval: float, urgent: bool = False) -> bool:
        """Record a recycle with its forensic snapshot, if the run's rate limit allows it now.

        One child at a time (none whose recycle is still under way, i.e. not
        yet ended), and, unless ``urgent`` (a forecast limit hit), not within
        ``min_interval`` of the last recycle. One IMMEDIATE transaction
        decides, so two children of one worker never both take the slot.
        """
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            (last, under_way) = conn.execute(
                "SELECT MAX(r.t), SUM(p.ended IS NULL) FROM recycles r JOIN processes p ON p.id = r.process_id "
                "WHERE p.run_id = ? AND r.status != 'refused'", (self.run_id,)).fetchone()
            if under_way or (last is not None and not urgent and t - last < min_interval):
                conn.execute("ROLLBACK")
                return False
            conn.execute("INSERT INTO recycles (process_id, t, reason, rss, tasks_done, status, snapshot) "
                         "VALUES (?, ?, ?, ?, ?, 'requested', ?)", (process_id, t, reason, rss, tasks_done, snapshot))
            conn.execute("COMMIT")
            return True
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def refuse_recycle(self, process_id: int, why: str) -> None:
        """Mark this process's requested recycle as refused (the child could not leave), with the reason."""
        self._connection().execute(
            "UPDATE recycles SET status = 'refused', reason = reason || ' — not done: ' || ? "
            "WHERE process_id = ? AND status = 'requested'", (why, process_id))

    def flush(
        self,
        process_id: int,
        samples: Sequence[SampleRow],
        tasks: Sequence[TaskRow],
        censuses: Sequence[tuple[float, int, int, float, Sequence[tuple[str, int, int]]]],
        role: str | None,
        errors: Sequence[tuple[float, str, str]],
        ended: float | None = None,
        windows: Sequence[Any] = (),
        fd_targets: Sequence[tuple[float, int, Sequence[tuple[str, int]]]] = (),
        facts: dict[str, int] | None = None,
        holders: Sequence[tuple[float, float, str, str, str, str | None, int | None, int, str | None]] = (),
        stage_costs: Sequence[StageCost] = (),
        stage_runs: Sequence[StageRun] = (),
        budget: BudgetState | None = None,
        containers: Sequence[tuple[float, int, float, Sequence[tuple[str, str, int, str]]]] = (),
        snapshots: Sequence[tuple[float, int, float, Mapping[str, Any]]] = (),
        gc_stats: Sequence[tuple[int, int, int]] = (),
    ) -> None:
        """Write everything buffered since the last flush in one transaction.

        Args:
            stage_costs: each stage's cumulative cost in this process so far;
                replaces what an earlier flush stored for that stage.
            stage_runs: budgeted runs since the last flush (appended).
            budget: the budget left now; replaces the one stored before.
            gc_stats: (collections, collected, uncollectable) per garbage
                collector generation now; replaces those stored before.
        """
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if samples:
                _insert(conn,
                    "INSERT INTO samples (process_id, t, rss, uss, pss, heap_blocks, gc_gen0, gc_gen1, gc_gen2, "
                    "gc_collections, gc_collected, fds, threads, tasks_done, malloc_used, malloc_free, gc_garbage, "
                    "gc_enabled, gc_frozen, gc_full, heap_after_full, floor_task) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(process_id,) + row for row in samples],
                )
            if tasks:
                _insert(conn,
                    "INSERT INTO tasks (process_id, seq, name, started, ended, rss_before, rss_after, "
                    "blocks_before, blocks_after, failed, gc_runs, items_before, items_after) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(process_id,) + row for row in tasks],
                )
            for t, tasks_done, objects, duration, types in censuses:
                conn.execute(
                    "INSERT INTO censuses (process_id, t, tasks_done, objects, duration) VALUES (?, ?, ?, ?, ?)",
                    (process_id, t, tasks_done, objects, duration),
                )
                census_id = conn.lastrowid
                _insert(conn,
                    "INSERT INTO census_types (census_id, type, count, bytes) VALUES (?, ?, ?, ?)",
                    [(census_id,) + row for row in types],
                )
            if role is not None:
                conn.execute("UPDATE processes SET role = ? WHERE id = ?", (role, process_id))
            for column, value in (facts or {}).items():
                # Column names come from the agent's own fixed set, never from input.
                conn.execute("UPDATE processes SET %s = ? WHERE id = ?" % column, (value, process_id))
            if errors:
                _insert(conn,
                    "INSERT INTO agent_errors (process_id, t, source, message) VALUES (?, ?, ?, ?)",
                    [(process_id,) + row for row in errors],
                )
            for window in windows:
                conn.execute(
                    "INSERT INTO windows (process_id, started, ended, tasks, status, peak_memory, tracer) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (process_id, window.started, window.ended, window.tasks, window.status, window.peak_memory,
                     window.tracer),
                )
                window_id = conn.lastrowid
                _insert(conn,
                    "INSERT INTO sites (window_id, rank, file, line, size, count, owner, traceback, task, native) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(window_id, rank, s.file, s.line, s.size, s.count, s.owner, "\n".join(s.traceback), s.task,
                      s.native)
                     for rank, s in enumerate(window.sites)],
                )
                _insert(conn,
                    "INSERT INTO type_sites (window_id, type, file, line, count, sampled, owner) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(window_id, t.type, t.file, t.line, t.count, t.sampled, t.owner) for t in window.type_sites],
                )
            if holders:
                _insert(conn,
                    "INSERT INTO holders (process_id, t, started, type, path, root_kind, container_type, "
                    "container_len, targets, sample_values) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(process_id,) + row for row in holders],
                )
            if fd_targets:
                _insert(conn,
                    "INSERT INTO fd_targets (process_id, t, tasks_done, target, count) VALUES (?, ?, ?, ?, ?)",
                    [(process_id, t, done, target, count) for t, done, targets in fd_targets
                     for target, count in targets],
                )
            if containers:
                _insert(conn,
                    "INSERT INTO container_lengths (process_id, t, tasks_done, duration, path, container_type, "
                    "length, element_type) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(process_id, t, done, seconds) + row for t, done, seconds, rows in containers for row in rows],
                )
            if snapshots:
                _insert(conn,
                    "INSERT INTO snapshots (process_id, t, tasks_done, seconds, summary) VALUES (?, ?, ?, ?, ?)",
                    [(process_id, t, done, seconds, json.dumps(summary, separators=(",", ":")))
                     for t, done, seconds, summary in snapshots],
                )
            _write_cost(conn, process_id, stage_costs, stage_runs, budget)
            if gc_stats:
                _insert(conn,
                    "INSERT OR REPLACE INTO gc_stats (process_id, generation, collections, collected, uncollectable) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(process_id, generation) + tuple(row) for generation, row in enumerate(gc_stats)],
                )
            if ended is not None:
                conn.execute("UPDATE processes SET ended = ? WHERE id = ?", (ended, process_id))
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    def abandon(self) -> None:
        """Forget the connection without closing it.

        Used in a forked child: closing a connection inherited from the parent
        could release POSIX locks the parent still relies on, so the child
        simply never touches it again.
        """
        if self._conn is not None:
            _ABANDONED.append(self._conn)
        self._conn = None
        self._cursor = None

    def close(self) -> None:
        """Close the connection (own process only)."""
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
                self._cursor = None


def _write_cost(conn: sqlite3.Cursor, process_id: int, stage_costs: Sequence[StageCost],
                stage_runs: Sequence[StageRun], budget: BudgetState | None) -> None:
    """The agent's own cost, inside the caller's transaction.

    Totals arrive cumulative, so they replace the stored row rather than add
    to it: a flush that is retried or repeated can never count a cost twice.
    """
    if stage_costs:
        _insert(conn,
            "INSERT OR REPLACE INTO stage_costs (process_id, stage, cpu_seconds, slowed_seconds, runs) "
            "VALUES (?, ?, ?, ?, ?)",
            [(process_id, c.stage, c.cpu_seconds, c.slowed_seconds, c.runs) for c in stage_costs],
        )
    if stage_runs:
        _insert(conn,
            "INSERT INTO stage_runs (process_id, stage, reason, started, ended, cpu_seconds, slowed_seconds, "
            "outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(process_id, r.stage, r.reason, r.started, r.ended, r.cpu_seconds, r.slowed_seconds, r.outcome)
             for r in stage_runs],
        )
    if budget is not None:
        conn.execute(
            "INSERT OR REPLACE INTO budget_state (process_id, t, cpu_left, cpu_limit, cpu_period, slowed_left, "
            "slowed_limit, slowed_period) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (process_id, budget.t, budget.cpu_left, budget.cpu_limit, budget.cpu_period, budget.slowed_left,
             budget.slowed_limit, budget.slowed_period),
        )


# Statements use parameters only, never formatted ids: each distinct SQL
# string would add an entry to the connection's statement cache, and the
# census would then see the agent's own objects grow.

# Rows per multi-row INSERT: one of CHUNK_ROWS rows per statement, so a table
# needs at most four distinct statement texts, all seen within a process's
# first flushes (each text is an object in the connection's statement cache,
# and SQLite's compiled program: ~1.2 KB a row of 13 columns, 630 KB for 512
# rows, as the plain VALUES statements before; a steady trickle of new texts,
# one per size as flush sizes varied, looked like a growing type to the census).
# The last statement of a table may be a larger one padded with NULL rows
# (which its WHERE drops) when that costs at most PAD_PARAMS bound NULLs:
# binding a parameter costs ~0.2 µs, a statement more in the flush costs
# the agent's thread a GIL release (see _insert).
CHUNK_ROWS = (512, 128, 32, 8)
PAD_PARAMS = 1024
WRITER_CACHE_KIB = 256
# SQLite's bound-parameter limit before 3.32 (999); newer builds say theirs.
_DEFAULT_MAX_VARIABLES = 999


def _insert(conn: sqlite3.Cursor, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """``executemany`` as a few multi-row INSERTs: 1-4 statements per table for most flushes.

    sqlite3 releases the GIL around every ``sqlite3_step`` and every reset,
    and ``executemany`` steps once per row. In a worker whose task thread
    keeps the GIL busy, the agent's thread then waits to get it back after
    every release (the host's thread takes it back first, again and again),
    and every GIL release of the host's thread meanwhile wakes the waiting
    agent for nothing: a futex wake, an inter-processor interrupt, a VM exit
    on a VM. ``sql`` is an ``INSERT ... VALUES (?, ...)`` with one row's
    placeholders; the first value of a row is never None (it is the row's
    owner id): padding rows are told apart by it.
    """
    if not rows:
        return
    head, _, one = sql.rpartition("VALUES")
    one = one.strip()
    head = head.rstrip()
    width = len(rows[0])
    limit = _max_variables(conn) // max(1, width)
    sizes = [size for size in CHUNK_ROWS if size <= limit] or [max(1, limit)]
    i = 0
    while i < len(rows):
        left = len(rows) - i
        padded = next((size for size in reversed(sizes) if size >= left), None)
        if padded is not None and (padded - left) * width <= PAD_PARAMS:
            size = padded
        else:
            size = next((size for size in sizes if size <= left), sizes[-1])
        chunk = rows[i:i + size]
        params = [v for row in chunk for v in row]
        if len(chunk) < size:
            params.extend([None] * ((size - len(chunk)) * width))
        values = ", ".join([one] * size)
        conn.execute("%s SELECT * FROM (VALUES %s) WHERE column1 IS NOT NULL" % (head, values), params)
        i += len(chunk)


def _max_variables(conn: sqlite3.Cursor) -> int:
    getlimit = getattr(conn.connection, "getlimit", None)  # Python 3.11+
    if getlimit is None:
        return _DEFAULT_MAX_VARIABLES
    try:
        return int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    except (sqlite3.Error, AttributeError):
        return _DEFAULT_MAX_VARIABLES

# Connections inherited across fork are parked here so their finalizer never
# runs in the child; at most one per fork generation, so this stays tiny.
_ABANDONED: list[sqlite3.Connection] = []


def _python_version() -> str:
    import sys

    return "%d.%d.%d" % sys.version_info[:3]
