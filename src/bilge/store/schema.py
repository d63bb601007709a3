"""The SQLite schema shared by the agent (writer) and the analysis (reader).

Stdlib-only: imported inside users' worker processes.

WAL mode lets every worker process write while a report reads, and a process
killed with SIGKILL mid-transaction leaves only an uncommitted WAL tail that
SQLite discards on the next open.
"""

from __future__ import annotations

import re
import sqlite3

SCHEMA_VERSION = 1
DB_FILENAME = "bilge.db"
# Long enough to ride out another process's flush, short enough that a stuck
# writer elsewhere cannot stall a worker's agent thread for long.
BUSY_TIMEOUT_MS = 5000

DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    ended REAL,
    command TEXT NOT NULL,
    exit_code INTEGER,
    hostname TEXT,
    diagnosed REAL
);
CREATE TABLE IF NOT EXISTS processes (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    ppid INTEGER NOT NULL,
    parent_id INTEGER,
    role TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    argv TEXT,
    python TEXT,
    exit_code INTEGER,
    celery_max_memory_kb INTEGER,
    suspect INTEGER,
    pool_index INTEGER
);
CREATE TABLE IF NOT EXISTS samples (
    process_id INTEGER NOT NULL,
    t REAL NOT NULL,
    rss INTEGER,
    uss INTEGER,
    pss INTEGER,
    heap_blocks INTEGER,
    gc_gen0 INTEGER,
    gc_gen1 INTEGER,
    gc_gen2 INTEGER,
    gc_collections INTEGER,
    gc_collected INTEGER,
    fds INTEGER,
    threads INTEGER,
    tasks_done INTEGER,
    malloc_used INTEGER,
    malloc_free INTEGER,
    gc_garbage INTEGER,
    gc_enabled INTEGER,
    gc_frozen INTEGER,
    gc_full INTEGER,
    heap_after_full INTEGER,
    floor_task INTEGER
);
CREATE INDEX IF NOT EXISTS samples_by_process ON samples (process_id, t);
CREATE TABLE IF NOT EXISTS tasks (
    process_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL NOT NULL,
    rss_before INTEGER,
    rss_after INTEGER,
    blocks_before INTEGER,
    blocks_after INTEGER,
    failed INTEGER NOT NULL DEFAULT 0,
    gc_runs INTEGER,
    items_before INTEGER,
    items_after INTEGER
);
CREATE INDEX IF NOT EXISTS tasks_by_process ON tasks (process_id, seq);
CREATE TABLE IF NOT EXISTS censuses (
    id INTEGER PRIMARY KEY,
    process_id INTEGER NOT NULL,
    t REAL NOT NULL,
    tasks_done INTEGER NOT NULL,
    objects INTEGER NOT NULL,
    duration REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS census_types (
    census_id INTEGER NOT NULL,
    type TEXT NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS census_types_by_census ON census_types (census_id);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY,
    process_id INTEGER NOT NULL,
    started REAL NOT NULL,
    ended REAL NOT NULL,
    tasks INTEGER NOT NULL,
    status TEXT NOT NULL,
    peak_memory INTEGER NOT NULL,
    tracer TEXT NOT NULL DEFAULT 'tracemalloc'
);
CREATE TABLE IF NOT EXISTS sites (
    window_id INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    file TEXT NOT NULL,
    line INTEGER NOT NULL,
    size INTEGER NOT NULL,
    count INTEGER NOT NULL,
    owner TEXT NOT NULL,
    traceback TEXT NOT NULL,
    task TEXT,
    native INTEGER
);
CREATE TABLE IF NOT EXISTS type_sites (
    window_id INTEGER NOT NULL,
    type TEXT NOT NULL,
    file TEXT NOT NULL,
    line INTEGER NOT NULL,
    count INTEGER NOT NULL,
    sampled INTEGER NOT NULL,
    owner TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fd_targets (
    process_id INTEGER NOT NULL,
    t REAL NOT NULL,
    tasks_done INTEGER NOT NULL,
    target TEXT NOT NULL,
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS container_lengths (
    process_id INTEGER NOT NULL,
    t REAL NOT NULL,
    tasks_done INTEGER NOT NULL,
    duration REAL NOT NULL,
    path TEXT NOT NULL,
    container_type TEXT NOT NULL,
    length INTEGER NOT NULL,
    element_type TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS recycles (
    process_id INTEGER NOT NULL,
    t REAL NOT NULL,
    reason TEXT NOT NULL,
    rss INTEGER,
    tasks_done INTEGER NOT NULL,
    status TEXT NOT NULL,
    snapshot TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS holders (
    process_id INTEGER NOT NULL,
    t REAL NOT NULL,
    started REAL NOT NULL,
    type TEXT NOT NULL,
    path TEXT NOT NULL,
    root_kind TEXT NOT NULL,
    container_type TEXT,
    container_len INTEGER,
    targets INTEGER NOT NULL,
    sample_values TEXT
);
CREATE TABLE IF NOT EXISTS snapshots (
    process_id INTEGER NOT NULL,
    t REAL NOT NULL,
    tasks_done INTEGER NOT NULL,
    seconds REAL NOT NULL,
    summary TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stage_costs (
    process_id INTEGER NOT NULL,
    stage TEXT NOT NULL,
    cpu_seconds REAL NOT NULL,
    slowed_seconds REAL NOT NULL,
    runs INTEGER NOT NULL,
    PRIMARY KEY (process_id, stage)
);
CREATE TABLE IF NOT EXISTS stage_runs (
    process_id INTEGER NOT NULL,
    stage TEXT NOT NULL,
    reason TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL NOT NULL,
    cpu_seconds REAL NOT NULL,
    slowed_seconds REAL NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS stage_runs_by_process ON stage_runs (process_id, started);
CREATE TABLE IF NOT EXISTS budget_state (
    process_id INTEGER PRIMARY KEY,
    t REAL NOT NULL,
    cpu_left REAL NOT NULL,
    cpu_limit REAL NOT NULL,
    cpu_period REAL NOT NULL,
    slowed_left REAL NOT NULL,
    slowed_limit REAL NOT NULL,
    slowed_period REAL NOT NULL
);
-- The garbage collector's counters per generation (gc.get_stats()), as of
-- the process's last flush: replaced, not appended.
CREATE TABLE IF NOT EXISTS gc_stats (
    process_id INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    collections INTEGER NOT NULL,
    collected INTEGER NOT NULL,
    uncollectable INTEGER NOT NULL,
    PRIMARY KEY (process_id, generation)
);
-- The findings of a run's latest diagnosis, recorded by the `bilge run`
-- supervisor (never by the agent), so fleet queries and the next run can
-- read them without diagnosing: `first_seen` is when this run first found
-- the signature, `processes` how many live processes had it then.
CREATE TABLE IF NOT EXISTS findings (
    run_id INTEGER NOT NULL,
    signature TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    kind TEXT,
    task TEXT,
    type TEXT,
    holder TEXT,
    location TEXT,
    bytes_per_call REAL,
    processes INTEGER NOT NULL,
    PRIMARY KEY (run_id, signature)
);
CREATE TABLE IF NOT EXISTS agent_errors (
    process_id INTEGER,
    t REAL NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL
);
"""


TABLES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", DDL))


def connect(path: str) -> sqlite3.Connection:
    """Open the database with the settings every bilge connection needs.

    Args:
        path: the database file.

    Returns:
        An autocommit connection (transactions are explicit) in WAL mode.
    """
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=%d" % BUSY_TIMEOUT_MS)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable against process crashes in WAL mode; only a power
    # loss can drop the last transactions, which is fine for telemetry.
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def create(conn: sqlite3.Connection) -> None:
    """Create the tables (idempotent), add columns missing from older stores, stamp the version."""
    conn.executescript(DDL)
    migrate(conn)
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
    )
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('application', 'bilge')")


def outdated(conn: sqlite3.Connection) -> bool:
    """Whether an existing store lacks tables or columns of the current DDL."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return bool(set(TABLES) - have) or bool(missing_columns(conn))


def missing_columns(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(table, column, declared type) of DDL columns an existing store lacks.

    Schema version 1 only ever grows by nullable columns and new tables, so an
    older store is brought up to date by adding them: nothing is rewritten
    and nothing lost. The reference is the DDL itself, built in memory.
    """
    reference = sqlite3.connect(":memory:")
    try:
        reference.executescript(DDL)
        wanted = {table: reference.execute("PRAGMA table_info(%s)" % table).fetchall()
                  for (table,) in reference.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        reference.close()
    missing = []
    for table, columns in wanted.items():
        have = {row[1] for row in conn.execute("PRAGMA table_info(%s)" % table)}
        if not have:
            continue  # a missing table is created by the DDL
        missing += [(table, row[1], row[2]) for row in columns if row[1] not in have]
    return missing


def migrate(conn: sqlite3.Connection) -> None:
    """Bring an older version-1 store up to the current DDL (idempotent)."""
    for table, column, declared in missing_columns(conn):
        conn.execute("ALTER TABLE %s ADD COLUMN %s %s" % (table, column, declared))
