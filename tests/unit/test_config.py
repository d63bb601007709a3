"""Tests for bilge.config: the agent's settings and the ``BILGE_*`` variables that carry them."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from bilge.agent import recycle
from bilge.config import OPTIONS, VARIABLES, AgentConfig, RecyclePolicy, parse_setting, variable

MIB = 1 << 20
RUN = {"BILGE_DATA_DIR": "/data", "BILGE_RUN_ID": "7"}
EVERYTHING = AgentConfig(data_dir="/data", run_id=7, sample_interval=0.25, census_budget=0.02,
                         census_min_interval=3.5, sizing_every=2, buffer_limit=500, show_values=True, explain=False,
                         recycle=RecyclePolicy(enabled=True, soft_limit=64 * MIB, hard_limit=2 << 30, horizon=120.0,
                                               min_interval=5.0, min_tasks=10),
                         cpu_share=0.05, cpu_period=60.0, slowed_per_hour=0.5, control=False,
                         socket_dir="/run/bilge-test")


def read(env: dict[str, str]) -> AgentConfig:
    """The config ``env`` describes (which must name a run)."""
    config = AgentConfig.from_environment(env)
    assert config is not None
    return config


def test_every_setting_round_trips_through_the_environment() -> None:
    """A config with every setting changed is written to variables and read back equal, without warnings."""
    env = EVERYTHING.to_environment()
    assert read(env) == EVERYTHING
    assert read(env).warnings == ()
    assert env["BILGE_CPU_SHARE"] == "0.05"
    assert env["BILGE_CPU_PERIOD"] == "60.0"
    assert env["BILGE_SLOWED_PER_HOUR"] == "0.5"
    assert (env["BILGE_SHOW_VALUES"], env["BILGE_EXPLAIN"], env["BILGE_RECYCLE"]) == ("1", "0", "1")
    assert env["BILGE_RECYCLE_HARD_LIMIT"] == str(2 << 30)
    assert (env["BILGE_CONTROL"], env["BILGE_SOCKET_DIR"]) == ("0", "/run/bilge-test")


def test_every_variable_is_written_when_every_setting_differs() -> None:
    """Each setting has its own variable, named BILGE_ + its name, and the module lists them all (with the run's
    clock anchor, not a setting)."""
    assert set(replace(EVERYTHING, clock_anchor=(1.0, 2.0)).to_environment()) == VARIABLES
    assert variable("slowed_per_hour") == "BILGE_SLOWED_PER_HOUR"


def test_defaults_match_the_agent_and_are_not_written() -> None:
    """Only the run is written for a default config, and reading it back gives the documented defaults."""
    config = AgentConfig(data_dir="/data", run_id=7)
    assert config.to_environment() == RUN
    back = read(RUN)
    assert back == config
    assert (back.cpu_share, back.cpu_period, back.slowed_per_hour) == (0.01, 600.0, 1.0)
    assert (back.sample_interval, back.census_budget, back.census_min_interval, back.sizing_every, back.buffer_limit,
            back.show_values, back.explain, back.recycle) == (0.5, 0.005, 1.0, 10, 20000, False, True, RecyclePolicy())


def test_field_names_and_defaults_are_those_of_the_agent_runtime() -> None:
    """The agent's own AgentConfig has the same settings with the same defaults (the switch is one line)."""
    from bilge import agent

    def defaults(cls: type) -> dict[str, object]:
        return {f.name: f.default for f in dataclasses.fields(cls) if f.name != "warnings"}

    assert defaults(agent.AgentConfig) == defaults(AgentConfig)


def test_absent_run_gives_none() -> None:
    """Without BILGE_DATA_DIR or BILGE_RUN_ID (or with them empty) there is no config: not a bilge run."""
    assert AgentConfig.from_environment({}) is None
    assert AgentConfig.from_environment({"BILGE_DATA_DIR": "/data", "BILGE_CPU_SHARE": "0.5"}) is None
    assert AgentConfig.from_environment({"BILGE_RUN_ID": "7"}) is None
    assert AgentConfig.from_environment({"BILGE_DATA_DIR": "", "BILGE_RUN_ID": "7"}) is None


