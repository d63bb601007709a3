"""The native window: which line of the user's code took the C memory that stays.

Stdlib-only. tracemalloc sees only Python's allocators, so a leak through
ctypes or a C extension (RSS grows, the Python heap and traced memory stay
flat) has no allocation site. memray would need to hook ``malloc``; a
library that calls ``malloc`` through a ``dlsym``'d pointer (ctypes does)
escapes even that.

This window instead reads glibc's in-use bytes (``mallinfo2``: heap chunks
plus mmap'd blocks) at every line event of the **user's own code** in the
task thread, for a few tasks, and charges each change to the line that ran
since the last reading. Library code is not traced: what a library call
allocates is charged to the user's line that called it, which is the line a
user can change.

Memory that is freed later shows up as a fall of the same chunk size at some
later line; such a fall cancels the most recent rise of exactly that size
(a temporary bytes object of 16 KiB rises at one line and falls when its
frame ends). A fall of no size that rose cancels the rises of the line it
happened at (a line that resizes its own buffers). What no fall cancels is
the memory that stayed: per line, its bytes and count. This is a heuristic (a line whose mallocs and frees
overlap shows only their sum), which is why the window reports sites only,
never types, and only the analysis of a ``native`` leak uses them.

Armed and disarmed at task boundaries in the task's thread
(``sys.settrace`` is per thread), never when the thread already has a trace
function (a debugger or coverage: the host's, left alone). Bounded in tasks,
time, and bookkeeping (lines and pending rises). Only file names, line
numbers and sizes leave this module.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from bilge.model import MALLOC, AllocationSite, AllocationWindow
from bilge.samplers import wallclock
from bilge.samplers.allocations import owner_of

__all__ = ["NativeWindow", "TRACER"]

TRACER = MALLOC
_MAX_LINES = 4096
_MAX_PENDING = 65536
_STACK = 6


class NativeWindow:
    """One bounded line-level window over glibc's in-use bytes.

    Args:
        in_use: reads glibc's in-use bytes (None where unavailable: the window never opens).
        window_tasks: tasks traced.
        max_seconds: the window closes (without result) after this long.
        max_sites: how many sites to report.
    """

    def __init__(self, in_use: Callable[[], int | None] | None, window_tasks: int = 24,
                 max_seconds: float = 60.0, max_sites: int = 10) -> None:
        self._in_use = in_use
        self.window_tasks = window_tasks
        self.max_seconds = max_seconds
        self.max_sites = max_sites
        self._lock = threading.Lock()
        self.active = False
        self.opened = 0
        self._reset()

    def _reset(self) -> None:
        self._opened = 0.0
        self._tasks = -1  # -1: not armed yet; the first boundary arms
        self._thread: int | None = None
        self._stopped = False
        self._done = False
        self._status = ""
        self._last = 0
        self._key: tuple[str, int] | None = None
        self._kept: dict[tuple[str, int], list[int]] = {}  # line -> [bytes kept, rises kept]
        self._stacks: dict[tuple[str, int], tuple[str, ...]] = {}
        self._pending: dict[int, list[tuple[str, int]]] = {}
        self._pending_count = 0
        self._user_code: dict[Any, bool] = {}
        self._frame: FrameType | None = None  # the frame of the last line event, until the next event

    def open(self, began: float | None = None) -> bool:
        """Prepare the window; it starts tracing at the next task boundary. False if it cannot run here."""
        if self._in_use is None or self.active or self._in_use() is None:
            return False
        self._reset()
        self._opened = wallclock.now() if began is None else began
        self.active = True
        self.opened += 1
        return True

    def on_task_finished(self) -> None:
        """Called at every task boundary in the task's thread: arms, counts and disarms."""
        if not self.active or self._done:
            return
        with self._lock:
            if self._tasks < 0:
                if sys.gettrace() is not None and sys.gettrace() != self._on_call:
                    self._finish("the task thread already has a trace function (debugger or coverage)")
                    return
                self._thread = threading.get_ident()
                self._tasks = 0
                self._last = self._read()
                sys.settrace(self._on_call)
                return
            if threading.get_ident() != self._thread:
                return  # a boundary in another thread (threads pool): the window traces one thread
            self._tasks += 1
            if self._stopped or self._tasks >= self.window_tasks:
                sys.settrace(None)
                self._finish(self._status or "done")

    def poll(self) -> AllocationWindow | None:
        """Called from the agent thread; returns the result once the window closes."""
        if not self.active:
            return None
        with self._lock:
            if not self._done and wallclock.now() - self._opened > self.max_seconds:
                # The tracer is inert from now on and removes itself at its next call event.
                self._stopped = True
                self._finish("too few tasks within %.0f s" % self.max_seconds)
            return self._close() if self._done else None

    def abort(self) -> None:
        """Stop now (agent shutdown, errors); the task thread's tracer goes inert and removes itself."""
        if self.active:
            with self._lock:
                self._stopped = True
                self._finish(self._status or "aborted")
                self._close()

    def _finish(self, status: str) -> None:
        self._status = status
        self._done = True

    def _close(self) -> AllocationWindow:
        self.active = False
        self._stopped = True
        sites: tuple[AllocationSite, ...] = ()
        if self._status == "done":
            ranked = sorted(((kept[0], kept[1], key) for key, kept in self._kept.items() if kept[0] > 0),
                            reverse=True)[:self.max_sites]
            sites = tuple(AllocationSite(file=file, line=line, size=size, count=count, owner=owner_of(file),
                                         traceback=self._stacks.get((file, line), ("%s:%d" % (file, line),)))
                          for size, count, (file, line) in ranked)
        result = AllocationWindow(started=self._opened, ended=wallclock.now(), tasks=max(0, self._tasks),
                                  status=self._status, peak_memory=0, sites=sites, tracer=TRACER)
        self._kept, self._pending, self._stacks, self._user_code = {}, {}, {}, {}
        self._frame = None
        return result

    def _read(self) -> int:
        value = self._in_use()  # type: ignore[misc]
        return value or 0

    # -- The trace functions run in the host's task thread, on every call and
    # -- every line of user code: kept small, and they never raise (an
    # -- exception in a trace function would surface in the host's code).

    def _on_call(self, frame: FrameType, event: str, arg: Any) -> Any:
        try:
            if self._stopped:
                sys.settrace(None)
                return None
            code = frame.f_code
            user = self._user_code.get(code)
            if user is None:
                user = owner_of(code.co_filename) == "user"  # "<...>" code is "generated"
                if len(self._user_code) < _MAX_LINES:
                    self._user_code[code] = user
            return self._on_line if user else None
        except Exception:  # noqa: BLE001
            self._stopped, self._status = True, "tracer failed"
            return None

    def _on_line(self, frame: FrameType, event: str, arg: Any) -> Any:
        try:
            if self._stopped:
                return None
            now = self._read()
            change = now - self._last
            if change:
                self._charge(change)
                # The bookkeeping above may itself have allocated.
                now = self._read()
            self._last = now
            if event == "line":
                self._key, self._frame = (frame.f_code.co_filename, frame.f_lineno), frame
            else:
                self._key = self._frame = None
            return self._on_line
        except Exception:  # noqa: BLE001
            self._stopped, self._status = True, "tracer failed"
            return None

    def _charge(self, change: int) -> None:
        key = self._key
        if change > 0:
            if key is None:
                return
            kept = self._kept.get(key)
            if kept is None:
                if len(self._kept) >= _MAX_LINES:
                    return
                kept = self._kept[key] = [0, 0]
                self._stacks[key] = _user_stack(key, self._frame)
            kept[0] += change
            kept[1] += 1
            if self._pending_count < _MAX_PENDING:
                self._pending.setdefault(change, []).append(key)
                self._pending_count += 1
            return
        rises = self._pending.get(-change)
        if rises:
            freed = self._kept[rises.pop()]
            freed[0] += change
            freed[1] -= 1
            self._pending_count -= 1
            return
        # No rise of that size: a line that grows and shrinks its own
        # buffers (a socket reader, a resized table) falls by other sizes
        # than it rose; its falls cancel its own rises.
        kept = self._kept.get(key) if key is not None else None
        if kept is not None and kept[0] > 0:
            kept[0] = max(0, kept[0] + change)
            kept[1] = max(0, kept[1] - 1)


def _user_stack(key: tuple[str, int], frame: FrameType | None) -> tuple[str, ...]:
    """The line, then the user frames above it (most recent first), as ``file:line``."""
    out = ["%s:%d" % key]
    frame = frame.f_back if frame is not None else None
    while frame is not None and len(out) < _STACK:
        filename = frame.f_code.co_filename
        if owner_of(filename) == "user":
            out.append("%s:%d" % (filename, frame.f_lineno))
        frame = frame.f_back
    return tuple(out)
