"""Process-level readings: current RSS, USS/PSS, Python heap, gc, fds.

Stdlib-only. RSS comes from ``/proc/self/statm`` (the *current* resident
size, never ``ru_maxrss``, which is a peak and counts pages shared with the
parent at fork). The statm file is kept open and read with ``pread`` so the
per-task reading costs a few microseconds.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from typing import Any

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class RssReader:
    """Reads this process's current RSS in bytes, cheaply.

    Args:
        proc_root: where procfs is mounted (injectable for tests).
    """

    def __init__(self, proc_root: str = "/proc") -> None:
        self._path = os.path.join(proc_root, "self", "statm")
        self._fd = -1
        self._pid = -1

    def _open(self) -> None:
        self.close()
        self._fd = os.open(self._path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._pid = os.getpid()

    def read(self) -> int | None:
        """Current resident set size in bytes, or None if unreadable."""
        try:
            # /proc/self resolves at open time, so a descriptor inherited
            # across fork would report the parent: reopen in a new process.
            if self._fd < 0 or self._pid != os.getpid():
                self._open()
            try:
                data = os.pread(self._fd, 128, 0)
            except OSError:
                # The descriptor was closed (or reused) behind our back, e.g.
                # by a daemonizing library that closes all fds: reopen once.
                self._open()
                data = os.pread(self._fd, 128, 0)
            return int(data.split()[1]) * PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        """Close the descriptor if this process opened it."""
        if self._fd >= 0 and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = -1


def read_uss_pss(proc_root: str = "/proc") -> tuple[int | None, int | None]:
    """USS and PSS in bytes from ``smaps_rollup`` (None where unavailable).

    USS is private clean + private dirty (+ anonymous swap is ignored); PSS
    splits shared pages among the processes that map them.
    """
    try:
        with open(os.path.join(proc_root, "self", "smaps_rollup"), "rb") as fh:
            text = fh.read()
    except OSError:
        return None, None
    uss = pss = 0
    found = False
    for line in text.splitlines():
        if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
            uss += int(line.split()[1]) * 1024
            found = True
        elif line.startswith(b"Pss:"):
            pss = int(line.split()[1]) * 1024
    return (uss if found else None), (pss if found else None)


def count_fds(proc_root: str = "/proc") -> int | None:
    """Number of open file descriptors of this process."""
    try:
        return len(os.listdir(os.path.join(proc_root, "self", "fd")))
    except OSError:
        return None


def heap_blocks() -> int:
    """Blocks currently allocated by Python's object allocator.

    Exact and cheap (a walk over arenas), so it moves with every leaked
    object, unlike RSS which moves in pages.
    """
    return sys.getallocatedblocks()


# Garbage collections since count_gc_runs() was called, kept by a gc callback
# so a task can read it for the price of a list index.
GC_RUNS = [0]


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "stop":
        GC_RUNS[0] += 1


def count_gc_runs() -> None:
    """Start counting collections into ``GC_RUNS`` (idempotent)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def gc_collections() -> int:
    """Garbage collections run so far in all generations (~0.7 µs)."""
    return sum(stats.get("collections", 0) for stats in gc.get_stats())


def gc_reading() -> tuple[int, int, int, int, int]:
    """(gen0, gen1, gen2 counts, total collections, total collected)."""
    g0, g1, g2 = gc.get_count()
    collections = collected = 0
    for stats in gc.get_stats():
        collections += stats.get("collections", 0)
        collected += stats.get("collected", 0)
    return g0, g1, g2, collections, collected


class MallocStats:
    """glibc's allocator statistics through ``mallinfo2`` (glibc >= 2.33).

    ``read()`` returns (in-use bytes, free-but-held bytes): in use is
    ``uordblks + hblkhd`` (heap chunks plus mmap'd large blocks), held is
    ``fordblks``. Elsewhere (musl, macOS, old glibc) it returns (None, None).
    """

    def __init__(self) -> None:
        self._fn: Any = None
        self._trim: Any = None
        try:
            import ctypes

            class _Mallinfo2(ctypes.Structure):
                _fields_ = [(name, ctypes.c_size_t) for name in (
                    "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                    "fordblks", "keepcost")]

            libc = ctypes.CDLL(None)
            fn = libc.mallinfo2
            fn.restype = _Mallinfo2
            fn.argtypes = []
            self._fn = fn
            self._trim = libc.malloc_trim
            self._trim.argtypes = [ctypes.c_size_t]
            self._trim.restype = ctypes.c_int
        except (OSError, AttributeError, ImportError):
            self._fn = None

    def trim(self) -> None:
        """Return glibc's free memory to the OS (``malloc_trim(0)``), where available."""
        if self._trim is not None:
            self._trim(0)

    def read(self) -> tuple[int | None, int | None]:
        """(in-use bytes, free-but-held bytes), or (None, None)."""
        if self._fn is None:
            return None, None
        info = self._fn()
        return int(info.uordblks + info.hblkhd), int(info.fordblks)


def gc_state() -> tuple[int, int, int]:
    """(len(gc.garbage), gc enabled 0/1, objects frozen by gc.freeze())."""
    return len(gc.garbage), int(gc.isenabled()), gc.get_freeze_count()


def thread_count() -> int:
    """Live Python threads in this process."""
    return threading.active_count()
