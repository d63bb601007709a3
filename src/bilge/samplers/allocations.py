"""The allocation window: which lines allocated the memory that stays.

Stdlib-only. Opened by the agent only once its process is suspect, because
tracemalloc always on costs 3-8x (notes/attach-and-overhead.md, B1). The
window is a small state machine:

1. ``open``: start tracemalloc (unless the host already traces: then the
   window is refused and the host's tracing is left alone);
2. after ``warmup_tasks`` more tasks, at a task boundary: snapshot A;
3. after ``window_tasks`` more tasks, at a task boundary: snapshot B, and
   tracing stops right there, in the task's thread (every traced task costs
   ~10x, so not one more task is traced than needed);
4. in the agent thread: B − A grouped by traceback gives the sites whose
   allocations survived (count and bytes).

Snapshots are taken at task boundaries so that no task's temporaries are in
flight. The window is bounded in time (``max_seconds``), in tracemalloc's
own memory (``max_memory``) and in how often it may reopen (the agent's
business). Only file names, line numbers, counts and sizes leave this
module; snapshots are dropped as soon as they are compared.
"""

from __future__ import annotations

import os
import sysconfig
import threading
import time
import tracemalloc
from collections.abc import Iterable

from bilge.model import AllocationSite
from bilge.model import AllocationWindow as AllocationWindowData

OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bilge's code that runs inside workers: its allocations are never a site.
# The demo app (bilge/demo) stands for user code and is traced like it.
OWN_PATTERNS = tuple(os.path.join(OWN_DIR, part) for part in (
    "agent/*", "samplers/*", "store/*", "model.py", "__init__.py", "_bootstrap/*"))
DEMO_DIR = os.path.join(OWN_DIR, "demo")
_IGNORED = (tracemalloc.__file__, "<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>",
            "<unknown>")


# The window's results are the model's own dataclasses (stdlib-only, at the
# bottom of the import graph), so the store writes them as they are.
Site = AllocationSite
WindowResult = AllocationWindowData


class AllocationWindow:
    """One bounded tracemalloc window.

    Args:
        warmup_tasks: tasks between opening and snapshot A.
        window_tasks: tasks between snapshots A and B.
        max_seconds: the window closes (without result) after this long.
        max_memory: tracemalloc's own memory limit in bytes.
        frames: traceback depth kept per allocation.
        max_sites: how many sites to report.
    """

    def __init__(self, warmup_tasks: int = 2, window_tasks: int = 24, max_seconds: float = 60.0,
                 max_memory: int = 32 * 1024 * 1024, frames: int = 6, max_sites: int = 10) -> None:
        self.warmup_tasks = warmup_tasks
        self.window_tasks = window_tasks
        self.max_seconds = max_seconds
        self.max_memory = max_memory
        self.frames = frames
        self.max_sites = max_sites
        self._lock = threading.Lock()
        self._tasks = 0
        self._opened = 0.0
        self._first: tracemalloc.Snapshot | None = None
        self._second: tracemalloc.Snapshot | None = None
        self._peak = 0
        self.active = False

    def open(self) -> bool:
        """Start tracing; False (and nothing done) if the host already traces."""
        if tracemalloc.is_tracing():
            return False
        tracemalloc.start(self.frames)
        self._opened = time.time()
        self._tasks = 0
        self.active = True
        return True

    def on_task_finished(self) -> None:
        """Called at every task boundary in the task's thread; takes the snapshots."""
        if not self.active:
            return
        with self._lock:
            if self._second is not None:
                return
            self._tasks += 1
            if self._first is None and self._tasks >= self.warmup_tasks:
                self._first = tracemalloc.take_snapshot()
            elif self._second is None and self._tasks >= self.warmup_tasks + self.window_tasks:
                self._second = tracemalloc.take_snapshot()
                tracemalloc.stop()

    def poll(self) -> WindowResult | None:
        """Called from the agent thread; returns the result once the window closes."""
        if not self.active:
            return None
        if tracemalloc.is_tracing():
            self._peak = max(self._peak, tracemalloc.get_tracemalloc_memory())
        with self._lock:
            first, second = self._first, self._second
        if second is not None and first is not None:
            # Tracing already stopped at snapshot B; whatever traces now is
            # not ours to stop.
            return self._close("done", _surviving_sites(first, second, self.max_sites), stop=False)
        if not tracemalloc.is_tracing():
            return self._close("stopped by the host", ())
        if self._peak > self.max_memory:
            return self._close("tracemalloc memory over %d MiB" % (self.max_memory >> 20), ())
        if time.time() - self._opened > self.max_seconds:
            return self._close("too few tasks within %.0f s" % self.max_seconds, ())
        return None

    def abort(self) -> None:
        """Stop tracing now (used on agent shutdown and after errors)."""
        if self.active:
            self._close("aborted", ())

    def _close(self, status: str, sites: tuple[Site, ...], stop: bool = True) -> WindowResult:
        self.active = False
        with self._lock:
            stop = stop and self._second is None
            self._first = self._second = None
        tasks = self._tasks
        if stop and tracemalloc.is_tracing():
            tracemalloc.stop()
        return WindowResult(started=self._opened, ended=time.time(), tasks=tasks, status=status,
                            peak_memory=self._peak, sites=sites)


