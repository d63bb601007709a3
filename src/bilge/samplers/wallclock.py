"""Wall-clock time that never steps: the time every reading of a run is stamped with.

Readings carry wall-clock times so that runs, processes and hosts line up
with the user's own logs and dashboards. But the system's wall clock can
step (an NTP step, ``date -s``, a VM resumed), and a series whose times go
back an hour, or jump ahead, would break every trend the analysis fits.
So every process of a run counts from one anchor, the (wall, monotonic)
pair ``bilge run`` takes when it starts (``anchor``; a process outside
``bilge run`` anchors itself when this module is imported): wall time is
``anchor wall + (monotonic now - anchor monotonic)``. The monotonic clock
is one clock for every process of a host and never steps, so the processes
agree with each other and with the supervisor; a step after the anchor
leaves bilge's times where real time was before it (the run's times stay
continuous), which is the point. Standard library only.
"""

from __future__ import annotations

import time

_wall = time.time()
_mono = time.monotonic()


def anchor(at: tuple[float, float] | None) -> None:
    """Count from ``at`` = (wall time, monotonic time) taken together, e.g. by ``bilge run``; None keeps the
    process's own anchor."""
    global _wall, _mono
    if at is not None:
        _wall, _mono = at


def here() -> tuple[float, float]:
    """This process's anchor, to hand to the processes it starts."""
    return _wall, _mono


def now() -> float:
    """Wall-clock seconds since the epoch, continuous from the anchor."""
    return _wall + (time.monotonic() - _mono)


def offset() -> float:
    """What ``now()`` adds to ``time.monotonic()``: a hot path reads the C clock and adds this itself."""
    return _wall - _mono
