"""One explainer per run at a time: a lock file in the data directory. Stdlib-only.

The children of a prefork pool run the same code; when one leaks, its
siblings usually leak the same way. Explaining it in every child multiplies
the explain stage's cost (tracing slows their tasks, holder searches walk
their heaps, each leaves memory behind) by the pool's concurrency for one
answer: the report pools what the processes of a run found. So the first
process whose growth deserves explaining takes the run's claim, holds it
through its allocation window and first holder search, and stamps the time
in the file when done; the others keep watching (their verdicts and
per-task figures are their own) and do not explain for ``SHARED_FOR``
seconds after a stamp. A process that looked suspect and was not leaking
(a false escalation) so blocks its siblings' explaining for that long, not
for its life; a leak is explained again, in whichever process, after it.

``flock`` on a file in the data directory: the kernel drops the lock when
the process dies however it dies, and a forked child does not hold what its
parent took (it gets its own claim object, and closes its copy of the
descriptor without unlocking).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

try:
    import fcntl
except ImportError:  # not on POSIX: every process may explain
    fcntl = None  # type: ignore[assignment]

# Seconds between two attempts of a process that found the claim taken.
RETRY_AFTER = 30.0
# After a process of the run explained, the others do not for this long
# (the budget's period: one explainer's cost per period, not one per child).
SHARED_FOR = 600.0


def lock_path(data_dir: str, run_id: int) -> str:
    """The run's claim file."""
    return os.path.join(data_dir, "explain-%d.lock" % run_id)


class ExplainClaim:
    """This process's claim to explain the run's growth.

    Args:
        path: the run's lock file (:func:`lock_path`); None: never contended
            (a process with no data directory, tests).
        monotonic: for the retry interval.
    """

    def __init__(self, path: str | None, monotonic: Callable[[], float],
                 clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._monotonic = monotonic
        self._clock = clock
        self._fd = -1
        self._pid = os.getpid()
        self._next_try = 0.0
        self.held = path is None or fcntl is None
        # Why the claim could not be taken (for the report), until it is.
        self.refused: str | None = None
        # Why no lock could be taken at all (every process then explains).
        self.unlockable: str | None = None

    def may_try(self) -> bool:
        """Whether asking again makes sense now (held, or the retry interval has passed)."""
        return self.held or self._monotonic() >= self._next_try

    def take(self) -> bool:
        """True when this process holds the claim (now or already); False when a sibling holds it."""
        if self.held:
            return True
        if self._monotonic() < self._next_try:
            return False
        self._next_try = self._monotonic() + RETRY_AFTER
        assert self._path is not None and fcntl is not None
        fd = -1
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self.refused = "another process of this run is explaining its growth (one explains at a time)"
            return False
        except OSError as exc:
            # No lock file (read-only or vanished data dir): explaining in
            # every process costs more, but never explaining loses the answer.
            if fd >= 0:
                os.close(fd)
            self.held, self.refused = True, None
            self.unlockable = "%s: %s" % (type(exc).__name__, exc)
            return True
        stamp = _stamp(fd)
        if stamp is not None and 0 <= self._clock() - stamp < SHARED_FOR:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            self._next_try = self._monotonic() + min(SHARED_FOR, SHARED_FOR - (self._clock() - stamp) + 1.0)
            self.refused = ("another process of this run explained its growth %.0f s ago (one explains per %.0f s)"
                            % (self._clock() - stamp, SHARED_FOR))
            return False
        self._fd, self._pid, self.held, self.refused = fd, os.getpid(), True, None
        return True

    def done(self) -> None:
        """This process has explained (window and first holder search): stamp the time and let go."""
        fd = self._fd
        if fd >= 0 and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                data = b"%.3f\n" % self._clock()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
        self.release()
        if self._path is not None and fcntl is not None and self.unlockable is None:
            self.held = False
            self._next_try = self._monotonic() + SHARED_FOR

    def release(self) -> None:
        """Give the claim up (the agent stops); in a forked child, only forget the parent's descriptor."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        with contextlib.suppress(OSError):
            if self._pid == os.getpid() and fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _stamp(fd: int) -> float | None:
    """The time the last explainer stamped, or None (none yet, or not a time: ignored)."""
    try:
        text = os.pread(fd, 32, 0)
        return float(text.decode("ascii").strip()) if text.strip() else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
