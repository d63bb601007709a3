"""What is still readable of a damaged store, copied into a fresh one that reads like any other.

A store truncated, or overwritten in part, while workers wrote to it (a full
disk, a bad copy, a careless ``dd``) fails SQLite's reads at the first
damaged page. The file is copied (a truncated copy's header is mended to
the pages it has: SQLite refuses a file shorter than its header says), then
every table is read on its own, row by row, until its first damaged page;
the rows read go into a new store with the current schema, which
``sqlite.load_run`` then reads as usual. The result says how far each table
got, so the report can say what it is built from. Nothing is written to
the damaged file.

``sqlite3.Error`` stays inside this module, like everywhere in ``bilge.store``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
from dataclasses import dataclass

from bilge.errors import StoreError
from bilge.store import schema

BATCH = 500


@dataclass(frozen=True)
class TableSalvage:
    table: str
    rows: int
    stopped: str | None  # why reading stopped before the end (None: the whole table was read)


@dataclass(frozen=True)
class Salvage:
    tables: tuple[TableSalvage, ...]

    def summary(self) -> str:
        """One line: the rows read of the tables that matter to a report, and where reading stopped."""
        shown = [t for t in self.tables if t.table in ("runs", "processes", "samples", "tasks", "censuses")]
        return ", ".join("%s %d%s" % (t.table, t.rows, " (then damaged)" if t.stopped else "") for t in shown)


def salvage(damaged: str, into: str) -> Salvage:
    """Copy the readable rows of the store at ``damaged`` into a new store at ``into``.

    Raises:
        StoreError: not even one run could be read (the file's first pages, with its schema, are gone).
    """
    copy = into + ".damaged"
    try:
        _copy_readable(damaged, copy)
        source = sqlite3.connect(copy, timeout=schema.BUSY_TIMEOUT_MS / 1000)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError("the store %s cannot be copied to salvage it: %s" % (damaged, exc)) from exc
    target = schema.connect(into)
    try:
        schema.create(target)
        found = tuple(_copy(source, target, table) for table in schema.TABLES if table != "meta")
    finally:
        source.close()
        target.close()
    runs = next(t for t in found if t.table == "runs")
    if runs.rows == 0:
        raise StoreError("nothing could be read from the damaged store %s (%s): keep it for inspection and start "
                         "new runs in an empty data dir" % (damaged, runs.stopped or "no run in it"))
    return Salvage(found)


def _copy_readable(damaged: str, copy: str) -> None:
    """Copy the file (and its WAL) to ``copy``; when the file is shorter than its header says (truncated), the
    copy's header says the pages it has, or SQLite refuses to read even its first pages."""
    shutil.copyfile(damaged, copy)
    if os.path.exists(damaged + "-wal"):
        shutil.copyfile(damaged + "-wal", copy + "-wal")
    size = os.path.getsize(copy)
    with open(copy, "r+b") as f:
        header = f.read(100)
        if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
            return  # no header to mend: reading fails on its own, and says so
        (page_size,) = struct.unpack(">H", header[16:18])
        page_size = 65536 if page_size == 1 else page_size
        (pages,) = struct.unpack(">I", header[28:32])
        if page_size and pages * page_size > size:
            f.seek(28)
            f.write(struct.pack(">I", size // page_size))


def _copy(source: sqlite3.Connection, target: sqlite3.Connection, table: str) -> TableSalvage:
    try:
        have = {row[1] for row in source.execute("PRAGMA table_info(%s)" % table)}
        columns = [row[1] for row in target.execute("PRAGMA table_info(%s)" % table) if row[1] in have]
        if not columns:
            return TableSalvage(table, 0, "not in the store")
        cursor = source.execute("SELECT %s FROM %s" % (", ".join(columns), table))
    except sqlite3.DatabaseError as exc:
        return TableSalvage(table, 0, str(exc))
    insert = "INSERT OR IGNORE INTO %s (%s) VALUES (%s)" % (table, ", ".join(columns), ", ".join("?" * len(columns)))
    rows, stopped, batch = 0, None, []
    target.execute("BEGIN")
    while True:
        try:
            row = cursor.fetchone()
        except sqlite3.DatabaseError as exc:
            stopped = str(exc)  # a damaged page: what came before it is kept
            break
        if row is None:
            break
        batch.append(row)
        if len(batch) == BATCH:
            target.executemany(insert, batch)
            rows, batch = rows + len(batch), []
    target.executemany(insert, batch)
    rows += len(batch)
    target.execute("COMMIT")
    return TableSalvage(table, rows, stopped)
