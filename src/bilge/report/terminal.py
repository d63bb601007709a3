"""The terminal report, rendered with rich: verdicts, findings, sparklines."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

from bilge.analysis import signature
from bilge.model import INCONCLUSIVE, LEAK, NO_LEAK, AgentCost, Diagnosis, ProcessDiagnosis, RecyclingSummary

_STYLE = {LEAK: "bold red", NO_LEAK: "bold green", INCONCLUSIVE: "bold yellow"}
_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """A unicode sparkline of ``values`` resampled to ``width`` cells."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [values[min(len(values) - 1, int(i * step))] for i in range(width)]
    lo, hi = min(values), max(values)
    span = hi - lo
    if span <= 0:
        return _BARS[0] * len(values)
    return "".join(_BARS[min(len(_BARS) - 1, int((v - lo) / span * (len(_BARS) - 1) + 0.5))] for v in values)


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB'; signed values keep their sign."""
    if n is None:
        return "—"
    sign = "-" if n < 0 else ""
    n = abs(float(n))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return "%s%.0f %s" % (sign, n, unit) if unit == "B" else "%s%.1f %s" % (sign, n, unit)
        n /= 1024
    return "%s%.1f GiB" % (sign, n)


class TerminalReporter:
    """Renders the diagnosis for a human.

    Args:
        console: where to print (a rich Console).
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()

    def render(self, diagnosis: Diagnosis) -> None:
        """Print the headline, the findings table and the per-process table."""
        self.console.print(self._headline(diagnosis))
        if diagnosis.findings:
            self.console.print(self._findings(diagnosis))
        self.console.print(self._processes(diagnosis.processes))
        if diagnosis.recycling is not None:
            self.console.print(self._recycling(diagnosis.recycling))

    def _recycling(self, r: RecyclingSummary) -> Group:
        lines = [Text("Recycling", style="italic")]
        for x in r.by_bilge:
            lines.append(Text("  bilge %s child %d after %d tasks: %s" % (
                "recycled" if x.status == "requested" else "could not recycle", x.pid, x.tasks_done, x.reason)))
        if r.by_celery:
            lines.append(Text("  Celery recycled %d child(ren) (exit code 155)" % len(r.by_celery)))
        lines += [Text("  ⚠ " + w, style="yellow") for w in r.warnings]
        return Group(*lines)

    def _headline(self, d: Diagnosis) -> Panel:
        verdict = Text(d.verdict.upper(), style=_STYLE.get(d.verdict, "bold"))
        line = Text.assemble("Verdict: ", verdict)
        if d.kind:
            line.append("  kind: %s" % d.kind)
        if d.verdict != INCONCLUSIVE:
            line.append("  confidence: %.1f%%" % (100 * d.confidence))
        lines: list[Text] = [line]
        if d.findings:
            top = d.findings[0]
            lines.append(Text("Leaking task: %s" % (top.task or "not attributable to one task")))
            if top.type:
                lines.append(Text("Growing type: %s" % top.type))
            lines.append(Text(top.hint, style="italic"))
        else:
            lines.append(Text(d.reason))
        return Panel(Group(*lines), title="bilge report — run %d" % d.run.id, expand=False)

    def _findings(self, d: Diagnosis) -> Group:
        """One block per finding: its numbers on the first line, then what holds it and where it was allocated,
        each on a line of its own, so a path wraps whole (before it, never inside it) at 80 columns."""
        # Columns shared by every finding (usually the task and kind) are in
        # the headline already; repeating them per finding only eats the width.
        show_task = len({f.task for f in d.findings}) > 1
        show_kind = len({f.kind for f in d.findings}) > 1
        lines: list[Text] = [Text("Findings (most important first)", style="italic")]
        for i, f in enumerate(d.findings, 1):
            head = Text.assemble(("%2d. " % i, "bold"), (f.type or "—", "bold"))
            if show_task:
                head.append("  task %s" % (f.task or "—"))
            if show_kind:
                head.append("  kind %s" % (f.kind or "—"))
            if f.bytes_per_call is not None:
                head.append("  %s/call" % human_bytes(f.bytes_per_call))
            if f.count_per_call is not None:
                count = "%.3g" % f.count_per_call
                head.append("  %s %s/call" % (count, "object" if count == "1" else "objects"))
            lines.append(head)
            if f.holder:
                lines.append(_detail("held by      ", f.holder))
            if f.location:
                lines.append(_detail("allocated at ", short_location(f.location)))
            if f.values:
                lines.append(_detail("values       ", "; ".join(f.values), style="yellow"))
            if f.signature:
                history = signature.novelty(f)
                lines.append(_detail("signature    ", f.signature + ("  (%s)" % history if history else "")))
        return Group(*lines)

    def _processes(self, processes: Sequence[ProcessDiagnosis]) -> Group:
        lines: list[Text] = [Text("Processes", style="italic")]
        for p in processes:
            # The pool's parent runs no tasks: too few samples yet is no news.
            waiting = p.role == "celery-main" and p.verdict == INCONCLUSIVE and not p.tasks_observed
            verdict, style = ("no verdict yet", "dim") if waiting else (p.verdict.upper(), _STYLE.get(p.verdict, ""))
            role = "celery-main (pool parent)" if p.role == "celery-main" else p.role
            line = Text.assemble(
                ("● ", style), ("%d %s " % (p.pid, role), "bold"), (verdict, style),
                "  %d tasks  RSS %s → %s" % (p.tasks_observed, human_bytes(p.rss_start), human_bytes(p.rss_end)),
            )
            # Outside a leak, a rate over a short window is noise dressed up
            # as a number (the JSON report still has it).
            if p.verdict == LEAK:
                if p.growth_bytes_per_task is not None:
                    line.append("  %s/task" % _signed(p.growth_bytes_per_task))
                if p.growth_bytes_per_hour is not None:
                    line.append("  %s/h" % _signed(p.growth_bytes_per_hour))
            if p.confirmed_after_tasks is not None:
                line.append("  confirmed after %d tasks" % p.confirmed_after_tasks)
                if p.confirmed_after_calls is not None:
                    line.append(" (%d calls)" % p.confirmed_after_calls)
            lines.append(line)
            detail = Text("  " + sparkline([v for _, v in p.rss_series], width=32), style="cyan")
            if p.verdict != LEAK:
                detail.append("  " + p.reason, style="dim")
            lines.append(detail)
            cost = cost_line(p.cost)
            if cost:
                lines.append(Text("  " + cost, style="dim"))
            if p.snapshots:
                # The latest one: each is compared with the one before it.
                latest = p.snapshots[-1]
                lines += snapshot_lines(latest.summary, "  ", "%d snapshot%s, latest" % (
                    len(p.snapshots), "" if len(p.snapshots) == 1 else "s"))
        return Group(*lines)


def snapshot_lines(summary: Mapping[str, Any], indent: str = "", title: str = "snapshot",
                   rows: int = 5) -> list[Text]:
    """A snapshot's summary (``agent.snapshot``) as a few lines: when, what grew, who holds it."""
    when = time.strftime("%H:%M:%S", time.localtime(summary.get("t", 0)))
    lines = [Text.assemble((indent + title, "bold"), " at %s after %s tasks: %s objects, taken in %.2f s" % (
        when, summary.get("tasks_done", "?"), "{:,}".format(summary.get("objects", 0)), summary.get("seconds", 0)))]
    compared = summary.get("compared_with")
    growing = summary.get("growing") or []
    if compared and growing:
        lines.append(Text(indent + "  grew since %s: " % compared, style="dim"))
        lines[-1].append(", ".join("%s +%s (%s)" % (g["type"], "{:,}".format(g["change"]), "{:,}".format(g["count"]))
                                   for g in growing[:rows]))
    elif compared:
        lines.append(Text(indent + "  nothing grew since %s" % compared, style="dim"))
    else:
        top = summary.get("top") or []
        lines.append(Text(indent + "  most objects: " + ", ".join(
            "%s %s" % (t["type"], "{:,}".format(t["count"])) for t in top[:rows]), style="dim"))
    for h in (summary.get("holders") or [])[:rows]:
        held = " <%s of %s>" % (h["container"], "{:,}".format(h["length"])) if h.get("container") and h.get(
            "length") is not None else ""
        lines.append(Text.assemble((indent + "  held: ", "dim"), (h["type"], "bold"), " ← ", (h["path"], "cyan"),
                                   held, (" (%s%s)" % (h["root_kind"], ", grew " + h["grew"] if h.get("grew") else ""),
                                          "dim"), overflow="fold"))
    note = summary.get("holders_note")
    if note and not summary.get("holders"):
        lines.append(Text(indent + "  holders: " + note, style="dim"))
    elif note:
        lines.append(Text(indent + "  holder search incomplete: " + note, style="dim"))
    return lines


