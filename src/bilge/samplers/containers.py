"""The lengths of the containers that modules keep: where untracked objects pile up. Stdlib-only.

An object census counts gc-tracked objects only. A slow leak of short
strings, numbers or bytes (a key remembered per call in a set, a timestamp
per client in a dict) adds no tracked object: it shows only as one
container growing. This sampler follows the length of every container
(dict, list, set, deque) a module keeps at its top level, in a class
attribute of a class it defines, or in an attribute of a module-level
object, and the type of its newest element. Only names, type names and
numbers leave this module; no reference to an inspected object is kept:
containers are found again by their path each time.

Some holders are outside any Python container a module keeps, yet can be
counted from Python without running user code (issue 9, item 3):

- a ``functools.lru_cache``/``functools.cache`` (a C object) on a module-level
  function or a class's method: its cache is a dict inside the wrapper, read
  through ``gc.get_referents`` (path ``app.tax_table<lru_cache>``, as the
  holder search names it);
- a local variable of a long-lived function running in another thread (a
  flusher's or reporter's loop): ``<thread audit-flusher> frame _flusher()
  local 'pending'``. Only the program's own functions are read (not the
  standard library's, installed packages' or bilge's), never the main thread
  (it runs the tasks, whose frames come and go) nor the scanning one; a frame
  a debugger traces is left alone. Reading ``f_locals`` before Python 3.13
  leaves a snapshot of those locals on the frame until it returns or is read
  again (the holder search does the same);
- the interpreter's exit callbacks (``atexit._ncallbacks()``): bound methods
  registered per call are held from C.

Finding them means reading every name of every module (~25,000 in a
Celery child, 5-15 ms); that *discovery* runs now and then, and in between
only the containers it found are read again by path (~1 µs each).
"""

from __future__ import annotations

import _thread
import collections
import functools
import gc
import itertools
import os
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from bilge.samplers import EXIT_CALLBACKS, INSTALLED, LRU_CACHE, code_name, is_library_file, thread_local
from bilge.samplers.census import type_name

# A container is followed once it has moved while at least this long:
# every program has thousands of small ones, many moving by one item per
# task (a pool's active requests), and a leak passes this length soon.
MIN_LENGTH = 64
# Objects with more attributes than this are not looked into.
MAX_ATTRIBUTES = 200
# Containers found by a discovery, containers followed, distinct names kept (bounds).
MAX_ROUTES = 4096
MAX_FOLLOWED = 256
MAX_NAMES = 4096
# Containers whose lengths the task hooks count around each read task, at most.
MAX_COUNTED = 2
# A discovery runs on the first scan, again every REDISCOVER_EVERY scans,
# and after REDISCOVER_IMPORTED scans when modules were imported since the
# last one (lazy imports come in bursts during warm-up).
REDISCOVER_EVERY = 10
REDISCOVER_IMPORTED = 5
# A discovery re-reads a module's names only when its namespace changed size
# (or is another dict) since the last one, and every module's at every
# REDISCOVER_FULL-th discovery (an object's attribute set later, a class's
# container added at run time). Between, a Celery child's discovery costs a
# fraction of its ~6-10 ms.
REDISCOVER_FULL = 4
# A container not followed whose length was the same at this many reads in
# a row is read at one scan in QUIET_EVERY only: most routes are tables that
# never move (~650 in a Celery child, ~1.2 ms a scan read in full); a
# container that starts to move is seen within QUIET_EVERY scans.
QUIET_AFTER = 3
QUIET_EVERY = 4

_CONTAINERS = (dict, list, set, collections.deque)
_OWN = "bilge."
_DEMO = "bilge.demo."
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) - {"__main__"}
# Standard-library modules whose module-level containers grow with what a
# program does (handlers, filters, threads, pickling registrations).
_STDLIB_REGISTRIES = frozenset({"logging", "warnings", "threading", "copyreg", "weakref", "functools", "abc",
                                "re", "encodings", "mimetypes", "socket", "ssl", "asyncio.events"})
