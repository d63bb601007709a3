"""Run a command with the agent in every Python process it starts.

The agent is loaded through a ``sitecustomize`` module put first on
``PYTHONPATH`` (the mechanism coverage.py and ddtrace-run use), so users
change no code; it follows forks by itself. ``bilge run`` stays in front as a
transparent wrapper: it forwards signals to the command and exits with the
command's exit code, as a wrapper under systemd or Kubernetes must.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any

from bilge.config import AgentConfig
from bilge.errors import BilgeError, CommandError
from bilge.integrations.monitor import Recorder, RunView
from bilge.samplers import wallclock
from bilge.store import sqlite as store

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOOTSTRAP_DIR = os.path.join(PACKAGE_DIR, "_bootstrap")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
# Signals a terminal sends to the whole foreground process group: the
# command got its own copy, so forwarding would deliver it twice (and a
# second SIGINT turns Celery's warm shutdown into a cold one).
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT)


def agent_environment(data_dir: str, run_id: int, base: Mapping[str, str],
                      options: Mapping[str, object] | None = None) -> dict[str, str]:
    """The environment that loads the agent into Python processes.

    Args:
        data_dir: absolute data directory.
        run_id: the run the processes belong to.
        base: the environment to extend.
        options: the agent's settings from ``bilge run``'s options, by setting
            name (``show_values``, ``explain``, ``recycle``...,
            ``cpu_share``, ``slowed_per_hour``; see ``bilge.config``).
    """
    return _with_bootstrap(AgentConfig.for_run(data_dir, run_id, base, options).to_environment(base))


def _with_bootstrap(env: dict[str, str]) -> dict[str, str]:
    paths = [BOOTSTRAP_DIR]
    # The bootstrap imports ``bilge``; make sure the interpreter of the
    # command finds this very installation even outside its venv.
    package_parent = os.path.dirname(PACKAGE_DIR)
    if not _importable_from(package_parent):
        paths.append(package_parent)
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _importable_from(parent: str) -> bool:
    # Inside site-packages the package is already importable by that
    # interpreter; adding site-packages itself to PYTHONPATH would shadow
    # other environments' packages.
    return os.path.basename(parent) in ("site-packages", "dist-packages")


def resolve(command: Sequence[str]) -> list[str]:
    """Check the command exists; raise CommandError with what to do if not."""
    if not command:
        raise CommandError("no command given; usage: bilge run --data-dir DIR -- COMMAND [ARGS...]")
    exe = command[0]
    if os.sep in exe:
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise CommandError("cannot run %s: not an executable file" % exe)
    elif shutil.which(exe) is None:
        raise CommandError("command not found: %s (check the name and your PATH)" % exe)
    return list(command)


def agent_skipped(argv: Sequence[str]) -> str | None:
    """Why the agent will not load into ``argv``: its Python is told to ignore ``PYTHONPATH`` (``-I`` or ``-E``,
    on the command line or in a script's ``#!`` line). None when nothing says so."""
    exe = shutil.which(argv[0]) or argv[0]
    if re.fullmatch(r"python[0-9.]*", os.path.basename(exe)):
        options, where = list(argv[1:]), "the command line"
    else:
        options, where = _shebang_options(exe), "the #! line of %s" % exe
    for option in _interpreter_flags(options):
        if "I" in option or "E" in option:
            return ("%s runs Python with -%s, which ignores PYTHONPATH: bilge's agent cannot load into it; drop the "
                    "flag, or attach to the running process with `bilge attach PID`" % (where, option))
    return None


def _shebang_options(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return []
    if not first.startswith(b"#!"):
        return []
    words = first[2:].decode("utf-8", "replace").split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if w != "-S"]
    if not words or not re.fullmatch(r"python[0-9.]*", os.path.basename(words[0])):
        return []
    return words[1:]


def _interpreter_flags(options: Sequence[str]) -> list[str]:
    """The single-letter flag groups (``-I``, ``-sE``) before the program, the script or ``-c``/``-m``."""
    flags: list[str] = []
    skip = False
    for option in options:
        if skip:
            skip = False
            continue
        if option in ("-c", "-m", "-") or not option.startswith("-"):
            break
        if option in ("-W", "-X"):
            skip = True  # their argument follows
        elif not option.startswith(("--", "-W", "-X")):
            flags.append(option[1:])
    return flags


def run(data_dir: str, command: Sequence[str], environ: Mapping[str, str] | None = None,
        options: Mapping[str, object] | None = None, serve: Callable[[RunView], Any] | None = None,
        view: RunView | None = None) -> int:
    """Run ``command`` under the agent and return its exit code.

    Args:
        data_dir: the data directory (created and validated here).
        command: the argv to run.
        environ: the base environment (default: this process's).
        options: the agent's settings, see ``agent_environment``; what
            they do not say is the default, except the tuning variables
            already in the environment (see ``AgentConfig.for_run``). A
            bad one is replaced by its default with a warning on stderr.
        serve: given the run's view, binds the health/metrics server (an
            object with ``start``/``close``), before anything is recorded or
            started, so a busy port fails fast.
        view: how the supervisor reads and diagnoses the run (its health
            limits); by default the data dir's latest run with no limit. Its
            findings are recorded while a process is suspect and at the end
            (``monitor.Recorder``).

    Returns:
        The command's exit code; 128+N when it died of signal N.
    """
    argv = resolve(command)
    skipped = agent_skipped(argv)
    if skipped:
        sys.stderr.write("bilge: warning: %s\n" % skipped)
    path = store.prepare_data_dir(data_dir)
    view = view if view is not None else RunView(path)
    server = serve(view) if serve is not None else None
    run_id = store.start_run(path, shlex.join(argv))
    recorder = Recorder(view, run_id)
    base = os.environ if environ is None else environ
    config = AgentConfig.for_run(path, run_id, base, options, clock_anchor=wallclock.here())
    for warning in config.warnings:
        sys.stderr.write("bilge: warning: %s\n" % warning)
    env = _with_bootstrap(config.to_environment(base))
    code = 1
    try:
        if server is not None:
            server.start()
        recorder.start()
        code = _supervise(argv, env)
    finally:
        try:
            try:
                store.end_run(path, run_id, code)
            except BilgeError as exc:
                # The data dir failed under the run (deleted, full, corrupted): the worker's exit code is what a
                # service manager acts on, so it is kept, and the lost bookkeeping is said once.
                sys.stderr.write("bilge: warning: the run's end was not recorded (%s); exiting with the command's "
                                 "code %d\n" % (exc, code))
            recorder.close()
        finally:
            if server is not None:
                server.close()
    return code


def _supervise(argv: list[str], env: dict[str, str]) -> int:
    try:
        child = subprocess.Popen(argv, env=env)
    except OSError as exc:
        raise CommandError("cannot start %s: %s" % (argv[0], exc.strerror or exc)) from exc

    def forward(signum: int, _frame: FrameType | None) -> None:
        if signum in TERMINAL_SIGNALS and _in_terminal_foreground():
            return
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        while True:
            try:
                code = child.wait()
                break
            except InterruptedError:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def _in_terminal_foreground() -> bool:
    try:
        return sys.stdin.isatty() and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False
