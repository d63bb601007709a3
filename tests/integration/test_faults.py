"""The fault matrix: what goes wrong around a worker under bilge must never cost the worker a task.

Each test runs a real prefork worker (``-c 2``) on Redis under ``bilge
run``, injects one fault while it works, and checks that every job still
runs exactly once, that ``bilge run`` exits as the worker does, and that
the user is told what happened in one clear line where a message applies.

- Data dir faults: deleted, remounted read-only, filling up (a tmpfs of
  its own, filled by the test), its store locked by another process,
  truncated, or overwritten with garbage, all while the children write.
- Process faults: ``kill -9`` of the ``bilge run`` supervisor (the worker
  keeps running: bilge is a wrapper, the worker is the service),
  ``SIGSTOP``/``SIGCONT`` of a pool child.
- Tasks that fight a profiler (``apps.hostile``): ``gc.freeze()``,
  ``gc.disable()``, ``tracemalloc.start()/stop()``, ``sys.settrace``,
  ``os.fork()``, ``sys.modules`` entries replaced.

The tmpfs tests mount and need root (CI runs as root); they fail, saying
so, rather than skip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support.bilge_data import DB_NAME, integrity_check, tasks_recorded
from support.billing_run import BillingSetup, run_billing
from support.brokers import producer_app, send_all, unique_queue
from support.jobs import RENDER_STATEMENT, billing_env, billing_jobs, executions
from support.workers import BILGE, Launcher, Worker, celery_command, worker_environment

pytestmark = pytest.mark.integration

JOBS = billing_jobs(2400, seed=31)


def report(data_dir: Path, artifacts: Path, name: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*BILGE, "report", "--data-dir", str(data_dir), "--format", "json"], capture_output=True,
                          text=True, timeout=120)
    (artifacts / name).write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    return done


def agent_errors(data_dir: Path) -> list[tuple[str, str]]:
    """The errors the agents contained and recorded (source, message); none when the store is gone."""
    if not (data_dir / DB_NAME).exists():
        return []
    conn = sqlite3.connect("file:%s?mode=ro" % (data_dir / DB_NAME), uri=True, timeout=10)
    try:
        return [(str(s), str(m)) for s, m in conn.execute("SELECT source, message FROM agent_errors")]
    finally:
        conn.close()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs of the test's own (a filesystem that can be filled or remounted read-only)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    assert done.returncode == 0, "these tests mount a tmpfs and need root (CI has it): %s" % done.stderr
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(mount: Path) -> None:
    """Fill the filesystem at ``mount`` to the last byte."""
    with open(mount / "filler", "wb", buffering=0) as f:  # unbuffered: nothing left to write at close
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass


def hold_exclusive_lock(path: Path, seconds: float, ready: threading.Event) -> None:
    """Another process's exclusive transaction on the store, held for ``seconds``."""
    code = ("import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(float(sys.argv[2]))\n"
            "c.execute('COMMIT')\n")
    with subprocess.Popen(["python3", "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE,
                          text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        ready.set()
        holder.wait(timeout=seconds + 30)


FAULTS = ("deleted", "read-only", "filling-up", "locked", "truncated", "garbage")


@pytest.mark.parametrize("fault", FAULTS)
def test_the_worker_serves_every_task_whatever_happens_to_its_data_dir(
    fault: str, launcher: Launcher, redis_db: Any, artifacts: Path, tmpfs: Path
) -> None:
    """The data dir fails under a working prefork worker after 300 recorded tasks: every one of 2400 jobs still
    runs exactly once, ``bilge run`` exits 0 with the worker, and ``bilge report`` afterwards reports (from what
    it could still read, saying so, when the store is damaged) or says in one line why it cannot."""
    queue = unique_queue("fault-" + fault)
    setup = BillingSetup(producer_app(redis_db.url, queue), redis_db.url, redis_db.client, redis_db.url, queue)
    data_dir = tmpfs / "data"
    store = data_dir / DB_NAME

    def inject(worker: Worker) -> None:
        worker.wait_for(lambda: tasks_recorded(data_dir) >= 300, 120, "300 tasks recorded before the fault")
        if fault == "deleted":
            for path in data_dir.iterdir():
                path.unlink()
            data_dir.rmdir()
        elif fault == "read-only":
            # A read-only bind mount over the data dir (remounting the tmpfs itself is refused while the
            # children hold the store open for writing): what a file opened from now on sees.
            for args in (["--bind", str(data_dir), str(data_dir)], ["-o", "remount,bind,ro", str(data_dir)]):
                done = subprocess.run(["mount", *args], capture_output=True, text=True)
                assert done.returncode == 0, done.stderr
        elif fault == "filling-up":
            fill(tmpfs)
        elif fault == "locked":
            ready = threading.Event()
            holder = threading.Thread(target=hold_exclusive_lock, args=(store, 15.0, ready))
            holder.start()
            assert ready.wait(60)
            holder.join()
        elif fault == "truncated":
            os.truncate(store, store.stat().st_size // 2)
        elif fault == "garbage":
            with open(store, "r+b") as f:
                f.seek(0)
                f.write(os.urandom(8192))

    outcome = run_billing(launcher, setup, JOBS, "prefork", 2, data_dir=data_dir, acks_late=True,
                          while_running=inject)
    log = outcome.worker.log_text()
    assert outcome.exit_code == 0, outcome.worker.log_tail()
    runs = executions(redis_db.client)
    assert len(runs) == len(JOBS) and set(runs.values()) == {1}, "some jobs ran twice or never"
    assert "Traceback" not in log, log[-3000:]

    if fault == "read-only":
        subprocess.run(["umount", str(data_dir)], check=True)
    if fault == "filling-up":
        (tmpfs / "filler").unlink()
    done = report(data_dir, artifacts, "report.txt")
    assert "Traceback" not in done.stderr and done.stderr.count("\n") <= 1, done.stderr
    if fault in ("read-only", "filling-up", "locked"):
        # The store was only unwritable for a while: sound, and what came before (and, locked, after) is in it.
        assert done.returncode == 0 and '"verdict"' in done.stdout, done.stderr
        assert integrity_check(data_dir) == "ok"
    elif fault in ("truncated", "garbage"):
        # What the children wrote after the damage may mend or break more of it (their WAL's checkpoints rewrite
        # pages): either a report from what could still be read, saying how much, or one line saying nothing
        # could be; exit 3 either way, so a script sees the damage.
        assert done.returncode == 3, done.stderr
        salvaged = '"verdict"' in done.stdout and "This report is built from what could still be read: runs 1" in (
            done.stderr)
        assert salvaged or (done.stderr.startswith("bilge: error: reading store ") and not done.stdout), done.stderr
    else:  # deleted: said in one line
        assert done.returncode == 2 and done.stderr.startswith("bilge: error: ") and not done.stdout
    if fault == "locked":
        # The flushes that failed while it was locked left their task rows for the next: none is missing.
        assert tasks_recorded(data_dir) == len(JOBS)
    if done.returncode == 0:
        (artifacts / "agent-errors.txt").write_text("\n".join("%s: %s" % e for e in agent_errors(data_dir)))


def test_a_full_filesystem_at_start_is_said_in_one_line(tmpfs: Path) -> None:
    """A data dir on a filesystem with no space left: bilge run says so in one line and exits non-zero before
    starting anything (the broker keeps the tasks)."""
    fill(tmpfs)
    done = subprocess.run([*BILGE, "run", "--data-dir", str(tmpfs / "data"), "--", "python3", "-c", "print('ran')"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "ran" not in done.stdout, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "bilge: error:" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_kill_9_of_the_supervisor_leaves_the_worker_serving(launcher: Launcher, redis_db: Any,
                                                            artifacts: Path) -> None:
    """SIGKILL to ``bilge run``: the worker (the service) keeps serving every job exactly once, its agent keeps
    recording, and it shuts down cleanly on its own SIGTERM; the store stays sound and reportable."""
    jobs = billing_jobs(3000, seed=37)
    queue = unique_queue("fault-supervisor")
    env = worker_environment(billing_env(redis_db.url, redis_db.url, queue, acks_late=True))
    data_dir = artifacts / "data"
    producer = producer_app(redis_db.url, queue)
    send_all(producer, jobs[:1000], queue)
    worker = launcher.start(celery_command("apps.billing", "prefork", 2, name="sup-" + queue, queue=queue), env,
                            "worker", data_dir)
    worker.wait_for(lambda: tasks_recorded(data_dir) >= 300, 120, "300 tasks recorded")
    main = worker.celery_main()
    os.kill(worker.pid, signal.SIGKILL)
    worker.process.wait(timeout=10)
    send_all(producer, jobs[1000:], queue)
    deadline = time.monotonic() + 180
    while len(executions(redis_db.client)) < len(jobs):
        assert main.is_running() and time.monotonic() < deadline, "the worker stopped serving: %s" % (
            worker.log_tail())
        time.sleep(0.5)
    recorded = tasks_recorded(data_dir)
    main.send_signal(signal.SIGTERM)
    main.wait(timeout=60)
    runs = executions(redis_db.client)
    assert len(runs) == len(jobs) and set(runs.values()) == {1}
    assert tasks_recorded(data_dir) >= recorded > 1000, "the agent stopped recording without its supervisor"
    assert integrity_check(data_dir) == "ok"
    done = report(data_dir, artifacts, "report.json")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_sigstop_of_a_pool_child_delays_but_loses_nothing(launcher: Launcher, redis_db: Any, artifacts: Path) -> None:
    """A pool child stopped for 8 s (SIGSTOP) and continued: every job runs exactly once, the child and its
    agent carry on, ``bilge run`` exits 0."""
    queue = unique_queue("fault-stop")
    setup = BillingSetup(producer_app(redis_db.url, queue), redis_db.url, redis_db.client, redis_db.url, queue)
    data_dir = artifacts / "data"
    stopped: dict[str, int] = {}

    def stop_one(worker: Worker) -> None:
        worker.wait_for(lambda: tasks_recorded(data_dir) >= 300, 120, "300 tasks recorded")
        child = worker.pool_children()[0]
        stopped["pid"] = child.pid
        before = tasks_recorded(data_dir)
        child.suspend()
        time.sleep(8)
        assert child.status() == psutil.STATUS_STOPPED
        child.resume()
        stopped["recorded_before"] = before

    outcome = run_billing(launcher, setup, JOBS, "prefork", 2, data_dir=data_dir, acks_late=True,
                          while_running=stop_one)
    assert outcome.exit_code == 0, outcome.worker.log_tail()
    runs = executions(redis_db.client)
    assert len(runs) == len(JOBS) and set(runs.values()) == {1}
    conn = sqlite3.connect("file:%s?mode=ro" % (data_dir / DB_NAME), uri=True)
    (after,) = conn.execute("SELECT COUNT(*) FROM tasks t JOIN processes p ON p.id = t.process_id WHERE p.pid = ?",
                            (stopped["pid"],)).fetchone()
    conn.close()
    assert after > 0
    assert report(data_dir, artifacts, "report.json").returncode == 0


def test_tasks_that_fight_the_profiler_are_all_served(launcher: Launcher, redis_db: Any, artifacts: Path) -> None:
    """Tasks that freeze or disable the gc, start and stop tracemalloc, set trace functions, fork, or swap
    ``sys.modules`` entries, interleaved, while allocation windows are asked for: every job runs exactly once, the
    worker exits 0, no traceback in its log, the agent meets no error, and ``bilge report`` reports."""
    from apps.hostile import TASKS

    queue = unique_queue("hostile")
    jobs = [(TASKS[i % len(TASKS)], [i]) for i in range(2100)]
    env = worker_environment({"HOSTILE_BROKER_URL": redis_db.url, "HOSTILE_RESULTS_URL": redis_db.url,
                              "HOSTILE_QUEUE": queue})
    data_dir = artifacts / "data"
    producer = producer_app(redis_db.url, queue)
    send_all(producer, jobs, queue)
    worker = launcher.start(celery_command("apps.hostile", "prefork", 2, name="hostile-" + queue, queue=queue), env,
                            "worker", data_dir)
    worker.wait_for(lambda: tasks_recorded(data_dir) >= 300, 120, "300 tasks recorded")
    # Allocation windows asked for while the tasks start and stop tracemalloc under them.
    windows = []
    for _ in range(3):
        for child in worker.pool_children():
            asked = subprocess.run([*BILGE, "snapshot", str(child.pid), "--census-only", "--window", "--format",
                                    "json"], capture_output=True, text=True, timeout=60)
            windows.append(asked.stdout + asked.stderr)
        time.sleep(1.0)
    (artifacts / "windows.txt").write_text("\n".join(windows))
    worker.wait_for(lambda: len(executions(redis_db.client)) >= len(jobs), 240,
                    lambda: "every job (%d of %d)" % (len(executions(redis_db.client)), len(jobs)))
    assert worker.terminate() == 0, worker.log_tail()
    runs = executions(redis_db.client)
    assert len(runs) == len(jobs) and set(runs.values()) == {1}
    log = worker.log_text()
    assert "Traceback" not in log, log[-3000:]
    errors = agent_errors(data_dir)
    (artifacts / "agent-errors.txt").write_text("\n".join("%s: %s" % e for e in errors))
    done = report(data_dir, artifacts, "report.json")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert tasks_recorded(data_dir) == len(jobs)
    assert errors == [], "the agent met errors it had to contain: %s" % errors


def _bilge_run(data_dir: Path, command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BILGE, "run", "--data-dir", str(data_dir), "--", *command], env=env, capture_output=True,
                          text=True, timeout=120)


def _samples(data_dir: Path) -> int:
    conn = sqlite3.connect("file:%s?mode=ro" % (data_dir / DB_NAME), uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
    finally:
        conn.close()


PROGRAM = ("import os, time\nx = [bytearray(1000) for _ in range(2000)]\ntime.sleep(1.5)\n"
           "print('program ran in', os.getpid())\n")


def test_a_user_sitecustomize_and_pythonstartup_still_run_beside_the_agent(tmp_path: Path) -> None:
    """bilge's bootstrap is a sitecustomize first on PYTHONPATH: the user's own sitecustomize further down still
    runs (once), PYTHONSTARTUP is left alone, and the agent records the program."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "sitecustomize.py").write_text("import os\nprint('user sitecustomize ran in', os.getpid())\n")
    startup = tmp_path / "startup.py"
    startup.write_text("print('startup ran')\n")
    env = worker_environment({"PYTHONPATH": str(user), "PYTHONSTARTUP": str(startup)})
    # sys.executable, not a `python3` on PATH: a pyenv shim starts a Python of its own first.
    done = _bilge_run(tmp_path / "data", [sys.executable, "-c", PROGRAM], env)
    assert done.returncode == 0, done.stderr
    # `bilge run` is a Python program too, with the same environment: it runs the user's sitecustomize as well.
    program_pid = re.search(r"program ran in (\d+)", done.stdout)
    assert program_pid, done.stdout
    assert done.stdout.count("user sitecustomize ran in %s\n" % program_pid.group(1)) == 1, done.stdout
    assert "startup ran" not in done.stdout  # PYTHONSTARTUP is for interactive sessions, with or without bilge
    assert "Traceback" not in done.stderr and _samples(tmp_path / "data") > 0


@pytest.mark.parametrize("flag", ["-I", "-E"])
def test_python_that_ignores_pythonpath_runs_untouched_and_is_warned_about(flag: str, tmp_path: Path) -> None:
    """-I/-E keep the agent out: the program runs as without bilge, bilge run says why in one warning up front,
    and the report says no process recorded anything."""
    done = _bilge_run(tmp_path / "data", [sys.executable, flag, "-c", PROGRAM], worker_environment({}))
    assert done.returncode == 0 and done.stdout.startswith("program ran in "), (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "runs Python with %s, which ignores PYTHONPATH" % flag in done.stderr
    shown = subprocess.run([*BILGE, "report", "--data-dir", str(tmp_path / "data")], capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0 and "-I/-E" in shown.stdout, shown.stdout


def test_a_worker_under_coverage_run_is_served_and_recorded(launcher: Launcher, redis_db: Any,
                                                            artifacts: Path) -> None:
    """`bilge run -- coverage run -m celery ... worker`: coverage's tracer and bilge's agent share the worker;
    every job runs once, the pool children's tasks are recorded, and coverage writes its data at exit."""
    jobs = billing_jobs(600, seed=43)
    queue = unique_queue("coverage")
    env = worker_environment(billing_env(redis_db.url, redis_db.url, queue))
    argv = celery_command("apps.billing", "prefork", 2, name="cov-" + queue, queue=queue)
    assert argv[1:3] == ["-m", "celery"]
    argv = [argv[0], "-m", "coverage", "run", "--parallel-mode", *argv[1:]]
    data_dir = artifacts / "data"
    send_all(producer_app(redis_db.url, queue), jobs, queue)
    worker = launcher.start(argv, env, "worker", data_dir)
    worker.wait_for(lambda: len(executions(redis_db.client)) >= len(jobs), 180, "every job")
    assert worker.terminate() == 0, worker.log_tail()
    runs = executions(redis_db.client)
    assert len(runs) == len(jobs) and set(runs.values()) == {1}
    assert "Traceback" not in worker.log_text()
    assert tasks_recorded(data_dir) == len(jobs)
    assert list(artifacts.glob(".coverage.*")), "coverage wrote no data file"


def test_kill_9_of_the_worker_main_process_ends_the_run_with_its_signal(launcher: Launcher, redis_db: Any,
                                                                       artifacts: Path) -> None:
    """SIGKILL to Celery's main process: `bilge run` exits 137 (128 + 9) as a wrapper must, the pool children do
    not outlive their parent, and the store is sound and reportable with the run's exit code."""
    queue = unique_queue("fault-main")
    env = worker_environment(billing_env(redis_db.url, redis_db.url, queue, acks_late=True))
    data_dir = artifacts / "data"
    send_all(producer_app(redis_db.url, queue), billing_jobs(3000, seed=47), queue)
    worker = launcher.start(celery_command("apps.billing", "prefork", 2, name="main-" + queue, queue=queue), env,
                            "worker", data_dir)
    worker.wait_for(lambda: tasks_recorded(data_dir) >= 300, 120, "300 tasks recorded")
    children = worker.pool_children()
    worker.celery_main().kill()
    assert worker.process.wait(timeout=60) == 137, worker.log_tail()
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, "pool children outlived their killed parent: %s" % alive
    assert integrity_check(data_dir) == "ok"
    done = report(data_dir, artifacts, "report.json")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert '"exit_code": 137' in done.stdout


@pytest.fixture(scope="module")
def slow_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """support/slow_disk.c built into a preload library (gcc is on every machine CI runs on)."""
    source = Path(__file__).parent / "support" / "slow_disk.c"
    library = tmp_path_factory.mktemp("slowdisk") / "slow_disk.so"
    built = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return library


def test_a_very_slow_disk_never_slows_a_task(launcher: Launcher, redis_db: Any, artifacts: Path,
                                            slow_disk: Path) -> None:
    """Every write to the data dir waits 20 ms and every fsync 300 ms: every job runs exactly once, and while
    tasks run no pool child pays for the disk on its task thread (the agent writes from its own thread; the log
    of the preloaded library says which thread paid each call)."""
    log = artifacts / "disk-calls.log"
    queue = unique_queue("fault-slowdisk")
    setup = BillingSetup(producer_app(redis_db.url, queue), redis_db.url, redis_db.client, redis_db.url, queue)
    data_dir = artifacts / "data"
    children: set[int] = set()
    served: dict[str, float] = {}

    def watch(worker: Worker) -> None:
        worker.wait_for(lambda: tasks_recorded(data_dir) >= 50, 120, "the first tasks recorded")
        # Read once before the loop too: on a fast run every job may be done by the time the first flush is
        # recorded, and the loop would never run (the children live on until the worker stops).
        children.update(p.pid for p in worker.pool_children())
        while len(executions(redis_db.client)) < len(JOBS) and worker.process.poll() is None:
            children.update(p.pid for p in worker.pool_children())
            time.sleep(0.2)
        served["at"] = time.time()

    extra = {"LD_PRELOAD": str(slow_disk), "SLOW_DISK_DIR": str(data_dir), "SLOW_DISK_LOG": str(log)}
    outcome = run_billing(launcher, setup, JOBS, "prefork", 2, data_dir=data_dir, while_running=watch,
                          extra_env=extra)
    assert outcome.exit_code == 0, outcome.worker.log_tail()
    runs = executions(redis_db.client)
    assert len(runs) == len(JOBS) and set(runs.values()) == {1}
    paid = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    by_children = [(int(pid), int(tid), call) for pid, tid, at, call in paid
                   if int(pid) in children and float(at) < served["at"]]
    assert by_children, "no disk call by a pool child while it served: the test saw nothing (%d in all)" % len(paid)
    on_task_thread = Counter((pid, call) for pid, tid, call in by_children if pid == tid)
    assert not on_task_thread, "disk calls on a pool child's task thread while serving: %s" % dict(on_task_thread)
    assert integrity_check(data_dir) == "ok"


@pytest.fixture
def wall_clock() -> Iterator[Any]:
    """Steps this machine's wall clock (CLOCK_REALTIME, as an NTP step or an operator's `date -s` would; the
    monotonic clock does not move), and puts it back right after, whatever happens. Needs root (CI has it)."""
    anchor_wall, anchor_mono = time.time(), time.monotonic()

    def step(offset: float) -> None:
        time.clock_settime(time.CLOCK_REALTIME, anchor_wall + (time.monotonic() - anchor_mono) + offset)

    try:
        step(0.0)
    except PermissionError as exc:
        pytest.fail("stepping the wall clock needs root (CI has it): %s" % exc)
    try:
        yield step
    finally:
        step(0.0)


def test_wall_clock_steps_back_and_forward_leave_the_diagnosis_whole(launcher: Launcher, redis_db: Any,
                                                                     artifacts: Path, wall_clock: Any) -> None:
    """The wall clock steps back an hour after 300 recorded tasks and forward an hour past the truth after
    1500: every job runs exactly once, every process's samples and tasks stay in time order in the store, the
    run ends after it starts, and the leak is still found in billing.render_statement."""
    jobs = billing_jobs(4000, seed=53)
    queue = unique_queue("fault-clock")
    setup = BillingSetup(producer_app(redis_db.url, queue), redis_db.url, redis_db.client, redis_db.url, queue)
    data_dir = artifacts / "data"

    def jump(worker: Worker) -> None:
        worker.wait_for(lambda: tasks_recorded(data_dir) >= 300, 120, "300 tasks recorded")
        wall_clock(-3600.0)
        worker.wait_for(lambda: tasks_recorded(data_dir) >= 1500, 120, "1500 tasks recorded")
        wall_clock(+3600.0)

    outcome = run_billing(launcher, setup, jobs, "prefork", 2, data_dir=data_dir, while_running=jump)
    wall_clock(0.0)
    assert outcome.exit_code == 0, outcome.worker.log_tail()
    runs = executions(redis_db.client)
    assert len(runs) == len(jobs) and set(runs.values()) == {1}
    conn = sqlite3.connect("file:%s?mode=ro" % (data_dir / DB_NAME), uri=True)
    try:
        backwards = {}
        for table, column in (("samples", "t"), ("tasks", "ended")):
            rows = conn.execute("SELECT process_id, %s FROM %s ORDER BY process_id, rowid" % (column, table)).fetchall()
            backwards[table] = sum(1 for a, b in zip(rows, rows[1:]) if a[0] == b[0] and b[1] < a[1])
        started, ended = conn.execute("SELECT started, ended FROM runs").fetchone()
    finally:
        conn.close()
    assert backwards == {"samples": 0, "tasks": 0}, "readings out of time order: %s" % backwards
    assert ended > started
    done = report(data_dir, artifacts, "report.json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["verdict"] == "leak" and result["findings"][0]["task"] == RENDER_STATEMENT, result["reason"]
