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


def coupon(n_keys: int, draws: int, every: int) -> list[int]:
    """Distinct keys seen after each ``every`` uniform draws from ``n_keys`` (expected, rounded): a cache whose
    keys repeat."""
    return [round(n_keys * (1 - (1 - 1 / n_keys) ** t)) for t in range(every, draws + 1, every)]


def test_a_cache_whose_keys_repeat_fills_at_a_slowing_pace_and_is_not_growing() -> None:
    """300 keys drawn 1,600 times: the last third of the readings adds under half the first third's rate, far
    beyond chance; such a container is filling, not growing."""
    lengths = coupon(300, 1600, 200)
    assert containers.growing(scans(lengths, path="app._DEFINITIONS", every=200)) == ()
    ((path, early, late),) = containers.filling([scans(lengths, path="app._DEFINITIONS", every=200)])
    assert path == "app._DEFINITIONS" and late < 0.5 * early


def test_a_leak_at_a_steady_rate_is_not_filling_nor_is_a_short_or_flat_series() -> None:
    steady = [64 + 33 * i + (i % 2) * 3 for i in range(9)]
    assert containers.filling([scans(steady)]) == ()
    assert containers.growing(scans(steady))
    assert containers.filling([scans([10, 300, 310])]) == ()  # three readings say nothing of thirds
    assert containers.filling([scans([5, 6, 7, 8, 9, 10])]) == ()  # under MIN_ELEMENTS in all


def test_a_slowdown_within_chance_is_not_filling_and_items_come_in_units_of_the_steps() -> None:
    """Few events: 13 then 4 is under a third of the rate, but not beyond chance. A list extended 50 at a time
    counts each extension once: 600 then 50 items are 12 events and 1."""
    assert containers.thirds([(100, 0), (200, 13), (300, 13), (400, 17)]) == (13, 100, 4, 100)
    assert containers.slowing([(13, 100, 4, 100)]) is None
    assert containers.thirds([(100, 0), (400, 600), (700, 650), (1000, 700)]) == (12, 300, 1, 300)
    assert containers.slowing([(12, 300, 1, 300)]) is None  # p ~ 0.002 for 13 events: not below SLOWING_ALPHA


def test_filling_pools_the_processes_of_a_run() -> None:
    """One child's readings alone are too few to tell; its sibling's and its own together are."""
    one = [(0, 0), (100, 20), (200, 38), (300, 50), (400, 58), (500, 66), (600, 70)]
    assert containers.slowing([containers.thirds(one)]) is None  # type: ignore[list-item]
    part = containers.thirds(one)
    assert part is not None
    assert containers.slowing([part, part]) is not None


def test_a_gentle_slowdown_beyond_chance_is_filling_and_a_faster_last_third_never_is() -> None:
    """tenant_settings' pooled thirds in the run the old rule missed: 266 entries in the first third, 148 in
    the last over as many tasks (0.56 of the rate, p ~ 3e-9): a cache whose keys repeat, though it slows by
    less than half. A leak's container that happens to gain more late is never filling."""
    rates = containers.slowing([(266, 1000, 148, 1000)])
    assert rates is not None and rates == (0.266, 0.148)
    assert containers.slowing([(148, 1000, 266, 1000)]) is None
    assert containers.slowing([(300, 1000, 280, 1000)]) is None  # 0.93: within chance
