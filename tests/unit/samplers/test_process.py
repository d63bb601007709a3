"""Tests for bilge.samplers.process: RSS, USS/PSS, fds and heap readings of the current process."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import psutil
import pytest

from bilge.samplers import process
from bilge.samplers.process import RssReader, count_fds, fd_targets, gc_reading, heap_blocks, read_uss_pss

MIB = 2**20


def test_rss_is_close_to_psutil() -> None:
    """The reader's RSS is a positive multiple of the page size within 4 MiB of psutil's."""
    reader = RssReader()
    try:
        rss = reader.read()
        expected = psutil.Process().memory_info().rss
    finally:
        reader.close()
    assert isinstance(rss, int)
    assert rss > 0
    assert rss % process.PAGE_SIZE == 0
    assert abs(rss - expected) < 4 * MIB


def test_rss_follows_allocations() -> None:
    """Touching 64 MiB raises the reading by about that much (current RSS, not a peak)."""
    reader = RssReader()
    try:
        before = reader.read()
        block = b"\x01" * (64 * MIB)
        during = reader.read()
        del block
        after = reader.read()
    finally:
        reader.close()
    assert before is not None and during is not None and after is not None
    assert during - before >= 60 * MIB
    assert during - after >= 60 * MIB


def test_rss_unreadable_proc_gives_none(tmp_path: Path) -> None:
    """A proc root without statm yields None instead of raising."""
    assert RssReader(proc_root=str(tmp_path)).read() is None


def test_rss_reads_an_injected_proc_root(tmp_path: Path) -> None:
    """The second statm field is the resident page count, converted to bytes."""
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "statm").write_text("1000 250 30 1 0 200 0\n")
    reader = RssReader(proc_root=str(tmp_path))
    try:
        assert reader.read() == 250 * process.PAGE_SIZE
    finally:
        reader.close()


def test_rss_reopens_after_its_descriptor_is_closed() -> None:
    """If a library closes all fds behind the reader's back, the next read reopens and still works."""
    reader = RssReader()
    try:
        assert reader.read() is not None
        os.close(reader._fd)
        assert reader.read() is not None
    finally:
        reader.close()


