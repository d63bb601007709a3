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

Finding them means reading every name of every module (~25,000 in a
Celery child, 5-15 ms); that *discovery* runs now and then, and in between
only the containers it found are read again by path (~1 µs each).
"""

from __future__ import annotations

import collections
import sys
import time
from types import ModuleType
from typing import Any

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

_CONTAINERS = (dict, list, set, collections.deque)
_OWN = "bilge."
_DEMO = "bilge.demo."
_INSTALLED = "-packages/"  # site-packages, dist-packages
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) - {"__main__"}
# Standard-library modules whose module-level containers grow with what a
# program does (handlers, filters, threads, pickling registrations).
_STDLIB_REGISTRIES = frozenset({"logging", "warnings", "threading", "copyreg", "weakref", "functools", "abc",
                                "re", "encodings", "mimetypes", "socket", "ssl", "asyncio.events"})
_TYPE_DICT = type.__dict__["__dict__"]
_GETSET = type(_TYPE_DICT)

Reading = tuple[str, str, int, str]  # path, container type, length, newest element's type
Route = tuple[str, ...]  # module name, then one or two attribute names


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
        if self.discovery_due() if discover is None else discover:
            self._modules = len(sys.modules)
            self._routes = _discover()
        else:
            since = self._since_discovery
        self._since_discovery = since + 1
        names, lengths, followed = self._names, self._lengths, self._followed
        if len(names) > MAX_NAMES:
            names.clear()
        keep = names.setdefault
        readings = []
        # Containers followed from this scan, at their length of the
        # previous one: their series starts a scan earlier.
        starting = []
        grew: list[tuple[int, Route]] = []
        current: dict[Route, int] = {}
        kinds: dict[type, tuple[int, Any]] = {}
        found: tuple[Any, Any] | None = None
        try:
            for route in self._routes:
                found = _find(route, kinds)
                if found is None:
                    continue
                length = found[1].__len__(found[0])  # the builtin's own: a subclass's __len__ is user code
                current[route] = length
                before = lengths.get(route)
                new = route not in followed
                if new:
                    if before is None or before == length or length < self.min_length \
                            or len(followed) >= self.max_followed:
                        continue
                    followed.add(route)
                path = ".".join(route)
                if before is not None and length > before:
                    grew.append((length - before, route))
                container, element = type_name(type(found[0])), _newest_type(*found)
                reading = (keep(path, path), keep(container, container), length, keep(element, element))
                readings.append(reading)
                if new and before is not None:
                    starting.append(reading[:2] + (before,) + reading[3:])
        finally:
            found = None  # no reference to the last container outlives the scan
            kinds.clear()
        self._lengths = current
        counted = tuple(route for _, route in sorted(grew, reverse=True)[:MAX_COUNTED])
        if counted != self.counted:
            self.counted = counted
        readings.sort(key=lambda r: -r[2])
        self.starting = tuple(starting)
        return time.thread_time() - started, tuple(readings)


def _discover() -> list[Route]:
    """The routes of every container modules keep (bounded)."""
    routes: list[Route] = []
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
                depth = 2 if module_name in _STDLIB_REGISTRIES else 1
                installed = _INSTALLED in str(namespace.get("__file__") or "")
                _discover_in(namespace, (module_name,), routes, kinds, depth, classes=not installed)
            if len(routes) >= MAX_ROUTES:
                break
    finally:
        kinds.clear()
    return routes[:MAX_ROUTES]


_SKIP_KIND, _CONTAINER, _OBJECT, _CLASS = 0, 1, 2, 3
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class written in Python


def _kind(cls: type) -> tuple[int, Any]:
    """What a value of this type is to the scan, and its builtin base (containers) or the slot its
    ``__dict__`` is read through (objects)."""
    for base in _CONTAINERS:
        if issubclass(cls, base):
            return _CONTAINER, base
    if issubclass(cls, type):
        return _CLASS, None
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
                routes.append(route + (name,))
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
    module = sys.modules.get(route[0])
    if type(module) is not ModuleType:
        return None
    value = module.__dict__.get(route[1])
    for name in route[2:]:
        cls = type(value)
        inner = _attributes(value, cls, _known(cls, kinds), route[0])
        if inner is None:
            return None
        value = inner.get(name)
    kind, base = _known(type(value), kinds)
    return (value, base) if kind == _CONTAINER else None


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
