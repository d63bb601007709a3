"""The agent runs inside users' workers, so everything it imports must be stdlib (or bilge itself).

Each check runs in a fresh interpreter, so what this test process has
imported (numpy, click, rich, pytest) cannot hide a stray import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bilge.integrations.runner import BOOTSTRAP_DIR, agent_environment
from bilge.store.sqlite import load_run

# Prints the modules an interpreter loaded that are neither stdlib nor bilge,
# counting from after its own start-up (site may load third-party .pth hooks).
# A few stdlib modules are named per platform (_sysconfigdata_*), so a module
# whose file lies in the stdlib directory, outside site-packages, is stdlib too.
REPORT = """
import json, os, sys, sysconfig
startup = set(sys.modules)
{imports}
stdlib_dirs = tuple(os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib"))

def is_stdlib(name):
    if name.split(".")[0] in sys.stdlib_module_names:
        return True
    path = os.path.realpath(getattr(sys.modules[name], "__file__", None) or "/nowhere")
    return path.startswith(stdlib_dirs) and "site-packages" not in path

loaded = sorted(sys.modules)
foreign = [m for m in loaded if m not in startup and not is_stdlib(m) and m != "bilge" and not m.startswith("bilge.")]
print(json.dumps({{"foreign": foreign, "loaded": loaded}}))
"""

FORBIDDEN = ("bilge.analysis", "bilge.report", "bilge.cli", "numpy", "click", "rich")


def run_python(code: str, env: dict[str, str]) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter and return the JSON it prints."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def clean_environment() -> dict[str, str]:
    """This environment without bilge's variables, and without setuptools' start-up import hook."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILGE_") and k != "PYTHONPATH"}
    env["SETUPTOOLS_USE_DISTUTILS"] = "stdlib"
    return env


def test_agent_modules_import_only_the_stdlib() -> None:
    """Importing the agent, its Celery hooks, recycling and fleet command, the samplers (explain stage included)
    and the writer loads stdlib and bilge modules only."""
    modules = ("bilge.agent", "bilge.agent.celery_hooks", "bilge.agent.recycle", "bilge.agent.fleet",
               "bilge.samplers.census", "bilge.samplers.process", "bilge.samplers.budget", "bilge.samplers.holders",
               "bilge.samplers.allocations", "bilge.samplers.values", "bilge.samplers.suspicion",
               "bilge.store.writer", "bilge.store.schema")
    result = run_python(REPORT.format(imports="import " + ", ".join(modules)), clean_environment())
    assert result["foreign"] == []
    for name in modules:
        assert name in result["loaded"]
    for name in FORBIDDEN:
        assert name not in result["loaded"]
    assert not any(m == "celery" or m.startswith("celery.") for m in result["loaded"])


def test_bootstrap_starts_the_agent_with_stdlib_only(store: tuple[str, int]) -> None:
    """A Python started with the bootstrap on PYTHONPATH runs the agent, imports nothing foreign, and is recorded."""
    data_dir, run_id = store
    env = agent_environment(data_dir, run_id, clean_environment())
    code = REPORT.format(imports="import bilge.agent, os; assert bilge.agent.current() is not None; "
                                 "print(os.getpid())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    pid = int(done.stdout.splitlines()[0])
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["foreign"] == []
    for name in FORBIDDEN:
        assert name not in result["loaded"]
    # The bootstrap ran before the script: the agent was already loaded at start-up.
    assert "bilge.agent._runtime" in result["loaded"]
    (recorded,) = load_run(data_dir).processes
    assert recorded.info.pid == pid
    assert recorded.info.ended is not None


def test_bootstrap_without_bilge_environment_stays_out_of_the_way() -> None:
    """Without BILGE_DATA_DIR the bootstrap imports no part of bilge at all."""
    env = clean_environment()
    env["PYTHONPATH"] = BOOTSTRAP_DIR
    result = run_python(REPORT.format(imports="pass"), env)
    assert "sitecustomize" in result["loaded"]
    assert not any(m == "bilge" or m.startswith("bilge.") for m in result["loaded"])


def test_bootstrap_chains_to_the_users_sitecustomize(tmp_path: Path) -> None:
    """A user's own sitecustomize further down PYTHONPATH still runs under the bootstrap."""
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['USER_SITECUSTOMIZE_RAN'] = 'yes'\n")
    env = clean_environment()
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR, str(tmp_path)])
    code = "import os, json; print(json.dumps({'ran': [os.environ.get('USER_SITECUSTOMIZE_RAN', 'no')]}))"
    assert run_python(code, env) == {"ran": ["yes"]}