def test_default_environment_is_this_process_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no mapping given, os.environ is read."""
    monkeypatch.setenv("BILGE_DATA_DIR", "/here")
    monkeypatch.setenv("BILGE_RUN_ID", "3")
    monkeypatch.setenv("BILGE_SLOWED_PER_HOUR", "2")
    assert AgentConfig.from_environment() == AgentConfig("/here", 3, slowed_per_hour=2.0)


def test_a_run_id_that_is_not_a_number_is_an_error() -> None:
    """A malformed BILGE_RUN_ID has no default to fall back to: it raises, naming the variable."""
    with pytest.raises(ValueError, match="BILGE_RUN_ID='seven' is not a run id"):
        AgentConfig.from_environment({"BILGE_DATA_DIR": "/data", "BILGE_RUN_ID": "seven"})


@pytest.mark.parametrize(("name", "text"), [
    ("BILGE_CPU_SHARE", "lots"), ("BILGE_CPU_SHARE", "0"), ("BILGE_CPU_SHARE", "1.5"), ("BILGE_CPU_SHARE", "nan"),
    ("BILGE_CPU_PERIOD", "-1"), ("BILGE_CPU_PERIOD", "inf"), ("BILGE_SLOWED_PER_HOUR", "3601"),
    ("BILGE_SAMPLE_INTERVAL", "0"), ("BILGE_CENSUS_BUDGET", "half"), ("BILGE_CENSUS_MIN_INTERVAL", "-2"),
    ("BILGE_SIZING_EVERY", "2.5"), ("BILGE_BUFFER_LIMIT", "0"), ("BILGE_SHOW_VALUES", "please"),
    ("BILGE_EXPLAIN", "maybe"), ("BILGE_RECYCLE", "2"), ("BILGE_RECYCLE_SOFT_LIMIT", "lots"),
    ("BILGE_RECYCLE_HARD_LIMIT", "-1G"), ("BILGE_RECYCLE_HORIZON", "soon"), ("BILGE_RECYCLE_MIN_TASKS", "0"),
])
def test_a_bad_value_keeps_the_default_with_one_warning(name: str, text: str) -> None:
    """Each bad variable leaves its setting at the default and adds one warning naming the variable and the value."""
    config = read({**RUN, name: text})
    assert config == AgentConfig("/data", 7)
    assert len(config.warnings) == 1
    assert config.warnings[0].startswith("%s ignored: " % name)
    assert "%r" % text in config.warnings[0] and "; using the default (" in config.warnings[0]


def test_bad_values_do_not_spoil_the_good_ones() -> None:
    """Good variables next to bad ones are read; every bad one has its warning; warnings do not count in ==."""
    config = read({**RUN, "BILGE_CPU_SHARE": "0.2", "BILGE_CPU_PERIOD": "soon", "BILGE_RECYCLE": "1",
                   "BILGE_RECYCLE_MIN_TASKS": "many", "BILGE_RECYCLE_HARD_LIMIT": "", "BILGE_EXPLAIN": "off"})
    assert config == AgentConfig("/data", 7, cpu_share=0.2, explain=False, recycle=RecyclePolicy(enabled=True))
    assert [w.split(" ")[0] for w in config.warnings] == ["BILGE_RECYCLE_MIN_TASKS", "BILGE_CPU_PERIOD"]
    assert "using the default (500)" in config.warnings[0]


def test_switches_accept_the_usual_spellings() -> None:
    """1/0, true/false, yes/no and on/off, in any case, all work for on/off settings; an empty variable is unset."""
    for on in ("1", "true", "Yes", "ON"):
        assert read({**RUN, "BILGE_SHOW_VALUES": on}).show_values
    for off in ("0", "false", "No", "OFF"):
        assert not read({**RUN, "BILGE_EXPLAIN": off}).explain
    assert read({**RUN, "BILGE_EXPLAIN": ""}) == AgentConfig("/data", 7)


def test_recycle_policy_reads_its_variables_through_config() -> None:
    """RecyclePolicy.from_environment (re-exported by agent.recycle) reads the same variables, bad ones ignored."""
    assert recycle.RecyclePolicy is RecyclePolicy
    policy = RecyclePolicy.from_environment({"BILGE_RECYCLE": "1", "BILGE_RECYCLE_SOFT_LIMIT": "64M",
                                             "BILGE_RECYCLE_HARD_LIMIT": "1.5G", "BILGE_RECYCLE_HORIZON": "soon"})
    assert policy == RecyclePolicy(enabled=True, soft_limit=64 * MIB, hard_limit=int(1.5 * (1 << 30)))


def test_to_environment_over_a_base_replaces_every_agent_variable() -> None:
    """Given a base, the result keeps its other variables and drops its stale BILGE_* ones, without changing it."""
    base = {"PATH": "/bin", "BILGE_EXPLAIN": "0", "BILGE_RUN_ID": "1", "BILGE_CPU_SHARE": "0.5",
            "BILGE_DEMO_BROKER_DIR": "/broker"}
    env = AgentConfig("/data", 7, show_values=True).to_environment(base)
    assert env == {"PATH": "/bin", "BILGE_DEMO_BROKER_DIR": "/broker", **RUN, "BILGE_SHOW_VALUES": "1"}
    assert base["BILGE_EXPLAIN"] == "0"


def test_for_run_options_decide_and_tuning_variables_are_kept() -> None:
    """A new run's options win over (and drop) what an outer run left; hand-set tuning variables pass through."""
    outer = {"BILGE_EXPLAIN": "0", "BILGE_RECYCLE": "1", "BILGE_CPU_SHARE": "0.5", "BILGE_SAMPLE_INTERVAL": "0.1",
             "BILGE_CPU_PERIOD": "60", "BILGE_DATA_DIR": "/old", "BILGE_RUN_ID": "1"}
    config = AgentConfig.for_run("/data", 7, outer, {"slowed_per_hour": 2.0, "show_values": None})
    assert config == AgentConfig("/data", 7, sample_interval=0.1, cpu_period=60.0, slowed_per_hour=2.0)
    assert config.warnings == ()