_TYPE_DICT = type.__dict__["__dict__"]
_GETSET = type(_TYPE_DICT)
# The C type of functools.lru_cache's wrappers; an interpreter without it (a
# pure-Python functools) has no cache dict to read: caches are not followed.
_LRU_WRAPPER: Any = getattr(functools, "_lru_cache_wrapper", None)
_LRU_DICT: Any = _LRU_WRAPPER.__dict__.get("__dict__") if type(_LRU_WRAPPER) is type else None
if type(_LRU_DICT) is not _GETSET:
    _LRU_WRAPPER = _LRU_DICT = object()  # matches no type
_CO_OPTIMIZED = 0x1  # a function's frame (a module's or class body's f_locals is its namespace)
# Frames of a thread's stack read, from the innermost.
MAX_FRAMES = 32
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_DEMO_DIR = _OWN_DIR + "demo" + os.sep

# Route heads that are no module's name (a module name never starts with "<").
_THREAD = "<thread>"
_EXIT_CALLBACKS = "<%s>" % EXIT_CALLBACKS
_LRU = LRU_CACHE

Reading = tuple[str, str, int, str]  # path, container type, length, newest element's type
# A module name, then one or two attribute names (and _LRU after a cached
# function); (_THREAD, thread name, function, local); or (_EXIT_CALLBACKS,).
Route = tuple[str, ...]


class _ExitCallbacks:
    """The exit-callback registry as a container: its length is ``atexit._ncallbacks()``."""

    def __len__(self) -> int:  # called unbound, with the atexit module
        return int(self._ncallbacks())  # type: ignore[attr-defined]


_BASE_NAMES = {_ExitCallbacks: "callbacks"}


