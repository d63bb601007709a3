"""Holder paths: who keeps the objects of growing types alive, named like code.

Stdlib-only; runs inside the worker. ``find_holders`` answers, for each given
type name (as ``census.type_name`` spells it), with the path from a root to
the container that holds its instances, e.g. ``myapp.cache._ORDERS[...]`` or
``logging.Logger.manager.loggerDict[...]``, the kind of root, and that
container's type and length. Only strings and numbers leave this module.

Algorithm: one breadth-first walk **forward from the roots**, each reachable
object visited once with ``gc.get_referents``, no heap scan per step:

- roots, in order of preference: the ``__dict__`` of every module in
  ``sys.modules`` (bilge's own excluded; those of containers seen growing
  first, then the application's, then the libraries'), then the local variables of every
  other thread's frames (``sys._current_frames()``; the calling thread is
  never a root, so the search's own lists and the caller's locals are never
  on a path). Classes, closures and module objects met on the way re-root
  the name (``pkg.mod.Class.attr``, ``pkg.mod.fn.<locals>.inner closure
  'var'``), so a path reads from where a developer would look;
- breadth-first order makes every path a shortest one, and module globals
  win ties;
- every edge into an object of a wanted type is counted against the object
  that holds it: the container with the most targets is the holder;
- **bulk sampling** bounds the walk: a data container (list, tuple, set,
  non-namespace dict, deque) with many items of one type is descended into
  through ``max_targets_per_type`` of them only (all are still counted).
  Leaked objects and their insides are most of a leaking heap, so the walk
  visits the live application state plus a sample of the growth;
- a wanted type the walk did not reach (held below a sampled-out item, or by
  something outside the gc such as an ``atexit`` callback or a C extension)
  gets a bounded climb with ``gc.get_referrers`` from one instance until it
  joins the walked tree. A climb that ends at an object no Python container
  refers to is held from C: if one of the interpreter's registries kept in C
  that Python can count (``registry_counts``: exit callbacks, signal
  handlers) grew since ``registries_before``, the path starts there
  (``<atexit callbacks>.__self__``, root kind ``registry``, its count as the
  container length); otherwise it starts ``<held from C>`` (root kind
  ``unknown``): no Python container holds it.

Why not a reverse index of the whole heap: in pure Python, ``gc.get_referents``
of 1M objects alone costs about as much as the whole budget, and grouping
2.5M edges by referent costs several times more (see benchmarks/holders.py).

Bounds: the walk stops at ``max_seconds`` or once its bookkeeping (about 130
bytes per visited object) would pass ``max_index_bytes``; either returns the
paths found so far with ``complete=False`` and the reason. Errors never
reach the caller: they give an empty result and a reason.

Side effects, all bounded and on objects already alive: naming an instance
attribute materialises that instance's ``__dict__`` (CPython keeps attributes
inline until asked), and reading another thread's ``frame.f_locals`` leaves
a snapshot of those locals on that frame until it returns. References to
inspected objects are held only during the call.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import types
from array import array
from collections import deque
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any

from bilge.model import THREAD_STACK
from bilge.samplers import EXIT_CALLBACKS, LRU_CACHE, code_name, is_library_file, is_own_module, thread_local, values
from bilge.samplers.census import type_name

__all__ = ["HolderPath", "HolderSearch", "find_holders"]

MODULE_GLOBAL = "module-global"
CLASS_ATTRIBUTE = "class-attribute"
REGISTRY = "registry"
CLOSURE = "closure"
UNKNOWN = "unknown"

# Paths that start here are the stdlib's own registries: the fix is to stop
# registering (per-job loggers, sys.modules entries), not to clear a cache.
_REGISTRY_PREFIXES = ("sys.modules", "logging.Logger.manager", "logging.root.manager", "logging._handlers",
                      "logging._handlerList", "copyreg.", "threading._active", "gc.garbage", "linecache.cache",
                      "sys.path_importer_cache", "warnings.", "weakref.finalize._registry")
_DATA_CONTAINERS = (list, tuple, set, frozenset, deque)
MAX_VALUES = 3
_ATOMS = (str, bytes, int, float, complex, bool, type(None), types.CodeType)
_UNROOTED = "<held from C>"
_BYTES_PER_NODE = 130  # a set entry and its int, a list slot, a parent slot (measured on 3.11)
_BYTES_PER_HOLDING = 200


@dataclass(frozen=True)
class HolderPath:
    """One way instances of a type are kept alive.

    ``path`` is the text a developer would write (values redacted to
    ``[...]``); ``container_type``/``container_length`` describe the largest
    builtin container on the path (``length`` is -1 when there is none);
    ``targets`` counts the instances the search saw held through this path
    (a lower bound where bulk containers were sampled); ``depth`` counts
    references from the root to an instance. ``values`` holds a few
    renderings of held items only when the search was asked to show values.
    """

    type_name: str
    path: str
    root_kind: str
    container_type: str
    container_length: int
    targets: int
    depth: int
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class HolderSearch:
    """The outcome of one search: the paths, whether it ran to the end, and its cost."""

    paths: tuple[HolderPath, ...]
    complete: bool
    reason: str
    objects_visited: int
    index_bytes: int
    duration: float


def registry_counts() -> dict[str, int]:
    """Sizes of the interpreter's registries that live in C but can be counted from Python."""
    counts: dict[str, int] = {}
    atexit = sys.modules.get("atexit")
    count = getattr(atexit, "_ncallbacks", None)
    if callable(count):
        counts[EXIT_CALLBACKS] = int(count())
    signal = sys.modules.get("signal")
    if signal is not None:
        handlers = 0
        for number in getattr(signal, "valid_signals", lambda: ())():
            try:
                handler = signal.getsignal(number)
            except (OSError, ValueError):
                continue
            handlers += callable(handler) and not isinstance(handler, int)
        counts["signal handlers"] = handlers
    return counts


