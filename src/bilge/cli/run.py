"""Run COMMAND with the bilge agent in every Python process it starts.

Example: bilge run --data-dir ./bilge-data -- celery -A proj worker -P prefork -c 2

Signals are passed on to the command and bilge exits with its exit code.
Then see the diagnosis with: bilge report --data-dir ./bilge-data
"""

from __future__ import annotations

from typing import Any

import click

from bilge.config import HORIZON, MIN_INTERVAL, MIN_TASKS, SOFT_LIMIT, AgentConfig, parse_setting, parse_size
from bilge.integrations import runner
from bilge.integrations.monitor import RunView


class Size(click.ParamType):  # type: ignore[type-arg]
    """A byte size: 512MiB, 2G, or a number of bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return value if isinstance(value, int) else parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Setting(click.ParamType):  # type: ignore[type-arg]
    """A value of one of the agent's settings, checked as the agent checks it (``bilge.config``).

    Args:
        setting: the setting's name in ``bilge.config`` (``cpu_share``...).
        name: what the help calls the value (``size``, ``share``, ``seconds``...).
    """

    def __init__(self, setting: str, name: str) -> None:
        self.setting = setting
        self.name = name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return parse_setting(self.setting, value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command(
    "run", help=__doc__, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option("--data-dir", default="bilge-data", show_default=True, type=click.Path(file_okay=True),
              help="Directory for the store (created if missing).")
@click.option("--show-values", is_flag=True,
              help="Also capture short renderings of the values that leak (keys, fields). Off by default: "
                   "memory holds secrets, and reports show types, sizes and names only.")
@click.option("--explain/--no-explain", default=True, show_default=True,
              help="Once a process turns suspect, trace allocations briefly and search who holds the growth "
                   "(--no-explain keeps only the always-on watching and the verdict).")
@click.option("--recycle", is_flag=True,
              help="Let a prefork child whose memory keeps growing leave after its current task once it is over "
                   "--recycle-soft-limit or forecast to reach the hard limit within --recycle-horizon.")
@click.option("--recycle-soft-limit", type=Setting("recycle_soft_limit", "size"), default=SOFT_LIMIT,
              show_default="512MiB", help="RSS of a growing child over which it is recycled.")
@click.option("--recycle-hard-limit", type=Setting("recycle_hard_limit", "size"), default=None,
              help="RSS a child must never reach (default: the cgroup memory limit, if any).")
@click.option("--recycle-horizon", type=Setting("recycle_horizon", "seconds"), default=HORIZON, show_default=True,
              help="Seconds: recycle a growing child forecast to reach the hard limit within this long.")
@click.option("--recycle-min-interval", type=Setting("recycle_min_interval", "seconds"), default=MIN_INTERVAL,
              show_default=True, help="Seconds between two recycles in the whole worker.")
@click.option("--recycle-min-tasks", type=Setting("recycle_min_tasks", "count"), default=MIN_TASKS,
              show_default=True, help="Tasks a child serves before it may be recycled.")
@click.option("--budget-cpu-share", type=Setting("cpu_share", "share"), default=AgentConfig.cpu_share,
              show_default=True,
              help="Share of each process's time (0.01 = 1 %%) the deeper stages (allocation windows, holder "
                   "searches, recounts, fd scans) may use over any %g s; the always-on watching is not budgeted."
                   % AgentConfig.cpu_period)
@click.option("--budget-slowed-per-hour", type=Setting("slowed_per_hour", "seconds"),
              default=AgentConfig.slowed_per_hour, show_default=True,
              help="Seconds of wall time the deeper stages may add to each process's tasks (tracing slows a "
                   "task) over any hour.")
@click.option("--http", "http", metavar="HOST:PORT", default=None,
              help="Serve the live page (/), /health and /metrics (Prometheus) here, e.g. 127.0.0.1:9808 (a bare port "
                   "binds 127.0.0.1).")
@click.option("--http-token", envvar="BILGE_HTTP_TOKEN", default=None, metavar="TOKEN",
              help="Require `Authorization: Bearer TOKEN` on /health and /metrics (or set BILGE_HTTP_TOKEN, which "
                   "keeps it out of the process list).")
@click.option("--otlp", metavar="URL", default=None,
              help="Also push the metrics to an OpenTelemetry collector over OTLP/HTTP, e.g. "
                   "http://127.0.0.1:4318/v1/metrics (needs `pip install 'bilge[otlp]'`).")
@click.option("--otlp-interval", type=click.FloatRange(min=1.0), default=15.0, show_default=True,
              help="Seconds between two OTLP pushes.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(data_dir: str, show_values: bool, explain: bool, recycle: bool, recycle_soft_limit: int,
        recycle_hard_limit: int | None, recycle_horizon: float, recycle_min_interval: float, recycle_min_tasks: int,
        budget_cpu_share: float, budget_slowed_per_hour: float, http: str | None, http_token: str | None,
        otlp: str | None, otlp_interval: float, command: tuple[str, ...]) -> int:
    """Run COMMAND under the agent."""
    serve = None
    if http or otlp:
        host, port = address(http) if http else ("", 0)

        def serve(view: RunView) -> Any:
            from bilge.integrations.otlp import OtlpExporter, Services

            services = [monitor_server(view, host, port, http_token)] if http else []
            if otlp:
                services.append(OtlpExporter(view, otlp, otlp_interval))
            return Services(services)

    options: dict[str, object] = {"show_values": show_values, "explain": explain, "cpu_share": budget_cpu_share,
                                  "slowed_per_hour": budget_slowed_per_hour}
    if recycle:
        options.update(recycle=True, recycle_soft_limit=recycle_soft_limit, recycle_hard_limit=recycle_hard_limit,
                       recycle_horizon=recycle_horizon, recycle_min_interval=recycle_min_interval,
                       recycle_min_tasks=recycle_min_tasks)
    view = RunView(data_dir, hard_limit=recycle_hard_limit, horizon=recycle_horizon)
    return runner.run(data_dir, command, options=options, serve=serve, view=view)


def monitor_server(view: RunView, host: str, port: int, token: str | None) -> Any:
    """The live page, /health and /metrics on HOST:PORT (bound, not started), with a warning when that reaches
    beyond this machine."""
    from bilge.integrations.serve import MonitorServer

    warn_if_wide(host, port, token, "/, /health and /metrics")
    return MonitorServer(view, host, port, token=token or None)


def warn_if_wide(host: str, port: int, token: str | None, what: str) -> None:
    """Warn on stderr when ``what`` is served beyond this machine (and more loudly without a token)."""
    from bilge.integrations.serve import loopback

    if not loopback(host):
        click.echo("bilge: warning: serving %s on %s:%d, beyond this machine: they name your tasks, types and code "
                   "paths (never values)%s" % (
                       what, host, port, "" if token else "; require a token with --http-token, or bind 127.0.0.1"),
                   err=True)


def address(text: str) -> tuple[str, int]:
    """HOST:PORT or PORT (then 127.0.0.1) as given to --http."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter("expected HOST:PORT or PORT, e.g. 127.0.0.1:9808; got %r" % text,
                                 param_hint="--http")
    return host.strip("[]") or "127.0.0.1", int(port)
