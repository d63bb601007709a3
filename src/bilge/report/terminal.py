"""The terminal report, rendered with rich: verdicts, findings, sparklines."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from bilge.model import INCONCLUSIVE, LEAK, NO_LEAK, Diagnosis, ProcessDiagnosis

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

    def _findings(self, d: Diagnosis) -> Table:
        table = Table(title="Findings (most important first)", title_justify="left")
        for col in ("#", "task", "type", "kind", "bytes/call", "count/call", "holder", "location"):
            table.add_column(col, overflow="fold")
        for i, f in enumerate(d.findings, 1):
            table.add_row(str(i), f.task or "—", f.type or "—", f.kind or "—", human_bytes(f.bytes_per_call),
                          "—" if f.count_per_call is None else "%.3g" % f.count_per_call,
                          f.holder or "—", f.location or "—")
        return table

    def _processes(self, processes: Sequence[ProcessDiagnosis]) -> Table:
        table = Table(title="Processes", title_justify="left")
        for col in ("pid", "role", "verdict", "tasks", "RSS start → end", "growth/task", "growth/hour",
                    "confirmed after", "RSS over time"):
            table.add_column(col, overflow="fold")
        for p in processes:
            confirmed = "—"
            if p.confirmed_after_tasks is not None:
                confirmed = "%d tasks" % p.confirmed_after_tasks
                if p.confirmed_after_calls is not None:
                    confirmed += " (%d calls)" % p.confirmed_after_calls
            table.add_row(
                str(p.pid), p.role, Text(p.verdict, style=_STYLE.get(p.verdict, "")), str(p.tasks_observed),
                "%s → %s" % (human_bytes(p.rss_start), human_bytes(p.rss_end)),
                human_bytes(p.growth_bytes_per_task), human_bytes(p.growth_bytes_per_hour), confirmed,
                sparkline([v for _, v in p.rss_series]),
            )
        return table
