"""What `bilge top` shows: every worker process on this host, live.

Processes under bilge answer through their agent's control socket
(``status``: memory, tasks, the agent's own judgement, what the explain
stage found); Celery workers without bilge are read from ``/proc`` (RSS,
USS, descriptors). :class:`Watcher` polls both and keeps each process's
recent readings, from which the rates are computed; the CLI only renders.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil

from bilge import live
from bilge.errors import AgentUnreachableError
from bilge.samplers.suspicion import MIN_TASK_READINGS
from bilge.store import schema

# Readings kept per process (one per poll): the rates and the sparkline span them.
HISTORY = 120
# Seconds a status request may take before the process is shown as not answering.
STATUS_TIMEOUT = 2.0
# Rates are shown once the readings span this long (per hour) or this many
# tasks (per task): extrapolated from less, RSS's page-sized steps are noise.
MIN_SPAN_SECONDS = 10.0
MIN_SPAN_TASKS = 50

GROWING, STEADY, WARMING_UP, NO_AGENT, NOT_ANSWERING = "growing", "steady", "warming-up", "no agent", "not answering"


@dataclass(frozen=True)
class ProcessRow:
    """One process as `bilge top` shows it; rates are None until two readings exist."""

    pid: int
    role: str
    rss: int | None
    uss: int | None
    fds: int | None
    tasks: int | None
    tasks_per_second: float | None
    growth_per_task: float | None
    growth_per_hour: float | None
    verdict: str
    growing_type: str | None
    recycle: str | None
    data_dir: str | None
    rss_history: tuple[int, ...]
    findings: tuple[str, ...]
    command: str


@dataclass(frozen=True)
class TaskGrowth:
    """Memory left behind per call of one task name, over the calls the store holds for a process."""

    name: str
    calls: int
    rss_per_call: float | None
    blocks_per_call: float | None


@dataclass(frozen=True)
class _Reading:
    t: float
    rss: int | None
    tasks: int | None


class Watcher:
    """Polls the live agents (or those of one data dir) and the Celery workers without bilge.

    Args:
        data_dir: only the agents recording into this data dir (and no bare workers).
        clock: monotonic seconds.
        bare: also list Celery worker processes that run no agent.
    """

    def __init__(self, data_dir: str | None = None, clock: Callable[[], float] = time.monotonic,
                 bare: bool = True) -> None:
        self._data_dir = os.path.realpath(data_dir) if data_dir else None
        self._clock = clock
        self._bare = bare and data_dir is None
        self._history: dict[int, deque[_Reading]] = {}

    def poll(self) -> list[ProcessRow]:
        """Every process now, pool parents before their children."""
        rows: list[ProcessRow] = []
        answered: set[int] = set()
        for agent in live.discover():
            row = self._agent_row(agent)
            if row is not None:
                rows.append(row)
                answered.add(agent.pid)
        if self._bare:
            rows += self._bare_rows(answered)
        alive = {row.pid for row in rows}
        for pid in [pid for pid in self._history if pid not in alive]:
            del self._history[pid]
        return rows

    def _agent_row(self, agent: live.LiveAgent) -> ProcessRow | None:
        try:
            status = live.request(agent, "status", timeout=STATUS_TIMEOUT)
        except AgentUnreachableError as exc:
            if self._data_dir is not None:
                return None
            return self._row(agent.pid, "?", None, None, None, None, NOT_ANSWERING, None, None, None,
                             (str(exc),), _command(agent.pid))
        data_dir = str(status.get("data_dir") or "")
        if self._data_dir is not None and os.path.realpath(data_dir) != self._data_dir:
            return None
        tasks, role = status.get("tasks_done"), str(status.get("role") or "?")
        suspect = status.get("suspect") or {}
        explain = status.get("explain") or {}
        # The agent's live judgement: a suspicion ring firing now, or the
        # explain stage having escalated on evidence (rings re-base and can
        # fall quiet while the process still leaks).
        if suspect.get("rss") or suspect.get("heap") or explain.get("windows_opened") or status.get("holders"):
            verdict = GROWING
        elif role == "celery-main" or (tasks or 0) >= MIN_TASK_READINGS:
            verdict = STEADY
        else:
            verdict = WARMING_UP
        growing = status.get("growing_types") or []
        findings = tuple(["held: %s ← %s" % (h["type"], h["path"]) for h in status.get("holders") or []]
                         + ["allocated: %s:%s" % (s["file"], s["line"]) for s in status.get("sites") or []])
        return self._row(agent.pid, role, status.get("rss"), status.get("uss"), status.get("fds"), tasks, verdict,
                         growing[0] if growing else None, status.get("recycle"), data_dir, findings,
                         _command(agent.pid))

    def _bare_rows(self, answered: set[int]) -> list[ProcessRow]:
        rows = []
        for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if proc.info["pid"] in answered or not _is_celery_worker(cmdline):
                continue
            try:
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    try:
                        uss: int | None = proc.memory_full_info().uss
                    except (psutil.AccessDenied, AttributeError):
                        uss = None
                    fds = proc.num_fds()
                    parent = proc.parent()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            child = parent is not None and _is_celery_worker(parent.cmdline() if parent else [])
            pid = proc.info["pid"]
            hint = "not under bilge: `bilge attach %d` (or restart it under `bilge run`)" % pid
            rows.append(self._row(pid, "celery-child" if child else "celery-main", rss, uss, fds, None, NO_AGENT,
                                  None, None, None, (hint,), " ".join(cmdline)))
        return rows

    def _row(self, pid: int, role: str, rss: int | None, uss: int | None, fds: int | None, tasks: int | None,
             verdict: str, growing: str | None, recycle: str | None, data_dir: str | None,
             findings: tuple[str, ...], command: str) -> ProcessRow:
        history = self._history.setdefault(pid, deque(maxlen=HISTORY))
        history.append(_Reading(self._clock(), rss, tasks))
        per_task = per_hour = rate = None
        first, last = history[0], history[-1]
        if len(history) >= 2 and last.t > first.t:
            span = last.t - first.t
            if first.tasks is not None and last.tasks is not None:
                rate = (last.tasks - first.tasks) / span
                if first.rss is not None and last.rss is not None and last.tasks - first.tasks >= MIN_SPAN_TASKS:
                    per_task = (last.rss - first.rss) / (last.tasks - first.tasks)
            if first.rss is not None and last.rss is not None and span >= MIN_SPAN_SECONDS:
                per_hour = (last.rss - first.rss) / span * 3600
        return ProcessRow(pid, role, rss, uss, fds, tasks, rate, per_task, per_hour, verdict, growing, recycle,
                          data_dir, tuple(r.rss for r in history if r.rss is not None), findings, command)


SORTS: dict[str, Callable[[ProcessRow], tuple[float, ...]]] = {
    "rss": lambda r: (-(r.rss or 0),),
    # Per task first: it is there as soon as tasks ran; per hour needs a span of readings.
    "growth": lambda r: (-(r.growth_per_task if r.growth_per_task is not None else float("-inf")),
                         -(r.growth_per_hour if r.growth_per_hour is not None else float("-inf"))),
    "tasks": lambda r: (-(r.tasks_per_second or 0.0),),
    "pid": lambda r: (float(r.pid),),
}


def ordered(rows: Sequence[ProcessRow], sort: str) -> list[ProcessRow]:
    """Rows by ``sort`` (a key of :data:`SORTS`), ties by pid."""
    key = SORTS[sort]
    return sorted(rows, key=lambda r: (*key(r), r.pid))


def task_growth(data_dir: str, pid: int, limit: int = 5) -> list[TaskGrowth]:
    """Per task name of process ``pid`` (its latest run): calls and memory left per call, most first.

    Read-only and bounded to the latest 20,000 task rows; an unreadable
    store gives an empty list (the live view must not fail on it).
    """
    path = os.path.join(data_dir, schema.DB_FILENAME)
    try:
        conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=1.0)
    except sqlite3.Error:
        return []
    try:
        row = conn.execute("SELECT id FROM processes WHERE pid = ? ORDER BY id DESC LIMIT 1", (pid,)).fetchone()
        if row is None:
            return []
        rows = conn.execute(
            "SELECT name, COUNT(*), AVG(rss_after - rss_before), AVG(blocks_after - blocks_before) FROM "
            "(SELECT * FROM tasks WHERE process_id = ? ORDER BY seq DESC LIMIT 20000) GROUP BY name",
            (row[0],)).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    found = [TaskGrowth(name, calls, rss, blocks) for name, calls, rss, blocks in rows]
    return sorted(found, key=lambda g: -(g.blocks_per_call or 0.0))[:limit]


def _is_celery_worker(cmdline: Sequence[str]) -> bool:
    words = [os.path.basename(word) for word in cmdline]
    if "bilge" in words:
        return False  # `bilge run -- celery ... worker`: the wrapper, not a worker
    return "worker" in words and any(w == "celery" or w.startswith("celery") for w in words)


def _command(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""
