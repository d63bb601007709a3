"""Tests for bilge.analysis.attribution: naming the task that leaks from interleaved task records."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from bilge.analysis.attribution import MIN_CALLS, lasting_leak, leaking_task, task_growth
from bilge.model import TaskGrowth, TaskRecord

PAGE = 4096
BASE = 60 * 2**20
NAMES = ("shop.checkout", "shop.search", "shop.thumbnail")


def task_records(
    tasks: int,
    seed: int,
    leaker: str | None = None,
    leak_bytes: int = 4096,
    leak_blocks: int = 64,
    touched: bool = False,
    noise: float = 8192.0,
    leak_calls: int | None = None,
) -> list[TaskRecord]:
    """Three randomly interleaved task names; ``leaker`` keeps ``leak_bytes`` and ``leak_blocks`` per call.

    Every reading carries transient noise (page-granular for RSS) that does not
    accumulate. With ``touched`` the leaker's own readings do not move: its
    bytes show up in the RSS only once the next task of another name runs
    (that task touches the new pages), as happens with a fragmented native heap.
    With ``leak_calls`` only the leaker's first calls keep anything (a cache it fills, then evicts from).
    """
    rng = np.random.default_rng(seed)
    names = rng.choice(NAMES, size=tasks)
    rss = BASE
    blocks = 100_000
    pending = 0
    out = []
    calls = 0
    for seq, name in enumerate(names, 1):
        rss_before = rss + int(rng.normal(0, noise)) // PAGE * PAGE
        blocks_before = blocks + int(rng.normal(0, 20))
        calls += name == leaker
        if name == leaker and (leak_calls is None or calls <= leak_calls):
            if touched:
                pending += leak_bytes
            else:
                rss += leak_bytes
                blocks += leak_blocks
        elif pending:
            rss += pending
            pending = 0
        rss_after = rss + int(rng.normal(0, noise)) // PAGE * PAGE
        blocks_after = blocks + int(rng.normal(0, 20))
        out.append(TaskRecord(seq=seq, name=str(name), started=float(seq), ended=seq + 0.5, rss_before=rss_before,
                              rss_after=rss_after, blocks_before=blocks_before, blocks_after=blocks_after,
                              failed=False))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_names_the_task_that_keeps_4k_per_call(seed: int) -> None:
    """One of three interleaved tasks keeps 4 KiB and 64 heap blocks per call: it is named, with ~4 KiB/call."""
    growths = task_growth([task_records(1500, seed, leaker="shop.search")])
    leaker = leaking_task(growths)
    assert leaker is not None
    assert leaker.task == "shop.search"
    assert 0.7 * 4096 <= leaker.bytes_per_call <= 1.3 * 4096
    assert 0.7 * 64 <= leaker.blocks_per_call <= 1.3 * 64
    assert leaker.score >= 3.0
    assert growths[0] == leaker  # the most significant first


def test_task_growth_counts_every_call_in_the_windows() -> None:
    """Each name gets one TaskGrowth whose calls add up to the tasks that fell inside a whole window."""
    records = task_records(1500, 0, leaker="shop.search")
    growths = task_growth([records])
    assert sorted(g.task for g in growths) == sorted(NAMES)
    # Windows of 20 start after the first record: 74 whole windows, 1480 tasks.
    assert sum(g.calls for g in growths) == 1480


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_names_the_cause_when_another_task_touches_the_pages(seed: int) -> None:
    """The leak shows up in the next task of another name: the window regression still names the leaker."""
    records = task_records(3000, seed, leaker="shop.search", leak_blocks=0, touched=True, noise=4096.0)
    # In-task deltas point the other way: the leaker's own calls never move RSS.
    own = [r.rss_after - r.rss_before for r in records if r.name == "shop.search"]
    others = [r.rss_after - r.rss_before for r in records if r.name != "shop.search"]
    assert np.mean(others) > np.mean(own) + 1000
    leaker = leaking_task(task_growth([records]))
    assert leaker is not None
    assert leaker.task == "shop.search"
    assert 0.7 * 4096 <= leaker.bytes_per_call <= 1.3 * 4096


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_no_leak_names_no_task(seed: int) -> None:
    """Only transient noise in every task: leaking_task is None."""
    growths = task_growth([task_records(1500, seed)])
    assert len(growths) == 3
    assert leaking_task(growths) is None


def test_short_series_falls_back_to_in_task_deltas() -> None:
    """100 tasks give too few windows; the per-call regression still names the leaker."""
    records = task_records(100, 0, leaker="shop.search")
    leaker = leaking_task(task_growth([records]))
    assert leaker is not None
    assert leaker.task == "shop.search"
    assert leaker.calls == sum(1 for r in records if r.name == "shop.search")


def test_pools_several_processes() -> None:
    """Records of two processes are regressed together; the leaker is named from the pool."""
    first = task_records(800, 10, leaker="shop.thumbnail")
    second = task_records(800, 11, leaker="shop.thumbnail")
    leaker = leaking_task(task_growth([first, second]))
    assert leaker is not None
    assert leaker.task == "shop.thumbnail"


def test_windows_spanning_a_gap_in_seq_are_skipped() -> None:
    """Records recorded in bursts (seq jumps) do not form windows across the gap."""
    records = task_records(400, 3, leaker="shop.search")
    burst = records[:200] + [
        TaskRecord(r.seq + 10_000, r.name, r.started, r.ended, r.rss_before, r.rss_after, r.blocks_before,
                   r.blocks_after, r.failed) for r in records[200:]
    ]
    # Without the gap, windows start at records 1, 21, ..., 361: 19 windows of 20 calls.
    assert sum(g.calls for g in task_growth([records])) == 19 * 20
    # The window of records 181..200 straddles the gap and is dropped.
    assert sum(g.calls for g in task_growth([burst])) == 18 * 20


def test_records_with_missing_readings_are_ignored() -> None:
    """Records with a None reading are left out rather than crashing the regression."""
    records = task_records(600, 4, leaker="shop.checkout")
    holes = [TaskRecord(r.seq, r.name, r.started, r.ended, None, r.rss_after, r.blocks_before, r.blocks_after,
                        r.failed) if i % 50 == 0 else r for i, r in enumerate(records)]
    leaker = leaking_task(task_growth([holes]))
    assert leaker is not None
    assert leaker.task == "shop.checkout"


def test_empty_input_gives_nothing() -> None:
    """No records: no growths and no leaking task."""
    assert task_growth([]) == ()
    assert task_growth([[]]) == ()
    assert leaking_task(()) is None


def test_leaking_task_needs_enough_calls_and_positive_growth() -> None:
    """A high score is not enough: too few calls, or shrinking memory, name no task."""
    few = TaskGrowth(task="a", calls=MIN_CALLS - 1, bytes_per_call=4096.0, blocks_per_call=64.0, score=50.0)
    shrinking = TaskGrowth(task="b", calls=500, bytes_per_call=-4096.0, blocks_per_call=-64.0, score=50.0)
    weak = TaskGrowth(task="c", calls=500, bytes_per_call=4096.0, blocks_per_call=64.0, score=2.9)
    good = TaskGrowth(task="d", calls=MIN_CALLS, bytes_per_call=4096.0, blocks_per_call=0.0, score=3.0)
    assert leaking_task([few, shrinking, weak]) is None
    assert leaking_task([few, shrinking, weak, good]) == good


def test_the_window_regression_is_overruled_when_both_exact_measures_name_another_task() -> None:
    """A short window (a restarted worker's first 300 tasks): RSS noise passes MIN_T for a task whose gc-free
    calls keep fewer heap blocks than the others', while the items counted around each call say another task
    adds one entry a call to the growing container. Either exact measure alone does not overrule it."""
    noise = TaskGrowth(task="vat", calls=113, bytes_per_call=11809.0, blocks_per_call=5.0, score=3.84,
                       support=-305964.0, items_per_call=0.0, items_score=-5.9)
    adder = TaskGrowth(task="render", calls=104, bytes_per_call=-1053.0, blocks_per_call=70.0, score=16.8,
                       support=357386.0, items_per_call=1.0, items_score=math.inf)
    other = TaskGrowth(task="convert", calls=117, bytes_per_call=-5923.0, blocks_per_call=6.0, score=-4.1,
                       support=-292057.0, items_per_call=0.0, items_score=-6.4)
    assert leaking_task([noise, adder, other]) == adder
    assert leaking_task([replace(noise, support=0.0), adder, other]) == replace(noise, support=0.0)
    no_items = replace(adder, items_per_call=0.0, items_score=0.0)
    assert leaking_task([noise, no_items, other]) == noise


def test_a_retried_tasks_garbage_in_rss_does_not_outweigh_the_counted_items() -> None:
    """benchmarks/zoo_extra/retried_lookups, pooled over its two children: convert_total's retries leave cyclic
    garbage the collector frees late, so its calls' RSS regression passes MIN_T (8.5 KB a call), while its
    gc-free calls keep fewer heap blocks than the others' (t = -0.98) and render_invoice adds one item a call to
    the archive list every time. The exact measures name render_invoice."""
    retried = TaskGrowth(task="convert_total", calls=591, bytes_per_call=8450.0, blocks_per_call=4.05, score=4.06,
                         support=-0.98, items_per_call=0.0, items_score=-20.66)
    adder = TaskGrowth(task="render_invoice", calls=573, bytes_per_call=3496.0, blocks_per_call=4.89, score=0.0,
                       support=0.51, items_per_call=1.0, items_score=math.inf)
    other = TaskGrowth(task="tag_order", calls=549, bytes_per_call=-1480.0, blocks_per_call=4.99, score=-0.66,
                       support=0.71, items_per_call=0.0, items_score=-20.2)
    assert leaking_task([retried, adder, other]) == adder
    # Blocks that lean towards the retried task keep it named.
    assert leaking_task([replace(retried, support=0.5), adder, other]).task == "convert_total"


def test_when_full_collections_take_back_the_growth_the_counted_items_name_the_task() -> None:
    """The soak with a leak (benchmarks/soak.py --leak 16384): soak.flaky's retries leave 7 blocks of cyclic
    garbage a gc-free call, so its blocks support it (t = +315) and RSS favours it; soak.leaky keeps one 16 KiB
    bytes a call in a list the agent counts, one item a call. Where full collections took back most of the
    heap's growth, blocks and RSS measure garbage: the items name soak.leaky."""
    flaky = TaskGrowth(task="soak.flaky", calls=5000, bytes_per_call=9000.0, blocks_per_call=7.0, score=32.7,
                       support=315.0, items_per_call=0.0, items_score=-30.0)
    leaky = TaskGrowth(task="soak.leaky", calls=5000, bytes_per_call=-1200.0, blocks_per_call=1.0, score=-3.7,
                       support=40.0, items_per_call=1.0, items_score=math.inf)
    assert leaking_task([flaky, leaky]) == flaky
    assert leaking_task([flaky, leaky], garbage=True) == leaky
    # Without counted items nothing speaks against the regression.
    assert leaking_task([flaky, replace(leaky, items_per_call=0.0, items_score=0.0)], garbage=True) == flaky


def test_the_leaking_task_is_named_when_heap_blocks_were_read_on_one_task_in_eight() -> None:
    """A big heap: the agent read blocks on one task in eight only; RSS windows still name the leaker."""
    tasks = [t if t.seq % 8 == 0 else replace(t, blocks_before=None, blocks_after=None)
             for t in task_records(3000, seed=7, leaker="shop.search", leak_blocks=0)]
    found = leaking_task(task_growth([tasks]))
    assert found is not None and found.task == "shop.search"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_items_counted_around_each_task_name_the_task_that_adds_to_a_growing_container(seed: int) -> None:
    """A key per call of shop.search kept in a set: one heap block, ~60 bytes, invisible in RSS and in the
    noisy blocks. The agent counted the set's items around each task: that names the task, with one item a
    call; without the counts no task is named (what bilge said before)."""
    base = task_records(1500, seed, leaker="shop.search", leak_bytes=0, leak_blocks=1)
    assert leaking_task(task_growth([base])) is None
    items, counted = 500, []
    for t in base:
        before = items
        items += t.name == "shop.search"
        counted.append(replace(t, items_before=before, items_after=items) if t.seq > 300 else t)
    leaky = leaking_task(task_growth([counted]))
    assert leaky is not None and leaky.task == "shop.search"
    assert leaky.items_per_call == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_items_another_thread_appends_after_the_task_still_name_the_task(seed: int) -> None:
    """reporter_thread_samples (1 of 5 runs named no task): shop.search puts a sample on a queue and a reporter
    thread appends it to its own list after the task ended, so most appends fall between two tasks, where no
    in-task delta counts them (0.19 items a call in that run). Windows of consecutive tasks hold the call and
    its append both: one item a call, and the task is named."""
    base = task_records(1500, seed, leaker="shop.search", leak_bytes=0, leak_blocks=1)
    rng = np.random.default_rng(seed)
    items, pending, counted = 500, 0, []
    for t in base:
        # The reporter drains the queue now and then, never while a task it did not see yet runs.
        if pending and rng.random() < 0.8:
            items, pending = items + pending, 0
        before = items
        pending += t.name == "shop.search"
        counted.append(replace(t, items_before=before, items_after=items) if t.seq > 300 else t)
    leaky = leaking_task(task_growth([counted]))
    assert leaky is not None and leaky.task == "shop.search"
    assert leaky.items_per_call == pytest.approx(1.0, abs=0.1)


def test_a_container_every_task_adds_to_names_no_task() -> None:
    """Every task adds an item (a log of every task): no task stands out."""

    base = task_records(1500, 0)
    counted = [replace(t, items_before=t.seq, items_after=t.seq + 1) for t in base]
    assert leaking_task(task_growth([counted])) is None


def test_items_counted_around_tasks_come_before_the_heap_blocks_in_task_deltas() -> None:
    """The in-task heap-block deltas also count a return value still in flight at the task's end (a task that
    returns a list looks like it keeps a block): they must not name a task the exact item counts contradict
    (the zoo's seen_ids_set once named tag_order so)."""
    returns_a_list = TaskGrowth(task="shop.tag", calls=181, bytes_per_call=2e-4, blocks_per_call=5.0, score=1.55,
                                support=7.0)
    keeps_a_key = TaskGrowth(task="shop.webhook", calls=219, bytes_per_call=-8e-5, blocks_per_call=5.0,
                             score=0.0, support=7.5, items_per_call=2.0, items_score=float("inf"))
    other = TaskGrowth(task="shop.price", calls=229, bytes_per_call=-3e-5, blocks_per_call=4.0, score=0.0,
                       support=-15.0)
    leaky = leaking_task((returns_a_list, other, keeps_a_key))
    assert leaky is not None and leaky.task == "shop.webhook"


def test_a_task_that_adds_an_item_in_some_calls_only_is_named_by_its_mean() -> None:
    """Counted items of a task that adds a key in 45 % of its calls (the others hit the cache): a robust fit
    of such 0/1 counts takes the majority, 0; the mean is what each call keeps on average."""
    rng = np.random.default_rng(3)
    items, counted = 500, []
    for t in task_records(1500, 3):
        before = items
        items += int(t.name == "shop.search" and rng.random() < 0.45)
        counted.append(replace(t, items_before=before, items_after=items))
    leaky = leaking_task(task_growth([counted]))
    assert leaky is not None and leaky.task == "shop.search"
    assert leaky.items_per_call == pytest.approx(0.45, abs=0.06)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_steady_leaker_is_a_lasting_leak(seed: int) -> None:
    tasks = task_records(1500, seed, leaker="shop.search")
    leaker = lasting_leak([tasks])
    assert leaker is not None and leaker.task == "shop.search"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_task_that_filled_a_cache_in_the_first_half_is_not_a_lasting_leak(seed: int) -> None:
    """Named over the whole window (as when the window holds the end of a cache filling), but it keeps
    4 KiB a call only for its first 200 of ~500 calls: over the later half of the tasks it keeps nothing."""
    tasks = task_records(1500, seed, leaker="shop.search", leak_calls=200)
    named = TaskGrowth(task="shop.search", calls=500, bytes_per_call=4096.0, blocks_per_call=64.0, score=10.0,
                       support=10.0)
    assert lasting_leak([tasks], (named,)) is None
    steady = task_records(1500, seed, leaker="shop.search")
    assert lasting_leak([steady], (named,)) == named
