"""The agent's settings, and the only code that knows the ``BILGE_*`` variables. Stdlib-only.

``bilge run`` (or ``bilge.celery_config``) decides a run's settings once and
hands them to every Python process of the run as environment variables; the
agent in each process reads them back. ``BILGE_CLOCK_ANCHOR`` (not a setting)
carries the run's clock anchor the same way. Both directions go through
:class:`AgentConfig`: :meth:`AgentConfig.to_environment` writes the variables,
:meth:`AgentConfig.from_environment` reads them.

Every setting has a flat name (``sample_interval``, ``recycle_soft_limit``,
``cpu_share``...) and its variable is ``BILGE_`` + that name in capitals
(``BILGE_CPU_SHARE``); ``recycle`` is the on/off switch of the recycling
policy (``BILGE_RECYCLE``). Only values that differ from the defaults are
written. The run itself is named by ``BILGE_DATA_DIR`` and ``BILGE_RUN_ID``.

A bad value never stops a worker: the setting keeps its default and the
config carries a warning (``AgentConfig.warnings``) for the agent to log.

This module is imported inside users' workers, by the agent itself: it
imports the stdlib only, and nothing of ``bilge.agent``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

DATA_DIR = "BILGE_DATA_DIR"
RUN_ID = "BILGE_RUN_ID"
# "wall:monotonic", taken together by `bilge run`: every process of the run stamps its readings from this one
# anchor (``samplers.wallclock``), so a step of the system's wall clock cannot tear a run's time series.
CLOCK_ANCHOR = "BILGE_CLOCK_ANCHOR"

SOFT_LIMIT = 512 << 20
HORIZON = 3600.0
MIN_INTERVAL = 60.0
# A child's first few hundred tasks hold its warm-up (lazy imports, caches
# filling): the trend test looks at the recent half of what it has seen, so
# by 500 tasks warm-up has left its window.
MIN_TASKS = 500
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RecyclePolicy:
    """When a leaking prefork child is recycled (see ``bilge.agent.recycle``, which re-exports it).

    Args:
        enabled: recycling is opt-in (``bilge run --recycle``).
        soft_limit: bytes of RSS over which a child whose memory keeps
            growing is recycled.
        hard_limit: bytes a child must never reach; None means the cgroup's
            memory limit, if there is one.
        horizon: seconds; a growing child forecast to reach the hard limit
            within this long is recycled, whatever the soft limit.
        min_interval: seconds between two soft-limit recycles in the whole
            worker (a forecast limit hit does not wait). Whatever the
            reason, only one child is recycled at a time, so the pool is
            never emptied.
        min_tasks: a child serves at least this many tasks before it may be
            recycled (a fresh child's warm-up is not a leak).
    """

    enabled: bool = False
    soft_limit: int = SOFT_LIMIT
    hard_limit: int | None = None
    horizon: float = HORIZON
    min_interval: float = MIN_INTERVAL
    min_tasks: int = MIN_TASKS

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> RecyclePolicy:
        """Read ``BILGE_RECYCLE*`` variables (set by ``bilge run --recycle...``); bad values keep the defaults.

        ``AgentConfig.from_environment`` reads the same variables and also
        says which were bad.
        """
        parsed, _ = _parse(_read(env, _RECYCLE_SETTINGS))
        return _policy(parsed)

    def decide(self, rss: int | None, growing: bool, bytes_per_second: float, tasks_done: int,
               hard_limit: int | None) -> str | None:
        """The reason to recycle now, or None.

        Args:
            rss: the child's current RSS.
            growing: the agent's suspicion (steady, material, still rising).
            bytes_per_second: the child's recent growth rate.
            tasks_done: tasks the child has served.
            hard_limit: the effective hard limit (policy's, else cgroup's).
        """
        if not self.enabled or not growing or rss is None or tasks_done < self.min_tasks:
            return None
        if rss >= self.soft_limit:
            return "soft-limit: RSS %d MiB >= %d MiB with memory still growing" % (rss >> 20, self.soft_limit >> 20)
        if hard_limit and bytes_per_second > 0:
            eta = (hard_limit - rss) / bytes_per_second
            if eta <= self.horizon:
                return "forecast: %d MiB limit reached in %.0f s at %.0f KiB/s (horizon %.0f s)" % (
                    hard_limit >> 20, max(0.0, eta), bytes_per_second / 1024, self.horizon)
        return None


@dataclass(frozen=True)
class AgentConfig:
    """What the agent does in one process of a run.

    Args:
        data_dir: the bilge data directory.
        run_id: the run this process belongs to.
        sample_interval: seconds between process samples.
        census_budget: the share of the process's CPU time the census may use (a token
            bucket enforces it: the census is skipped when it would exceed it).
        census_min_interval: seconds; the census never runs more often.
        sizing_every: at most one census in this many also sizes objects;
            the others only count them (about four times cheaper).
        buffer_limit: rows kept between flushes before new ones are dropped.
        show_values: holder searches render a few held items (``--show-values``).
        explain: open allocation windows and search holders once suspect
            (``--no-explain`` turns the explain stage off; watching and
            deciding stay on).
        recycle: when a leaking prefork child leaves after its task
            (``bilge run --recycle``; see ``agent.recycle``).
        cpu_share: the budget of the agent's budgeted stages (allocation
            windows, holder searches, recounts, fd scans): they may use at
            most this share of the process's time...
        cpu_period: ...over any period this long (seconds).
        slowed_per_hour: seconds of wall time the budgeted stages may add to
            the host's tasks (tracing slows a task) over any hour.
        control: serve the control channel (``bilge snapshot``, ``bilge top``): a
            unix socket per process, owner-only (see ``agent.control``).
        socket_dir: the sockets' directory (default: ``$XDG_RUNTIME_DIR/bilge``
            or ``/tmp/bilge-<uid>``).
        warnings: what was wrong with the settings it was read from (each bad
            value was replaced by its default); for the agent to log once.
            Not a setting: ignored by ``==`` and ``to_environment``.
        clock_anchor: (wall, monotonic) time the run's readings count from
            (``samplers.wallclock``); None: each process anchors itself. Not a
            setting: ignored by ``==``.
    """

    data_dir: str
    run_id: int
    sample_interval: float = 0.5
    census_budget: float = 0.005
    census_min_interval: float = 1.0
    sizing_every: int = 10
    buffer_limit: int = 20000
    show_values: bool = False
    explain: bool = True
    recycle: RecyclePolicy = RecyclePolicy()
    cpu_share: float = 0.01
    cpu_period: float = 600.0
    slowed_per_hour: float = 1.0
    control: bool = True
    socket_dir: str = ""
    warnings: tuple[str, ...] = field(default=(), compare=False)
    clock_anchor: tuple[float, float] | None = field(default=None, compare=False)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> AgentConfig | None:
        """The config the ``BILGE_*`` variables of ``env`` (default: ``os.environ``) describe.

        Returns:
            None when ``BILGE_DATA_DIR`` or ``BILGE_RUN_ID`` is absent (not a
            bilge run). A bad or empty setting variable keeps its default;
            the bad ones are listed in ``warnings``.

        Raises:
            ValueError: ``BILGE_RUN_ID`` is not a whole number (there is no
                run to record into, so no default to fall back to).
        """
        env = os.environ if env is None else env
        data_dir, run_id = env.get(DATA_DIR), env.get(RUN_ID)
        if not data_dir or not run_id:
            return None
        try:
            number = int(run_id)
        except ValueError:
            raise ValueError("%s=%r is not a run id (a whole number)" % (RUN_ID, run_id)) from None
        parsed, warnings = _parse(_read(env, _SETTINGS))
        return replace(_build(data_dir, number, parsed, warnings), clock_anchor=_anchor(env.get(CLOCK_ANCHOR, "")))

    @classmethod
    def for_run(cls, data_dir: str, run_id: int, env: Mapping[str, str],
                options: Mapping[str, object] | None = None,
                clock_anchor: tuple[float, float] | None = None) -> AgentConfig:
        """The config of a new run: ``options`` decide, the tuning variables of ``env`` are kept.

        What ``bilge run`` has an option for (:data:`OPTIONS`) is decided by
        ``options`` alone (default when missing): a variable left in ``env``
        by an outer run does not leak in. Settings without an option
        (``sample_interval``, ``cpu_period``...) keep what ``env``'s
        variables say, so they can still be tuned by hand.

        Args:
            data_dir: the run's data directory.
            run_id: the run.
            env: the environment the run's command is started from.
            options: setting name -> value (typed, or text as in a
                variable); None values count as missing. A bad value keeps the
                default and is listed in ``warnings``, as are bad variables.
            clock_anchor: the run's (wall, monotonic) anchor.

        Raises:
            KeyError: an option that is not a setting (a bug of the caller).
        """
        values = _read(env, [name for name in _SETTINGS if name not in OPTIONS])
        for name, value in (options or {}).items():
            if name not in _SETTINGS:
                raise KeyError("not an agent setting: %r" % name)
            if value is not None:
                values[name] = (name, value)
        parsed, warnings = _parse(values)
        return replace(_build(data_dir, run_id, parsed, warnings), clock_anchor=clock_anchor)

    def to_environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The ``BILGE_*`` variables that carry this config (settings left at their default are not written).

        Args:
            base: when given, the result is a copy of it in which every
                variable of this module is replaced by this config's (so a
                stale one from an outer run cannot survive).
        """
        env = {name: value for name, value in (base or {}).items() if name not in VARIABLES}
        env[DATA_DIR] = self.data_dir
        env[RUN_ID] = str(self.run_id)
        if self.clock_anchor is not None:
            env[CLOCK_ANCHOR] = "%r:%r" % self.clock_anchor
        for name, value in _flatten(self).items():
            if value != _DEFAULTS[name]:
                env[variable(name)] = _render(value)
        return env