def test_rss_reader_reports_the_child_after_fork() -> None:
    """A reader used in the parent, then in a forked child, reads the child's RSS, not the parent's."""
    reader = RssReader()
    parent_rss = reader.read()
    assert parent_rss is not None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe and leave without running pytest's teardown
        try:
            os.close(read_end)
            block = b"\x01" * (64 * MIB)
            mine = reader.read()
            truth = psutil.Process().memory_info().rss
            os.write(write_end, json.dumps({"rss": mine, "psutil": truth, "len": len(block)}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = json.loads(pipe.read())
    _, status = os.waitpid(pid, 0)
    reader.close()
    assert os.waitstatus_to_exitcode(status) == 0
    # The child's own RSS (checked against psutil run in the child) is far above
    # the parent's: the child lazily faults some shared pages but holds 64 MiB more.
    assert abs(report["rss"] - report["psutil"]) < 4 * MIB
    # Well above the parent's, by a margin that survives the child faulting
    # shared pages lazily (the first assertion is the exact one).
    assert report["rss"] - parent_rss >= 16 * MIB
    # The parent's reader still reads the parent.
    assert reader.read() is not None
    reader.close()


def test_uss_and_pss_are_sane() -> None:
    """USS and PSS are positive, USS <= PSS <= RSS (plus slack), within 25% of psutil's full info."""
    uss, pss = read_uss_pss()
    if uss is None:
        pytest.skip("this kernel has no /proc/self/smaps_rollup")
    info = psutil.Process().memory_full_info()
    assert pss is not None
    assert 0 < uss <= pss
    assert pss <= info.rss + 4 * MIB
    assert abs(uss - info.uss) < 0.25 * info.uss + 4 * MIB


def test_uss_pss_unavailable_gives_none(tmp_path: Path) -> None:
    """Without smaps_rollup both readings are None."""
    assert read_uss_pss(proc_root=str(tmp_path)) == (None, None)


def test_uss_pss_parses_smaps_rollup(tmp_path: Path) -> None:
    """USS is Private_Clean + Private_Dirty, PSS is Pss, all from kB to bytes."""
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "smaps_rollup").write_text(
        "55d0c0000000-7ffd00000000 ---p 00000000 00:00 0 [rollup]\n"
        "Rss:               20000 kB\nPss:               15000 kB\nShared_Clean:       6000 kB\n"
        "Private_Clean:      1000 kB\nPrivate_Dirty:     12000 kB\n"
    )
    assert read_uss_pss(proc_root=str(tmp_path)) == (13000 * 1024, 15000 * 1024)


def test_count_fds_sees_a_new_descriptor() -> None:
    """Opening two descriptors raises the count by two; closing them brings it back."""
    before = count_fds()
    assert before is not None and before >= 3
    read_end, write_end = os.pipe()
    try:
        assert count_fds() == before + 2
    finally:
        os.close(read_end)
        os.close(write_end)
    assert count_fds() == before


def test_fd_targets_name_files_sockets_and_pipes(tmp_path: Path) -> None:
    """Files by path with digit runs folded, a connected TCP socket by its peer, pipes as pipes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    files = [open(tmp_path / ("order-%d.csv" % i), "w") for i in (7, 42, 1234)]  # noqa: SIM115
    read_end, write_end = os.pipe()
    try:
        targets = dict(fd_targets())
        assert targets[str(tmp_path / "order-N.csv")] == 3
        assert targets["tcp -> 127.0.0.1:%d" % port] == 1
        assert targets["tcp"] >= 1  # the listening socket has no peer
        assert targets["pipe"] >= 2
    finally:
        for f in files:
            f.close()
        client.close()
        server.close()
        os.close(read_end)
        os.close(write_end)


def test_count_fds_unreadable_gives_none(tmp_path: Path) -> None:
    """A proc root without an fd directory gives None."""
    assert count_fds(proc_root=str(tmp_path)) is None


def test_heap_blocks_move_with_python_objects() -> None:
    """Allocating 10000 small objects raises the allocated block count by at least 10000."""
    before = heap_blocks()
    objects = [object() for _ in range(10_000)]
    assert heap_blocks() - before >= 10_000
    del objects


def test_gc_reading_totals() -> None:
    """The gc reading returns the three generation counts and totals that only grow with collections."""
    import gc

    g0, g1, g2, collections, collected = gc_reading()
    assert min(g0, g1, g2, collections, collected) >= 0
    gc.collect()
    assert gc_reading()[3] >= collections + 1


def test_fd_target_folds_ids_in_file_names() -> None:
    assert process._fd_target("/spool/order-123-4d5e.csv") == "/spool/order-N-N.csv"
    assert process._fd_target("/var/log/app.log") == "/var/log/app.log"
    assert process._fd_target("anon_inode:[eventpoll]") == "anon_inode:eventpoll"



def test_statm_is_read_through_a_pread_that_keeps_the_gil(tmp_path: Path) -> None:
    """On glibc the read goes through libc's pread with the GIL held (ctypes.PyDLL), and reads what os.pread reads.

    A GIL release in the task hook handed the GIL to a waiting agent thread
    (the task thread then waited); one in the agent thread cost it a 5 ms
    switch interval whenever the host's thread was busy.
    """
    pread = process.gil_held_pread()
    assert pread is not process.os_pread
    path = tmp_path / "statm"
    path.write_bytes(b"1000 250 30 1 0 200 0\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert pread(fd) == process.os_pread(fd) == b"1000 250 30 1 0 200 0\n"
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        pread(fd)  # closed: the reader reopens on this


def test_statm_keeps_the_gil_only_while_the_agent_thread_is_working(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the agent sleeps nobody waits for the GIL, and os.pread (a third of the ctypes call's cost with
    cold caches) is used; during the agent's tick (AGENT_BUSY) the GIL-holding read is."""
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "statm").write_bytes(b"1000 250 30 1 0 200 0\n")
    calls: list[int] = []
    held = process.gil_held_pread()

    def spy(fd: int) -> bytes:
        calls.append(fd)
        return held(fd)

    reader = process.RssReader(proc_root=str(tmp_path), held_pread=spy)
    assert reader.read() == 250 * process.PAGE_SIZE
    assert calls == []
    monkeypatch.setattr(process, "AGENT_BUSY", [1])
    assert reader.read() == 250 * process.PAGE_SIZE
    assert len(calls) == 1
    reader.close()


def test_count_fds_counts_what_a_listing_shows_less_the_listings_own_descriptor() -> None:
    """The one-stat count (Linux 6.2+) and the listing agree; a listing holds one descriptor open itself."""
    assert count_fds() == len(os.listdir("/proc/self/fd")) - 1
