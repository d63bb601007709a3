"""What allocation sites are and how they are named. Stdlib-only.

The sampled window (``samplers.sampled_allocations``) traces single tasks;
this module holds what turns tracemalloc's traces into bilge's data:

- ``type_sites``: objects of the types the agent saw growing are sampled
  from the heap while tracing is on and asked where they were born
  (``tracemalloc.get_object_traceback``; on 3.11 through the C API with the
  right block offset, see ``object_traceback``): only objects born while
  tracing have a trace, so this joins a growing type to the line that makes it;
- ``surviving_sites`` and ``innermost_user_frame``: grouping traces into
  sites, named by the innermost frame in the user's code;
- ``owner_of``: who owns a source file (``user``, ``stdlib``, ``generated``,
  ``third-party:<dist> <version>``).

Only file names, line numbers, counts and sizes leave this module.
"""

from __future__ import annotations

import fnmatch
import gc
import os
import sys
import sysconfig
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Collection, Iterable

from bilge.model import AllocationSite, TypeSite
from bilge.samplers.census import type_name

OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bilge's code that runs inside workers: its allocations are never a site.
# The demo app (bilge/demo) stands for user code and is traced like it.
OWN_PATTERNS = tuple(os.path.join(OWN_DIR, part) for part in (
    "agent/*", "samplers/*", "store/*", "model.py", "__init__.py", "_bootstrap/*"))
# bilge's code that calls the user's code in a check (``bilge.guard``, the
# pytest plugin): on the stack of every traced allocation there, so never a
# reason to drop a trace, but never the site that names one either.
_DRIVER_PREFIXES = tuple(os.path.join(OWN_DIR, part) for part in ("guard.py", "integrations" + os.sep))
DEMO_DIR = os.path.join(OWN_DIR, "demo")
_IGNORED = (tracemalloc.__file__, "<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>",
            "<unknown>")
# Snapshot filters: tracemalloc's own and bilge's allocations are never a site.
# Any frame of bilge's or tracemalloc's own: the agent thread compares
# snapshots (and caches what that compiles) while a later episode traces.
IGNORED_FILTERS = [tracemalloc.Filter(False, pattern, all_frames=True) for pattern in _IGNORED + OWN_PATTERNS]
# The same as plain prefixes and names, for checking grouped tracebacks
# without fnmatch on every trace.
_OWN_PREFIXES = tuple(pattern.rstrip("*") for pattern in OWN_PATTERNS)


def is_own(filename: str) -> bool:
    """True for tracemalloc's and bilge's own files (never an allocation site)."""
    return filename in _IGNORED or filename.startswith(_OWN_PREFIXES)
Site = AllocationSite


# Objects sampled per type for the join: enough for a clear majority site.
JOIN_SAMPLE = 200


def type_sites(types: Collection[str], max_seconds: float,
               traceback_of: Callable[[object], tuple[tuple[str, int], ...] | None] | None = None,
               sample: int = JOIN_SAMPLE, generations: int | None = None) -> tuple[TypeSite, ...]:
    """The allocation site of sampled window-born objects of each type, most common first.

    Must run while tracemalloc traces (``traceback_of`` prepared before it
    started, see ``_object_traceback``). Walks the gc-tracked heap youngest
    generation first (leaked objects are recent), within ``max_seconds``;
    keeps only names and line numbers. ``generations`` limits the walk to
    the youngest ones (an episode's objects are young; the old generation of
    a big heap is what makes a walk slow).
    """
    deadline = time.perf_counter() + max_seconds
    traceback_of = traceback_of or object_traceback()
    wanted: dict[type, str | None] = {}
    sites: dict[str, Counter[tuple[str, int]]] = {}
    sampled: Counter[str] = Counter()
    full: set[str] = set()
    for generation in range(min(len(gc.get_count()), generations or len(gc.get_count()))):
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
        if file in _IGNORED or file.startswith(_OWN_PREFIXES) or file.startswith(_DRIVER_PREFIXES):
            continue
        if owner_of(file) == "user":
            return file, line
        fallback = fallback or (file, line)
    return fallback

# Py_TPFLAGS_HAVE_GC and, on 3.11, Py_TPFLAGS_MANAGED_DICT (Include/object.h).
_HAVE_GC = 1 << 14
_MANAGED_DICT = 1 << 4
_PREHEADER = 16  # PyGC_Head, or 3.11's two managed-dict pointers: two words each


def object_traceback() -> Callable[[object], tuple[tuple[str, int], ...] | None]:
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


def surviving_sites(first: tracemalloc.Snapshot, second: tracemalloc.Snapshot, limit: int) -> tuple[Site, ...]:
    """Sites whose traced bytes grew from ``first`` to ``second``, user code named first, at most ``limit``."""
    diff = second.filter_traces(IGNORED_FILTERS).compare_to(first.filter_traces(IGNORED_FILTERS), "traceback")
    sites = []
    for stat in diff:
        if stat.size_diff <= 0 or stat.count_diff <= 0:
            continue
        frames = list(stat.traceback)  # oldest first (Python >= 3.7)
        site = innermost_user_frame(frames) or frames[-1]
        sites.append(Site(file=site.filename, line=site.lineno, size=stat.size_diff, count=stat.count_diff,
                          owner=owner_of(site.filename),
                          traceback=tuple("%s:%d" % (f.filename, f.lineno) for f in reversed(frames))))
        if len(sites) >= limit * 3:
            break
    return tuple(_merge_same_line(sites)[:limit])


def innermost_user_frame(frames: list[tracemalloc.Frame]) -> tracemalloc.Frame | None:
    for frame in reversed(frames):
        if owner_of(frame.filename) == "user" and not frame.filename.startswith(_DRIVER_PREFIXES):
            return frame
    return None


def _merge_same_line(sites: list[Site]) -> list[Site]:
    """Tracebacks that differ only below the chosen frame are one site."""
    return sorted(merge_sites(sites), key=lambda s: -s.size)


def merge_sites(sites: Iterable[Site]) -> list[Site]:
    """Sites merged by (file, line), sizes and counts added, first traceback and task name kept."""
    merged: dict[tuple[str, int], Site] = {}
    for s in sites:
        key = (s.file, s.line)
        m = merged.get(key)
        merged[key] = s if m is None else Site(m.file, m.line, m.size + s.size, m.count + s.count, m.owner,
                                              m.traceback, m.task or s.task, m.native + s.native)
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

    The installed-distributions table (third-party ownership), ctypes (the
    3.11 object-traceback fix) and the compiled patterns of the snapshot
    filters (``fnmatch`` caches them) stay alive once made; made outside the
    window and before its counts, they are neither traced nor taken for growth.
    """
    _distribution("")
    object_traceback()
    for snapshot_filter in IGNORED_FILTERS:
        fnmatch.fnmatch(__file__, snapshot_filter.filename_pattern)


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


