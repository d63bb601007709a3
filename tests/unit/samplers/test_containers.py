"""Tests for bilge.samplers.containers: module-level containers followed by path, without user code."""

from __future__ import annotations

import atexit
import functools
import gc
import queue
import sys
import threading
import time
import types
import weakref
from collections.abc import Iterator

import pytest

from bilge.samplers.containers import ContainerScanner


class Registry:
    items: list[str] = []


class Exporter:
    def __init__(self) -> None:
        self._metrics: dict[str, float] = {}


class Proxy:
    """Like Celery's current_app or werkzeug's LocalProxy: reading its __dict__ runs code."""

    evaluated = 0

    @property  # type: ignore[misc]
    def __dict__(self) -> dict[str, object]:  # type: ignore[override]
        Proxy.evaluated += 1
        raise RuntimeError("evaluated")


class Sneaky(list):  # type: ignore[type-arg]
    def __len__(self) -> int:
        raise RuntimeError("user code ran")


class WeakSet(set):  # type: ignore[type-arg]
    """A set a weak reference can point to (a plain set cannot)."""


@pytest.fixture()
def module() -> Iterator[types.ModuleType]:
    mod = types.ModuleType("leaky_app")
    mod._SEEN = WeakSet()  # type: ignore[attr-defined]
    mod.COUNTRIES = {str(i): i for i in range(300)}  # type: ignore[attr-defined]  # a static table
    Registry.__module__ = "leaky_app"
    Registry.items = []
    mod.Registry = Registry  # type: ignore[attr-defined]
    mod.EXPORTS = Exporter()  # type: ignore[attr-defined]
    mod.current_app = Proxy()  # type: ignore[attr-defined]
    mod.sneaky = Sneaky()  # type: ignore[attr-defined]
    sys.modules["leaky_app"] = mod
    try:
        yield mod
    finally:
        del sys.modules["leaky_app"]


def grow(mod: types.ModuleType, n: int, start: int) -> None:
    for i in range(start, start + n):
        mod._SEEN.add("carrier:%d" % i)
        Registry.items.append("x%d" % i)
        mod.EXPORTS._metrics["order-%d" % i] = float(i)
        mod.sneaky.append(i)


def readings(scanner: ContainerScanner) -> dict[str, tuple[str, int, str]]:
    return {path: (container, length, element) for path, container, length, element in scanner.scan()[1]
            if path.startswith("leaky_app.")}


def test_moving_containers_are_followed_static_ones_never(module: types.ModuleType) -> None:
    scanner = ContainerScanner()
    grow(module, 70, 0)
    assert readings(scanner) == {}  # first sight: nothing has moved yet
    grow(module, 30, 70)
    assert readings(scanner) == {
        "leaky_app._SEEN": ("tests.unit.samplers.test_containers.WeakSet", 100, "str"),
        "leaky_app.Registry.items": ("list", 100, "str"),
        "leaky_app.EXPORTS._metrics": ("dict", 100, "float"),
        "leaky_app.sneaky": ("tests.unit.samplers.test_containers.Sneaky", 100, "int"),
    }
    grow(module, 5, 100)
    assert readings(scanner)["leaky_app._SEEN"][1] == 105
    assert Proxy.evaluated == 0  # never asked for its __dict__


def test_a_container_shorter_than_the_minimum_is_not_followed(module: types.ModuleType) -> None:
    scanner = ContainerScanner()
    grow(module, 10, 0)
    scanner.scan()
    grow(module, 10, 10)
    assert readings(scanner) == {}


def test_no_reference_to_a_container_outlives_a_scan(module: types.ModuleType) -> None:
    scanner = ContainerScanner()
    grow(module, 70, 0)
    scanner.scan()
    grow(module, 30, 70)
    scanner.scan()
    ref = weakref.ref(module._SEEN)
    del module._SEEN
    gc.collect()
    assert ref() is None
    assert "leaky_app._SEEN" not in readings(scanner)  # gone: not read, not an error


def test_followed_containers_are_bounded(module: types.ModuleType) -> None:
    scanner = ContainerScanner(max_followed=1)
    grow(module, 70, 0)
    scanner.scan()
    grow(module, 30, 70)
    assert len(scanner.scan()[1]) == 1


def scanned(scanner: ContainerScanner, prefix: str) -> dict[str, tuple[str, int, str]]:
    return {path: (container, length, element) for path, container, length, element in scanner.scan()[1]
            if path.startswith(prefix)}


def test_an_lru_cache_is_followed_through_the_dict_inside_it(module: types.ModuleType) -> None:
    exec(compile(
        "import functools\n"
        "@functools.lru_cache(maxsize=None)\n"
        "def tax_table(order): return {'order': order}\n"
        "class RepoClient:\n"
        "    @functools.lru_cache(maxsize=None)\n"
        "    def read_file(self, path): return [path]\n",
        "/srv/leaky_app.py", "exec"), module.__dict__)
    scanner = ContainerScanner()

    def call(n: int, start: int) -> None:
        for i in range(start, start + n):
            module.tax_table(i)
            module.RepoClient().read_file("f%d" % i)

    call(70, 0)
    scanner.scan()
    call(30, 70)
    assert scanned(scanner, "leaky_app.") == {
        "leaky_app.tax_table<lru_cache>": ("dict", 100, "dict"),
        # Its keys hold every client (self): the classic method-cache leak.
        "leaky_app.RepoClient.read_file<lru_cache>": ("dict", 100, "list"),
    }
    module.tax_table.cache_clear()
    call(1, 200)
    assert scanned(scanner, "leaky_app.")["leaky_app.tax_table<lru_cache>"][1] == 1


