"""``celery -A proj bilge status|report``: bilge inside Celery's own command line.

``status`` asks every worker of the cluster, through the broker the app
already uses, for its processes (the ``bilge_status`` remote-control
command, answered by each worker's main process from its data dir);
``--findings`` groups the leaks the nodes found by signature ("the same
leak on 7 of 9 nodes").
Workers that answer ``ping`` but not ``bilge_status`` (not running under
bilge, or too busy to answer in time) are listed as such, never hidden.

Exit codes: 0 every worker answered; 1 some worker did not answer
bilge_status; 8 the broker cannot be reached; 9 no worker answered at all.
``report`` is ``bilge report`` (same options and exit codes).
"""

from __future__ import annotations

import json
from typing import Any

import click


class BrokerUnreachable(click.ClickException):
    """The broker cannot be reached."""

    exit_code = 8


class NoWorkers(click.ClickException):
    """The broker answers but no worker does."""

    exit_code = 9


@click.group("bilge", help=__doc__)
def bilge() -> None:
    """bilge commands inside ``celery``."""


@bilge.command("status")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds to wait for workers' answers.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--findings", is_flag=True,
              help="Also group the nodes' findings by leak signature: one line per leak, with the nodes that have it.")
@click.pass_context
def status(ctx: click.Context, timeout: float, fmt: str, findings: bool) -> None:
    """Every worker's processes with verdict and memory."""
    app = ctx.obj.app
    fleet = query(app, timeout)
    fleet["findings"] = by_signature(fleet)
    if fmt == "json":
        click.echo(json.dumps(fleet, indent=2))
    else:
        _print(fleet)
        if findings:
            _print_findings(fleet)
    if any(node["status"] != "ok" for node in fleet["nodes"].values()):
        ctx.exit(1)


def query(app: Any, timeout: float) -> dict[str, Any]:
    """Ping the cluster and ask it for ``bilge_status``; every node that answered either appears."""
    from kombu.exceptions import OperationalError

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            pings = app.control.ping(timeout=timeout, connection=conn) or []
            answers = app.control.broadcast("bilge_status", reply=True, timeout=timeout, connection=conn) or []
    except (OperationalError, OSError) as exc:
        raise BrokerUnreachable("cannot reach the broker at %s: %s; is it running, and is the app's broker_url right?"
                                % (app.connection_for_write().as_uri(), str(exc).rstrip("."))) from exc
    nodes: dict[str, dict[str, Any]] = {}
    for reply in pings:
        for node in reply:
            nodes[node] = {"status": "no bilge answer (not under `bilge run`, or busy past --timeout)",
                           "processes": []}
    for reply in answers:
        for node, answer in reply.items():
            if isinstance(answer, dict) and "error" in answer and answer.get("bilge"):
                nodes[node] = {"status": "error: " + str(answer["error"]), "processes": []}
            elif isinstance(answer, dict) and answer.get("bilge"):
                nodes[node] = {"status": "ok", **{k: v for k, v in answer.items() if k != "bilge"}}
            else:
                # Celery answers an unknown command with an error of its own.
                nodes[node] = {"status": "no bilge answer (%s)" % answer, "processes": []}
    if not nodes:
        raise NoWorkers("no worker answered within %.1f s; are workers running and consuming from this broker?"
                        % timeout)
    return {"nodes": dict(sorted(nodes.items()))}


def by_signature(fleet: dict[str, Any]) -> list[dict[str, Any]]:
    """The nodes' findings grouped by leak signature, the most widespread first.

    Each group is the finding as the first node reported it, plus ``nodes``
    (the nodes that have it), ``answered`` (nodes that answered at all),
    ``processes`` (summed over the nodes) and the earliest ``first_seen``.
    """
    answered = [node for node, info in fleet["nodes"].items() if info["status"] == "ok"]
    groups: dict[str, dict[str, Any]] = {}
    for node in answered:
        for f in fleet["nodes"][node].get("findings") or []:
            group = groups.setdefault(f["signature"], {**f, "nodes": [], "processes": 0, "answered": len(answered)})
            group["nodes"].append(node)
            group["processes"] += f.get("processes") or 0
            if f.get("first_seen") is not None:
                group["first_seen"] = min(group["first_seen"] or f["first_seen"], f["first_seen"])
    return sorted(groups.values(), key=lambda g: (-len(g["nodes"]), -(g["bytes_per_call"] or 0.0), g["signature"]))


def _print_findings(fleet: dict[str, Any]) -> None:
    import time

    from rich.console import Console

    from bilge.report.terminal import human_bytes

    console = Console()
    if not fleet["findings"]:
        console.print("No findings recorded on any node (the `bilge run` supervisor records them once a process "
                      "turns suspect).")
        return
    console.print("[italic]Leaks by signature[/italic]")
    for g in fleet["findings"]:
        what = " → ".join(part for part in (g["task"], g["holder"]) if part) or g["kind"] or "unexplained growth"
        seen = time.strftime("%Y-%m-%d %H:%M", time.localtime(g["first_seen"])) if g["first_seen"] else "—"
        size = ", %s/call" % human_bytes(g["bytes_per_call"]) if g["bytes_per_call"] is not None else ""
        console.print("  %s  %s (%s%s) on %d of %d nodes, first seen %s" % (
            g["signature"], what, g["type"] or "type unknown", size, len(g["nodes"]), g["answered"], seen),
            highlight=False, soft_wrap=True)


def _print(fleet: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from bilge.report.terminal import human_bytes

    table = Table(box=box.SIMPLE_HEAD, title="bilge fleet status", title_justify="left")
    for column in ("node", "pid", "role", "verdict", "RSS", "USS", "tasks", "recycles"):
        table.add_column(column, overflow="fold", no_wrap=column in ("pid", "RSS", "USS", "tasks"))
    for node, info in fleet["nodes"].items():
        if info["status"] != "ok":
            table.add_row(node, "—", "—", info["status"], "", "", "", "")
            continue
        recycles = "%(bilge)d bilge, %(celery)d celery" % info["recycles"]
        for i, p in enumerate(info["processes"]):
            table.add_row(node if i == 0 else "", str(p["pid"]), p["role"], p["verdict"], human_bytes(p["rss"]),
                          human_bytes(p["uss"]), str(p["tasks"]), recycles if i == 0 else "")
    Console().print(table)


@bilge.command("report", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def report(ctx: click.Context, args: tuple[str, ...]) -> None:
    """The diagnosis of a recorded run: `bilge report` (see `bilge report --help`)."""
    from bilge.cli import main

    ctx.exit(main(["report", *args]))