def _grown_registry(before: Mapping[str, int] | None) -> tuple[str, int] | None:
    """The C-held registry that grew most since ``before`` (name, count now), if any grew."""
    if not before:
        return None
    grown = [(now - before.get(name, now), name, now) for name, now in registry_counts().items()]
    best = max(grown, default=(0, "", 0))
    return (best[1], best[2]) if best[0] > 0 else None


def find_holders(type_names: Sequence[str], max_targets_per_type: int = 50, max_paths_per_type: int = 3,
                 max_seconds: float = 1.0, max_index_bytes: int = 64 << 20, show_values: bool = False,
                 registries_before: Mapping[str, int] | None = None, first: Sequence[str] = ()) -> HolderSearch:
    """Find the holder paths of the instances of the given types; never raises.

    Args:
        type_names: qualified type names, as ``census.type_name`` gives them.
        max_targets_per_type: items of one type followed into a bulk container
            (the rest are counted, not walked).
        max_paths_per_type: distinct paths kept per type, most targets first.
        max_seconds: wall-clock budget of the whole search.
        max_index_bytes: budget of the search's own bookkeeping.
        show_values: render a few held items per path (``--show-values``;
            off by default: memory holds secrets).
        registries_before: ``registry_counts()`` at an earlier moment (the
            previous search): one that grew since names what holds objects
            no Python container refers to.
        first: paths (``pkg.mod._CACHE``) of containers seen growing: their
            modules are walked first (see ``_in_search_order``).

    Returns:
        A ``HolderSearch``; on error or over budget, what was found so far
        with ``complete=False`` and the reason.
    """
    started = time.perf_counter()
    try:
        search = _Search(frozenset(type_names), max(1, max_targets_per_type), started + max_seconds,
                         max_index_bytes, show_values, _grown_registry(registries_before), first)
        try:
            paths = search.run(max(1, max_paths_per_type))
            return HolderSearch(paths, search.reason == "", search.reason, len(search.nodes),
                                search.index_bytes(), time.perf_counter() - started)
        finally:
            search.release()
    except Exception as exc:  # noqa: BLE001 - the host must never see our failure
        # Only the exception's type: its message may quote a value.
        return HolderSearch((), False, "holder search failed (%s)" % type(exc).__name__, 0, 0,
                            time.perf_counter() - started)