def _flusher(inbox: queue.Queue[object]) -> None:
    pending = []
    while True:
        item = inbox.get()
        if item is None:
            return
        pending.append(item)


def test_a_local_of_a_long_lived_function_in_another_thread_is_followed() -> None:
    inbox: queue.Queue[object] = queue.Queue()
    thread = threading.Thread(target=_flusher, args=(inbox,), name="audit-flusher", daemon=True)
    thread.start()
    scanner = ContainerScanner()
    mine: list[int] = []  # the main thread's locals are never read (its frames are tasks that come and go)

    def feed(n: int) -> None:
        for i in range(n):
            inbox.put({"i": i})
            mine.append(i)
        while inbox.qsize():
            time.sleep(0.01)
        time.sleep(0.05)

    try:
        feed(70)
        scanner.scan(discover=True)
        feed(30)
        assert scanned(scanner, "<thread ") == {
            "<thread audit-flusher> frame _flusher() local 'pending'": ("list", 100, "dict")}
        frames = sys._current_frames()
        frame = frames[thread.ident]  # type: ignore[index]
        del frames
        while frame is not None and frame.f_code.co_name != "_flusher":
            frame = frame.f_back
        assert frame is not None
        frame.f_trace = lambda *_: None  # a debugger traces it: left alone
        del frame
        feed(10)
        assert scanned(ContainerScanner(), "<thread ") == {}  # a fresh discovery skips it
    finally:
        inbox.put(None)
        thread.join(5)


def test_the_exit_callbacks_are_counted() -> None:
    registered = []
    scanner = ContainerScanner()
    try:
        for step in (70, 30):
            for i in range(step):
                callback = functools.partial(print, i)
                atexit.register(callback)
                registered.append(callback)
            found = scanned(scanner, "<atexit")
        assert found["<atexit callbacks>"][:2] == ("callbacks", atexit._ncallbacks())  # type: ignore[attr-defined]
    finally:
        for callback in registered:
            atexit.unregister(callback)


def test_keeps_pace_tells_a_leak_from_a_cache_filling_up() -> None:
    """One test of steadiness for the agent and the analysis: never shrinking, and the second half's rate at
    least a quarter of the first's; ``every_step`` asks for growth at every reading too."""
    from bilge.samplers.containers import keeps_pace

    leak = [(100, 64), (200, 97), (300, 131), (400, 164)]
    assert keeps_pace(leak) and keeps_pace(leak, min_growth=100, every_step=True)
    assert not keeps_pace(leak, min_growth=101)
    filling = [(100, 64), (200, 300), (300, 330), (400, 335)]  # a cache filling ever slower
    assert not keeps_pace(filling)
    assert not keeps_pace([(100, 64), (200, 90), (300, 80), (400, 120)])  # shrank once: an evicting cache
    paused = [(100, 64), (200, 64), (300, 100), (400, 140)]
    assert keeps_pace(paused) and not keeps_pace(paused, every_step=True)
    assert not keeps_pace([(100, 64), (200, 90)])  # too few readings


def test_bounded_deques_and_caches_are_not_followed(module: types.ModuleType) -> None:
    """A deque with a maxlen and an lru_cache with a maxsize stop at their bound: filling up during warm-up they
    would look like a leak, and they never hold one."""
    import collections

    exec(compile("import functools\n@functools.lru_cache(maxsize=256)\ndef rates(order): return {'o': order}\n",
                 "/srv/leaky_app.py", "exec"), module.__dict__)
    module.RECENT = collections.deque(maxlen=500)  # type: ignore[attr-defined]
    scanner = ContainerScanner()
    for start in (0, 70, 140):
        for i in range(start, start + 70):
            module.rates(i)
            module.RECENT.append(i)
        found = scanned(scanner, "leaky_app.")
    assert "leaky_app.RECENT" not in found and "leaky_app.rates<lru_cache>" not in found


def test_a_quiet_container_is_read_less_often_and_followed_soon_once_it_moves(module: types.ModuleType) -> None:
    """A container whose length stayed put at three reads is read at one scan in four; once it moves it is read
    at every scan again and followed, within four scans."""
    from bilge.samplers import containers

    module.LATER = list(range(100))  # type: ignore[attr-defined]
    scanner = ContainerScanner()
    reads = []
    real_find = containers._find

    def counting(route: tuple[str, ...], kinds: object = None) -> object:
        if route == ("leaky_app", "LATER"):
            reads.append(route)
        return real_find(route, kinds)  # type: ignore[arg-type]

    containers._find = counting  # type: ignore[assignment]
    try:
        for scan in range(12):
            scanner.scan(discover=scan == 0)
        assert 4 <= len(reads) <= 6  # three reads to turn quiet, then one in four
        scans = 0
        found: dict[str, tuple[str, int, str]] = {}
        while "leaky_app.LATER" not in found and scans < 8:
            module.LATER.extend(range(10))
            found = scanned(scanner, "leaky_app.")
            scans += 1
        assert "leaky_app.LATER" in found and scans <= containers.QUIET_EVERY + 1
        for _ in range(3):
            module.LATER.extend(range(10))
            assert "leaky_app.LATER" in scanned(scanner, "leaky_app.")  # followed: read at every scan
    finally:
        containers._find = real_find  # type: ignore[assignment]
