"""Tests for bilge.samplers.holders: named paths from a root to the holders of growing types."""

from __future__ import annotations

import atexit
import gc
import logging
import sys
import threading
import types
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from bilge.samplers import census, code_name
from bilge.samplers.holders import HolderPath, HolderSearch, _in_search_order, find_holders, registry_counts

MODULE = "bilge_holders_fixture.app"

SOURCE = '''
class Order:
    pass

class AuditEntry:
    pass

class AuditLog:
    entries = []

class Session:
    pass

class Service:
    _instance = None

    def __init__(self):
        self.cache = {}

class Event:
    pass

def register():
    handlers = []
    def handler(event):
        handlers.append(event)
    return handler

_ORDERS = {}
_SESSIONS = {}
'''


@pytest.fixture
def app() -> Iterator[types.ModuleType]:
    """A real module, ``bilge_holders_fixture.app``, in sys.modules for the test's duration."""
    module = types.ModuleType(MODULE)
    exec(compile(SOURCE, "<%s>" % MODULE, "exec"), module.__dict__)
    sys.modules[MODULE] = module
    yield module
    del sys.modules[MODULE]
    module.__dict__.clear()


def paths_of(result: HolderSearch, name: str) -> list[HolderPath]:
    """The paths found for one type name, best first."""
    return [path for path in result.paths if path.type_name == name]


def test_module_global_dict_is_named_with_its_module(app: types.ModuleType) -> None:
    """Instances in a module-level dict are held by ``module._ORDERS[...]``, the dict being the container."""
    for i in range(300):
        app._ORDERS[i] = app.Order()
    result = find_holders([MODULE + ".Order"])
    assert result.complete and result.reason == ""
    (best, *_) = paths_of(result, MODULE + ".Order")
    assert best == HolderPath(MODULE + ".Order", MODULE + "._ORDERS[...]", "module-global", "dict", 300, 300, 2)


def test_a_modules_own_globals_and_namespaces_are_never_holders(app: types.ModuleType) -> None:
    """A module whose globals are 40 dict tables does not hold "40 dicts" (the path would name only the first,
    often ``__builtins__``: seen in CI as ``wcwidth.table_overrides.__builtins__``), and no module or function
    holds builtins' namespace: the dicts that grow are the ones in ``_SESSIONS``."""
    for i in range(40):
        setattr(app, "TABLE_%d" % i, {"k": i})
    for i in range(30):
        app._SESSIONS[i] = {"session": i}
    result = find_holders(["dict"], max_paths_per_type=50, max_seconds=30)
    texts = [p.path for p in paths_of(result, "dict")]
    assert MODULE + "._SESSIONS[...]" in texts
    assert not [t for t in texts if t.startswith(MODULE + ".TABLE_") or t.endswith("__builtins__")], texts


def test_class_attribute_list_is_named_from_the_class(app: types.ModuleType) -> None:
    """A list in a class attribute is named ``module.Class.attr[...]`` with root kind class-attribute."""
    app.AuditLog.entries.extend(app.AuditEntry() for _ in range(200))
    (best, *_) = paths_of(find_holders([MODULE + ".AuditEntry"]), MODULE + ".AuditEntry")
    assert best.path == MODULE + ".AuditLog.entries[...]"
    assert (best.root_kind, best.container_type, best.container_length, best.targets) == (
        "class-attribute", "list", 200, 200)


def test_instance_attributes_along_the_path_are_named(app: types.ModuleType) -> None:
    """A singleton's dict attribute reads ``module.Service._instance.cache[...]``."""
    app.Service._instance = app.Service()
    for i in range(120):
        app.Service._instance.cache["order-%d" % i] = app.Order()
    (best, *_) = paths_of(find_holders([MODULE + ".Order"]), MODULE + ".Order")
    assert best.path == MODULE + ".Service._instance.cache[...]"
    assert (best.root_kind, best.container_type, best.container_length) == ("class-attribute", "dict", 120)


