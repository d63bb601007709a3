"""Health check for probes and systemd: is the worker recorded in DATA-DIR healthy?

Exit codes: 0 healthy; 5 degraded (a live process leaks, no limit in
sight); 6 failing (a live leaking process reaches the hard limit within the
horizon, or the worker is not running); 2-4 the store cannot be read (see
`bilge --help`). For a liveness probe that should only fail on `failing`,
add --degraded-ok.
"""

from __future__ import annotations

import json

import click

from bilge.cli.run import Size
from bilge.store import sqlite as store

EXIT = {"healthy": 0, "degraded": 5, "failing": 6}


@click.command("check", help=__doc__)
@click.option("--data-dir", default="bilge-data", show_default=True, help="The data dir given to `bilge run`.")
@click.option("--hard-limit", type=Size(), default=None,
              help="Memory a process must not reach (default: the cgroup memory limit, if any).")
@click.option("--horizon", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Seconds: failing when a leaking process reaches the hard limit within this long.")
@click.option("--degraded-ok", is_flag=True, help="Exit 0 when degraded (only failing fails).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def check(data_dir: str, hard_limit: int | None, horizon: float, degraded_ok: bool, fmt: str) -> int:
    """Print the health of the latest run and exit with its code."""
    from bilge.agent.recycle import cgroup_memory_limit
    from bilge.analysis import diagnose
    from bilge.analysis.health import assess

    run = store.load_run(data_dir)
    health = assess(run, diagnose(run), hard_limit or cgroup_memory_limit(), horizon)
    if fmt == "json":
        click.echo(json.dumps(health_dict(health)))
    else:
        click.echo("%s: %s" % (health.status, health.reason))
    code = EXIT[health.status]
    return 0 if degraded_ok and health.status == "degraded" else code


def health_dict(health: object) -> dict[str, object]:
    """The health as JSON-able data (the HTTP endpoint serves the same)."""
    from dataclasses import asdict, is_dataclass

    assert is_dataclass(health) and not isinstance(health, type)
    return asdict(health)
