"""Allocation sites: merging windows and joining growing types to the line that made them."""

from __future__ import annotations

from bilge.analysis import sites
from bilge.model import MALLOC, AllocationSite, AllocationWindow, TypeSite


def _window(status: str, *joined: TypeSite) -> AllocationWindow:
    return AllocationWindow(started=0.0, ended=1.0, tasks=26, status=status, peak_memory=0, sites=(),
                            type_sites=joined)


def test_type_site_is_the_majority_birthplace_over_windows():
    windows = [
        _window("done", TypeSite("app.Order", "app.py", 42, 150, 200, "user"),
                TypeSite("app.Order", "app.py", 90, 50, 200, "user")),
        _window("done", TypeSite("app.Order", "app.py", 42, 120, 120, "user")),
        _window("aborted", TypeSite("app.Order", "app.py", 7, 999, 999, "user")),
    ]
    site = sites.type_site("app.Order", windows)
    assert site is not None
    assert (site.file, site.line, site.count, site.sampled) == ("app.py", 42, 270, 320)
    assert sites.location(site) == "app.py:42"
    assert "270 of 320 sampled app.Order" in sites.describe_type_site(site)


def test_type_site_is_unknown_when_no_line_dominates_or_nothing_was_sampled():
    scattered = _window("done", *(TypeSite("dict", "lib.py", n, 10, 100, "stdlib") for n in range(10)))
    assert sites.type_site("dict", [scattered]) is None
    assert sites.type_site("app.Order", [scattered]) is None


def _sited(tracer: str, *found: AllocationSite) -> AllocationWindow:
    return AllocationWindow(started=0.0, ended=1.0, tasks=24, status="done", peak_memory=0, sites=found,
                            tracer=tracer)


def test_each_tracer_keeps_its_own_sites_and_a_native_site_must_repeat():
    traced = _sited("tracemalloc", AllocationSite("app.py", 10, 9000, 30, "user", ()))
    native = _sited("malloc", AllocationSite("app.py", 29, 147600, 9, "user", ()),
                    AllocationSite("support.py", 95, 1088544, 1, "user", ()))
    windows = [traced, native]

    assert [(s.line, s.size) for s in sites.leak_sites(windows)] == [(10, 9000)]
    # the single megabyte rise is a buffer made once; the repeated 16 KiB rises are the leak
    assert [(s.line, s.size) for s in sites.leak_sites(windows, MALLOC)] == [(29, 147600)]
    assert "native window over 24 tasks" in sites.describe(sites.leak_sites(windows, MALLOC)[0], windows,
                                                            MALLOC)


def test_a_line_that_kept_one_large_block_ranks_after_the_lines_that_kept_blocks_at_every_call():
    """closure_listeners' windows: the event bus's list was resized once inside an episode (one 2.4 KiB block
    at ``self._listeners.append``); the summaries and closures the calls keep are many smaller blocks."""
    windows = [
        _sited("tracemalloc", AllocationSite("app.py", 20, 2464, 1, "user", (), "shop.track"),
               AllocationSite("app.py", 34, 2184, 7, "user", (), "shop.track"),
               AllocationSite("app.py", 36, 1064, 7, "user", (), "shop.track")),
        _sited("tracemalloc", AllocationSite("app.py", 34, 1070, 5, "user", (), "shop.track"),
               AllocationSite("celery/app/trace.py", 883, 9000, 40, "third-party:celery", (), "shop.track")),
    ]
    assert [s.line for s in sites.leak_sites(windows)] == [34, 36, 20, 883]