def _in_search_order(first: Sequence[str]) -> list[tuple[str, Any]]:
    """``sys.modules``' items, the walk's roots: the modules of ``first`` (paths of containers seen growing),
    then the application's own modules, then the standard library's and installed packages'.

    The walk is breadth-first and stops at its time budget: on a loaded
    machine it can end inside the first level, among a thousand library
    modules imported before the application's (seen in CI: a search that
    visited 22,000 objects, never reached ``apps.billing._VAT_AUDIT`` and
    named a constant ``wcwidth`` table). Leaks mostly live in the
    application's code, and a container seen growing names its module.
    The order also breaks ties between paths of equal length.
    """
    modules = list(sys.modules.items())
    hinted = set()
    for path in first:
        # The longest dotted prefix that is a module: "pkg.mod._CACHE[...]" is in pkg.mod.
        parts = path.split("[", 1)[0].split(".")
        for end in range(len(parts) - 1, 0, -1):
            if ".".join(parts[:end]) in sys.modules:
                hinted.add(".".join(parts[:end]))
                break
    def rank(item: tuple[str, Any]) -> int:
        name, module = item
        if name in hinted:
            return 0
        where = getattr(module, "__file__", None)
        return 2 if not isinstance(where, str) or is_library_file(where) else 1

    return sorted(modules, key=rank)  # stable: sys.modules' order within each rank


