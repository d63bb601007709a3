"""Allocation sites of the memory that stays, from the agent's tracemalloc windows.

Sites of every completed window are merged by (file, line) and ranked with
the user's own code first (a leak is fixed where the user's code allocates
or keeps, even when a library did the allocating), then by bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

from bilge.model import AllocationSite, AllocationWindow
from bilge.samplers.allocations import merge_sites

DONE = "done"


def leak_sites(windows: Sequence[AllocationWindow]) -> tuple[AllocationSite, ...]:
    """Merged, ranked sites of the completed windows."""
    merged = merge_sites(s for window in windows if window.status == DONE for s in window.sites)
    return tuple(sorted(merged, key=lambda s: (s.owner != "user", -s.size)))


def location(site: AllocationSite) -> str:
    """``path/to/file.py:LINE``, the contract's form."""
    return "%s:%d" % (site.file, site.line)


def describe(site: AllocationSite, windows: Sequence[AllocationWindow]) -> str:
    """One evidence line for a finding."""
    tasks = sum(w.tasks for w in windows if w.status == DONE)
    return "allocation window over %d tasks: %s:%d kept %+d bytes in %d blocks (%s)" % (
        tasks, site.file, site.line, site.size, site.count, site.owner)
