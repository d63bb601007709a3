"""The lengths of the containers that modules keep: where untracked objects pile up. Stdlib-only.

An object census counts gc-tracked objects only. A slow leak of short
strings, numbers or bytes (a key remembered per call in a set, a timestamp
per client in a dict) adds no tracked object: it shows only as one
container growing. This sampler reads the length of every sizeable
container a module keeps at its top level, in a class attribute of a
module-level class, or in an attribute of a module-level object, and the
type of its newest element. Only names, type names and numbers leave this
module; no reference to an inspected object is kept.
"""

from __future__ import annotations

import collections
import sys
import time
from types import ModuleType
from typing import Any

from bilge.samplers.census import type_name

# Containers shorter than this are not read: every program has thousands of
# small ones, and a leak passes this length within its first calls.
MIN_LENGTH = 64
# Objects with more attributes than this are not looked into.
MAX_ATTRIBUTES = 200

_CONTAINERS = (dict, list, set, collections.deque)
_OWN = "bilge."
_DEMO = "bilge.demo."
# Tables every program has and that only grow with imports: not a task's growth.
_SKIP = frozenset({"sys.modules", "sys.path_importer_cache", "linecache.cache", "builtins.__dict__"})

_INSTALLED = "-packages/"  # site-packages, dist-packages
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) - {"__main__"}
_TYPE_DICT = type.__dict__["__dict__"]
_GETSET = type(_TYPE_DICT)

Reading = tuple[str, str, int, str]  # path, container type, length, newest element's type


# Distinct names remembered for reuse, and containers followed (bounded).
MAX_NAMES = 4096
MAX_FOLLOWED = 256


class ContainerScanner:
    """Scans module-level containers; reports the ones whose length has moved.

    Most sizeable containers are tables that never change (encodings,
    opcode names, a library's constants): a container is reported from the
    scan after its length first moved, and in every scan after that, so its
    series is whole from then on. One string per path is kept across scans:
    fresh strings each scan would be heap blocks waiting for the flush,
    which the heap-block series read after tasks sees as the process's growth.
    """

    def __init__(self, min_length: int = MIN_LENGTH, max_followed: int = MAX_FOLLOWED) -> None:
        self.min_length = min_length
        self.max_followed = max_followed
        self._names: dict[str, str] = {}
        self._lengths: dict[str, int] = {}
        self._followed: set[str] = set()

    def scan(self) -> tuple[float, tuple[Reading, ...]]:
        """Read every sizeable module-level container's length.

        Returns:
            (CPU seconds the scan took, readings of the containers followed, longest first).
        """
        started = time.thread_time()
        found = _scan_modules(self.min_length)
        names, lengths, followed = self._names, self._lengths, self._followed
        if len(names) > MAX_NAMES:
            names.clear()
        keep = names.setdefault
        readings = []
        current: dict[str, int] = {}
        for path, container, length, element in found:
            path = keep(path, path)
            if len(current) < MAX_NAMES:
                current[path] = length
            before = lengths.get(path)
            if path not in followed and before is not None and before != length \
                    and len(followed) < self.max_followed:
                followed.add(path)
            if path in followed:
                readings.append((path, keep(container, container), length, keep(element, element)))
        del found
        self._lengths = current
        readings.sort(key=lambda r: -r[2])
        return time.thread_time() - started, tuple(readings)


def _scan_modules(min_length: int) -> list[Reading]:
    """(path, container type, length, newest element's type) of every container at least ``min_length`` long."""
    found: list[Reading] = []
    # What each type seen in this scan is (a container, an object or class
    # to look into, or neither); dropped with the scan: no type is kept.
    kinds: dict[type, tuple[int, Any]] = {}
    seen: set[int] = set()
    try:
        for module_name, module in list(sys.modules.items()):
            if (module_name.startswith(_OWN) and not module_name.startswith(_DEMO)) or id(module) in seen:
                continue
            seen.add(id(module))  # __main__ is __mp_main__ too in a prefork child
            namespace = getattr(module, "__dict__", None) if type(module) is ModuleType else None
            if type(namespace) is dict:
                # The standard library's classes and objects hold tables, not
                # a program's data: its modules are read at their top level.
                # Installed packages' classes are mostly methods (tens of
                # thousands of names): their module-level objects are read,
                # their class attributes only in the program's own modules.
                depth = 0 if module_name.partition(".")[0] in _STDLIB else 1
                installed = _INSTALLED in str(namespace.get("__file__") or "")
                _scan_namespace(module_name, module_name, namespace, min_length, found, kinds, depth,
                                classes=not installed)
    finally:
        kinds.clear()
    return found


_SKIP_KIND, _CONTAINER, _OBJECT, _CLASS = 0, 1, 2, 3
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class written in Python


def _kind(cls: type) -> tuple[int, Any]:
    """What a value of this type is to the scan, and its builtin base (containers) or the slot its
    ``__dict__`` is read through (objects)."""
    base = _container_base(cls)
    if base is not None:
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


def _scan_namespace(prefix: str, module_name: str, namespace: Any, min_length: int, found: list[Reading],
                    kinds: dict[type, tuple[int, Any]], depth: int, classes: bool = True) -> None:
    try:
        items = list(namespace.items())
    except Exception:  # a namespace changing size under us, or an odd mapping
        return
    for name, value in items:
        # Types only, never isinstance(): a proxy (Celery's current_app,
        # werkzeug's LocalProxy) answers isinstance() by evaluating itself.
        cls = type(value)
        known = kinds.get(cls)
        if known is None:
            known = kinds[cls] = _kind(cls)
        kind = known[0]
        if not kind or type(name) is not str:
            continue
        if kind == _CONTAINER:
            base: Any = known[1]
            length = base.__len__(value)  # the builtin's own: a subclass's __len__ is user code
            if length >= min_length:
                path = prefix + "." + name
                if path not in _SKIP:
                    found.append((path, type_name(cls), length, _newest_type(value, base)))
        elif depth and (classes or kind != _CLASS):
            # One level into module-level classes and objects: ``Registry._items``,
            # ``EXPORTS._metrics``.
            inner = _attributes(value, cls, known, module_name)
            if inner is not None and len(inner) <= MAX_ATTRIBUTES:
                _scan_namespace(prefix + "." + name, module_name, inner, min_length, found, kinds, depth - 1)


def _container_base(cls: type) -> type | None:
    for base in _CONTAINERS:
        if issubclass(cls, base):
            return base
    return None


def _attributes(value: Any, cls: type, known: tuple[int, Any], module_name: str) -> Any:
    """A class's namespace (classes defined in this module) or an object's ``__dict__``, read without user code."""
    kind, descriptor = known
    if kind == _CLASS:
        namespace = _TYPE_DICT.__get__(value, cls)
        return namespace if namespace.get("__module__") == module_name else None
    inner = descriptor.__get__(value, cls)
    return inner if type(inner) is dict else None


def _newest_type(container: Any, base: Any) -> str:
    """The type of the newest element (a dict's newest value, a list's last item, any item of a set)."""
    try:
        if base is dict:
            return type_name(type(dict.__getitem__(container, next(dict.__reversed__(container)))))
        if base is set:
            return type_name(type(next(set.__iter__(container))))
        return type_name(type(base.__getitem__(container, -1)))
    except Exception:  # emptied or changed size meanwhile
        return "?"