class _Search:
    """The walk's state; every reference it holds is dropped by ``release``."""

    def __init__(self, wanted: frozenset[str], fanout: int, deadline: float, max_bytes: int,
                 show_values: bool = False, registry: tuple[str, int] | None = None,
                 first: Sequence[str] = ()) -> None:
        self.registry = registry
        self.first = first
        self.show_values = show_values
        self.wanted = wanted
        self.fanout = fanout
        self.deadline = deadline
        self.max_bytes = max_bytes
        self.reason = ""
        self.nodes: list[object] = []
        self.parents = array("q")
        self.seen: set[int] = set()
        self.roots: dict[int, tuple[str, str]] = {}  # node index -> (path text, root kind)
        # (holder node index, target type) -> how many it holds, and one of them (it names the last edge).
        self.holdings: dict[tuple[int, type], int] = {}
        self.samples: dict[tuple[int, type], object] = {}
        # Holders whose first target had already been reached by a shorter path (loggerMap after loggerDict).
        self.secondary: set[tuple[int, type]] = set()
        self.kinds: dict[type, int] = {}  # 0 skip, 1 walk, 2 walk and count as target
        self.own: set[int] = set()  # ids of objects no path may go through: ours, bilge's
        # ids of the modules' namespaces: never targets. Every module and
        # function refers to builtins' namespace (``__builtins__``), every
        # function to its module's (``__globals__``): when dicts grow, each
        # would hold "a dict" of its own.
        # Those namespaces are never holders either (the roots of kind
        # MODULE_GLOBAL): a module's globals of the type
        # (wcwidth.table_overrides' 44 dict tables) are that many names, not a
        # container that grows with the calls, and the path would name only
        # the first of them.
        self.namespaces: set[int] = set()

    def release(self) -> None:
        """Drop every reference to inspected objects."""
        self.nodes.clear()
        self.holdings.clear()
        self.samples.clear()
        self.secondary.clear()
        self.roots.clear()
        self.seen.clear()
        self.kinds.clear()
        self.namespaces.clear()

    def index_bytes(self) -> int:
        """What the walk's bookkeeping costs, measured (containers) and estimated (their int keys)."""
        return (sys.getsizeof(self.nodes) + sys.getsizeof(self.seen) + self.parents.buffer_info()[1] * 8
                + 32 * len(self.seen) + sys.getsizeof(self.holdings) + _BYTES_PER_HOLDING * len(self.holdings))

    def run(self, max_paths: int) -> tuple[HolderPath, ...]:
        """Walk from the roots, climb for what the walk missed, name the best paths."""
        self._add_roots()
        self._walk()
        missing = self.wanted - {type_name(t) for (_, t) in self.holdings}
        if missing and self.reason == "":
            self._climb(missing)
        return self._paths(max_paths)

    # -- the walk -----------------------------------------------------------------

    def _add_node(self, obj: object, parent: int) -> int:
        self.seen.add(id(obj))
        self.nodes.append(obj)
        self.parents.append(parent)
        return len(self.nodes) - 1

    def _add_roots(self) -> None:
        own_thread = threading.get_ident()
        for name, module in _in_search_order(self.first):
            namespace = getattr(module, "__dict__", None) if isinstance(module, types.ModuleType) else None
            if type(namespace) is not dict or id(namespace) in self.seen:
                continue
            self.namespaces.add(id(namespace))
            if is_own_module(name):
                self.seen.add(id(namespace))  # never walked, never a path
                self.own.add(id(namespace))
                continue
            self.roots[self._add_node(namespace, -1)] = (name, MODULE_GLOBAL)
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        frames = sys._current_frames()
        try:
            for ident, frame in frames.items():
                if ident != own_thread:
                    self._add_thread_roots(names.get(ident, str(ident)), frame)
        finally:
            frames.clear()
            del frames

    def _add_thread_roots(self, thread: str, frame: types.FrameType | None) -> None:
        while frame is not None:
            function = code_name(frame.f_code)
            for local, value in list(frame.f_locals.items()):
                if id(value) not in self.seen and self._kind(type(value)):
                    self.roots[self._add_node(value, -1)] = (thread_local(thread, function, local), THREAD_STACK)
            frame = frame.f_back

    def _kind(self, cls: type) -> int:
        kind = self.kinds.get(cls)
        if kind is None:
            name = type_name(cls)
            if name in self.wanted:
                kind = 2
            elif issubclass(cls, _ATOMS) or _own_type(cls):
                kind = 0
            else:
                kind = 1
            self.kinds[cls] = kind
        return kind

    def _walk(self) -> None:
        nodes, parents, seen, holdings, fanout = self.nodes, self.parents, self.seen, self.holdings, self.fanout
        samples, namespaces, roots = self.samples, self.namespaces, self.roots
        kinds, get_referents = self.kinds, gc.get_referents
        index = 0
        while index < len(nodes):
            if index & 255 == 0 and not self._within_budget():
                return
            node = nodes[index]
            referents = get_referents(node)
            bulk: dict[type, int] | None = None
            counts = index not in roots or roots[index][1] != MODULE_GLOBAL
            if len(referents) > fanout and self._is_data(node, index):
                bulk = {}
            for referent in referents:
                cls = type(referent)
                kind = kinds.get(cls)
                if kind is None:
                    kind = self._kind(cls)
                if kind == 0:
                    continue
                if kind == 2 and counts and id(referent) not in namespaces:
                    held = holdings.get((index, cls), 0)
                    if not held:
                        samples[(index, cls)] = referent
                        if id(referent) in seen:
                            self.secondary.add((index, cls))
                    holdings[(index, cls)] = held + 1
                if bulk is not None:
                    taken = bulk.get(cls, 0)
                    if taken >= fanout:
                        continue
                    bulk[cls] = taken + 1
                if id(referent) not in seen:
                    seen.add(id(referent))
                    nodes.append(referent)
                    parents.append(index)
            index += 1

    def _is_data(self, node: object, index: int) -> bool:
        """Whether ``node`` holds data rather than names (only data is sampled)."""
        if isinstance(node, _DATA_CONTAINERS):
            return True
        if not isinstance(node, dict):
            return False
        if index in self.roots:
            return self.roots[index][1] == THREAD_STACK
        # Class, module and function dicts hold names. An instance's own __dict__
        # cannot be told from a dict attribute without materialising it, so it
        # counts as data: sampling it only matters past ``fanout`` same-type values.
        return not isinstance(self.nodes[self.parents[index]], (type, types.ModuleType, types.FunctionType))

    def _within_budget(self) -> bool:
        if time.perf_counter() > self.deadline:
            self.reason = "time budget exhausted after %d objects" % len(self.nodes)
        elif _BYTES_PER_NODE * len(self.nodes) + _BYTES_PER_HOLDING * len(self.holdings) > self.max_bytes:
            self.reason = "memory budget exhausted after %d objects" % len(self.nodes)
        return self.reason == ""

    # -- the climb, for types the walk did not reach ------------------------------

    def _climb(self, missing: frozenset[str]) -> None:
        """From one instance of each missing type, follow referrers up to the walked tree."""
        objects = gc.get_objects()
        try:
            found: dict[str, object] = {}
            classes = {cls for cls in set(map(type, objects)) if type_name(cls) in missing}
            for cls in classes:
                found.setdefault(type_name(cls), objects[list(map(type, objects)).index(cls)])
        finally:
            objects.clear()
            del objects
        where = {id(node): i for i, node in enumerate(self.nodes)}
        try:
            for target in found.values():
                if not self._within_budget():
                    return
                self._climb_from(target, where, found)
        finally:
            found.clear()
            where.clear()

    def _climb_from(self, target: object, where: dict[int, int], found: dict[str, object]) -> None:
        chain: list[object] = [target]
        self.own.update(map(id, (chain, where, self.nodes, self.samples, found)))
        frame: types.FrameType | None = sys._getframe()
        own_frames = set()
        while frame is not None:
            own_frames.add(id(frame))
            frame = frame.f_back
        joined = -1
        for _ in range(12):
            if time.perf_counter() > self.deadline:
                break
            referrers = gc.get_referrers(chain[-1])
            self.own.add(id(referrers))
            candidates = [r for r in referrers if id(r) not in self.own and id(r) not in own_frames]
            referrers.clear()
            joined = next((where[id(r)] for r in candidates if id(r) in where), -1)
            if joined >= 0 or not candidates:
                break
            chain.append(candidates[0])
            candidates.clear()
        if joined < 0:
            # No gc-visible root: the top of the chain is held from outside the gc,
            # by the C-held registry that grew, when one did.
            root = ("<%s>" % self.registry[0], REGISTRY) if self.registry else (_UNROOTED, UNKNOWN)
            self.roots[self._add_node(chain.pop(), -1)] = root
            joined = len(self.nodes) - 1
        while len(chain) > 1:
            joined = self._add_node(chain.pop(), joined)
        cls = type(target)
        self.holdings[(joined, cls)] = sum(1 for held in gc.get_referents(self.nodes[joined]) if type(held) is cls)
        self.samples[(joined, cls)] = target
        chain.clear()

    # -- naming -------------------------------------------------------------------

    def _paths(self, max_paths: int) -> tuple[HolderPath, ...]:
        """Name the holders of each type, most targets first, merging holders whose text is the same."""
        by_type: dict[type, list[tuple[int, int]]] = {}
        for (holder, cls), count in self.holdings.items():
            by_type.setdefault(cls, []).append((count, holder))
        merged: dict[str, dict[str, _Merged]] = {}
        for cls, holders in by_type.items():
            holders.sort(key=lambda item: -item[0])
            per_type = merged.setdefault(type_name(cls), {})
            # Many holders of one target each (instance dicts, say) are named only up to the fan-out.
            for count, holder in holders[: max(self.fanout, 4 * max_paths)]:
                named = self._name(holder, self.samples[(holder, cls)])
                named.primary = (holder, cls) not in self.secondary
                known = per_type.get(named.path)
                if known is None:
                    named.targets = count
                    per_type[named.path] = named
                    continue
                if len(known.values) < MAX_VALUES:
                    known.values += named.values
                if named.primary:
                    known.targets += count
                    known.primary = True
                else:
                    # A second holder of targets already counted: no double counting.
                    known.targets = max(known.targets, count)
        result = []
        for name in sorted(merged):
            for named in sorted(merged[name].values(), key=_rank)[:max_paths]:
                result.append(HolderPath(name, named.path, named.root_kind, named.container_type,
                                         named.container_length, named.targets, named.depth,
                                         tuple(named.values[:MAX_VALUES])))
        return tuple(result)

    def _name(self, holder: int, target: object) -> _Merged:
        """The path text from the root of ``holder`` to ``target``, and the largest container on it."""
        chain = [holder]
        while self.parents[chain[-1]] >= 0:
            chain.append(self.parents[chain[-1]])
        chain.reverse()
        text, kind = self.roots.get(chain[0], (_UNROOTED, UNKNOWN))
        objects = [self.nodes[i] for i in chain] + [target]
        try:
            namer = _Namer(text, kind, namespace=kind == MODULE_GLOBAL)
            container, length = type_name(type(objects[-2])) if len(objects) > 1 else "?", -1
            for parent, child in zip(objects, objects[1:]):
                # Namespaces (module, class, instance dicts) hold names, not the growth.
                parent_length = -1 if namer.namespace else _length(parent)
                if parent_length > length:
                    container, length = type_name(type(parent)), parent_length
                namer.step(parent, child)
            path = namer.finish()
            if namer.from_c and self.registry and kind == REGISTRY:
                # Held by the registry itself: its size is what grows.
                container, length = self.registry
            shown = (values.held_item(objects[-2], target),) if self.show_values and len(objects) > 1 else ()
        finally:
            objects.clear()
        # A frame local is one reference further from its root (the frame) than the value itself.
        depth = len(chain) + (1 if kind == THREAD_STACK else 0)
        return _Merged(path, namer.kind, container, length, 0, depth, values=shown)


