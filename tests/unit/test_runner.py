"""Tests for bilge.integrations.runner: the environment that loads the agent, checking the command first."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bilge.errors import CommandError
from bilge.integrations.runner import BOOTSTRAP_DIR, agent_environment, resolve
from bilge.store.sqlite import load_run


def test_agent_environment_puts_the_bootstrap_first() -> None:
    """The bootstrap leads PYTHONPATH, the user's PYTHONPATH is kept after it, and the run is named."""
    env = agent_environment("/data", 5, {"PYTHONPATH": "/user/lib", "HOME": "/home/u"})
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert paths[0] == BOOTSTRAP_DIR
    assert paths[-1] == "/user/lib"
    assert (env["BILGE_DATA_DIR"], env["BILGE_RUN_ID"], env["HOME"]) == ("/data", "5", "/home/u")
    assert os.path.isfile(os.path.join(BOOTSTRAP_DIR, "sitecustomize.py"))


def test_values_and_explain_switches_reach_the_agent_and_stale_ones_do_not() -> None:
    """--show-values and --no-explain become variables; ones inherited from an outer run are dropped."""
    plain = agent_environment("/data", 1, {"BILGE_SHOW_VALUES": "1", "BILGE_EXPLAIN": "0"})
    assert "BILGE_SHOW_VALUES" not in plain and "BILGE_EXPLAIN" not in plain
    asked = agent_environment("/data", 1, {}, {"show_values": True, "explain": False})
    assert (asked["BILGE_SHOW_VALUES"], asked["BILGE_EXPLAIN"]) == ("1", "0")


def test_budget_and_recycle_options_reach_the_agent_and_tuning_variables_are_kept() -> None:
    """The budget and recycling options become variables the agent reads back; an outer run's are dropped, while a
    hand-set tuning variable (no option for it) passes through."""
    from bilge.config import AgentConfig, RecyclePolicy

    outer = {"BILGE_RECYCLE": "1", "BILGE_SLOWED_PER_HOUR": "9", "BILGE_SAMPLE_INTERVAL": "0.05"}
    env = agent_environment("/data", 1, outer, {"cpu_share": 0.02, "recycle": True, "recycle_min_tasks": 50})
    assert AgentConfig.from_environment(env) == AgentConfig(
        "/data", 1, sample_interval=0.05, cpu_share=0.02, recycle=RecyclePolicy(enabled=True, min_tasks=50))
    assert "BILGE_SLOWED_PER_HOUR" not in env


def test_agent_environment_does_not_change_its_base() -> None:
    """The base mapping is copied, never modified."""
    base = {"PATH": "/bin"}
    agent_environment("/data", 1, base)
    assert base == {"PATH": "/bin"}


def test_resolve_accepts_commands_on_path_and_executables() -> None:
    """A command found on PATH, or an executable path, resolves to the same argv."""
    assert resolve(["sh", "-c", "true"]) == ["sh", "-c", "true"]
    assert resolve([sys.executable, "-V"]) == [sys.executable, "-V"]


def test_resolve_refuses_what_cannot_run(tmp_path: Path) -> None:
    """No command, an unknown name, or a non-executable file each raise CommandError saying what is wrong."""
    with pytest.raises(CommandError, match="^no command given; usage: bilge run"):
        resolve([])
    with pytest.raises(CommandError, match="^command not found: nope-xyz-123 \\(check the name and your PATH\\)$"):
        resolve(["nope-xyz-123"])
    script = tmp_path / "script.sh"
    script.write_text("echo hi\n")
    with pytest.raises(CommandError, match="^cannot run .*script.sh: not an executable file$"):
        resolve([str(script)])


def test_sigterm_to_bilge_run_reaches_the_command(tmp_path: Path) -> None:
    """SIGTERM sent to `bilge run` is forwarded: the command dies of it and bilge exits 128+15, recording it."""
    ready = tmp_path / "ready"
    script = tmp_path / "sleeper.py"
    script.write_text("import pathlib, sys, time\npathlib.Path(sys.argv[1]).write_text('up')\ntime.sleep(60)\n")
    data_dir = tmp_path / "d"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILGE_")}
    bilge = subprocess.Popen([sys.executable, "-m", "bilge", "run", "--data-dir", str(data_dir), "--",
                              sys.executable, str(script), str(ready)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists()
        bilge.terminate()
        _, stderr = bilge.communicate(timeout=30)
    finally:
        if bilge.poll() is None:
            bilge.kill()
            bilge.communicate()
    assert bilge.returncode == 128 + 15
    assert "Traceback" not in stderr
    assert load_run(str(data_dir)).run.exit_code == 128 + 15


def test_python_told_to_ignore_pythonpath_is_named(tmp_path: Path) -> None:
    """-I and -E (alone or among other flags, on the command line or a script's #! line) keep the agent out."""
    from bilge.integrations.runner import agent_skipped

    assert "-I" in (agent_skipped(["python3", "-I", "-c", "pass"]) or "")
    assert "-sE" in (agent_skipped(["/usr/bin/python3.11", "-sE", "worker.py"]) or "")
    assert agent_skipped(["python3", "-W", "ignore", "-c", "print('-I')"]) is None
    assert agent_skipped(["python3", "-c", "pass", "-I"]) is None  # an argument of the program
    assert agent_skipped(["python3", "-X", "importtime", "-m", "celery"]) is None
    script = tmp_path / "celery"
    script.write_text("#!/usr/bin/python3 -I\nprint('hi')\n")
    assert "#! line of %s" % script in (agent_skipped([str(script)]) or "")
    script.write_text("#!/usr/bin/env python3\nprint('hi')\n")
    assert agent_skipped([str(script)]) is None