def _surviving_sites(first: tracemalloc.Snapshot, second: tracemalloc.Snapshot, limit: int) -> tuple[Site, ...]:
    filters = [tracemalloc.Filter(False, pattern) for pattern in _IGNORED] + [
        tracemalloc.Filter(False, pattern) for pattern in OWN_PATTERNS]
    diff = second.filter_traces(filters).compare_to(first.filter_traces(filters), "traceback")
    sites = []
    for stat in diff:
        if stat.size_diff <= 0 or stat.count_diff <= 0:
            continue
        frames = list(stat.traceback)  # oldest first (Python >= 3.7)
        site = _innermost_user_frame(frames) or frames[-1]
        sites.append(Site(file=site.filename, line=site.lineno, size=stat.size_diff, count=stat.count_diff,
                          owner=owner_of(site.filename),
                          traceback=tuple("%s:%d" % (f.filename, f.lineno) for f in reversed(frames))))
        if len(sites) >= limit * 3:
            break
    return tuple(_merge_same_line(sites)[:limit])


def _innermost_user_frame(frames: list[tracemalloc.Frame]) -> tracemalloc.Frame | None:
    for frame in reversed(frames):
        if owner_of(frame.filename) == "user":
            return frame
    return None


def _merge_same_line(sites: list[Site]) -> list[Site]:
    """Tracebacks that differ only below the chosen frame are one site."""
    return sorted(merge_sites(sites), key=lambda s: -s.size)


def merge_sites(sites: Iterable[Site]) -> list[Site]:
    """Sites merged by (file, line), sizes and counts added, first traceback kept."""
    merged: dict[tuple[str, int], Site] = {}
    for s in sites:
        key = (s.file, s.line)
        m = merged.get(key)
        merged[key] = s if m is None else Site(m.file, m.line, m.size + s.size, m.count + s.count, m.owner,
                                              m.traceback)
    return list(merged.values())


_STDLIB = tuple(os.path.realpath(p) + os.sep for p in {sysconfig.get_paths()["stdlib"],
                                                        sysconfig.get_paths()["platstdlib"]})
_SITE = ("site-packages", "dist-packages")
_owner_cache: dict[str, str] = {}


def owner_of(filename: str) -> str:
    """``user``, ``stdlib``, or ``third-party:<distribution> <version>`` for a source file."""
    cached = _owner_cache.get(filename)
    if cached is not None:
        return cached
    owner = _classify(filename)
    if len(_owner_cache) < 4096:
        _owner_cache[filename] = owner
    return owner


def _classify(filename: str) -> str:
    if filename.startswith("<"):
        return "stdlib" if filename.startswith("<frozen") else "user"
    path = os.path.realpath(filename)
    if path.startswith(DEMO_DIR + os.sep):
        return "user"
    parts = path.split(os.sep)
    for marker in _SITE:
        if marker in parts:
            top = parts[parts.index(marker) + 1].split(".")[0] if parts.index(marker) + 1 < len(parts) else ""
            return "third-party:" + _distribution(top)
    if path.startswith(_STDLIB):
        return "stdlib"
    if path.startswith(OWN_DIR + os.sep):
        return "third-party:bilge"
    return "user"


_packages: dict[str, list[str]] | None = None


def _distribution(top_level: str) -> str:
    global _packages
    try:
        from importlib import metadata

        if _packages is None:
            # One scan of the installed distributions per process.
            _packages = {k: list(v) for k, v in metadata.packages_distributions().items()}
        names = _packages.get(top_level) or [top_level]
        version = metadata.version(names[0])
        return "%s %s" % (names[0], version)
    except Exception:  # noqa: BLE001 - ownership is a nicety; never fail the window for it
        return top_level or "unknown"


