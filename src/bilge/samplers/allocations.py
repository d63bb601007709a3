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

Right before tracing stops, objects of the types the agent saw growing are
sampled from the heap and asked where they were born
(``tracemalloc.get_object_traceback``): only objects born inside the window
have a trace, so this joins a growing type to the line that makes it.

Snapshots are taken at task boundaries so that no task's temporaries are in
flight. The window is bounded in time (``max_seconds``), in tracemalloc's
own memory (``max_memory``) and in how often it may reopen (the agent's
business). Only file names, line numbers, counts and sizes leave this
module; snapshots are dropped as soon as they are compared.
"""

from __future__ import annotations

import gc
import os
import sys
import sysconfig
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Collection, Iterable

from bilge.model import AllocationSite, TypeSite
from bilge.model import AllocationWindow as AllocationWindowData
from bilge.samplers.census import type_name

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
        join_seconds: time the type-to-site join may take at snapshot B.
    """

    def __init__(self, warmup_tasks: int = 2, window_tasks: int = 24, max_seconds: float = 60.0,
                 max_memory: int = 32 * 1024 * 1024, frames: int = 6, max_sites: int = 10,
                 join_seconds: float = 0.1) -> None:
        self.warmup_tasks = warmup_tasks
        self.window_tasks = window_tasks
        self.max_seconds = max_seconds
        self.max_memory = max_memory
        self.frames = frames
        self.max_sites = max_sites
        self.join_seconds = join_seconds
        self._types: frozenset[str] = frozenset()
        self._type_sites: tuple[TypeSite, ...] = ()
        self._traceback_of: Callable[[object], tuple[tuple[str, int], ...] | None] | None = None
        self._lock = threading.Lock()
        self._tasks = 0
        self._opened = 0.0
        self._first: tracemalloc.Snapshot | None = None
        self._second: tracemalloc.Snapshot | None = None
        self._peak = 0
        self.active = False

    def open(self, types: Collection[str] = (), began: float | None = None) -> bool:
        """Start tracing; False (and nothing done) if the host already traces.

        ``types`` are the growing types whose objects are joined to sites;
        ``began`` is when the caller started preparing the window (its start).
        """
        if tracemalloc.is_tracing():
            return False
        # Prepared before tracing starts: importing ctypes inside the window
        # would make ctypes' own objects look born there.
        self._traceback_of = _object_traceback()
        tracemalloc.start(self.frames)
        self._opened = time.time() if began is None else began
        self._tasks = 0
        self._types = frozenset(types)
        self._type_sites = ()
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
                try:
                    self._second = tracemalloc.take_snapshot()
                    if self._types:
                        self._type_sites = type_sites(self._types, self.join_seconds, self._traceback_of)
                finally:
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
        joined, self._type_sites = (self._type_sites if sites else ()), ()
        if stop and tracemalloc.is_tracing():
            tracemalloc.stop()
        # The window spans all its work, comparing the snapshots included:
        # the analysis takes the memory change across it out of the series.
        return WindowResult(started=self._opened, ended=time.time(), tasks=tasks, status=status,
                            peak_memory=self._peak, sites=sites, type_sites=joined)


# Objects sampled per type for the join: enough for a clear majority site.
JOIN_SAMPLE = 200


def type_sites(types: Collection[str], max_seconds: float,
               traceback_of: Callable[[object], tuple[tuple[str, int], ...] | None] | None = None,
               sample: int = JOIN_SAMPLE) -> tuple[TypeSite, ...]:
    """The allocation site of sampled window-born objects of each type, most common first.

    Must run while tracemalloc traces (``traceback_of`` prepared before it
    started, see ``_object_traceback``). Walks the gc-tracked heap youngest
    generation first (leaked objects are recent), within ``max_seconds``;
    keeps only names and line numbers.
    """
    deadline = time.perf_counter() + max_seconds
    traceback_of = traceback_of or _object_traceback()
    wanted: dict[type, str | None] = {}
    sites: dict[str, Counter[tuple[str, int]]] = {}
    sampled: Counter[str] = Counter()
    full: set[str] = set()
    for generation in range(len(gc.get_count())):
        objects = gc.get_objects(generation)
        try:
            for i, obj in enumerate(objects):
                if not i & 1023 and time.perf_counter() > deadline:
                    break
                cls = type(obj)
                name = wanted.get(cls, "")
                if name == "":
                    full_name = type_name(cls)
                    name = wanted[cls] = full_name if full_name in types else None
                if name is None or name in full:
                    continue
                frames = traceback_of(obj)
                if not frames:
                    continue
                site = _born_at(frames)
                if site is None:
                    continue
                sites.setdefault(name, Counter())[site] += 1
                sampled[name] += 1
                if sampled[name] >= sample:
                    full.add(name)
        finally:
            # Not one reference to the host's objects outlives the join.
            obj = None
            del objects
        if time.perf_counter() > deadline or len(full) == len(types):
            break
    out = []
    for name, counter in sites.items():
        for (file, line), count in counter.most_common(2):
            out.append(TypeSite(type=name, file=file, line=line, count=count, sampled=sampled[name],
                                owner=owner_of(file)))
    return tuple(sorted(out, key=lambda s: (s.type, -s.count)))


