"""Health of a running worker, for probes: healthy, degraded or failing.

- **healthy**: no live process of the run leaks (or there is too little data to say);
- **degraded**: a live process leaks (confirmed), but no limit is in sight;
- **failing**: a live process is at or over the hard limit, or a live
  leaking one is forecast to reach it within the horizon (its growth per
  hour from the verdict's trend), or the run has ended (the worker is gone).

Only processes still alive count: a child bilge or Celery already recycled
is history, not health.
"""

from __future__ import annotations

from dataclasses import dataclass

from bilge.model import LEAK, Diagnosis, RunData

HEALTHY = "healthy"
DEGRADED = "degraded"
FAILING = "failing"
HORIZON = 3600.0


@dataclass(frozen=True)
class ProcessHealth:
    """One live process as a probe sees it."""

    pid: int
    role: str
    verdict: str
    rss: int | None
    growth_bytes_per_hour: float | None
    seconds_to_limit: float | None


@dataclass(frozen=True)
class Health:
    """The probe's answer and the readings behind it."""

    status: str
    reason: str
    hard_limit: int | None
    horizon: float
    processes: tuple[ProcessHealth, ...]


def assess(run: RunData, diagnosis: Diagnosis, hard_limit: int | None, horizon: float = HORIZON) -> Health:
    """Judge the run's live processes against the hard limit and horizon."""
    if run.run.ended is not None:
        return Health(FAILING, "the run ended (exit code %s): the worker is not running" % run.run.exit_code,
                      hard_limit, horizon, ())
    alive = {(p.info.pid, p.info.role) for p in run.processes if p.info.ended is None}
    rows = []
    for d in diagnosis.processes:
        if (d.pid, d.role) not in alive:
            continue
        eta = None
        rate = d.growth_bytes_per_hour
        if hard_limit and d.rss_end is not None and d.rss_end >= hard_limit:
            # Already there: the kernel or the container acts next, whatever the trend says.
            eta = 0.0
        elif d.verdict == LEAK and hard_limit and d.rss_end is not None and rate is not None and rate > 0:
            eta = (hard_limit - d.rss_end) / rate * 3600
        rows.append(ProcessHealth(d.pid, d.role, d.verdict, d.rss_end, d.growth_bytes_per_hour, eta))
    failing = [p for p in rows if p.seconds_to_limit is not None and p.seconds_to_limit <= horizon]
    leaking = [p for p in rows if p.verdict == LEAK]
    if failing:
        worst = min(failing, key=lambda p: p.seconds_to_limit or 0.0)
        limit_mib = (hard_limit or 0) / 2**20
        if not worst.seconds_to_limit:
            reason = "pid %d (%s) is at or over the %.0f MiB limit (RSS %.0f MiB)" % (
                worst.pid, worst.role, limit_mib, (worst.rss or 0) / 2**20)
        else:
            reason = "pid %d (%s) reaches the %.0f MiB limit in %.0f s at %+.1f MiB/h" % (
                worst.pid, worst.role, limit_mib, worst.seconds_to_limit, (worst.growth_bytes_per_hour or 0.0) / 2**20)
        status = FAILING
    elif leaking:
        status, reason = DEGRADED, "%d live process(es) leak: %s" % (
            len(leaking), ", ".join("pid %d (%s)" % (p.pid, p.role) for p in leaking))
    else:
        status, reason = HEALTHY, "no live process leaks (%d observed)" % len(rows)
    return Health(status, reason, hard_limit, horizon, tuple(rows))
