"""Print systemd units for a Celery worker under bilge, with memory limits and the health check wired in.

Example:

  bilge systemd --name shop-worker --workdir /srv/shop --user celery \\
      --memory-high 1536M --memory-max 2G -- celery -A shop worker -P prefork -c 4

prints three units: NAME.service (the worker under `bilge run --recycle
--http`, MemoryHigh/MemoryMax, Restart=always, a warm-shutdown stop), and
NAME-health.service + NAME-health.timer (every minute, `bilge check`;
when it says failing, the worker is restarted). Save them under
/etc/systemd/system/ and `systemctl enable --now NAME.service NAME-health.timer`.
"""

from __future__ import annotations

import os
import shlex
import sys

import click

from bilge.cli.run import Size

UNIT = """\
# --- /etc/systemd/system/{name}.service ---
[Unit]
Description=Celery worker {name} under bilge
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
{user}WorkingDirectory={workdir}
ExecStart={bilge} run --data-dir {data_dir} --recycle --recycle-hard-limit {hard} --http {http} -- {command}
# Celery's warm shutdown: SIGTERM, then let running tasks finish.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec={stop_timeout}
Restart=always
RestartSec=5
# The kernel reclaims and throttles above MemoryHigh and kills above MemoryMax;
# bilge recycles a leaking child before either (--recycle-hard-limit).
MemoryHigh={memory_high}
MemoryMax={memory_max}

[Install]
WantedBy=multi-user.target

# --- /etc/systemd/system/{name}-health.service ---
[Unit]
Description=bilge health check of {name}

[Service]
Type=oneshot
{user}ExecStart=/bin/sh -c '{bilge} check --data-dir {data_dir} --degraded-ok --hard-limit {hard} \\
    || systemctl restart --no-block {name}.service'

# --- /etc/systemd/system/{name}-health.timer ---
[Unit]
Description=Run the bilge health check of {name} every minute

[Timer]
OnActiveSec=120
OnUnitActiveSec=60

[Install]
WantedBy=timers.target
"""


@click.command("systemd", help=__doc__, context_settings={"ignore_unknown_options": True,
                                                           "allow_interspersed_args": False})
@click.option("--name", required=True, help="Unit name, e.g. shop-worker.")
@click.option("--workdir", default=None, help="The worker's working directory (default: the current one).")
@click.option("--user", default=None, help="Run the worker as this user.")
@click.option("--data-dir", default=None, help="bilge's data dir (default: /var/lib/bilge/NAME).")
@click.option("--memory-high", type=Size(), required=True, help="systemd MemoryHigh for the whole worker.")
@click.option("--memory-max", type=Size(), required=True, help="systemd MemoryMax for the whole worker.")
@click.option("--http", default="127.0.0.1:9808", show_default=True, help="Where /health and /metrics are served.")
@click.option("--stop-timeout", default=600, show_default=True, help="Seconds a warm shutdown may take.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def systemd(name: str, workdir: str | None, user: str | None, data_dir: str | None, memory_high: int,
            memory_max: int, http: str, stop_timeout: int, command: tuple[str, ...]) -> int:
    """Print the units."""
    if memory_high > memory_max:
        raise click.BadParameter("--memory-high must not exceed --memory-max", param_hint="--memory-high")
    if not name.replace("-", "").replace("_", "").replace("@", "").isalnum():
        raise click.BadParameter("use letters, digits, '-', '_' or '@' in a unit name", param_hint="--name")
    bilge = os.path.join(os.path.dirname(sys.executable), "bilge")
    click.echo(UNIT.format(
        name=name, user="User=%s\n" % user if user else "", workdir=workdir or os.getcwd(),
        bilge=bilge, data_dir=data_dir or "/var/lib/bilge/%s" % name,
        # A child is recycled before its share of MemoryHigh (the main
        # process and every child share the cgroup).
        hard=memory_high // (_concurrency(command) + 1), http=http, command=shlex.join(command),
        stop_timeout=stop_timeout, memory_high=memory_high, memory_max=memory_max), nl=False)
    return 0


def _concurrency(command: tuple[str, ...]) -> int:
    """The worker's -c/--concurrency, else Celery's default (the CPU count)."""
    for i, arg in enumerate(command):
        value = None
        if arg in ("-c", "--concurrency") and i + 1 < len(command):
            value = command[i + 1]
        elif arg.startswith("--concurrency="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-c") and arg[2:].isdigit():
            value = arg[2:]
        if value is not None and value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1
