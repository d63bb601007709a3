"""The ``bilge run`` supervisor's view of its run: read, diagnosed and recorded at bounded rates.

The supervisor is the one process of a run that may afford a diagnosis
(the agent inside the worker never diagnoses). It records each diagnosis's
signed findings in the store (``store.record_findings``), so a fleet query
answers from a table instead of diagnosing in the worker's main process,
and the next run in the same data dir can tell a new leak from a known one.

It diagnoses when something asks (``/metrics`` and ``/health``), while a
live process is suspect (the agent's own trend test fired), when an agent
stored new explain evidence (a holder search, an allocation window: the
recorded holder of a finding is the latest evidence's, not the first
search's), every ``QUIET_EVERY`` seconds otherwise, never more often than ``DIAGNOSE_EVERY``
seconds or ``COST_RATIO`` times what the last diagnosis took, and once
more when the command has exited. A diagnosis that fails is reported once on stderr
and never stops the supervisor or the worker.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from bilge.agent.recycle import cgroup_memory_limit
from bilge.errors import BilgeError
from bilge.model import Diagnosis, RunData
from bilge.store import schema
from bilge.store import sqlite as store

READ_EVERY = 5.0
# A diagnosis is at least this old before it is redone, and at least
# COST_RATIO times as old as it took: the supervisor shares the host with
# the worker, so reading and diagnosing a long run (seconds, after days)
# costs it at most 1 % of a core.
DIAGNOSE_EVERY = 10.0
COST_RATIO = 100.0
# How often the recorder looks for a suspect process (one indexed query),
# and how old its last diagnosis may grow when none is: the diagnosis sees
# slow leaks the agent's live test does not (yet).
CHECK_EVERY = 10.0
QUIET_EVERY = 300.0
# How long the supervisor may spend on the final diagnosis once the worker exited.
FINAL_TIMEOUT = 20.0


class RunView:
    """One run of a data dir (the latest by default), re-read and re-diagnosed at bounded rates."""

    def __init__(self, data_dir: str, run_id: int | None = None, hard_limit: int | None = None,
                 horizon: float = 3600.0, record: bool = True) -> None:
        self.data_dir = data_dir
        self.run_id = run_id
        # The limit the agent recycles against, which /health, /metrics and `bilge check` forecast against too: the
        # one given, else the cgroup's (the supervisor shares the worker's cgroup).
        self.hard_limit = hard_limit or cgroup_memory_limit()
        self.horizon = horizon
        self.record = record
        self._lock = threading.Lock()
        self._run: tuple[float, RunData] | None = None
        self._diagnosis: tuple[float, Diagnosis] | None = None
        self._every = DIAGNOSE_EVERY
        self.diagnosed_at = 0.0  # wall-clock time of the latest diagnosis
        self.read_at = 0.0  # ... and of the latest reading of the store
        self._failed: set[str] = set()

    def run(self) -> RunData:
        with self._lock:
            now = time.monotonic()
            if self._run is None or now - self._run[0] > READ_EVERY:
                self._run = (now, store.load_run(self.data_dir, self.run_id))
                self.read_at = time.time()
            return self._run[1]

    def diagnosis(self, fresh: bool = False) -> Diagnosis:
        from bilge.analysis import diagnose

        if fresh:
            with self._lock:
                self._run = None
        run = self.run()
        with self._lock:
            now = time.monotonic()
            if fresh or self._diagnosis is None or now - self._diagnosis[0] > self._every:
                self._diagnosis = (now, diagnose(run))
                self.diagnosed_at = time.time()
                if self.record:
                    self._record(run, self._diagnosis[1])
                self._every = max(DIAGNOSE_EVERY, COST_RATIO * (time.monotonic() - now))
            return self._diagnosis[1]

    def age(self) -> float:
        """Seconds since the last diagnosis (infinite before the first)."""
        with self._lock:
            return time.monotonic() - self._diagnosis[0] if self._diagnosis is not None else float("inf")

    def health(self) -> dict[str, Any]:
        from bilge.analysis.health import assess

        return asdict(assess(self.run(), self.diagnosis(), self.hard_limit, self.horizon))

    def _record(self, run: RunData, d: Diagnosis) -> None:
        try:
            store.record_findings(self.data_dir, run.run.id, d.findings)
        except BilgeError as exc:
            self.warn_once("record", "cannot record findings: %s" % exc)

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._failed:
            self._failed.add(key)
            sys.stderr.write("bilge: warning: %s\n" % message)


def suspect(data_dir: str, run_id: int) -> bool:
    """Whether a live process of the run is suspect now (one indexed query, no diagnosis)."""
    return news(data_dir, run_id)[0]


def news(data_dir: str, run_id: int) -> tuple[bool, tuple[int, int]]:
    """Whether a live process of the run is suspect now, and a mark of the explain evidence stored so far (the
    newest holder path's and window's row ids: it changes when an agent stores a search or a window). Three
    indexed queries, no diagnosis."""
    conn = sqlite3.connect("file:%s?mode=ro" % store.db_path(data_dir), uri=True,
                           timeout=schema.BUSY_TIMEOUT_MS / 1000)
    try:
        row = conn.execute("SELECT 1 FROM processes WHERE run_id = ? AND ended IS NULL AND suspect = 1 LIMIT 1",
                           (run_id,)).fetchone()
        (holders,) = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM holders").fetchone()
        (windows,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM windows").fetchone()
    finally:
        conn.close()
    return row is not None, (holders, windows)


class Recorder:
    """Records the run's findings while it runs (when a process is suspect or new evidence came) and once at its
    end."""

    def __init__(self, view: RunView, run_id: int, every: float = CHECK_EVERY) -> None:
        self.view = view
        self.run_id = run_id
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bilge-recorder", daemon=True)
        # The evidence mark (``news``) the latest diagnosis saw, and the one read since.
        self._evidence: tuple[int, int] | None = None
        self._read: tuple[int, int] | None = None
        self._read_at = 0.0

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            # The view redoes its diagnosis only once the last one is old enough.
            self._diagnose(self._due)

    def _due(self) -> bool:
        self._read_at = time.time()
        suspect_now, self._read = news(self.view.data_dir, self.run_id)
        # A finding recorded right after a process's first holder search names what that one search saw; the
        # next search (or window) corrects it, and a fleet query reads the record, not a fresh diagnosis.
        return self.view.age() >= QUIET_EVERY or suspect_now or self._read != self._evidence

    def close(self, timeout: float = FINAL_TIMEOUT) -> None:
        """Stop, then diagnose the finished run once, for at most ``timeout`` seconds.

        The worker has exited by now, but a service manager waits for this
        process too (systemd's stop timeout is 90 s by default): a diagnosis
        of days of data that takes longer is abandoned (its transaction never
        commits), and the findings recorded while the run ran stand.
        """
        self._stop.set()
        final = threading.Thread(target=self._final, name="bilge-final-diagnosis", daemon=True)
        try:
            if self._thread.is_alive():
                self._thread.join()
            final.start()
            final.join(timeout)
        except KeyboardInterrupt:
            return  # a second Ctrl-C while the run is diagnosed: the findings go unrecorded, nothing else
        if final.is_alive():
            self.view.warn_once("final", "the run's final diagnosis took over %.0f s and was abandoned; "
                                "`bilge report` diagnoses it" % timeout)

    def _final(self) -> None:
        self._diagnose(lambda: True, fresh=True)

    def _diagnose(self, wanted: Callable[[], bool], fresh: bool = False) -> None:
        try:
            if wanted():
                before = self.view.diagnosed_at
                self.view.diagnosis(fresh=fresh)
                if self.view.diagnosed_at != before and self.view.read_at >= self._read_at:
                    # Only a diagnosis of data read after the mark has seen that evidence.
                    self._evidence = self._read
        except (BilgeError, sqlite3.Error) as exc:
            self.view.warn_once("diagnose", "cannot diagnose the run for its findings: %s" % exc)
        except Exception as exc:  # noqa: BLE001 - a bug in the analysis must not take the supervisor down
            self.view.warn_once("diagnose", "diagnosing the run failed (%s: %s); `bilge report` will say more"
                                % (type(exc).__name__, exc))
