"""The read side of the store, and data-directory set-up for ``bilge run``.

``sqlite3.Error`` becomes ``StoreError`` here and nowhere else.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from bilge.errors import DataDirError, EmptyStoreError, StoreError
from bilge.model import (
    STAGES,
    AgentCost,
    AllocationSite,
    AllocationWindow,
    BudgetState,
    Census,
    ContainerScan,
    FdSnapshot,
    Finding,
    Holder,
    ProcessData,
    ProcessInfo,
    Recycle,
    RunData,
    RunInfo,
    Sample,
    Snapshot,
    StageCost,
    StageRun,
    TaskRecord,
    TypeSite,
)
from bilge.samplers import wallclock
from bilge.store import schema
from bilge.store.salvage import Salvage, salvage

# Files SQLite itself keeps next to the database.
_OWN_FILES = {schema.DB_FILENAME, schema.DB_FILENAME + "-wal", schema.DB_FILENAME + "-shm"}


def db_path(data_dir: str) -> str:
    """Where the database of ``data_dir`` lives."""
    return os.path.join(data_dir, schema.DB_FILENAME)


@contextmanager
def _translated(what: str, path: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError("%s %s failed: %s. %s" % (what, path, exc, _advice(exc))) from exc


# What a store error means, by SQLite's error name (3.11+) or, before, by its message; and what to do about it.
_KINDS = (
    ("full", ("SQLITE_FULL", "disk is full"), "The data dir's filesystem is full: free space there."),
    ("read-only", ("SQLITE_READONLY", "readonly"), "The data dir is read-only: make it writable again."),
    ("locked", ("SQLITE_BUSY", "SQLITE_LOCKED", "locked"),
     "Another process holds the store locked: let it finish, or stop it."),
    ("unopenable", ("SQLITE_CANTOPEN", "unable to open"),
     "The store cannot be opened: was the data dir deleted, moved or made unreadable? Check --data-dir."),
    ("damaged", ("SQLITE_CORRUPT", "SQLITE_NOTADB", "malformed", "not a database"),
     "The file is damaged (truncated or overwritten?) or not a bilge store: keep it for inspection and start new "
     "runs in an empty data dir."),
)


def _kind(exc: BaseException) -> str | None:
    said = "%s %s" % (getattr(exc, "sqlite_errorname", ""), exc)
    return next((kind for kind, marks, _ in _KINDS if any(mark in said for mark in marks)), None)


def _advice(exc: sqlite3.Error) -> str:
    kind = _kind(exc)
    return next((advice for name, _, advice in _KINDS if name == kind),
                "The file is not a readable bilge store; point --data-dir at a bilge data directory, or start a new "
                "run in an empty one.")


def damaged(exc: StoreError) -> bool:
    """Whether ``exc`` says the store file itself is damaged (worth salvaging what is readable)."""
    return exc.__cause__ is not None and _kind(exc.__cause__) == "damaged"


def load_salvaged(data_dir: str, run_id: int | None = None) -> tuple[RunData, Salvage]:
    """The run as far as a damaged store can still be read (``salvage``), and how far each table got.

    Raises:
        StoreError: nothing of a run could be read.
    """
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="bilge-salvage-")
    try:
        found = salvage(db_path(data_dir), db_path(folder))
        return load_run(folder, run_id), found
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def prepare_data_dir(data_dir: str) -> str:
    """Create or validate a data directory for a new run.

    Args:
        data_dir: the directory; created if missing.

    Returns:
        The absolute path.

    Raises:
        DataDirError: it is not a directory, not writable, or holds files
            that are not a bilge store.
    """
    path = os.path.abspath(data_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataDirError("data dir %s is a file, not a directory; pass a directory path" % path)
    try:
        # Only its owner may read a new data dir: the store holds command lines, task names and code paths.
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise DataDirError("cannot create data dir %s: %s; choose a writable location" % (path, exc.strerror)) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError("data dir %s is not writable; choose a directory you can write to" % path)
    foreign = sorted(set(os.listdir(path)) - _OWN_FILES)
    if foreign and schema.DB_FILENAME not in os.listdir(path):
        shown = ", ".join(foreign[:3]) + (" …" if len(foreign) > 3 else "")
        raise DataDirError(
            "data dir %s holds other files (%s), not a bilge store; use an empty directory or an existing "
            "bilge data dir" % (path, shown)
        )
    return path


def start_run(data_dir: str, command: str) -> int:
    """Create the schema if needed and record a new run; returns its id."""
    path = db_path(data_dir)
    with _translated("creating store", path):
        _create_private(path)
        conn = schema.connect(path)
        try:
            _check_foreign(conn, path)
            schema.create(conn)
            _check_version(conn, path)
            cur = conn.execute(
                "INSERT INTO runs (started, command, hostname) VALUES (?, ?, ?)",
                (wallclock.now(), command, socket.gethostname()),
            )
            return int(cur.lastrowid or 0)
        finally:
            conn.close()


def _create_private(path: str) -> None:
    """Create the store file 0600 if it does not exist (SQLite gives its -wal and -shm files the same mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise DataDirError("cannot create the store %s: %s; choose a writable data dir" % (path, exc.strerror)) from exc


def end_run(data_dir: str, run_id: int, exit_code: int) -> None:
    """Stamp the run's end and exit code."""
    path = db_path(data_dir)
    with _translated("updating store", path):
        conn = schema.connect(path)
        try:
            conn.execute("UPDATE runs SET ended = ?, exit_code = ? WHERE id = ?", (wallclock.now(), exit_code,
                                                                                    run_id))
        finally:
            conn.close()


def record_findings(data_dir: str, run_id: int, findings: Sequence[Finding], at: float | None = None) -> None:
    """Record a diagnosis of run ``run_id``: its signed findings, and that it was diagnosed.

    A signature found again keeps its ``first_seen``; ``processes`` and the
    rest follow the latest diagnosis.
    """
    now = time.time() if at is None else at
    path = db_path(data_dir)
    with _translated("recording findings in", path):
        conn = schema.connect(path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for f in findings:
                if f.signature is None:
                    continue
                conn.execute(
                    "INSERT INTO findings (run_id, signature, first_seen, last_seen, kind, task, type, holder, "
                    "location, bytes_per_call, processes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (run_id, signature) DO UPDATE SET last_seen = excluded.last_seen, "
                    "bytes_per_call = excluded.bytes_per_call, processes = excluded.processes, "
                    "holder = excluded.holder, location = excluded.location",
                    (run_id, f.signature, now, now, f.kind, f.task, f.type, f.holder, f.location, f.bytes_per_call,
                     len(f.pids)))
            conn.execute("UPDATE runs SET diagnosed = ? WHERE id = ?", (now, run_id))
            conn.execute("COMMIT")
        finally:
            conn.close()


def _check_foreign(conn: sqlite3.Connection, path: str) -> None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and "meta" not in tables:
        raise StoreError("%s is an SQLite database but not a bilge store; use another data dir" % path)


def _check_version(conn: sqlite3.Connection, path: str) -> None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or row[0] != str(schema.SCHEMA_VERSION):
        raise StoreError(
            "%s was written by another bilge version (schema %s, this bilge reads %d); report it with that "
            "version or start a new run in an empty data dir" % (path, row and row[0], schema.SCHEMA_VERSION)
        )


def load_run(data_dir: str, run_id: int | None = None) -> RunData:
    """Read one run (the latest by default) with all its processes.

    Raises:
        DataDirError: no store in ``data_dir``.
        StoreError: the store is corrupt, foreign or of another version.
        EmptyStoreError: it holds no run (or not the one asked for).
    """
    path = db_path(data_dir)
    if not os.path.isdir(data_dir):
        raise DataDirError("data dir %s does not exist; pass the --data-dir used with `bilge run`" % data_dir)
    if not os.path.exists(path):
        raise DataDirError(
            "no bilge store in %s (expected %s); pass the --data-dir used with `bilge run`" % (data_dir, path)
        )
    with _translated("reading store", path):
        # A read-write open lets SQLite recover the WAL left by a process
        # killed mid-write; the report itself never writes.
        conn = sqlite3.connect(path, timeout=schema.BUSY_TIMEOUT_MS / 1000)
        try:
            _check_foreign(conn, path)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                raise EmptyStoreError("store %s is empty; run a worker with `bilge run` first" % path)
            _check_version(conn, path)
            if schema.outdated(conn):
                # A store written by an earlier 0.x: add the new, empty columns
                # and tables so it reads like a current one.
                schema.create(conn)
            return _read(conn, path, run_id)
        finally:
            conn.close()


def _read(conn: sqlite3.Connection, path: str, run_id: int | None) -> RunData:
    if run_id is None:
        row = conn.execute("SELECT id, started, ended, command, exit_code, hostname FROM runs "
                           "ORDER BY id DESC LIMIT 1").fetchone()
    else:
        row = conn.execute("SELECT id, started, ended, command, exit_code, hostname FROM runs WHERE id = ?",
                           (run_id,)).fetchone()
    if row is None:
        which = "run %d" % run_id if run_id is not None else "any run"
        raise EmptyStoreError("store %s holds no record of %s; run a worker with `bilge run` first" % (path, which))
    run = RunInfo(*row)
    procs = [ProcessInfo(*r) for r in conn.execute(
        "SELECT id, pid, ppid, parent_id, role, started, ended, COALESCE(argv, ''), exit_code, celery_max_memory_kb, "
        "pool_index FROM processes "
        "WHERE run_id = ? ORDER BY id", (run.id,))]
    samples: dict[int, list[Sample]] = defaultdict(list)
    for r in conn.execute(
        "SELECT s.process_id, s.t, s.rss, s.uss, s.pss, s.heap_blocks, s.gc_collections, s.fds, s.threads, "
        "s.tasks_done, s.malloc_used, s.malloc_free, s.gc_garbage, s.gc_enabled, s.gc_frozen, s.gc_full, "
        "s.heap_after_full, s.floor_task "
        "FROM samples s JOIN processes p ON p.id = s.process_id WHERE p.run_id = ? "
        "ORDER BY s.process_id, s.t", (run.id,)
    ):
        samples[r[0]].append(Sample(*r[1:]))
    tasks: dict[int, list[TaskRecord]] = defaultdict(list)
    for r in conn.execute(
        "SELECT t.process_id, t.seq, t.name, t.started, t.ended, t.rss_before, t.rss_after, t.blocks_before, "
        "t.blocks_after, t.failed, t.gc_runs, t.items_before, t.items_after FROM tasks t JOIN processes p "
        "ON p.id = t.process_id WHERE p.run_id = ? "
        "ORDER BY t.process_id, t.seq", (run.id,)
    ):
        tasks[r[0]].append(TaskRecord(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], bool(r[9]), r[10], r[11], r[12]))
    censuses = _read_censuses(conn, run.id)
    windows = _read_windows(conn, run.id)
    holders: dict[int, list[Holder]] = defaultdict(list)
    for row in conn.execute(
        "SELECT h.process_id, h.t, h.started, h.type, h.path, h.root_kind, h.container_type, h.container_len, "
        "h.targets, h.sample_values FROM holders h JOIN processes p ON p.id = h.process_id WHERE p.run_id = ? "
        "ORDER BY h.t", (run.id,)
    ):
        pid, t, started, type_, path, root_kind, container, length, targets, shown = row
        holders[pid].append(Holder(t, started, type_, path, root_kind, container, length, targets,
                                   tuple(shown.split("\n")) if shown else ()))
    fd_rows: dict[int, dict[tuple[float, int], list[tuple[str, int]]]] = defaultdict(dict)
    for pid, t, done, target, count in conn.execute(
        "SELECT f.process_id, f.t, f.tasks_done, f.target, f.count FROM fd_targets f JOIN processes p "
        "ON p.id = f.process_id WHERE p.run_id = ? ORDER BY f.t, f.rowid", (run.id,)
    ):
        fd_rows[pid].setdefault((t, done), []).append((target, count))
    container_rows: dict[int, dict[tuple[float, int, float], list[tuple[str, str, int, str]]]] = defaultdict(dict)
    for pid, t, done, seconds, path, container, length, element in conn.execute(
        "SELECT c.process_id, c.t, c.tasks_done, c.duration, c.path, c.container_type, c.length, c.element_type "
        "FROM container_lengths c JOIN processes p ON p.id = c.process_id WHERE p.run_id = ? "
        "ORDER BY c.t, c.rowid", (run.id,)
    ):
        container_rows[pid].setdefault((t, done, seconds), []).append((path, container, length, element))
    recycles: dict[int, list[Recycle]] = defaultdict(list)
    for row in conn.execute(
        "SELECT r.process_id, p.pid, r.t, r.reason, r.rss, r.tasks_done, r.status, r.snapshot FROM recycles r "
        "JOIN processes p ON p.id = r.process_id WHERE p.run_id = ? ORDER BY r.t", (run.id,)
    ):
        recycles[row[0]].append(Recycle(*row))
    errors: dict[int, list[str]] = defaultdict(list)
    for pid, source, message in conn.execute(
        "SELECT e.process_id, e.source, e.message FROM agent_errors e JOIN processes p ON p.id = e.process_id "
        "WHERE p.run_id = ? ORDER BY e.t", (run.id,)
    ):
        errors[pid].append("%s: %s" % (source, message))
    snapshots: dict[int, list[Snapshot]] = defaultdict(list)
    for pid, t, done, seconds, summary in conn.execute(
        "SELECT s.process_id, s.t, s.tasks_done, s.seconds, s.summary FROM snapshots s JOIN processes p "
        "ON p.id = s.process_id WHERE p.run_id = ? ORDER BY s.t", (run.id,)
    ):
        snapshots[pid].append(Snapshot(t, done, seconds, _summary(summary)))
    costs = _read_costs(conn, run.id)
    gc_rows: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for pid, collections, collected, uncollectable in conn.execute(
        "SELECT g.process_id, g.collections, g.collected, g.uncollectable FROM gc_stats g JOIN processes p "
        "ON p.id = g.process_id WHERE p.run_id = ? ORDER BY g.process_id, g.generation", (run.id,)
    ):
        gc_rows[pid].append((collections, collected, uncollectable))
    earlier = dict(conn.execute(
        "SELECT signature, MIN(first_seen) FROM findings WHERE run_id < ? GROUP BY signature", (run.id,)))
    (diagnosed_before,) = conn.execute("SELECT COUNT(*) FROM runs WHERE id < ? AND diagnosed IS NOT NULL",
                                       (run.id,)).fetchone()
    return RunData(run=run, earlier_findings=earlier if diagnosed_before else None, processes=tuple(
        ProcessData(info=p, samples=tuple(samples[p.id]), tasks=tuple(tasks[p.id]),
                    censuses=tuple(censuses.get(p.id, ())), errors=tuple(errors[p.id]),
                    windows=tuple(windows.get(p.id, ())), holders=tuple(holders[p.id]),
                    recycles=tuple(recycles[p.id]), cost=costs.get(p.id, AgentCost()),
                    snapshots=tuple(snapshots[p.id]), gc_generations=tuple(gc_rows[p.id]),
                    fd_snapshots=tuple(FdSnapshot(t, done, tuple(rows)) for (t, done), rows in fd_rows[p.id].items()),
                    container_scans=tuple(ContainerScan(t, done, tuple(rows), seconds)
                                          for (t, done, seconds), rows in container_rows[p.id].items()))
        for p in procs
    ))


def _summary(text: str) -> dict[str, Any]:
    """A snapshot's stored summary (a damaged one reads as empty rather than failing the report)."""
    try:
        summary = json.loads(text)
    except ValueError:
        return {}
    return summary if isinstance(summary, dict) else {}


def _read_windows(conn: sqlite3.Connection, run_id: int) -> dict[int, list[AllocationWindow]]:
    sites: dict[int, list[AllocationSite]] = defaultdict(list)
    for wid, file, line, size, count, owner, tb, task, native in conn.execute(
        "SELECT s.window_id, s.file, s.line, s.size, s.count, s.owner, s.traceback, s.task, s.native FROM sites s "
        "JOIN windows w "
        "ON w.id = s.window_id JOIN processes p ON p.id = w.process_id WHERE p.run_id = ? ORDER BY s.window_id, "
        "s.rank", (run_id,)
    ):
        sites[wid].append(AllocationSite(file, line, size, count, owner, tuple(tb.split("\n")) if tb else (), task,
                                         native or 0))
    joined: dict[int, list[TypeSite]] = defaultdict(list)
    for row in conn.execute(
        "SELECT t.window_id, t.type, t.file, t.line, t.count, t.sampled, t.owner FROM type_sites t JOIN windows w "
        "ON w.id = t.window_id JOIN processes p ON p.id = w.process_id WHERE p.run_id = ? ORDER BY t.rowid", (run_id,)
    ):
        joined[row[0]].append(TypeSite(*row[1:]))
    out: dict[int, list[AllocationWindow]] = defaultdict(list)
    for wid, process_id, started, ended, tasks, status, peak, tracer in conn.execute(
        "SELECT w.id, w.process_id, w.started, w.ended, w.tasks, w.status, w.peak_memory, w.tracer FROM windows w "
        "JOIN processes p ON p.id = w.process_id WHERE p.run_id = ? ORDER BY w.id", (run_id,)
    ):
        out[process_id].append(AllocationWindow(started, ended, tasks, status, peak, tuple(sites[wid]),
                                                tuple(joined[wid]), tracer))
    return out


_COST_TABLES = {"stage_costs", "stage_runs", "budget_state"}


def _read_costs(conn: sqlite3.Connection, run_id: int) -> dict[int, AgentCost]:
    """The agent's own cost per process id; none from a store written before bilge measured it."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not _COST_TABLES <= tables:
        return {}
    stages: dict[int, list[StageCost]] = defaultdict(list)
    for row in conn.execute(
        "SELECT c.process_id, c.stage, c.cpu_seconds, c.slowed_seconds, c.runs FROM stage_costs c "
        "JOIN processes p ON p.id = c.process_id WHERE p.run_id = ? ORDER BY c.process_id", (run_id,)
    ):
        stages[row[0]].append(StageCost(*row[1:]))
    runs: dict[int, list[StageRun]] = defaultdict(list)
    for row in conn.execute(
        "SELECT r.process_id, r.stage, r.reason, r.started, r.ended, r.cpu_seconds, r.slowed_seconds, r.outcome "
        "FROM stage_runs r JOIN processes p ON p.id = r.process_id WHERE p.run_id = ? "
        "ORDER BY r.process_id, r.started, r.rowid", (run_id,)
    ):
        runs[row[0]].append(StageRun(*row[1:]))
    budgets: dict[int, BudgetState] = {}
    for row in conn.execute(
        "SELECT b.process_id, b.t, b.cpu_left, b.cpu_limit, b.cpu_period, b.slowed_left, b.slowed_limit, "
        "b.slowed_period FROM budget_state b JOIN processes p ON p.id = b.process_id WHERE p.run_id = ?", (run_id,)
    ):
        budgets[row[0]] = BudgetState(*row[1:])
    return {pid: AgentCost(stages=tuple(sorted(stages[pid], key=_stage_order)), runs=tuple(runs[pid]),
                           budget=budgets.get(pid))
            for pid in set(stages) | set(runs) | set(budgets)}


def _stage_order(cost: StageCost) -> tuple[int, str]:
    # The agent's pipeline order; a stage this bilge does not know goes last.
    return (STAGES.index(cost.stage) if cost.stage in STAGES else len(STAGES), cost.stage)


def _read_censuses(conn: sqlite3.Connection, run_id: int) -> dict[int, list[Census]]:
    heads = conn.execute(
        "SELECT c.id, c.process_id, c.t, c.tasks_done, c.objects, c.duration FROM censuses c "
        "JOIN processes p ON p.id = c.process_id WHERE p.run_id = ? ORDER BY c.process_id, c.t", (run_id,)
    ).fetchall()
    types: dict[int, dict[str, tuple[int, int]]] = defaultdict(dict)
    for cid, name, count, size in conn.execute(
        "SELECT ct.census_id, ct.type, ct.count, ct.bytes FROM census_types ct JOIN censuses c ON c.id = "
        "ct.census_id JOIN processes p ON p.id = c.process_id WHERE p.run_id = ?", (run_id,)
    ):
        types[cid][name] = (count, size)
    out: dict[int, list[Census]] = defaultdict(list)
    for cid, process_id, t, tasks_done, objects, duration in heads:
        out[process_id].append(Census(t=t, tasks_done=tasks_done, objects=objects, duration=duration,
                                      types=types.get(cid, {})))
    return out