def test_per_job_loggers_are_a_registry() -> None:
    """Loggers from getLogger(f"job.{i}") are held by ``logging.Logger.manager.loggerDict[...]``, a registry."""
    names = ["bilge-holders-test.job.%d" % i for i in range(150)]
    for name in names:
        logging.getLogger(name)
    try:
        (best, *_) = paths_of(find_holders(["logging.Logger"]), "logging.Logger")
        assert best.path == "logging.Logger.manager.loggerDict[...]"
        assert best.root_kind == "registry"
        assert best.container_type == "dict"
        assert best.container_length >= 150
        assert best.targets >= 150
    finally:
        manager = logging.Logger.manager
        for name in names + ["bilge-holders-test.job", "bilge-holders-test"]:
            manager.loggerDict.pop(name, None)


def test_closure_cell_is_named_by_its_function_and_variable(app: types.ModuleType) -> None:
    """Events appended by a closure are held by ``module.register.<locals>.handler closure 'handlers'[...]``."""
    app._HOOK = app.register()
    for _ in range(100):
        app._HOOK(app.Event())
    (best, *_) = paths_of(find_holders([MODULE + ".Event"]), MODULE + ".Event")
    assert best.path == MODULE + ".register.<locals>.handler closure 'handlers'[...]"
    assert (best.root_kind, best.container_type, best.container_length, best.targets) == (
        "closure", "list", 100, 100)


def test_callbacks_in_a_container_are_named_through_the_container(app: types.ModuleType) -> None:
    """Closures kept in a listeners list: the path keeps the list (what grows) before the closure's variable."""
    exec(compile("class Summary:\n    pass\n", "<%s>" % MODULE, "exec"), app.__dict__)

    def subscribe(summary: object) -> object:
        def on_settled() -> object:
            return summary
        return on_settled

    app._LISTENERS = [subscribe(app.Summary()) for _ in range(30)]
    (best, *_) = paths_of(find_holders([MODULE + ".Summary"]), MODULE + ".Summary")
    assert best.path == "%s._LISTENERS[...]->%s.%s closure 'summary'" % (
        MODULE, __name__, subscribe.__qualname__.replace("subscribe", "subscribe.<locals>.on_settled"))
    assert (best.container_type, best.container_length, best.targets) == ("list", 30, 30)