@dataclass
class _Merged:
    """A named path while holders that share its text are being added up."""

    path: str
    root_kind: str
    container_type: str
    container_length: int
    targets: int
    depth: int
    primary: bool = True
    values: tuple[str, ...] = ()


def _rank(named: _Merged) -> tuple[int, bool, int]:
    """The most targets first (the growing container holds the most), then shortest-path holders, then depth.

    Ranking shortest paths first let a module global holding one logger
    outrank ``loggerDict`` holding thousands.
    """
    return (-named.targets, not named.primary, named.depth)


class _Namer:
    """Turns a chain of objects into path text, one edge at a time, values redacted."""

    def __init__(self, text: str, kind: str, namespace: bool) -> None:
        self.text = text
        self.kind = kind
        # Held from C (no Python container; a registry kept in C, or nothing
        # named): every re-rooted name keeps saying so.
        self.from_c = kind == UNKNOWN or (kind == REGISTRY and text.startswith("<"))
        self.c_root = (text, kind) if self.from_c else None
        self.namespace = namespace  # the current object maps attribute names to values
        self.closure: types.FunctionType | None = None

    def finish(self) -> str:
        if self.kind in (MODULE_GLOBAL, CLASS_ATTRIBUTE) and self.text.startswith(_REGISTRY_PREFIXES):
            self.kind = REGISTRY
        return self.text

    def step(self, parent: object, child: object) -> None:
        namespace, self.namespace = self.namespace, False
        closure, self.closure = self.closure, None
        canonical = _known_registries().get(id(child))
        if canonical is not None:
            # The stdlib's registries are reachable from many places (every
            # logger has .manager): name them the one way the docs do.
            self._reroot(canonical, REGISTRY)
            self.namespace = isinstance(child, dict) and canonical == "sys.modules"
            return
        try:
            edge = self._edge(parent, child, namespace, closure)  # may re-root: read self.text after it
            self.text += edge
        except Exception:  # noqa: BLE001 - a hostile __eq__ or descriptor: name the edge by type only
            self.text += "->" + type_name(type(child))

    def _reroot(self, text: str, kind: str) -> str:
        """Start the text again from a name a developer knows (a class, a module, a function)."""
        if self.c_root is not None:
            text = "%s %s" % (self.c_root[0], text)  # still held from outside the gc: say so
            kind = self.c_root[1]
        self.text, self.kind, self.namespace = text, kind, True
        return ""

    def _edge(self, parent: object, child: object, namespace: bool, closure: types.FunctionType | None) -> str:
        if isinstance(parent, (dict, types.MappingProxyType)):
            return _key_text(parent, child) if namespace else "[...]"
        if isinstance(parent, (list, tuple, deque)):
            if closure is not None and parent is closure.__closure__:
                index = next(i for i, cell in enumerate(parent) if cell is child)
                self.closure = closure
                return " '%s'" % closure.__code__.co_freevars[index]
            return "[...]"
        if isinstance(parent, (set, frozenset)):
            return "{...}"
        if isinstance(parent, types.CellType):
            return "" if closure is not None else ".cell_contents"
        if isinstance(parent, type):
            if type(child) is dict and _is_class_dict(parent, child):
                return self._reroot(type_name(parent), CLASS_ATTRIBUTE)
            return ".__mro__" if child in parent.__mro__ else "->" + type_name(type(child))
        if isinstance(parent, types.ModuleType) and child is parent.__dict__:
            return self._reroot(parent.__name__, MODULE_GLOBAL)
        if isinstance(parent, types.FunctionType):
            return self._function_edge(parent, child)
        if isinstance(parent, types.MethodType):
            return ".__self__" if child is parent.__self__ else ".__func__"
        if isinstance(parent, (types.FrameType, types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)):
            return _frame_edge(parent, child)
        if isinstance(parent, types.TracebackType):
            return ".tb_frame" if child is parent.tb_frame else ".tb_next"
        return self._attribute_edge(parent, child)

    def _function_edge(self, function: types.FunctionType, child: object) -> str:
        if child is function.__closure__:
            self.closure = function
            name = "%s.%s closure" % (function.__module__, function.__qualname__)
            if self.text.endswith(("[...]", "{...}")):
                # One of many callbacks in a container (a listeners list):
                # the container is what grows, so the name keeps it.
                return "->" + name
            self._reroot(name, CLOSURE)
            self.namespace = False
            return ""
        for attribute in ("__defaults__", "__kwdefaults__", "__globals__"):
            if getattr(function, attribute) is child:
                return "." + attribute
        if child is function.__dict__:
            self.namespace = True
            return ""
        return "->" + type_name(type(child))

    def _attribute_edge(self, parent: object, child: object) -> str:
        attributes = _instance_dict(parent)
        if attributes is child:
            self.namespace = True
            return ""
        if attributes is not None:
            text = _key_text(attributes, child)
            if text != "[...]":
                return text
        for klass in type(parent).__mro__:
            slots = klass.__dict__.get("__slots__", ())
            for slot in (slots,) if isinstance(slots, str) else slots:
                descriptor = klass.__dict__.get(slot)
                if isinstance(descriptor, types.MemberDescriptorType) and _slot_value(descriptor, parent) is child:
                    return "." + slot
        if child is type(parent):
            return ".__class__"
        if type(parent).__name__ == "_lru_cache_wrapper":
            return LRU_CACHE
        return "->" + type_name(type(child))


