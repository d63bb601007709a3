"""Ask running agents what is in their process now: objects by type, what grew, who holds it.

PIDS are worker processes started under `bilge run` (or with bilge in the
Celery config); --all asks every agent this user can reach (root: every
user's), or those recording into --data-dir. Each answer is also stored in
the run's data dir, where `bilge report` shows it. Exit code 5 when no
agent answered.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from bilge import live
from bilge.errors import AgentUnreachableError


@click.command("snapshot", help=__doc__)
@click.argument("pids", nargs=-1, type=click.IntRange(min=1))
@click.option("--all", "every", is_flag=True, help="Every running agent (see --data-dir).")
@click.option("--data-dir", default=None, help="With --all: only the agents recording into this data dir.")
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="Search the holders of this type (qualified name, repeatable) instead of the types that grew.")
@click.option("--top", type=click.IntRange(1, 200), default=15, show_default=True, help="Types listed.")
@click.option("--census-only", is_flag=True, help="Count objects only; no holder search (cheaper).")
@click.option("--window", is_flag=True,
              help="Also ask each agent to open an allocation window now (within its cost budget).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def snapshot(pids: tuple[int, ...], every: bool, data_dir: str | None, types: tuple[str, ...], top: int,
             census_only: bool, window: bool, fmt: str) -> int:
    """Snapshot each agent and print what it said."""
    if bool(pids) == every:
        raise click.UsageError("give worker PIDs or --all (not both)")
    if data_dir is not None and not every:
        raise click.UsageError("--data-dir selects agents with --all; with PIDs leave it out")
    agents: list[live.LiveAgent] = []
    failures: list[str] = []
    for pid in pids:
        try:
            agents.append(live.find(pid))
        except AgentUnreachableError as exc:
            failures.append(str(exc))
    if every:
        agents = live.discover()
        if not agents:
            raise AgentUnreachableError("no running bilge agent found; start a worker under `bilge run`")
    answers = []
    wanted = os.path.realpath(data_dir) if data_dir is not None else None
    for agent in agents:
        try:
            status = live.request(agent, "status")
            if wanted is not None and os.path.realpath(str(status.get("data_dir"))) != wanted:
                continue
            op = "census" if census_only else "snapshot"
            summary = live.request(agent, op, {"top": top, "types": list(types)})
            opened = live.request(agent, "window")["window"] if window else None
        except AgentUnreachableError as exc:
            failures.append(str(exc))
            continue
        answers.append({"pid": agent.pid, "status": status, "snapshot": summary, "window": opened})
    if fmt == "json":
        click.echo(json.dumps({"snapshots": answers, "errors": failures}, indent=2, default=str))
    else:
        _print(answers, failures)
    if not answers:
        if wanted is not None and not failures:
            raise AgentUnreachableError("no running agent records into %s" % data_dir)
        raise AgentUnreachableError("no agent answered" + (": " + failures[0] if len(failures) == 1 else ""))
    return 0


def _print(answers: list[dict[str, Any]], failures: list[str]) -> None:
    from bilge.report.terminal import human_bytes, snapshot_lines

    console = Console(highlight=False)
    for answer in answers:
        status = answer["status"]
        console.print(Text.assemble(
            ("● %d %s" % (answer["pid"], status.get("role")), "bold"),
            "  %s tasks  RSS %s  data dir %s" % (status.get("tasks_done"), human_bytes(status.get("rss")),
                                                 status.get("data_dir")),
            ("  suspect" if any(dict(status.get("suspect") or {}).values()) else "", "yellow")))
        for line in snapshot_lines(answer["snapshot"], "  ", "snapshot", rows=8):
            console.print(line)
        if answer["window"] is not None:
            console.print(Text("  allocation window: %s" % answer["window"], style="dim"))
    for failure in failures:
        console.print(Text("bilge: %s" % failure, style="red"), soft_wrap=True)