def variable(name: str) -> str:
    """The environment variable of the setting ``name`` (``cpu_share`` -> ``BILGE_CPU_SHARE``)."""
    return "BILGE_" + name.upper()


def parse_setting(name: str, value: object) -> Any:
    """``value`` (text as in a variable, or already typed) checked and converted for the setting ``name``.

    Raises:
        ValueError: the value is not valid, saying what is expected.
        KeyError: ``name`` is not a setting.
    """
    return _SETTINGS[name](value if isinstance(value, str) else _render(value))


def parse_size(text: str) -> int:
    """``512M``, ``1.5GiB``, ``800000`` -> bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError("not a size: %r (use e.g. 512MiB, 2G or a number of bytes)" % text)
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * (1 << (10 * " kmgt".index(unit or " "))))


# ------------------------------------------------------------- the settings --
def _checked(convert: Callable[[str], Any], valid: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = convert(text.strip())
        except (ValueError, OverflowError):
            value = None
        if value is None or not valid(value):
            raise ValueError("expected %s, got %r" % (expected, text))
        return value

    return parse


_FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_flag = _checked(lambda text: _FLAGS.get(text.lower()), lambda _: True, "1 or 0 (or true/false, yes/no, on/off)")
_share = _checked(float, lambda v: 0 < v <= 1, "a share above 0 and at most 1 (0.01 is 1 %)")
_positive_seconds = _checked(float, lambda v: 0 < v < math.inf, "a number of seconds above 0")
_seconds = _checked(float, lambda v: 0 <= v < math.inf, "a number of seconds, 0 or more")
_count = _checked(int, lambda v: v >= 1, "a whole number, 1 or more")
_size = parse_size  # its own error says what a size looks like

# Setting name -> parser of its text. ``recycle`` and ``recycle_*`` are the
# fields of ``AgentConfig.recycle`` (``recycle`` is ``enabled``).
_SETTINGS: dict[str, Callable[[str], Any]] = {
    "sample_interval": _positive_seconds,
    "census_budget": _share,
    "census_min_interval": _seconds,
    "sizing_every": _count,
    "buffer_limit": _count,
    "show_values": _flag,
    "explain": _flag,
    "recycle": _flag,
    "recycle_soft_limit": _size,
    "recycle_hard_limit": _size,
    "recycle_horizon": _seconds,
    "recycle_min_interval": _seconds,
    "recycle_min_tasks": _count,
    "cpu_share": _share,
    "cpu_period": _positive_seconds,
    "slowed_per_hour": _checked(float, lambda v: 0 <= v <= 3600, "a number of seconds from 0 to 3600"),
    "control": _flag,
    "socket_dir": _checked(str, os.path.isabs, "an absolute directory path"),
}
_RECYCLE_SETTINGS = tuple(name for name in _SETTINGS if name == "recycle" or name.startswith("recycle_"))

#: The settings ``bilge run`` has an option for (``--budget-cpu-share`` is
#: ``cpu_share``, ``--budget-slowed-per-hour`` is ``slowed_per_hour``).
OPTIONS = frozenset({"show_values", "explain", "cpu_share", "slowed_per_hour", *_RECYCLE_SETTINGS})
#: Every variable this module reads or writes.
VARIABLES = frozenset({DATA_DIR, RUN_ID, CLOCK_ANCHOR, *(variable(name) for name in _SETTINGS)})


def _read(env: Mapping[str, str], names: Iterable[str]) -> dict[str, tuple[str, object]]:
    """Setting name -> (variable, text) for the set, non-empty variables of ``names``."""
    return {name: (variable(name), env[variable(name)]) for name in names if env.get(variable(name))}


def _parse(values: Mapping[str, tuple[str, object]]) -> tuple[dict[str, Any], list[str]]:
    """The valid values by setting name, and a warning for each invalid one (which is left out)."""
    parsed: dict[str, Any] = {}
    warnings = []
    for name, (label, value) in values.items():
        try:
            parsed[name] = parse_setting(name, value)
        except ValueError as exc:
            default = _DEFAULTS[name]
            warnings.append("%s ignored: %s; using the default (%s)" % (
                label, exc, "none" if default is None else _render(default)))
    return parsed, warnings


def _anchor(text: str) -> tuple[float, float] | None:
    """``wall:monotonic`` as written by ``to_environment``; anything else: None (the process anchors itself)."""
    wall, _, mono = text.partition(":")
    try:
        at = (float(wall), float(mono))
    except ValueError:
        return None
    return at if all(math.isfinite(v) for v in at) else None


def _policy(parsed: Mapping[str, Any]) -> RecyclePolicy:
    return RecyclePolicy(**{"enabled" if name == "recycle" else name[len("recycle_"):]: value
                            for name, value in parsed.items() if name in _RECYCLE_SETTINGS})


def _build(data_dir: str, run_id: int, parsed: Mapping[str, Any], warnings: list[str]) -> AgentConfig:
    plain = {name: value for name, value in parsed.items() if name not in _RECYCLE_SETTINGS}
    return AgentConfig(data_dir, run_id, recycle=_policy(parsed), warnings=tuple(warnings), **plain)


def _flatten(config: AgentConfig) -> dict[str, Any]:
    """Setting name -> value (the inverse of ``_build``)."""
    values = {f.name: getattr(config, f.name) for f in fields(config) if f.name in _SETTINGS and f.name != "recycle"}
    for f in fields(config.recycle):
        values["recycle" if f.name == "enabled" else "recycle_" + f.name] = getattr(config.recycle, f.name)
    return values


def _render(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


_DEFAULTS = _flatten(AgentConfig("", 0))
