"""Process-level readings: current RSS, USS/PSS, Python heap, gc, fds.

Stdlib-only. RSS comes from ``/proc/self/statm`` (the *current* resident
size, never ``ru_maxrss``, which is a peak and counts pages shared with the
parent at fork). The statm file is kept open and read with ``pread`` so the
per-task reading costs a few microseconds.
"""

from __future__ import annotations

import gc
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# Forks of this process so far, counted in the child: a reader opened before
# the last fork reopens, for the price of a list index (os.getpid() is a
# system call on every read since glibc stopped caching it).
_FORKS = [0]


def _count_fork() -> None:
    _FORKS[0] += 1
    AGENT_BUSY[0] = 0


# Non-zero while the agent's own thread is working (a tick). A read that
# releases the GIL then would hand it to that thread and wait a switch
# interval to get it back; while the agent sleeps, nobody is waiting, and
# ``os.pread`` (5-6 µs with cold caches after a task) costs a third of the
# GIL-holding ctypes call (17 µs: libffi's path is long and cold).
AGENT_BUSY = [0]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork)


def os_pread(fd: int) -> bytes:
    return os.pread(fd, 128, 0)


def gil_held_pread() -> Any:
    """``pread(fd, 128 bytes, 0)`` that keeps the GIL (libc through ctypes.PyDLL), else ``os.pread``.

    ``os.pread`` releases the GIL for its system call. Read in the host's
    task thread, that handed the GIL to the agent's own thread whenever it
    was waiting, and the task thread then waited for it; read in the agent's
    thread while the host's thread is busy, every release costs the agent a
    switch interval (5 ms) to get it back. Reading a few bytes of statm
    takes microseconds: holding the GIL through it costs nobody anything.
    """
    try:
        import ctypes

        libc = ctypes.PyDLL(None, use_errno=True)
        fn = libc.pread
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long]
        fn.restype = ctypes.c_ssize_t
        buf = ctypes.create_string_buffer(128)
        address = ctypes.addressof(buf)
    except (OSError, AttributeError, ImportError):
        return os_pread

    def pread(fd: int) -> bytes:
        n = fn(fd, address, 128, 0)
        if n < 0:
            raise OSError(ctypes.get_errno(), "pread of statm failed")
        return buf.raw[:n]

    return pread


