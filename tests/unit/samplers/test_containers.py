"""Tests for bilge.samplers.containers: module-level containers followed by path, without user code."""

from __future__ import annotations

import gc
import sys
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