def _known_registries() -> dict[int, str]:
    """ids of the stdlib registry objects that are alive in this process, by canonical name."""
    found: dict[int, str] = {id(sys.modules): "sys.modules"}
    logging = sys.modules.get("logging")
    manager = getattr(getattr(logging, "Logger", None), "manager", None)
    if manager is not None:
        found[id(manager)] = "logging.Logger.manager"
        registry = getattr(manager, "loggerDict", None)
        if registry is not None:
            found[id(registry)] = "logging.Logger.manager.loggerDict"
    return found


def _own_type(cls: type) -> bool:
    module = getattr(cls, "__module__", None)
    return isinstance(module, str) and is_own_module(module)


def _key_text(namespace: Mapping[Any, object], child: object) -> str:
    for key, value in namespace.items():
        if value is child:
            return "." + key if type(key) is str and key.isidentifier() else "[...]"
    return "[...]"


def _is_class_dict(cls: type, candidate: dict[object, object]) -> bool:
    proxy = cls.__dict__
    return len(proxy) == len(candidate) and all(proxy.get(k) is v for k, v in candidate.items())  # type: ignore[call-overload]


def _instance_dict(obj: object) -> dict[str, object] | None:
    try:
        attributes = object.__getattribute__(obj, "__dict__")
    except Exception:  # noqa: BLE001 - no __dict__ (slots, builtins)
        return None
    return attributes if type(attributes) is dict else None