class ContainerScanner:
    """Follows module-level containers; reports the ones whose length has moved.

    Most containers are tables that never change (encodings, opcode names,
    a library's constants): a container is reported from the scan after its
    length first moved while at least ``min_length`` long, and in every scan
    after that, so its series is whole from then on. One string per path is
    kept across scans: fresh strings each scan would be heap blocks waiting
    for the flush, which the heap-block series read after tasks sees as the
    process's growth.
    """

    def __init__(self, min_length: int = MIN_LENGTH, max_followed: int = MAX_FOLLOWED) -> None:
        self.min_length = min_length
        self.max_followed = max_followed
        self._routes: list[Route] = []
        self._since_discovery = REDISCOVER_EVERY
        self._modules = -1
        self._names: dict[str, str] = {}
        self._lengths: dict[Route, int] = {}
        self._followed: set[Route] = set()
        # Reads in a row at the same length, per route not followed (only those above 0).
        self._still: dict[Route, int] = {}
        # Routes read at every scan, and those read at one scan in QUIET_EVERY.
        self._loud: list[Route] = []
        self._quiet: list[Route] = []
        self._scans = 0
        # Per module: ((id, length) of its namespace, its routes) at the last discovery that read it.
        self._modules_seen: dict[str, tuple[tuple[int, int], tuple[Route, ...]]] = {}
        self._discoveries = 0
        # The followed containers that grew at the latest scan, most first:
        # the task hooks count their items around each read task, which
        # names the task that adds to them exactly (see ``count``).
        self.counted: tuple[Route, ...] = ()
        # The containers the latest scan began to follow, with their length
        # at the scan before (path, container type, length, element type).
        self.starting: tuple[Reading, ...] = ()

    def discovery_due(self) -> bool:
        """Whether the next scan reads every module's names first (it costs several times a plain scan)."""
        since = self._since_discovery
        return since >= REDISCOVER_EVERY or (since >= REDISCOVER_IMPORTED and len(sys.modules) != self._modules)

    def scan(self, discover: bool | None = None) -> tuple[float, tuple[Reading, ...]]:
        """Read the containers' lengths, after a discovery if ``discover`` (None: when one is due).

        Returns:
            (CPU seconds the scan took, readings of the containers followed, longest first).
        """
        started = time.thread_time()
        since = 0
        lengths, still, followed = self._lengths, self._still, self._followed
        if self.discovery_due() if discover is None else discover:
            self._modules = len(sys.modules)
            full = self._discoveries % REDISCOVER_FULL == 0
            self._discoveries += 1
            self._routes, self._modules_seen = _discover(None if full else self._modules_seen)
            known = set(self._routes)
            self._lengths = lengths = {r: n for r, n in lengths.items() if r in known}
            self._still = still = {r: n for r, n in still.items() if r in known}
            self._loud = [r for r in self._routes if still.get(r, 0) < QUIET_AFTER]
            self._quiet = [r for r in self._routes if still.get(r, 0) >= QUIET_AFTER]
        else:
            since = self._since_discovery
        self._since_discovery = since + 1
        names = self._names
        if len(names) > MAX_NAMES:
            names.clear()
        keep = names.setdefault
        readings = []
        # Containers followed from this scan, at their length of the
        # previous one: their series starts a scan earlier.
        starting = []
        grew: list[tuple[int, Route]] = []
        tick = self._scans
        self._scans = tick + 1
        loud, quiet = self._loud, self._quiet
        # Every loud route, and the quiet ones whose turn it is.
        turn = quiet[tick % QUIET_EVERY::QUIET_EVERY]
        loud_now: list[Route] = []
        hushed: list[Route] = []  # loud routes that turned quiet at this scan
        woke: set[Route] = set()  # quiet routes that moved, or are gone
        kinds: dict[type, tuple[int, Any]] = {}
        found: tuple[Any, Any] | None = None
        try:
            for index, route in enumerate(itertools.chain(loud, turn)):
                was_quiet = index >= len(loud)
                found = _find(route, kinds)
                if found is None:  # gone: forgotten until a discovery finds it again
                    lengths.pop(route, None)
                    still.pop(route, None)
                    if was_quiet:
                        woke.add(route)
                    continue
                length = found[1].__len__(found[0])  # the builtin's own: a subclass's __len__ is user code
                before = lengths.get(route)
                lengths[route] = length
                new = route not in followed
                if new and before == length:
                    count_still = still[route] = still.get(route, 0) + 1
                    if not was_quiet:
                        (hushed if count_still >= QUIET_AFTER else loud_now).append(route)
                    continue
                still.pop(route, None)
                if was_quiet:
                    woke.add(route)
                loud_now.append(route)
                if new:
                    if before is None or length < self.min_length or len(followed) >= self.max_followed:
                        continue
                    followed.add(route)
                path = _path(route)
                if before is not None and length > before:
                    grew.append((length - before, route))
                container = _BASE_NAMES.get(found[1]) or type_name(type(found[0]))
                element = _newest_type(*found)
                reading = (keep(path, path), keep(container, container), length, keep(element, element))
                readings.append(reading)
                if new and before is not None and not was_quiet:
                    # (Its length at the previous scan is known only if that scan read it.)
                    starting.append(reading[:2] + (before,) + reading[3:])
        finally:
            found = None  # no reference to the last container outlives the scan
            kinds.clear()
        self._loud = loud_now  # (a quiet route that moved is in it already)
        if hushed or woke:
            self._quiet = [r for r in quiet if r not in woke] + hushed
        counted = tuple(route for _, route in sorted(grew, reverse=True)[:MAX_COUNTED])
        if counted != self.counted:
            self.counted = counted
        readings.sort(key=lambda r: -r[2])
        self.starting = tuple(starting)
        return time.thread_time() - started, tuple(readings)


ModulesSeen = dict[str, tuple[tuple[int, int], tuple[Route, ...]]]


