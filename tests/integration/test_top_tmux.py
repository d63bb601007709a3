"""`bilge top` in a real terminal (tmux) against a live prefork worker under bilge and a bare one, on Redis."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.brokers import producer_app, send_all, unique_queue
from support.jobs import billing_env, billing_jobs, finished
from support.workers import BILGE, Launcher, celery_command, worker_environment

pytestmark = pytest.mark.integration

TASKS = 6000


@pytest.fixture
def tmux() -> Iterator[str]:
    """A tmux server of this test's own (socket name), killed afterwards."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (.ci/run installs it)")
    name = "bilge-top-%d" % os.getpid()
    yield name
    subprocess.run(["tmux", "-L", name, "kill-server"], capture_output=True)


def screen(server: str, history: bool = False) -> str:
    """The pane's text now (with ``history``: the lines scrolled off it too)."""
    return subprocess.run(["tmux", "-L", server, "capture-pane", "-p", "-t", "top", *(["-S", "-500"] if history
                                                                                      else [])],
                          capture_output=True, text=True, check=True).stdout


def wait_screen(server: str, condition: Callable[[str], bool], timeout: float = 60.0, history: bool = False) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = screen(server, history)
        if condition(text):
            return text
        time.sleep(0.3)
    raise AssertionError("the screen never showed what was expected:\n" + text)


def keys(server: str, *names: str) -> None:
    subprocess.run(["tmux", "-L", server, "send-keys", "-t", "top", *names], check=True)


def test_top_shows_updates_sorts_and_details_every_worker_process_in_80_by_24(
    tmux: str, launcher: Launcher, redis_db: Any, artifacts: Path
) -> None:
    """A 2-child prefork worker under bilge and a 1-child bare worker serve billing tasks; `bilge top` in an
    80x24 tmux pane lists the five worker processes (the bare ones as "no agent"), its task counts move,
    `s` sorts by growth, down+enter opens the detail of a child with the memory left per call of each task
    name, `q` quits and gives the shell back. Captures of each screen are kept in the artifacts."""
    sockets = tempfile.mkdtemp(prefix="bilge-top-")
    os.chmod(sockets, 0o700)
    queue, bare_queue = unique_queue("top"), unique_queue("topbare")
    env = worker_environment({**billing_env(redis_db.url, redis_db.url, queue), "BILGE_SOCKET_DIR": sockets})
    worker = launcher.start(celery_command("apps.billing", "prefork", 2, name="top-" + queue, queue=queue), env,
                            "worker", artifacts / "data")
    bare_env = worker_environment(billing_env(redis_db.url, redis_db.url, bare_queue))
    bare = launcher.start(celery_command("apps.billing", "prefork", 1, name="bare-" + bare_queue, queue=bare_queue),
                          bare_env, "bare", None)
    send_all(producer_app(redis_db.url, queue), billing_jobs(TASKS), queue)
    deadline = time.monotonic() + 60
    while finished(redis_db.client) < 300 and time.monotonic() < deadline:
        time.sleep(0.2)

    # After top: is the terminal back in canonical mode (icanon, not -icanon), and top's exit code.
    command = ("env BILGE_SOCKET_DIR=%s %s top --interval 0.5; code=$?; stty -a | grep -o -- '-*icanon'; "
               "echo TOP-EXITED-$code") % (
        shlex.quote(sockets), " ".join(shlex.quote(part) for part in BILGE))
    subprocess.run(["tmux", "-L", tmux, "new-session", "-d", "-s", "top", "-x", "80", "-y", "24", command],
                   check=True, env={**os.environ, "TERM": "xterm-256color"})
    # Keep the pane after the command ends, to read how it ended.
    subprocess.run(["tmux", "-L", tmux, "set-option", "-t", "top", "remain-on-exit", "on"], check=True)
    children = [p.pid for p in worker.pool_children()]
    bare_pids = [bare.celery_main().pid] + [p.pid for p in bare.pool_children()]
    first = wait_screen(tmux, lambda s: all(str(pid) in s for pid in children + bare_pids))
    (artifacts / "top_1_list.txt").write_text(first)
    assert all(len(line) <= 80 for line in first.splitlines())
    assert str(worker.celery_main().pid) in first and first.count("no agent") == 2
    assert re.search(r"bilge top: 5 processes, by rss", first), first

    def tasks_of(text: str, pid: int) -> int:
        row = next(line for line in text.splitlines() if line.strip().startswith(str(pid)))
        return int(re.split(r"\s{2,}", row.strip())[6])  # columns are two spaces apart; sizes hold one

    before = tasks_of(first, children[0])
    moved = wait_screen(tmux, lambda s: str(children[0]) in s and tasks_of(s, children[0]) > before)
    (artifacts / "top_2_updated.txt").write_text(moved)

    keys(tmux, "s")
    by_growth = wait_screen(tmux, lambda s: "by growth" in s)
    (artifacts / "top_3_sorted.txt").write_text(by_growth)

    # Select a child of the bilge worker and open its detail, rows by pid (an order that stays put).
    keys(tmux, "s", "s")  # growth -> tasks -> pid
    wait_screen(tmux, lambda s: "by pid" in s)
    rows = [line.split()[0] for line in screen(tmux).splitlines() if line.strip()[:1].isdigit()]
    keys(tmux, *["Up"] * len(rows))  # to the first row, wherever the selection was
    for _ in range(rows.index(str(children[0]))):
        keys(tmux, "Down")
    keys(tmux, "Enter")
    detail = wait_screen(tmux, lambda s: "change per call" in s and "billing.render_statement" in s)
    (artifacts / "top_4_detail.txt").write_text(detail)
    assert "%d celery-child" % children[0] in detail and "RSS" in detail

    keys(tmux, "q")
    done = wait_screen(tmux, lambda s: "TOP-EXITED-" in s, timeout=20, history=True)
    (artifacts / "top_5_quit.txt").write_text(done)
    assert "TOP-EXITED-0" in done and "-icanon" not in done and "icanon" in done

    once = subprocess.run([*BILGE, "top", "--once"], env={**os.environ, "BILGE_SOCKET_DIR": sockets, "COLUMNS": "120"},
                          capture_output=True, text=True, timeout=60)
    (artifacts / "top_once.txt").write_text(once.stdout + once.stderr)
    assert once.returncode == 0 and all(str(pid) in once.stdout for pid in children + bare_pids), once.stdout
    assert "GROWING TYPE" in once.stdout
    worker.terminate()
    bare.terminate()
    shutil.rmtree(sockets, ignore_errors=True)
    assert sys.executable