def _born_at(frames: Iterable[tuple[str, int]]) -> tuple[str, int] | None:
    """The innermost frame in the user's code, else the innermost that is not bilge's (most recent first)."""
    fallback = None
    for file, line in frames:
        if file in _IGNORED or file.startswith(_OWN_PREFIXES):
            continue
        if owner_of(file) == "user":
            return file, line
        fallback = fallback or (file, line)
    return fallback


_OWN_PREFIXES = tuple(pattern.rstrip("*") for pattern in OWN_PATTERNS)
# Py_TPFLAGS_HAVE_GC and, on 3.11, Py_TPFLAGS_MANAGED_DICT (Include/object.h).
_HAVE_GC = 1 << 14
_MANAGED_DICT = 1 << 4
_PREHEADER = 16  # PyGC_Head, or 3.11's two managed-dict pointers: two words each


def _object_traceback() -> Callable[[object], tuple[tuple[str, int], ...] | None]:
    """A function giving an object's allocation traceback, most recent frame first.

    ``tracemalloc.get_object_traceback`` on CPython 3.11 looks up the wrong
    address for instances of classes with a managed ``__dict__`` (every plain
    class): their memory block starts two words before the GC header, and
    only 3.12 accounts for that. On 3.11 the C API that takes the block's
    address is called instead (ctypes, stdlib), with the right offset.
    """
    def public(obj: object) -> tuple[tuple[str, int], ...] | None:
        tb = tracemalloc.get_object_traceback(obj)
        return None if tb is None else tuple((f.filename, f.lineno) for f in reversed(tb))

    if sys.version_info[:2] != (3, 11) or sys.implementation.name != "cpython":
        return public
    try:
        import ctypes

        lookup = ctypes.pythonapi._PyTraceMalloc_GetTraceback
        lookup.restype = ctypes.py_object
        lookup.argtypes = [ctypes.c_uint, ctypes.c_size_t]
    except Exception:  # noqa: BLE001 - an embedded or stripped interpreter: the public API it is
        return public

    def managed(obj: object) -> tuple[tuple[str, int], ...] | None:
        flags = type(obj).__flags__
        if not flags & _MANAGED_DICT:
            return public(obj)
        frames = lookup(0, id(obj) - _PREHEADER - (_PREHEADER if flags & _HAVE_GC else 0))
        return tuple((str(f), int(n)) for f, n in frames) if frames else None

    return managed


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


GENERATED = "generated"


def owner_of(filename: str) -> str:
    """``user``, ``stdlib``, ``generated`` or ``third-party:<distribution> <version>`` for a source file."""
    cached = _owner_cache.get(filename)
    if cached is not None:
        return cached
    owner = _classify(filename)
    if len(_owner_cache) < 4096:
        _owner_cache[filename] = owner
    return owner


def _classify(filename: str) -> str:
    if filename.startswith("<"):
        # Code made at run time (dataclass/attrs/ORM-generated __init__,
        # exec'd strings) has no line a user could open: the frame that
        # called it is the answer.
        return "stdlib" if filename.startswith("<frozen") else GENERATED
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


def prepare_window() -> None:
    """Create, once and before any window, what naming sites needs for good.

    The installed-distributions table (third-party ownership) and ctypes
    (the 3.11 object-traceback fix) stay alive once made; made outside the
    window and before its counts, they are neither traced nor taken for growth.
    """
    _distribution("")
    _object_traceback()


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