def test_thread_stack_local_is_named_by_thread_function_and_variable(app: types.ModuleType) -> None:
    """A list local to a function running in another thread is held by ``<thread NAME> frame fn() local 'batch'``."""
    release = threading.Event()
    ready = threading.Event()

    def worker() -> None:
        batch = [app.Event() for _ in range(80)]
        ready.set()
        release.wait(30)
        del batch

    thread = threading.Thread(target=worker, name="holders-test-worker", daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        (best, *_) = paths_of(find_holders([MODULE + ".Event"]), MODULE + ".Event")
    finally:
        release.set()
        thread.join(10)
    qualname = code_name(worker.__code__)  # the qualified name on 3.11+, the bare one on 3.10
    assert best.path == "<thread holders-test-worker> frame %s() local 'batch'[...]" % qualname
    assert (best.root_kind, best.container_type, best.container_length, best.targets, best.depth) == (
        "thread-stack", "list", 80, 80, 2)


def test_a_thread_local_closure_is_named_from_its_function_not_from_the_thread(app: types.ModuleType) -> None:
    """A closure held by another thread's local re-roots at its function, as from a module: only paths held
    from C keep their root's text in front of a re-rooted name."""
    release = threading.Event()
    ready = threading.Event()

    def worker() -> None:
        handler = app.register()
        for _ in range(12):
            handler(app.Event())
        ready.set()
        release.wait(30)
        del handler

    thread = threading.Thread(target=worker, name="holders-test-closure", daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        (best, *_) = paths_of(find_holders([MODULE + ".Event"]), MODULE + ".Event")
    finally:
        release.set()
        thread.join(10)
    assert best.path == "%s.register.<locals>.handler closure 'handlers'[...]" % MODULE
    assert best.root_kind == "closure"


def test_values_and_data_keys_are_redacted(app: types.ModuleType) -> None:
    """Data-dict keys become ``[...]``; only identifier-like names of namespaces are shown."""
    app._SESSIONS["token-s3cr3t-value"] = app.Session()
    app.__dict__["not an identifier s3cr3t"] = [app.Session()]
    result = find_holders([MODULE + ".Session"], max_paths_per_type=5)
    texts = sorted(path.path for path in paths_of(result, MODULE + ".Session"))
    assert texts == [MODULE + "._SESSIONS[...]", MODULE + "[...][...]"]
    assert "s3cr3t" not in repr(result)


def test_show_values_renders_held_items_without_running_user_code(app: types.ModuleType) -> None:
    """Asked for values, a path carries a few ``key: item`` renderings; the item's __repr__ never runs."""
    def hostile_repr(self: object) -> str:
        raise AssertionError("user code ran")

    app.Session.__repr__ = hostile_repr
    for i in range(30):
        session = app.Session()
        session.user = "user-%d" % i
        app._SESSIONS["token-%d" % i] = session
    (best, *_) = paths_of(find_holders([MODULE + ".Session"], show_values=True), MODULE + ".Session")
    assert best.path == MODULE + "._SESSIONS[...]"
    assert 1 <= len(best.values) <= 3
    assert all(v.startswith("'token-") and ": Session(user='user-" in v for v in best.values), best.values


def test_keeps_no_reference_to_inspected_objects(app: types.ModuleType) -> None:
    """After the call, the targets, their container and another thread's locals can all be freed."""

    class Orders(dict[int, object]):
        """A dict that takes weak references."""

    app._ORDERS = Orders((i, app.Order()) for i in range(50))
    release, ready = threading.Event(), threading.Event()
    refs: list[weakref.ref[object]] = [weakref.ref(order) for order in app._ORDERS.values()]
    refs.append(weakref.ref(app._ORDERS))

    def worker() -> None:
        batch = [app.Event() for _ in range(20)]
        refs.extend(weakref.ref(event) for event in batch)
        ready.set()
        release.wait(30)

    thread = threading.Thread(target=worker, name="holders-test-refs", daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        result = find_holders([MODULE + ".Order", MODULE + ".Event"])
    finally:
        release.set()
        thread.join(10)
    assert {path.root_kind for path in result.paths} == {"module-global", "thread-stack"}
    app._ORDERS = None
    gc.collect()
    assert [ref for ref in refs if ref() is not None] == []


def test_time_budget_gives_a_partial_result_and_a_reason(app: types.ModuleType) -> None:
    """With no time left the search stops at once, says why, and still returns a HolderSearch."""
    app._ORDERS[1] = app.Order()
    result = find_holders([MODULE + ".Order"], max_seconds=0.0)
    assert result.complete is False
    assert result.reason.startswith("time budget exhausted after ")
    assert result.paths == ()


def test_memory_budget_gives_a_partial_result_and_a_reason(app: types.ModuleType) -> None:
    """A tiny index budget stops the walk with a memory reason instead of growing."""
    app._ORDERS[1] = app.Order()
    result = find_holders([MODULE + ".Order"], max_index_bytes=1)
    assert result.complete is False
    assert result.reason.startswith("memory budget exhausted after ")


def test_errors_never_reach_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure inside the walk becomes an empty result whose reason names only the exception type."""

    def broken(*objects: object) -> list[object]:
        raise RuntimeError("value that must not leak")

    monkeypatch.setattr(gc, "get_referents", broken)
    result = find_holders(["dict"])
    assert (result.paths, result.complete, result.reason) == ((), False, "holder search failed (RuntimeError)")


def test_atexit_held_objects_have_no_visible_root(app: types.ModuleType) -> None:
    """A closure kept only by atexit (outside the gc) is still named, from its function, with root kind unknown."""
    handler = app.register()
    for _ in range(10):
        handler(app.Event())
    atexit.register(handler)
    try:
        (best, *_) = paths_of(find_holders([MODULE + ".Event"], max_seconds=5.0), MODULE + ".Event")
    finally:
        atexit.unregister(handler)
    assert best.path == "<held from C> %s.register.<locals>.handler closure 'handlers'[...]" % MODULE
    assert (best.root_kind, best.container_type, best.container_length, best.targets) == ("unknown", "list", 10, 10)


class _Exporter:
    """Registers its flush with atexit, as code that wants "flush on exit" per object does."""

    def __init__(self) -> None:
        self.rows = [[n] for n in range(5)]
        atexit.register(self.flush)

    def flush(self) -> None:
        self.rows.clear()


def test_objects_held_by_atexit_callbacks_are_named_after_the_registry_that_grew() -> None:
    """A bound method registered with atexit per object: no Python container refers to it, atexit's count grew
    since the previous look, so the path starts at atexit's callbacks and its length is their count."""
    name = census.type_name(_Exporter)
    before = registry_counts()
    made = [_Exporter() for _ in range(20)]
    flushes = [m.flush for m in made]
    del made
    try:
        (best, *_) = paths_of(find_holders([name], max_seconds=5.0, registries_before=before), name)
        assert best.path == "<atexit callbacks>.__self__"
        assert best.root_kind == "registry"
        assert best.container_type == "atexit callbacks" and best.container_length >= 20
        # Without an earlier count nothing says which registry: held from C, plainly.
        (plain, *_) = paths_of(find_holders([name], max_seconds=5.0), name)
        assert (plain.path, plain.root_kind) == ("<held from C>.__self__", "unknown")
    finally:
        for flush in flushes:
            atexit.unregister(flush)


def test_the_callers_own_locals_and_the_searchs_own_lists_are_never_on_a_path() -> None:
    """Objects held only by the caller's locals have no root: neither its frame nor gc.get_objects() is named."""

    class Stranded:
        """Instances only a local of this test holds."""

    held_here = [Stranded() for _ in range(30)]
    name = census.type_name(Stranded)
    (best,) = paths_of(find_holders([name], max_seconds=5.0), name)
    assert best == HolderPath(name, "<held from C>[...]", "unknown", "list", 30, 30, 1)
    assert len(held_here) == 30


def test_paths_through_bilge_are_ignored(app: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects held only by a bilge module are never reported through bilge."""
    monkeypatch.setattr(census, "_holders_test_cache", [app.Order() for _ in range(20)], raising=False)
    result = find_holders([MODULE + ".Order"], max_seconds=5.0)
    assert all("bilge.samplers" not in path.path for path in result.paths)


def test_the_walk_starts_from_the_modules_of_growing_containers_then_the_applications(
        app: types.ModuleType, tmp_path: Path) -> None:
    """Breadth-first under a time budget, a search on a loaded machine can end among a thousand library modules
    (seen in CI: a constant wcwidth table named instead of the growing audit list): the modules of containers
    seen growing come first, then the application's own (outside the standard library and site-packages)."""
    own = types.ModuleType("bilge_holders_fixture.views")
    own.__file__ = str(tmp_path / "views.py")
    sys.modules[own.__name__] = own
    try:
        order = [name for name, _ in _in_search_order([MODULE + "._SESSIONS[...]", "no.such.module._X"])]
        assert order[0] == MODULE
        assert order.index(own.__name__) < min(order.index("json"), order.index("gc"), order.index("pytest"))
        assert sorted(order) == sorted(sys.modules)  # every module, once
    finally:
        del sys.modules[own.__name__]