class RssReader:
    """Reads this process's current RSS in bytes, cheaply.

    Args:
        proc_root: where procfs is mounted (injectable for tests).
        held_pread: the read that keeps the GIL, used while the agent's
            thread works (default :func:`gil_held_pread`).
    """

    def __init__(self, proc_root: str = "/proc", held_pread: Callable[[int], bytes] | None = None) -> None:
        self._path = os.path.join(proc_root, "self", "statm")
        self._pread = held_pread or gil_held_pread()
        self._fd = -1
        self._pid = -1
        self._forks = -1

    def _open(self) -> None:
        self.close()
        self._fd = os.open(self._path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._pid = os.getpid()
        self._forks = _FORKS[0]

    def read(self) -> int | None:
        """Current resident set size in bytes, or None if unreadable."""
        try:
            # /proc/self resolves at open time, so a descriptor inherited
            # across fork would report the parent: reopen in a new process.
            if self._forks != _FORKS[0] or self._fd < 0:
                self._open()
            try:
                data = self._pread(self._fd) if AGENT_BUSY[0] else os.pread(self._fd, 128, 0)
            except OSError:
                # The descriptor was closed (or reused) behind our back, e.g.
                # by a daemonizing library that closes all fds: reopen once.
                self._open()
                data = self._pread(self._fd)
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
    """Number of open file descriptors of this process.

    Linux 6.2+ gives it as the size of ``/proc/self/fd``: one ``stat``, one
    GIL release. ``os.listdir`` releases the GIL around every entry it
    reads; called from the agent's thread while the host's thread is busy,
    each release made the agent wait for the GIL, and every GIL release of
    the host's thread meanwhile woke the waiting agent for nothing (a futex
    wake, an inter-processor interrupt: a VM exit on a VM).
    """
    path = os.path.join(proc_root, "self", "fd")
    try:
        size = os.stat(path).st_size
        # Older kernels say 0; so would a process with no descriptor, rare enough to count it the slow way.
        return size if size > 0 else len(os.listdir(path)) - 1
    except OSError:
        return None


# Descriptors inspected per snapshot, and targets kept (the largest).
MAX_FDS_INSPECTED = 2048
MAX_FD_TARGETS = 20
_DIGITS = re.compile(r"\d+")
# An id in a file name: a run of letters and digits holding a digit
# (order-1234.csv, job-7f3a9c.log): one leak, one target.
_ID = re.compile(r"[A-Za-z]*\d[A-Za-z0-9]*")
_SOCKET_TABLES = ("tcp", "tcp6", "udp", "udp6", "unix")
MAX_SOCKET_LINES = 20000


# Descriptors bilge itself holds in this process (the control channel's
# socket): not the host's, never named among its targets.
OWN_FDS: set[int] = set()


def fd_targets(proc_root: str = "/proc") -> tuple[tuple[str, int], ...]:
    """What this process's open descriptors point to, as (target, count), largest first.

    Targets are names, never contents: a file path with its digit runs
    and hex ids folded (``/spool/order-N.csv``, so one leak is one target), a socket's
    protocol and peer address (``tcp -> 127.0.0.1:6379``), ``pipe``, or the
    kernel's anon-inode name.
    """
    base = os.path.join(proc_root, "self", "fd")
    counts: dict[str, int] = {}
    sockets: dict[str, int] = {}
    names = [name for name in os.listdir(base) if not name.isdigit() or int(name) not in OWN_FDS]
    for name in names[:MAX_FDS_INSPECTED]:
        try:
            link = os.readlink(os.path.join(base, name))
        except OSError:  # closed since listdir
            continue
        if link.startswith("socket:["):
            sockets[link[8:-1]] = sockets.get(link[8:-1], 0) + 1
            continue
        target = _fd_target(link)
        counts[target] = counts.get(target, 0) + 1
    if sockets:
        peers = _socket_peers(proc_root, set(sockets))
        for inode, n in sockets.items():
            target = peers.get(inode, "socket")
            counts[target] = counts.get(target, 0) + n
    if len(names) > MAX_FDS_INSPECTED:
        counts["(not inspected)"] = len(names) - MAX_FDS_INSPECTED
    return tuple(sorted(counts.items(), key=lambda kv: -kv[1])[:MAX_FD_TARGETS])


def _fd_target(link: str) -> str:
    if link.startswith("/"):
        head, _, tail = link.rpartition("/")
        return head + "/" + _ID.sub("N", tail)
    if link.startswith("pipe:"):
        return "pipe"
    if link.startswith("anon_inode:"):
        return link.strip("[]").replace("[", "")
    return _DIGITS.sub("N", link)


def _socket_peers(proc_root: str, inodes: set[str]) -> dict[str, str]:
    """Socket inode -> ``proto -> peer`` (``proto`` alone when unconnected), from /proc/self/net."""
    found: dict[str, str] = {}
    for table in _SOCKET_TABLES:
        try:
            with open(os.path.join(proc_root, "self", "net", table)) as f:
                lines = f.readlines(MAX_SOCKET_LINES * 160)
        except OSError:
            continue
        for line in lines[1:]:
            fields = line.split()
            if table == "unix":
                if len(fields) >= 7 and fields[6] in inodes:
                    found[fields[6]] = "socket unix " + (fields[7] if len(fields) > 7 else "(unnamed)")
            elif len(fields) >= 10 and fields[9] in inodes:
                peer = _address(fields[2])
                found[fields[9]] = "%s -> %s" % (table.rstrip("6"), peer) if peer else table.rstrip("6")
        if len(found) == len(inodes):
            break
    return found


def _address(hex_address: str) -> str | None:
    """``0100007F:18EB`` -> ``127.0.0.1:6379``; None for an unconnected (all-zero) peer."""
    host, _, port = hex_address.partition(":")
    if int(port, 16) == 0:
        return None
    raw = bytes.fromhex(host)
    # /proc prints the address as 32-bit words in host byte order.
    words = raw if sys.byteorder == "big" else b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 16 and words[:12] == b"\0" * 10 + b"\xff\xff":
        words = words[12:]
    text = socket.inet_ntop(socket.AF_INET if len(words) == 4 else socket.AF_INET6, words)
    return ("%s:%d" if len(words) == 4 else "[%s]:%d") % (text, int(port, 16))


def heap_blocks() -> int:
    """Blocks currently allocated by Python's object allocator.

    Exact and cheap (a walk over arenas), so it moves with every leaked
    object, unlike RSS which moves in pages.
    """
    return sys.getallocatedblocks()


# Garbage collections since count_gc_runs() was called, kept by a gc callback
# so a task can read it for the price of a list index.
GC_RUNS = [0]
# (full collections seen, Python heap blocks right after the latest one), one
# tuple so a reader in another thread never pairs a count with another
# collection's blocks. What survives a full collection is what the process
# keeps; blocks read at any other time also count the cyclic garbage waiting
# for one (exceptions with their tracebacks and frames, after every retry).
# The read is one walk over pymalloc's pools, next to the collection's own
# walk over every tracked object.
FULL_GC: list[tuple[int, int | None]] = [(0, None)]
# How long the latest full collection took (0.0: none seen yet).
FULL_GC_SECONDS = [0.0]
_full_started = [0.0]


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if info.get("generation") == 2:
        if phase == "start":
            _full_started[0] = time.perf_counter()
            return
        FULL_GC_SECONDS[0] = time.perf_counter() - _full_started[0]
        FULL_GC[0] = (FULL_GC[0][0] + 1, sys.getallocatedblocks())
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


def gc_generations() -> tuple[tuple[int, int, int], ...]:
    """(collections, collected, uncollectable) per generation, as ``gc.get_stats()`` counts them (~1 µs)."""
    return tuple((s.get("collections", 0), s.get("collected", 0), s.get("uncollectable", 0))
                 for s in gc.get_stats())


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
            # mallinfo2 takes microseconds: called with the GIL held (PyDLL),
            # so reading it is not a switch point for the host's threads.
            fn = ctypes.PyDLL(None).mallinfo2
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

    def in_use(self) -> int | None:
        """In-use bytes alone (the native window reads it at every line), or None."""
        if self._fn is None:
            return None
        info = self._fn()
        return int(info.uordblks + info.hblkhd)

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
