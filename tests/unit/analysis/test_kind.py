"""Tests for bilge.analysis.kind: file descriptors, Python objects or native memory."""

from __future__ import annotations

import numpy as np

from bilge.analysis.kind import FILE_DESCRIPTORS, NATIVE, PYTHON_OBJECTS, classify
from bilge.model import FdSnapshot, Sample, TaskRecord

BASE = 60 * 2**20


def samples(count: int, fds: list[int] | None = None, rss_per_sample: int = 0,
            blocks: list[int] | None = None) -> list[Sample]:
    """One sample per 20 tasks; fds and heap blocks as given (flat by default)."""
    return [Sample(t=float(i), rss=BASE + rss_per_sample * i, uss=None, pss=None,
                   heap_blocks=blocks[i] if blocks else 100_000, gc_collections=i, fds=fds[i] if fds else 12,
                   threads=2, tasks_done=20 * i) for i in range(count)]


def tasks(count: int, rss_per_task: float, blocks_per_task: float, seed: int = 0) -> list[TaskRecord]:
    """Task records with RSS and heap-block trends under transient noise."""
    rng = np.random.default_rng(seed)
    out = []
    for seq in range(1, count + 1):
        rss = BASE + int(rss_per_task * seq + rng.normal(0, 8192)) // 4096 * 4096
        blocks = 100_000 + int(blocks_per_task * seq + rng.normal(0, 30))
        out.append(TaskRecord(seq, "shop.task", float(seq), seq + 0.5, rss, rss, blocks, blocks, False))
    return out


def test_growing_fds_are_a_file_descriptor_leak() -> None:
    """Open fds rising from 10 to 39 across 60 samples: file-descriptors, with the readings as evidence."""
    fds = [10 + i // 2 for i in range(60)]
    kind, evidence = classify(samples(60, fds=fds), tasks(1200, 4096, 64))
    assert kind == FILE_DESCRIPTORS
    assert len(evidence) == 1
    assert evidence[0].startswith("open file descriptors went from 10 to 39 (trend p=")


def test_an_fd_leak_names_what_the_piled_up_descriptors_point_to() -> None:
    """Targets whose count grew are named, largest growth first; steady ones are not."""
    fds = [10 + i // 2 for i in range(60)]
    snapshots = [
        FdSnapshot(0.0, 0, (("/dev/null", 2), ("tcp -> 127.0.0.1:6379", 2), ("/spool/order-N.csv", 1))),
        FdSnapshot(9.0, 600, (("/spool/order-N.csv", 25), ("/dev/null", 2), ("tcp -> 127.0.0.1:6379", 3))),
    ]
    kind, evidence = classify(samples(60, fds=fds), tasks(1200, 4096, 64), fd_snapshots=snapshots)
    assert kind == FILE_DESCRIPTORS
    assert evidence[1] == ("descriptors that piled up point to: /spool/order-N.csv (+24, 25 open), "
                           "tcp -> 127.0.0.1:6379 (+1, 3 open)")


def test_a_few_extra_fds_are_not_a_leak() -> None:
    """Fds that grow by fewer than four (a pool opening lazily) do not make an fd leak."""
    fds = [10] * 30 + [13] * 30
    kind, _ = classify(samples(60, fds=fds), tasks(1200, 4096, 0))
    assert kind == NATIVE


def test_strongly_growing_heap_blocks_are_python_objects() -> None:
    """64 heap blocks and 4 KiB of RSS kept per task with flat fds: python-objects."""
    kind, evidence = classify(samples(60), tasks(1200, 4096, 64))
    assert kind == PYTHON_OBJECTS
    assert evidence[0].startswith("Python heap blocks went from ")
    assert evidence[0].endswith("~100% of the RSS growth")


def test_rss_growth_alone_is_native() -> None:
    """RSS grows 4 KiB per task while heap blocks and fds stay flat: native."""
    kind, evidence = classify(samples(60), tasks(1200, 4096, 0))
    assert kind == NATIVE
    assert evidence[0].startswith("RSS grew by ")
    assert "open fds and the Python heap stayed flat" in evidence[0]


def test_without_tasks_the_samples_decide() -> None:
    """A process with no task records is classified from its samples over time."""
    rising = [100_000 + 70 * i for i in range(60)]
    kind, _ = classify(samples(60, rss_per_sample=4096, blocks=rising), [])
    assert kind == PYTHON_OBJECTS
    kind, _ = classify(samples(60, rss_per_sample=4096), [])
    assert kind == NATIVE


def test_a_fast_worker_s_few_window_readings_are_joined_by_the_earlier_ones() -> None:
    """Four fd readings in the window cannot show a trend; with the two before it, six strictly rising do."""
    fds = [105, 207, 263, 356, 446, 534]
    readings = samples(6, fds=fds)
    alone, _ = classify(readings[2:], tasks(1500, 4096, 0))
    kind, evidence = classify(readings[2:], tasks(1500, 4096, 0), earlier=readings[:2])
    assert alone == NATIVE
    assert kind == FILE_DESCRIPTORS
    assert evidence[0].startswith("open file descriptors went from 105 to 534 (trend p=")


def test_too_few_readings_fall_back_to_native() -> None:
    """With fewer than six readings nothing can be shown to grow: native, saying so."""
    kind, evidence = classify(samples(3), tasks(3, 4096, 64))
    assert kind == NATIVE
    assert "had too few readings" in evidence[0]