def _detail(label: str, value: str, style: str = "") -> Text:
    # The value wraps only where it has spaces (a thread holder's), and is
    # folded only when a single name is wider than the console.
    return Text.assemble(("    " + label, "dim"), (value, style), overflow="fold")


OPENED = "opened: "
EPISODE = "episode: "


def short_location(location: str, cwd: str | None = None) -> str:
    """``file:line`` as a developer would name it: below site-packages, or relative to the working directory,
    or the last three path parts (the JSON report keeps the full path)."""
    path, sep, line = location.rpartition(":")
    if not sep or not line.isdigit():
        path, line = location, ""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            path = path.rsplit(marker, 1)[1]
            break
    else:
        base = (cwd or os.getcwd()).rstrip("/") + "/"
        if path.startswith(base):
            path = path[len(base):]
        elif path.count("/") > 3:
            path = "…/" + "/".join(path.split("/")[-3:])
    return "%s:%s" % (path, line) if line else path


def cost_line(cost: AgentCost) -> str:
    """bilge's own cost in one process on one line, or '' when the store has none.

    Stages that cost nothing are left out and the others listed costliest
    first; then why the explain stage opened, and how many budgeted runs of
    each kind (traced episodes, holder searches …) it made.
    """
    spent = [c for c in cost.stages if c.cpu_seconds > 0 or c.slowed_seconds > 0]
    if not spent and not cost.runs:
        return ""
    by_cpu = sorted((c for c in spent if c.cpu_seconds > 0), key=lambda c: -c.cpu_seconds)
    line = "bilge cost: %s s CPU" % _seconds(sum((c.cpu_seconds for c in spent), 0.0))
    if by_cpu:
        line += " (%s)" % ", ".join("%s %s" % (c.stage, _seconds(c.cpu_seconds)) for c in by_cpu)
    slowed = sum((c.slowed_seconds for c in spent), 0.0)
    if slowed > 0:
        line += ", tasks slowed %s s" % _seconds(slowed)
    opened = list(dict.fromkeys(r.reason[len(OPENED):] for r in cost.runs if r.reason.startswith(OPENED)))
    if opened:
        line += "; explain opened: " + "; ".join(opened)
    counts: dict[str, int] = {}
    for r in cost.runs:
        if not r.reason.startswith(OPENED):
            what = "episode" if r.reason.startswith(EPISODE) else r.stage
            counts[what] = counts.get(what, 0) + 1
    if counts:
        line += "; " + ", ".join("%d %s%s" % (n, what, "" if n == 1 else "es" if what.endswith("h") else "s")
                                 for what, n in counts.items())
    return line


def _seconds(value: float) -> str:
    # A stage that cost a few microseconds still cost something: never "0.00".
    return "<0.01" if 0 < value < 0.005 else "%.2f" % value


def _signed(n: float) -> str:
    return ("+" if n >= 0 else "") + human_bytes(n)
