"""The native window: glibc in-use bytes charged to the user's lines, with freed memory cancelled out."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator

import pytest

from bilge.samplers.native_sites import TRACER, NativeWindow

# A fake allocator the test's "user code" drives: the window reads its
# in-use bytes exactly as it reads glibc's.
HEAP = [0]
_LIVE: list[int] = []


def _keep_frame(order: int) -> None:
    HEAP[0] += 16400  # the leak: never freed
    _LIVE.append(order)


def _temporary() -> int:
    HEAP[0] += 16432  # a temporary ...
    size = len(_LIVE)
    HEAP[0] -= 16432  # ... freed on a later line of another size's neighbour
    return size


def _resizing_buffer(order: int) -> None:
    # grows and shrinks by other sizes than it rose: its own falls cancel it
    HEAP[0] += 4096 if order % 2 else -4096 + 8


def _task(order: int) -> None:
    _keep_frame(order)
    _temporary()
    _resizing_buffer(order)


LEAK_LINE = inspect.getsourcelines(_keep_frame)[1] + 1


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    HEAP[0] = 1 << 20
    _LIVE.clear()
    yield
    assert sys.gettrace() is None, "the window left a trace function behind"


def _run(window: NativeWindow, tasks: int) -> None:
    window.on_task_finished()  # the boundary before the first traced task arms it
    for order in range(tasks):
        _task(order)
        window.on_task_finished()


def test_the_line_that_keeps_memory_leads_and_freed_temporaries_cancel() -> None:
    window = NativeWindow(lambda: HEAP[0], window_tasks=10)
    assert window.open()
    _run(window, 12)
    result = window.poll()

    assert result is not None and result.status == "done" and result.tracer == TRACER
    assert result.tasks == 10
    top = result.sites[0]
    assert (top.file, top.line) == (__file__, LEAK_LINE)
    assert top.size == 10 * 16400 and top.count == 10
    # the temporary's rise was cancelled by its fall, the buffer's by its own falls
    assert all(s.size < 16432 for s in result.sites[1:]), result.sites
    assert top.traceback[0] == "%s:%d" % (__file__, LEAK_LINE)
    assert not window.active


def test_library_allocations_are_charged_to_the_user_line_that_called() -> None:
    import json

    def calls_a_library() -> None:
        json.dumps([1])  # stdlib code is not traced: its cost lands on this line
        HEAP[0] += 0

    real = json.dumps

    def allocating_dumps(obj: object) -> str:
        HEAP[0] += 1000
        return real(obj)

    json.dumps = allocating_dumps  # type: ignore[assignment]
    allocating_dumps.__code__ = allocating_dumps.__code__.replace(co_filename=json.__file__)
    try:
        window = NativeWindow(lambda: HEAP[0], window_tasks=4)
        assert window.open()
        window.on_task_finished()
        for _ in range(4):
            calls_a_library()
            window.on_task_finished()
    finally:
        json.dumps = real
    result = window.poll()
    assert result is not None and result.sites
    line = inspect.getsourcelines(calls_a_library)[1] + 1
    assert (result.sites[0].line, result.sites[0].size, result.sites[0].count) == (line, 4000, 4)


def test_a_thread_already_traced_is_left_alone() -> None:
    def host_tracer(frame: object, event: str, arg: object) -> None:
        return None

    sys.settrace(host_tracer)  # type: ignore[arg-type]
    try:
        window = NativeWindow(lambda: HEAP[0], window_tasks=4)
        assert window.open()
        window.on_task_finished()
        assert sys.gettrace() is host_tracer
    finally:
        sys.settrace(None)
    result = window.poll()
    assert result is not None and "trace function" in result.status and not result.sites


def test_no_allocator_statistics_no_window() -> None:
    assert not NativeWindow(None).open()
    assert not NativeWindow(lambda: None).open()


def test_a_failing_reader_ends_the_window_without_touching_the_task() -> None:
    calls = [0]

    def flaky() -> int:
        calls[0] += 1
        if calls[0] > 5:
            raise OSError("allocator statistics gone")
        return HEAP[0]

    window = NativeWindow(flaky, window_tasks=5)
    assert window.open()
    _run(window, 5)  # the tasks themselves run to the end
    assert len(_LIVE) == 5
    result = window.poll()
    assert result is not None and result.status == "tracer failed" and not result.sites


def test_abort_while_armed_makes_the_tracer_remove_itself() -> None:
    window = NativeWindow(lambda: HEAP[0], window_tasks=100)
    assert window.open()
    window.on_task_finished()
    _task(1)
    window.abort()
    assert not window.active
    _task(2)  # the next call event removes the trace function
    assert sys.gettrace() is None


def test_a_window_that_sees_too_few_tasks_times_out() -> None:
    window = NativeWindow(lambda: HEAP[0], window_tasks=100, max_seconds=0.0)
    assert window.open(began=0.0)
    window.on_task_finished()
    result = window.poll()
    assert result is not None and result.status.startswith("too few tasks") and not result.sites
    _task(1)
    assert sys.gettrace() is None
