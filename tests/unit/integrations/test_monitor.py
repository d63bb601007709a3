"""The supervisor's recorder: diagnoses once at the end, and survives a store that went away."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Callable

import pytest

from bilge.integrations.monitor import Recorder, RunView, suspect
from bilge.store.sqlite import db_path


def test_close_records_the_final_diagnosis(one_process: tuple[str, int]) -> None:
    data_dir, run_id = one_process
    recorder = Recorder(RunView(data_dir), run_id, every=3600)
    recorder.start()
    recorder.close()
    conn = sqlite3.connect(db_path(data_dir))
    (diagnosed,) = conn.execute("SELECT diagnosed FROM runs WHERE id = ?", (run_id,)).fetchone()
    conn.close()
    assert diagnosed is not None
    assert not suspect(data_dir, run_id)


def test_new_evidence_is_diagnosed_and_recorded(one_process: tuple[str, int], monkeypatch: pytest.MonkeyPatch,
                                                wait_for: Callable[..., bool]) -> None:
    """A holder search stored after the latest diagnosis is diagnosed at the next check though nothing is suspect
    (a fleet query reads the recorded findings, and a first search's holder must not stand until QUIET_EVERY);
    with nothing new, nothing suspect and the diagnosis recent, no check diagnoses."""
    data_dir, run_id = one_process
    monkeypatch.setattr("bilge.integrations.monitor.DIAGNOSE_EVERY", 0.0)
    monkeypatch.setattr("bilge.integrations.monitor.READ_EVERY", 0.0)
    view = RunView(data_dir)
    recorder = Recorder(view, run_id, every=0.05)
    recorder.start()
    try:
        assert wait_for(lambda: view.diagnosed_at > 0, 10)  # the first check: evidence never seen
        first = view.diagnosed_at
        time.sleep(0.5)
        assert view.diagnosed_at == first
        conn = sqlite3.connect(db_path(data_dir))
        with conn:
            (process_id,) = conn.execute("SELECT id FROM processes WHERE run_id = ?", (run_id,)).fetchone()
            conn.execute("INSERT INTO holders (process_id, t, started, type, path, root_kind, targets) "
                         "VALUES (?, ?, ?, 'dict', 'app.CACHE[...]', 'module-global', 12)",
                         (process_id, time.time(), time.time()))
        conn.close()
        assert wait_for(lambda: view.diagnosed_at > first, 10)
        second = view.diagnosed_at
        time.sleep(0.5)
        assert view.diagnosed_at == second
    finally:
        recorder.close()


def test_a_vanished_store_is_warned_about_once(store: tuple[str, int], capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, run_id = store
    shutil.rmtree(data_dir)
    view = RunView(data_dir)
    recorder = Recorder(view, run_id, every=3600)
    recorder.close()
    recorder.close()
    err = capsys.readouterr().err
    assert err.count("bilge: warning: cannot diagnose the run") == 1, err
    assert "Traceback" not in err


def test_a_final_diagnosis_that_takes_too_long_is_abandoned(store: tuple[str, int],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, run_id = store
    view = RunView(data_dir)
    release = threading.Event()
    view.diagnosis = lambda fresh=False: release.wait(10)  # type: ignore[assignment,misc,return-value]
    started = time.monotonic()
    Recorder(view, run_id, every=3600).close(timeout=0.2)
    assert time.monotonic() - started < 5
    release.set()
    assert "final diagnosis took over 0 s and was abandoned" in capsys.readouterr().err


def test_one_effective_limit_for_health_and_metrics(one_process: tuple[str, int],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --recycle-hard-limit the cgroup's limit is the one /health, /metrics and the agent use; a given
    limit wins over it."""
    data_dir, _ = one_process
    monkeypatch.setattr("bilge.integrations.monitor.cgroup_memory_limit", lambda: 3 * 2**30)
    view = RunView(data_dir, record=False)
    assert view.hard_limit == 3 * 2**30 and view.health()["hard_limit"] == 3 * 2**30
    assert RunView(data_dir, hard_limit=2**30, record=False).health()["hard_limit"] == 2**30
