"""The agent's cheap in-process suspicion check that opens allocation windows."""

import random

from bilge.samplers.suspicion import MIN_HEAP_GROWTH, MIN_READINGS, MIN_TASK_READINGS, RING, Suspicion

BASE = 60 * 1024 * 1024


def _feed(values):
    s = Suspicion()
    for v in values:
        s.add(v)
    return s


def test_steady_growth_is_suspect():
    """RSS growing 2 KiB per task for 600 tasks (with page noise) is suspect."""
    rng = random.Random(1)
    values = [BASE + 2048 * i + rng.choice((0, 4096, 8192)) for i in range(600)]
    assert _feed(values).suspect()


def test_flat_noisy_series_is_not_suspect():
    """A flat series with page-sized noise is not suspect."""
    rng = random.Random(2)
    values = [BASE + rng.choice((0, 4096, 8192, 12288)) for _ in range(1000)]
    assert not _feed(values).suspect()


def test_plateau_is_not_suspect_once_flat():
    """Growth that stopped long ago (a filled cache) is not suspect."""
    values = [BASE + 4096 * min(i, 100) for i in range(600)]
    assert not _feed(values).suspect()


def test_too_few_readings_are_never_suspect():
    """Below MIN_TASK_READINGS the check abstains, however steep the growth."""
    values = [BASE + 100_000 * i for i in range(MIN_TASK_READINGS - 1)]
    assert not _feed(values).suspect()


def test_small_growth_is_not_material():
    """A steady but tiny creep (under 256 KiB over the recent half) is not suspect."""
    values = [BASE + 200 * i for i in range(600)]
    assert not _feed(values).suspect()


def test_ring_stays_bounded_over_a_long_life():
    """The ring decimates itself: a million readings keep at most RING values."""
    s = _feed(BASE + i for i in range(1_000_000))
    assert len(s._ring) <= RING


def test_heap_readings_use_their_own_growth_floor():
    """Heap blocks growing 8 per task (with gc-sized noise) are suspect against the heap floor, not the RSS one;
    noise of the same size without a trend is not."""
    rng = random.Random(3)
    growing = [500_000 + 8 * i + rng.randint(0, 600) for i in range(600)]
    flat = [500_000 + rng.randint(0, 600) for _ in range(600)]
    heap, rss_floor, quiet = Suspicion(MIN_HEAP_GROWTH), Suspicion(), Suspicion(MIN_HEAP_GROWTH)
    for v in growing:
        heap.add(v)
        rss_floor.add(v)
    for v in flat:
        quiet.add(v)
    assert heap.suspect()
    assert not rss_floor.suspect()
    assert not quiet.suspect()


def test_a_gap_takes_the_agents_own_step_out_of_later_readings():
    """A flat process whose RSS jumps by 8 MiB across the agent's own work (skipped readings) stays unsuspected
    and its growth per reading ~0; without the gap the step inflates that growth (what the native window and the
    recycling forecast use)."""
    before = [BASE + (i % 3) * 4096 for i in range(300)]
    after = [BASE + 8 * 2**20 + (i % 3) * 4096 for i in range(150)]
    with_gap, without = Suspicion(), Suspicion()
    for v in before:
        with_gap.add(v)
        without.add(v)
    with_gap.gap()
    for v in after:
        with_gap.add(v)
        without.add(v)
    assert not with_gap.suspect() and abs(with_gap.growth_per_reading()) < 100
    assert without.growth_per_reading() > 10_000


def test_growth_goes_on_across_a_gap():
    """A leak of 2 KiB per reading is still suspect after a gap whose step is taken out."""
    s = Suspicion()
    for i in range(300):
        s.add(BASE + 2048 * i)
    s.gap()
    for i in range(300, 700):
        s.add(BASE + 2048 * i + 8 * 2**20)
    assert s.suspect()
    assert 1500 < s.growth_per_reading() < 2600



def test_a_leak_that_starts_late_is_suspect_soon_though_the_process_is_read_one_task_in_40() -> None:
    """Read after every task for 3000 tasks, then after one task in ~40; a leak from task 20,000: suspect soon.

    The ring is decimated by task, not by reading: counted by readings, the
    3000 young readings held most of it, and this leak was suspect only
    after ~17,000 of its tasks (under 3,500 now).
    """
    import random

    rng = random.Random(5)
    s = Suspicion()
    for task in range(1, 3001):
        s.add(50e6 + rng.gauss(0, 30e3), task)
    task, first = 3000, None
    while task < 30000 and first is None:
        task += rng.randrange(1, 80)
        s.add(50e6 + 400.0 * max(0, task - 20000) + rng.gauss(0, 30e3), task)
        if s.suspect():
            first = task
    assert first is not None and 20000 < first < 26000


def test_a_young_process_read_one_task_in_6_is_suspect_once_its_readings_span_enough_tasks() -> None:
    """Short tasks are read one in ~6 from the start: the ring must span MIN_TASK_READINGS tasks and hold
    MIN_READINGS readings, not hold MIN_TASK_READINGS readings (that would wait ~1,800 tasks)."""
    rng = random.Random(7)
    s = Suspicion()
    task, first = 0, None
    while task < 3000 and first is None:
        task += rng.randrange(1, 12)
        s.add(BASE + 2048 * task + rng.choice((0, 4096, 8192)), task)
        if s.suspect():
            first = task
    assert first is not None and 6 * MIN_READINGS * 0.8 < first < 1000


def test_few_readings_over_many_tasks_are_never_suspect() -> None:
    """A ring spanning thousands of tasks with fewer than MIN_READINGS readings abstains."""
    s = Suspicion()
    for n in range(MIN_READINGS - 1):
        s.add(BASE + 100_000 * n, 1 + 50 * n)
    assert not s.suspect()


def test_filling_the_ring_allocates_no_heap_blocks() -> None:
    """The ring is preallocated: its first RING readings must not grow the heap (a deque of floats grew it by a
    few thousand blocks over a process's first readings, and the heap's own suspicion saw that as a leak)."""
    import sys

    s = Suspicion(MIN_HEAP_GROWTH)
    s.add(1.0, 1)
    # Fill CPython's float free list first (up to 100 freed floats stay allocated blocks).
    spare = [float(i) for i in range(300)]
    del spare
    before = sys.getallocatedblocks()
    for task in range(2, 3 * RING):
        s.add(100_000.0 + (task % 7), task)
    assert sys.getallocatedblocks() - before < 20
