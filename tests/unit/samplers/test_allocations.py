"""The allocation window: bounded tracemalloc sessions that name where surviving memory was allocated."""

from __future__ import annotations

import inspect
import time
import tracemalloc
from typing import Any

import pytest

from bilge.samplers.allocations import AllocationWindow, owner_of

_KEPT: list[object] = []


class Invoice:
    """A plain class: on CPython 3.11 its instances have a managed __dict__."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.lines = [number]


def _invoice_task(i: int) -> None:
    _KEPT.append(Invoice(i))  # the invoice line


def _leaky_task(i: int) -> None:
    _KEPT.append({"order": i, "lines": [str(i) * 50 for _ in range(20)]})  # the leak line


def _transient_task(i: int) -> int:
    return len([str(i) * 100 for _ in range(50)])


# Code made at run time, as an ORM or attrs generates __init__: its filename
# is no file a user could open.
_GENERATED: dict[str, Any] = {}
exec(compile("def make(i):\n    return {'n': i, 'labels': [str(i) * 40 for _ in range(10)]}\n",
             "<generated __init__ for Shipment>", "exec"), _GENERATED)


def _shipment_task(i: int) -> None:
    _KEPT.append(_GENERATED["make"](i))  # the shipment line


LEAK_LINE = inspect.getsourcelines(_leaky_task)[1] + 1
SHIPMENT_LINE = inspect.getsourcelines(_shipment_task)[1] + 1
INVOICE_LINE = inspect.getsourcelines(_invoice_task)[1] + 1
INVOICE = "%s.Invoice" % __name__


@pytest.fixture(autouse=True)
def _no_tracing_left():
    yield
    _KEPT.clear()
    if tracemalloc.is_tracing():
        tracemalloc.stop()
        pytest.fail("a test left tracemalloc running")


def _drive(window: AllocationWindow, tasks: int) -> None:
    for i in range(tasks):
        (_leaky_task if i % 3 == 0 else _transient_task)(i)
        window.on_task_finished()


def test_window_names_the_line_whose_allocations_survive():
    """Tasks that keep data at one line: that line is the top site, and tracing is off afterwards."""
    window = AllocationWindow(warmup_tasks=2, window_tasks=30)
    assert window.open()
    _drive(window, 40)
    assert not tracemalloc.is_tracing(), "tracing must stop at the second snapshot"
    result = window.poll()
    assert result is not None and result.status == "done"
    assert result.tasks == 32
    top = result.sites[0]
    assert top.file == __file__
    assert top.line == LEAK_LINE
    assert top.owner == "user"
    assert top.count >= 10 * 20
    assert not window.active


def test_window_joins_growing_types_to_the_line_that_made_them():
    """Objects of a growing class born in the window are traced back to the line that created them."""
    window = AllocationWindow(warmup_tasks=2, window_tasks=30)
    old = [Invoice(-1) for _ in range(50)]  # born before the window: no trace, never sampled
    assert window.open([INVOICE, "builtins.NeverSeen"])
    for i in range(40):
        (_invoice_task if i % 2 else _transient_task)(i)
        window.on_task_finished()
    result = window.poll()
    assert result is not None and result.status == "done"
    joined = [t for t in result.type_sites if t.type == INVOICE]
    assert joined, result.type_sites
    assert (joined[0].file, joined[0].line, joined[0].owner) == (__file__, INVOICE_LINE, "user")
    assert joined[0].count == joined[0].sampled >= 15
    assert not any(t.type == "builtins.NeverSeen" for t in result.type_sites)
    del old


def test_type_join_failure_still_stops_tracing(monkeypatch: pytest.MonkeyPatch):
    """A join that raises halfway must not leave tracemalloc running in the host."""
    from bilge.samplers import allocations

    def broken(*_args: object) -> tuple[()]:
        raise RuntimeError("injected")

    monkeypatch.setattr(allocations, "type_sites", broken)
    window = AllocationWindow(warmup_tasks=1, window_tasks=3)
    assert window.open([INVOICE])
    with pytest.raises(RuntimeError):
        _drive(window, 4)
    assert not tracemalloc.is_tracing()
    window.abort()


def test_window_refuses_when_the_host_already_traces():
    """A host that runs tracemalloc itself keeps it: the window does not open and does not stop it."""
    tracemalloc.start()
    try:
        window = AllocationWindow()
        assert not window.open()
        window.abort()
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


def test_window_closes_empty_after_its_time_limit():
    """Too few tasks within max_seconds: the window closes with a reason and no sites, tracing off."""
    window = AllocationWindow(warmup_tasks=2, window_tasks=30, max_seconds=0.05)
    assert window.open()
    _drive(window, 3)
    time.sleep(0.06)
    result = window.poll()
    assert result is not None
    assert result.status.startswith("too few tasks")
    assert result.sites == ()
    assert not tracemalloc.is_tracing()


def test_window_closes_when_tracemalloc_memory_exceeds_its_limit():
    """tracemalloc's own memory over max_memory ends the window early."""
    window = AllocationWindow(warmup_tasks=2, window_tasks=10_000, max_memory=1)
    assert window.open()
    _drive(window, 5)
    result = window.poll()
    assert result is not None and result.status.startswith("tracemalloc memory over")
    assert not tracemalloc.is_tracing()


def test_host_stopping_tracemalloc_mid_window_is_respected():
    """If the host stops tracemalloc during the window, the window closes without error."""
    window = AllocationWindow(warmup_tasks=2, window_tasks=30)
    assert window.open()
    _drive(window, 4)
    tracemalloc.stop()
    result = window.poll()
    assert result is not None and result.status == "stopped by the host"


def test_objects_made_by_generated_code_are_placed_at_the_calling_line():
    """What generated code allocates is placed at the user's line that called it, not at "<generated …>"."""
    window = AllocationWindow(warmup_tasks=2, window_tasks=30)
    assert window.open()
    for i in range(40):
        (_shipment_task if i % 2 else _transient_task)(i)
        window.on_task_finished()
    result = window.poll()
    assert result is not None and result.status == "done"
    assert not any(site.file.startswith("<") for site in result.sites[:3]), result.sites[:3]
    assert (result.sites[0].file, result.sites[0].line) == (__file__, SHIPMENT_LINE)


def test_ownership_of_source_files():
    """User code, the standard library and installed packages are told apart, with distribution and version."""
    assert owner_of(__file__) == "user"
    assert owner_of("<string>") == owner_of("<sqlalchemy generated __init__ for class a.B>") == "generated"
    assert owner_of("<frozen importlib._bootstrap>") == "stdlib"
    assert owner_of(inspect.getsourcefile(inspect)) == "stdlib"
    owner = owner_of(inspect.getsourcefile(pytest))
    assert owner.startswith("third-party:pytest ")
