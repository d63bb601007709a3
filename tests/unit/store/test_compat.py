"""Stores written by released bilge versions: read them, or refuse them by version, never half-work.

bilge 0.1.0 (see CHANGELOG.md) wrote schema version 1 with the tables below.
A later bilge must either still read and extend such a store, or refuse it
with the "written by another bilge version" message, so users know to
report it with that version or start a new data dir.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bilge.errors import StoreError
from bilge.store.sqlite import load_run, start_run
from bilge.store.writer import StoreWriter

# The 0.1.0 tables (indexes left out: they do not change what can be read).
DDL_0_1_0 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (id INTEGER PRIMARY KEY, started REAL NOT NULL, ended REAL, command TEXT NOT NULL,
                   exit_code INTEGER, hostname TEXT);
CREATE TABLE processes (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, pid INTEGER NOT NULL,
                        ppid INTEGER NOT NULL, parent_id INTEGER, role TEXT NOT NULL, started REAL NOT NULL,
                        ended REAL, argv TEXT, python TEXT);
CREATE TABLE samples (process_id INTEGER NOT NULL, t REAL NOT NULL, rss INTEGER, uss INTEGER, pss INTEGER,
                      heap_blocks INTEGER, gc_gen0 INTEGER, gc_gen1 INTEGER, gc_gen2 INTEGER,
                      gc_collections INTEGER, gc_collected INTEGER, fds INTEGER, threads INTEGER,
                      tasks_done INTEGER);
CREATE TABLE tasks (process_id INTEGER NOT NULL, seq INTEGER NOT NULL, name TEXT NOT NULL, started REAL NOT NULL,
                    ended REAL NOT NULL, rss_before INTEGER, rss_after INTEGER, blocks_before INTEGER,
                    blocks_after INTEGER, failed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE censuses (id INTEGER PRIMARY KEY, process_id INTEGER NOT NULL, t REAL NOT NULL,
                       tasks_done INTEGER NOT NULL, objects INTEGER NOT NULL, duration REAL NOT NULL);
CREATE TABLE census_types (census_id INTEGER NOT NULL, type TEXT NOT NULL, count INTEGER NOT NULL,
                           bytes INTEGER NOT NULL);
CREATE TABLE agent_errors (process_id INTEGER, t REAL NOT NULL, source TEXT NOT NULL, message TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1'), ('application', 'bilge');
INSERT INTO runs VALUES (1, 100.0, 200.0, 'celery -A shop worker', 0, 'box');
INSERT INTO processes VALUES (1, 1, 4242, 1, NULL, 'celery-child', 100.0, 200.0, 'celery', '3.11.7');
INSERT INTO tasks VALUES (1, 1, 'shop.search', 101.0, 101.5, 4096, 8192, 100, 164, 0);
"""


@pytest.fixture
def store_0_1_0(tmp_path: Path) -> str:
    """A data dir holding a store as bilge 0.1.0 left it: one run, one process, one task."""
    conn = sqlite3.connect(tmp_path / "bilge.db")
    conn.executescript(DDL_0_1_0)
    conn.close()
    return str(tmp_path)


def test_report_on_a_0_1_0_store_reads_it_or_refuses_it_by_version(store_0_1_0: str) -> None:
    """load_run on a 0.1.0 store returns its task, or raises the "another bilge version" StoreError."""
    try:
        data = load_run(store_0_1_0)
    except StoreError as exc:
        assert "written by another bilge version" in str(exc), str(exc)
    else:
        (proc,) = data.processes
        assert [(t.seq, t.name, t.gc_runs) for t in proc.tasks] == [(1, "shop.search", None)]


def test_new_run_into_a_0_1_0_data_dir_can_write_or_is_refused(store_0_1_0: str) -> None:
    """start_run on a 0.1.0 store either refuses it by version or yields a store the agent can write tasks to."""
    try:
        run_id = start_run(store_0_1_0, "celery -A shop worker")
    except StoreError as exc:
        assert "written by another bilge version" in str(exc), str(exc)
        return
    writer = StoreWriter(store_0_1_0, run_id)
    try:
        process_id = writer.register_process(77, 1, None, "main", "celery")
        row = (1, "shop.search", 1.0, 1.5, 4096, 8192, 100, 164, 0, 0, None, None)
        writer.flush(process_id, [], [row], [], None, [])
    finally:
        writer.close()
    (proc,) = load_run(store_0_1_0).processes
    assert [t.name for t in proc.tasks] == ["shop.search"]
