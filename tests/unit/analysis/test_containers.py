"""Tests for bilge.analysis.containers: which module-level containers keep growing."""

from __future__ import annotations

from bilge.analysis import containers
from bilge.model import ContainerScan


def scans(lengths: list[int], path: str = "app._SEEN", every: int = 100) -> tuple[ContainerScan, ...]:
    return tuple(ContainerScan(float(i), (i + 1) * every, ((path, "set", n, "str"),)) for i, n in enumerate(lengths))


def test_a_container_growing_throughout_is_growing() -> None:
    (g,) = containers.growing(scans([64, 97, 130, 164, 197]))
    assert (g.path, g.container_type, g.element_type, g.first, g.last, g.tasks, g.scans) == (
        "app._SEEN", "set", "str", 64, 197, 400, 5)
    assert abs(g.per_task - 133 / 400) < 1e-9


def test_filled_shrinking_short_or_barely_growing_containers_are_not() -> None:
    assert containers.growing(scans([64, 200, 300, 300, 300])) == ()  # a bounded cache: full
    assert containers.growing(scans([64, 200, 300, 301, 302])) == ()  # a crawl after warm-up
    assert containers.growing(scans([64, 120, 90, 150, 210])) == ()  # shrank once: evicts
    assert containers.growing(scans([64, 90])) == ()  # two scans say nothing of a trend
    assert containers.growing(scans([64, 66, 68, 70, 72])) == ()  # fewer than MIN_ELEMENTS in all


def test_only_scans_after_warm_up_count_and_a_path_must_be_read_to_the_end() -> None:
    warm = scans([64, 5000, 5001, 5001, 5002, 5002])
    assert containers.growing(warm) == ()
    assert containers.growing(warm, since_tasks=300) == ()
    cut = scans([64, 97, 130, 164]) + (ContainerScan(9.0, 500, ()),)  # cut from the last scan
    assert containers.growing(cut) == ()


def test_merged_keeps_the_fastest_per_path() -> None:
    a = containers.growing(scans([64, 97, 130, 164, 197]))
    b = containers.growing(scans([64, 164, 264, 364, 464]))
    (g,) = containers.merged([a, b])
    assert g.last == 464
