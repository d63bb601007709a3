"""Start Celery workers as subprocesses, bare or under the real ``bilge run`` CLI, and stop them.

Every worker starts in a new session, so a test that fails half-way can kill
the whole process group (``bilge run``, the Celery main process and its pool
children) in teardown. Waits are bounded and fail with the worker's log tail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

INTEGRATION_DIR = Path(__file__).resolve().parents[1]
BILGE = (sys.executable, "-m", "bilge")
# Variables that would make a bare worker load the agent, or bend its Python.
SCRUBBED = ("BILGE_DATA_DIR", "BILGE_RUN_ID", "PYTHONSTARTUP", "PYTHONWARNINGS", "PYTHONHOME")


def celery_command(app: str, pool: str, concurrency: int, name: str, queue: str | None = None) -> list[str]:
    """The argv of a quiet Celery worker (no gossip, mingle or heartbeat).

    Args:
        app: the ``-A`` module under tests/integration, e.g. ``apps.billing``.
        pool: prefork, solo or threads.
        concurrency: pool size (ignored by solo).
        name: unique node name prefix.
        queue: the queue to consume (default: the app's default queue).
    """
    argv = [sys.executable, "-m", "celery", "-A", app, "worker", "-P", pool, "-c", str(concurrency),
            "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-n", "%s@%%h" % name]
    if queue:
        argv += ["-Q", queue]
    return argv


def worker_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without bilge's variables, with the test apps importable and ``extra`` added."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(INTEGRATION_DIR), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


@dataclass
class Worker:
    """A running worker command: ``bilge run -- celery …`` or bare ``celery …``."""

    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path | None
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        """Pid of the process the test started (``bilge run`` when under bilge)."""
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the worker's combined stdout and stderr."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        """The whole log so far."""
        return self.log_path.read_text(errors="replace")

    def celery_main(self) -> psutil.Process:
        """The Celery main process: the child of ``bilge run`` (or the process itself when bare)."""
        me = psutil.Process(self.pid)
        if self.data_dir is None:
            return me
        children = me.children()
        assert len(children) == 1, "bilge run should have exactly one child, the worker; got %r" % children
        return children[0]

    def pool_children(self) -> list[psutil.Process]:
        """The prefork pool children alive now."""
        return [p for p in self.celery_main().children() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def wait_for(
        self, condition: Callable[[], bool], timeout: float, what: str | Callable[[], str], interval: float = 0.2
    ) -> None:
        """Poll ``condition`` until true; fail if the worker exits first or ``timeout`` passes.

        Args:
            condition: the thing to wait for.
            timeout: seconds.
            what: what is awaited, for the failure message (a callable is called at failure time,
                so the message can show progress).
            interval: seconds between polls.
        """
        deadline = time.monotonic() + timeout
        while True:
            if condition():
                return
            code = self.process.poll()
            if code is not None or time.monotonic() > deadline:
                awaited = what() if callable(what) else what
                problem = ("worker exited with code %s" % code) if code is not None else (
                    "timed out after %.0f s" % timeout)
                raise AssertionError("%s while waiting for %s; log tail:\n%s" % (problem, awaited, self.log_tail()))
            time.sleep(interval)

    def terminate(self, timeout: float = 60.0) -> int:
        """Send SIGTERM to the started process only (never its group) and wait; its exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("the worker did not exit within %.0f s of SIGTERM; log tail:\n%s"
                                 % (timeout, self.log_tail())) from None

    def kill_group(self) -> None:
        """SIGKILL every process of the worker's session still alive; reap the started one."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


class Launcher:
    """Starts workers for one test and kills whatever is left of them in teardown.

    Args:
        artifacts: the test's artifacts folder; logs go there.
    """

    def __init__(self, artifacts: Path) -> None:
        self.artifacts = artifacts
        self.started: list[Worker] = []

    def start(self, argv: list[str], env: Mapping[str, str], label: str, data_dir: Path | None,
              bilge_args: Sequence[str] = ()) -> Worker:
        """Start ``argv``, under ``bilge run --data-dir data_dir`` unless ``data_dir`` is None.

        Args:
            argv: the worker command.
            env: its environment.
            label: names the log file, ``<label>.log``.
            data_dir: bilge's data directory, or None for a bare worker.
            bilge_args: further ``bilge run`` options.
        """
        command = list(argv) if data_dir is None else [*BILGE, "run", "--data-dir", str(data_dir), *bilge_args,
                                                       "--", *argv]
        log_path = self.artifacts / ("%s.log" % label)
        with open(log_path, "wb") as log:
            log.write(("$ %s\n" % " ".join(command)).encode())
            log.flush()
            process = subprocess.Popen(command, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=str(self.artifacts), start_new_session=True)
        worker = Worker(process=process, log_path=log_path, data_dir=data_dir)
        self.started.append(worker)
        return worker

    def close(self) -> None:
        """Kill every worker's process group (a no-op for those already stopped)."""
        for worker in self.started:
            worker.kill_group()