def _discover(seen_before: ModulesSeen | None = None) -> tuple[list[Route], ModulesSeen]:
    """The routes of every container modules keep (bounded), and per module what was read.

    Args:
        seen_before: the previous discovery's per-module record; a module
            whose namespace is the same dict at the same size keeps its
            routes without being read again (None: read every module).
    """
    routes: list[Route] = []
    modules_seen: ModulesSeen = {}
    # What each type seen is (a container, an object or class to look into,
    # or neither); dropped with the discovery: no type is kept.
    kinds: dict[type, tuple[int, Any]] = {}
    seen: set[int] = set()
    try:
        for module_name, module in list(sys.modules.items()):
            if (module_name.startswith(_OWN) and not module_name.startswith(_DEMO)) or id(module) in seen:
                continue
            seen.add(id(module))  # __main__ is __mp_main__ too in a prefork child
            namespace = getattr(module, "__dict__", None) if type(module) is ModuleType else None
            if type(namespace) is dict:
                # The standard library's modules hold tables, not a
                # program's data (11,000 names in a Celery child): only the
                # registries a program adds to are read, two levels in
                # (``logging.Logger.manager.loggerDict``). Other modules are
                # read one level into their classes and objects; installed
                # packages' classes are mostly methods (tens of thousands of
                # names): only the program's own modules' are read.
                top = module_name.partition(".")[0]
                if top in _STDLIB and module_name not in _STDLIB_REGISTRIES:
                    continue
                key = (id(namespace), len(namespace))
                before = seen_before.get(module_name) if seen_before is not None else None
                if before is not None and before[0] == key:
                    routes.extend(before[1])
                    modules_seen[module_name] = before
                else:
                    depth = 2 if module_name in _STDLIB_REGISTRIES else 1
                    installed = INSTALLED in str(namespace.get("__file__") or "")
                    first = len(routes)
                    _discover_in(namespace, (module_name,), routes, kinds, depth, classes=not installed)
                    modules_seen[module_name] = (key, tuple(routes[first:]))
            if len(routes) >= MAX_ROUTES:
                break
        # Held outside any module's containers: few, and first (never cut by the bound).
        outside: list[Route] = []
        _discover_threads(outside, kinds)
        if callable(getattr(sys.modules.get("atexit"), "_ncallbacks", None)):
            outside.append((_EXIT_CALLBACKS,))
    finally:
        kinds.clear()
    # Two threads of one name running one function: the first is followed.
    outside = list(dict.fromkeys(outside))[:MAX_ROUTES // 8]
    return outside + routes[:MAX_ROUTES - len(outside)], modules_seen


def _path(route: Route) -> str:
    """The text a developer reads, as the holder search spells the same holder."""
    head = route[0]
    if head == _THREAD:
        return thread_local(*route[1:])
    if route[-1] == _LRU:
        return ".".join(route[:-1]) + _LRU
    return ".".join(route)


def _discover_threads(routes: list[Route], kinds: dict[type, tuple[int, Any]]) -> None:
    """The containers that the program's own long-lived functions keep in locals, in threads other than the
    main one and this one."""
    main, own = _main_ident(), _thread.get_ident()
    frames = sys._current_frames()
    try:
        for ident, top in frames.items():
            if ident == main or ident == own:
                continue
            name = _thread_name(ident, kinds)
            frame: Any = top
            for _ in range(MAX_FRAMES):
                if frame is None:
                    break
                if _readable(frame):
                    function = code_name(frame.f_code)
                    for local, value in frame.f_locals.items():
                        if _known(type(value), kinds)[0] == _CONTAINER and type(local) is str:
                            routes.append((_THREAD, name, function, local))
                frame = frame.f_back
    finally:
        frames.clear()
        del frames


def _main_ident() -> int | None:
    main = getattr(sys.modules.get("threading"), "main_thread", None)
    try:
        return main().ident if main is not None else None
    except Exception:  # threading half torn down at exit
        return None


def _thread_name(ident: int, kinds: dict[type, tuple[int, Any]] | None) -> str:
    """The thread's name as its ``Thread`` object keeps it (read from its ``__dict__``, no property run)."""
    active = getattr(sys.modules.get("threading"), "_active", None)
    thread = active.get(ident) if type(active) is dict else None
    if thread is not None:
        cls = type(thread)
        attributes = _attributes(thread, cls, _known(cls, kinds), "")
        name = attributes.get("_name") if attributes is not None else None
        if type(name) is str:
            return name
    return str(ident)


def _readable(frame: Any) -> bool:
    """A function of the program's own (not the standard library's, an installed package's or bilge's) that no
    debugger traces."""
    code = frame.f_code
    if not code.co_flags & _CO_OPTIMIZED or frame.f_trace is not None:
        return False
    filename = code.co_filename
    if type(filename) is not str or filename.startswith("<") or is_library_file(filename):
        return False
    return not filename.startswith(_OWN_DIR) or filename.startswith(_DEMO_DIR)


_SKIP_KIND, _CONTAINER, _OBJECT, _CLASS, _CACHE = 0, 1, 2, 3, 4
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class written in Python


def _kind(cls: type) -> tuple[int, Any]:
    """What a value of this type is to the scan, and its builtin base (containers) or the slot its
    ``__dict__`` is read through (objects)."""
    for base in _CONTAINERS:
        if issubclass(cls, base):
            return _CONTAINER, base
    if issubclass(cls, type):
        return _CLASS, None
    if cls is _LRU_WRAPPER:
        return _CACHE, None
    if cls.__flags__ & _HEAP_TYPE and not issubclass(cls, ModuleType):
        for klass in cls.__mro__:
            descriptor = _TYPE_DICT.__get__(klass, type(klass)).get("__dict__")
            if descriptor is not None:
                # Only the interpreter's own slot: a property named __dict__
                # (a proxy's) would run user code.
                return (_OBJECT, descriptor) if type(descriptor) is _GETSET else (_SKIP_KIND, None)
    return _SKIP_KIND, None


def _known(cls: type, kinds: dict[type, tuple[int, Any]] | None) -> tuple[int, Any]:
    if kinds is None:
        return _kind(cls)  # a task hook: no cache (nothing allocated)
    known = kinds.get(cls)
    if known is None:
        known = kinds[cls] = _kind(cls)
    return known


def _discover_in(namespace: Any, route: Route, routes: list[Route], kinds: dict[type, tuple[int, Any]],
                 depth: int, classes: bool = True) -> None:
    found: list[tuple[str, Any, Any]] = []
    try:
        # Iterated in place, not copied: a copy is a tuple per name, tens of
        # thousands a discovery, garbage the host's collector then pays for.
        # A namespace changing size meanwhile (another thread importing) is
        # skipped this time.
        for name, value in namespace.items():
            # Types only, never isinstance(): a proxy (Celery's current_app,
            # werkzeug's LocalProxy) answers isinstance() by evaluating itself.
            cls = type(value)
            known = _known(cls, kinds)
            kind = known[0]
            # Dunder names are the interpreter's bookkeeping (every module's
            # __builtins__, __spec__, __loader__, __all__), never a program's data.
            if not kind or type(name) is not str or name.startswith("__"):
                continue
            if kind == _CONTAINER:
                if not _bounded(value, known[1]):
                    routes.append(route + (name,))
            elif kind == _CACHE:
                if not _bounded(value, _LRU_WRAPPER):
                    routes.append(route + (name, _LRU))
            elif depth and (classes or kind != _CLASS):
                found.append((name, value, known))
    except Exception:  # changed size under us, or an odd mapping
        return
    for name, value, known in found:
        # One level into module-level classes and objects: ``Registry._items``,
        # ``EXPORTS._metrics``.
        inner = _attributes(value, type(value), known, route[0])
        if inner is not None and len(inner) <= MAX_ATTRIBUTES:
            _discover_in(inner, route + (name,), routes, kinds, depth - 1)


_DEQUE_MAXLEN = collections.deque.__dict__["maxlen"]


def _bounded(value: Any, base: Any) -> bool:
    """A deque with a ``maxlen`` or an ``lru_cache`` with a ``maxsize``: it stops growing at its bound, so it
    holds no leak, and filling up in warm-up it would look like one."""
    try:
        if base is collections.deque:
            return _DEQUE_MAXLEN.__get__(value, collections.deque) is not None
        if base is _LRU_WRAPPER:
            # The C method, from the type: the tuple it returns is (hits, misses, maxsize, currsize).
            return tuple.__getitem__(_LRU_WRAPPER.cache_info(value), 2) is not None
    except Exception:  # noqa: BLE001 - an odd object: followed like any other
        return False
    return False


def _attributes(value: Any, cls: type, known: tuple[int, Any], module_name: str) -> Any:
    """A class's namespace (classes defined in this module) or an object's ``__dict__``, read without user code."""
    kind, descriptor = known
    if kind == _CLASS:
        namespace = _TYPE_DICT.__get__(value, cls)
        return namespace if namespace.get("__module__") == module_name else None
    if kind != _OBJECT:
        return None
    inner = descriptor.__get__(value, cls)
    return inner if type(inner) is dict else None


def _find(route: Route, kinds: dict[type, tuple[int, Any]] | None = None) -> tuple[Any, Any] | None:
    """(the container at ``route``, its builtin base), if it is still there (``kinds``: a scan's cache)."""
    head = route[0]
    if head == _THREAD:
        return _find_local(route, kinds)
    module = sys.modules.get("atexit" if head == _EXIT_CALLBACKS else head)
    if type(module) is not ModuleType:
        return None
    if head == _EXIT_CALLBACKS:
        return module, _ExitCallbacks
    cached = route[-1] == _LRU
    value = module.__dict__.get(route[1])
    for name in route[2:-1] if cached else route[2:]:
        cls = type(value)
        inner = _attributes(value, cls, _known(cls, kinds), head)
        if inner is None:
            return None
        value = inner.get(name)
    if cached:
        return _lru_cache(value)
    kind, base = _known(type(value), kinds)
    return (value, base) if kind == _CONTAINER else None


def _lru_cache(wrapper: Any) -> tuple[Any, Any] | None:
    """The cache dict inside a C ``lru_cache`` wrapper: the dict among its referents that is not its ``__dict__``."""
    if type(wrapper) is not _LRU_WRAPPER:
        return None
    attributes = _LRU_DICT.__get__(wrapper, _LRU_WRAPPER)
    for referent in gc.get_referents(wrapper):
        if type(referent) is dict and referent is not attributes:
            return referent, dict
    return None


def _find_local(route: Route, kinds: dict[type, tuple[int, Any]] | None) -> tuple[Any, Any] | None:
    """The container a function running in a named thread keeps in a local."""
    _, thread, function, local = route
    own = _thread.get_ident()
    frames = sys._current_frames()
    try:
        for ident, top in frames.items():
            if ident == own or _thread_name(ident, kinds) != thread:
                continue
            frame: Any = top
            for _ in range(MAX_FRAMES):
                if frame is None:
                    break
                if _readable(frame) and code_name(frame.f_code) == function:
                    value = frame.f_locals.get(local)
                    kind, base = _known(type(value), kinds)
                    return (value, base) if kind == _CONTAINER else None
                frame = frame.f_back
        return None
    finally:
        frames.clear()
        del frames


# The second half's growth rate against the first half's, at least: a cache
# filling in warm-up grows ever slower, a deque at its maxlen or an evicting
# cache stops; a leak keeps its pace.
MIN_LATE_SHARE = 0.25


def keeps_pace(points: Sequence[tuple[int, int]], min_growth: int = 1, every_step: bool = False) -> bool:
    """Whether a container's lengths, as (tasks done, length) readings in order, grow steadily: never shrinking,
    by ``min_growth`` or more, and in the second half (from the reading nearest the middle, in tasks) at
    ``MIN_LATE_SHARE`` of the first half's rate or more; with ``every_step``, growing at every reading too.

    The one test of steadiness, for the agent (which escalates on it) and the analysis (which names a holder by
    it); stdlib-only, so the agent can use it.
    """
    if len(points) < 3:
        return False
    lengths = [n for _, n in points]
    steps = [b - a for a, b in zip(lengths, lengths[1:])]
    if any(step < 0 for step in steps) or (every_step and not all(step > 0 for step in steps)) \
            or lengths[-1] - lengths[0] < min_growth:
        return False
    (t0, n0), (t1, n1) = points[0], points[-1]
    middle = t0 + (t1 - t0) / 2
    tm, nm = min(points[1:-1], key=lambda p: abs(p[0] - middle))
    if tm <= t0 or t1 <= tm:
        return False
    early, late = (nm - n0) / (tm - t0), (n1 - nm) / (t1 - tm)
    return late > 0 and late >= MIN_LATE_SHARE * early


def count(routes: tuple[Route, ...]) -> int | None:
    """The containers' lengths, summed (None when one is gone): what a task hook reads, in ~1 µs a container."""
    total = 0
    for route in routes:
        found = _find(route)
        if found is None:
            return None
        total += found[1].__len__(found[0])
    return total


def _newest_type(container: Any, base: Any) -> str:
    """The type of the newest element (a dict's newest value, a list's last item, any item of a set)."""
    try:
        if base is dict:
            # The values' own reversed view: a lookup by key would hash the
            # key, and a key's __hash__ may be user code.
            return type_name(type(next(reversed(dict.values(container)))))
        if base is set:
            return type_name(type(next(set.__iter__(container))))
        return type_name(type(base.__getitem__(container, -1)))
    except Exception:  # empty, or changed size meanwhile
        return "?"