def _slot_value(descriptor: types.MemberDescriptorType, obj: object) -> object:
    try:
        return descriptor.__get__(obj, type(obj))
    except AttributeError:  # an unset slot
        return None


def _frame_edge(owner: object, child: object) -> str:
    frame = owner if isinstance(owner, types.FrameType) else _suspended_frame(owner)
    if frame is None:
        return "->" + type_name(type(child))
    prefix = "" if frame is owner else " frame %s()" % code_name(frame.f_code)
    for local, value in frame.f_locals.items():
        if value is child:
            return "%s local '%s'" % (prefix, local)
    return ".f_back" if child is frame.f_back else "->" + type_name(type(child))


def _suspended_frame(owner: object) -> types.FrameType | None:
    for attribute in ("gi_frame", "cr_frame", "ag_frame"):
        frame = getattr(owner, attribute, None)
        if isinstance(frame, types.FrameType):
            return frame
    return None


_BUILTIN_LENGTHS: dict[type[Sized], object] = {cls: cls.__len__ for cls in (dict, list, tuple, set, frozenset, deque)}


def _length(obj: object) -> int:
    """len() of builtin containers (and subclasses that keep their len); never calls user code."""
    for base, length in _BUILTIN_LENGTHS.items():
        if isinstance(obj, base):
            return len(obj) if getattr(type(obj), "__len__", None) is length else -1
    return -1