def test_for_run_reports_bad_options_and_variables_and_refuses_unknown_ones() -> None:
    """A bad option or tuning variable becomes a warning; a name that is not a setting is a caller's bug."""
    config = AgentConfig.for_run("/data", 7, {"BILGE_BUFFER_LIMIT": "lots"}, {"cpu_share": 3})
    assert config == AgentConfig("/data", 7)
    assert sorted(w.split(" ")[0] for w in config.warnings) == ["BILGE_BUFFER_LIMIT", "cpu_share"]
    with pytest.raises(KeyError, match="not an agent setting"):
        AgentConfig.for_run("/data", 7, {}, {"cpu_budget": 0.1})


def test_parse_setting_checks_text_and_typed_values() -> None:
    """parse_setting (what the CLI validates with) converts text or typed values, and says what it expected."""
    assert parse_setting("recycle_soft_limit", "512MiB") == 512 * MIB
    assert parse_setting("recycle_soft_limit", 1024) == 1024
    assert parse_setting("cpu_share", 0.25) == 0.25
    assert parse_setting("explain", False) is False
    assert parse_setting("recycle_min_tasks", " 12 ") == 12
    with pytest.raises(ValueError, match=r"^expected a number of seconds from 0 to 3600, got '7200'$"):
        parse_setting("slowed_per_hour", 7200)


def test_every_option_is_a_setting() -> None:
    """The settings `bilge run` has options for all have variables (and cpu_period, a tuning knob, has none)."""
    assert {variable(name) for name in OPTIONS} <= VARIABLES
    assert "cpu_period" not in OPTIONS and "cpu_share" in OPTIONS and "slowed_per_hour" in OPTIONS


def test_config_imports_only_the_stdlib() -> None:
    """bilge.config, imported first in a fresh interpreter, loads no other part of bilge and nothing foreign."""
    code = ("import sys; before = set(sys.modules); import bilge.config, json; "
            "print(json.dumps(sorted(m for m in set(sys.modules) - before if m.split('.')[0] not in "
            "sys.stdlib_module_names)))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILGE_") and k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["bilge", "bilge.config"]
