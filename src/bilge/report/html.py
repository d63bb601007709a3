"""The HTML report: one self-contained file with plots, to attach to a ticket.

The plots are inline SVG built here in Python, and the page holds no
JavaScript at all. That beats the alternatives we weighed:

* a JS chart library inlined from a package (plotly.min.js is ~3.5 MB, so
  every report would weigh megabytes to show a few hundred points each, and
  ticket systems, mail clients and sandboxed previews often refuse or strip
  scripts, leaving blank boxes);
* matplotlib's SVG backend (tens of MB of dependencies for the CLI, and SVG
  text as glyph paths unless tuned).

Hand-built SVG costs a page of geometry, keeps a typical report (the demo
worker with two children) around 100 KB (15 KB gzipped), renders with
scripts off and prints well. Hover tooltips come from SVG ``<title>``
elements: all the interactivity a ticket needs.

The reporter only converts units (bytes to MiB, seconds since the run
started) and maps data to pixels; everything it shows comes from the
``Diagnosis`` (types, sizes, names, code locations, never values), and a
password in a URL of the run's command is masked. The JSON report is
embedded too, so the attachment also carries the stable contract.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

import jinja2
import markupsafe

from bilge import __version__
from bilge.analysis import signature
from bilge.analysis.attribution import kept_per_call
from bilge.model import Diagnosis, ProcessDiagnosis, Series, StageRun
from bilge.report.json_report import to_dict
from bilge.report.terminal import human_bytes

if TYPE_CHECKING:
    from bilge.integrations.fleet import Fleet

_MIB = 1024 * 1024
# Credentials in a broker URL on the command line (redis://:secret@host)
# must not travel with the report.
_URL_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


@dataclass(frozen=True)
class Line:
    """One polyline of a chart, in pixels."""

    label: str
    css: str
    points: str
    dashed: bool = False


@dataclass(frozen=True)
class LineChart:
    """A line chart already mapped to pixels; the template only draws it."""

    title: str
    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    x_ticks: tuple[tuple[float, str], ...]
    y_ticks: tuple[tuple[float, str], ...]
    lines: tuple[Line, ...]
    hover: tuple[tuple[float, float, str], ...]


@dataclass(frozen=True)
class Bar:
    """One row of the growth-by-task chart; offsets and widths in percent."""

    task: str
    calls: str
    bytes_per_call: str
    blocks_per_call: str
    score: str
    offset: float
    width: float
    negative: bool
    reported: bool


def holder_chain(holder: str) -> list[str]:
    """Split a holder path into the boxes of its graph.

    ``a.b.c[...]`` gives ``a``, ``b``, ``c``, ``[...]``; dots inside ``<...>``
    or ``[...]`` do not split, so ``<thread worker-3> frame locals`` stays one box.
    """
    parts: list[str] = []
    current = ""
    depth = 0
    for char in holder:
        if char == "[" and depth == 0 and current:
            parts.append(current)
            current = ""
        if char in "<[":
            depth += 1
        elif char in ">]" and depth:
            depth -= 1
        elif char == "." and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return [p for p in parts if p]


def breakable(text: str | None) -> markupsafe.Markup:
    """Escaped text that may wrap after dots and slashes, or '—' when unknown."""
    if text is None or text == "":
        return markupsafe.Markup("—")
    return markupsafe.Markup(str(markupsafe.escape(text)).replace(".", ".<wbr>").replace("/", "/<wbr>"))


def redact_command(command: str) -> str:
    """The run's command with the user:password part of any URL masked."""
    return _URL_USERINFO.sub(r"\1***@", command)


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 times a power of ten) spanning [low, high].

    Args:
        low: the smallest value to cover.
        high: the largest value to cover.
        count: about how many intervals.
        integer: ticks on whole numbers only (for counts).
    """
    if not high > low:
        low, high = low - 1, high + 1
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    first = math.floor(low / step + 1e-9) * step
    last = math.ceil(high / step - 1e-9) * step
    return [first + i * step for i in range(int(round((last - first) / step)) + 1)]


def time_ticks(span: float, count: int = 6) -> list[float]:
    """Tick values in seconds on clock-friendly steps, from 0 to at least ``span``."""
    steps = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400)
    step = next((s for s in steps if s * count >= span), steps[-1] * math.ceil(span / (steps[-1] * count)))
    return [i * step for i in range(int(math.ceil(span / step - 1e-9)) + 1)]


def clock(seconds: float) -> str:
    """Seconds since the run started as ``m:ss`` or ``h:mm:ss``."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    return "%d:%02d:%02d" % (hours, rest // 60, rest % 60) if hours else "%d:%02d" % (rest // 60, rest % 60)


def count(value: float | None) -> str:
    """A count for a table: thousands separated, small fractions to 3 significant digits."""
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else "%.3g" % value


def duration(seconds: float | None) -> str:
    """A time ahead for a table: '40 s', '42 min', '5.2 h', '3.1 d'."""
    if seconds is None:
        return "—"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size * (1.5 if unit != "min" else 1.0):
            return ("%.1f" % (seconds / size)).rstrip("0").rstrip(".") + " " + unit
    return "%.0f s" % seconds


def count_label(value: float) -> str:
    """12000 -> '12k', 1500000 -> '1.5M': short axis labels for counts."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return ("%.1f" % (value / limit)).rstrip("0").rstrip(".") + suffix
    return ("%.2f" % value).rstrip("0").rstrip(".")


def _scaled(series: Series) -> list[tuple[float, float]]:
    """The series in display units: bytes as MiB, everything else as is."""
    factor = 1.0 / _MIB if series.unit == "bytes" else 1.0
    return [(t, v * factor) for t, v in series.points]


def _unit_label(unit: str) -> str:
    return "MiB" if unit == "bytes" else unit


class _Frame:
    """Maps (seconds since start, value) to pixels inside one chart's plot area."""

    def __init__(self, size: tuple[int, int], x_span: float, values: Sequence[float], compact: bool,
                 integer: bool) -> None:
        width, height = size
        self.width, self.height = width, height
        self.left, self.top = (44, 8) if compact else (64, 12)
        self.right, self.bottom = width - (10 if compact else 20), height - (20 if compact else 28)
        self.x_ticks = time_ticks(x_span, 3 if compact else 8)
        self.y_ticks = nice_ticks(min(values), max(values), 3 if compact else 5, integer)

    def x(self, seconds: float) -> float:
        span = self.x_ticks[-1] or 1.0
        return round(self.left + seconds / span * (self.right - self.left), 1)

    def y(self, value: float) -> float:
        low, high = self.y_ticks[0], self.y_ticks[-1]
        return round(self.bottom - (value - low) / (high - low) * (self.bottom - self.top), 1)

    def polyline(self, points: Iterable[tuple[float, float]], origin: float) -> str:
        return " ".join("%s,%s" % (self.x(t - origin), self.y(v)) for t, v in points)


def line_chart(
    title: str, unit: str, named: Sequence[tuple[str, str, list[tuple[float, float]], bool]], origin: float,
    x_span: float, size: tuple[int, int] = (1100, 260), compact: bool = False,
) -> LineChart | None:
    """Map lines of (epoch seconds, display value) points to a chart, or None if there is nothing to draw.

    Args:
        title: the y axis label.
        unit: the display unit, for hover labels.
        named: (label, css class, points, dashed) per line.
        origin: the epoch time shown as 0:00.
        x_span: seconds the x axis covers.
        size: (width, height) of the SVG viewBox.
        compact: fewer ticks and narrower margins, for small multiples.
    """
    # A NaN from a failed fit must cost one point, not the whole page.
    named = [(label, css, [(t, v) for t, v in points if math.isfinite(t) and math.isfinite(v)], dashed)
             for label, css, points, dashed in named]
    named = [n for n in named if n[2]]
    if not named:
        return None
    frame = _Frame(size, x_span, [v for n in named for _, v in n[2]], compact, integer=unit != "MiB")
    lines = tuple(Line(label, css, frame.polyline(points, origin), dashed) for label, css, points, dashed in named)
    # Hover targets on the first solid line, enough to read values off the chart; they are
    # most of a report's bytes, so small charts get fewer.
    first = next((n for n in named if not n[3]), named[0])
    targets = 60 if size[0] >= 1000 else 24
    hover = tuple((frame.x(t - origin), frame.y(v), "%s  %s %s %s" % (clock(t - origin), first[0],
                                                                       count_label(v), unit))
                  for t, v in first[2][:: max(1, math.ceil(len(first[2]) / targets))])
    return LineChart(
        title=title, width=frame.width, height=frame.height, left=frame.left, top=frame.top, right=frame.right,
        bottom=frame.bottom, x_ticks=tuple((frame.x(s), clock(s)) for s in frame.x_ticks),
        y_ticks=tuple((frame.y(v), count_label(v)) for v in frame.y_ticks), lines=lines, hover=hover)


def memory_charts(p: ProcessDiagnosis, origin: float, x_span: float) -> list[LineChart]:
    """RSS and USS with the fitted trend; then Python heap blocks and open fds as small plots."""
    by_name = {s.name: s for s in p.series}
    memory: list[tuple[str, str, list[tuple[float, float]], bool]] = [
        (name, name.lower(), _scaled(by_name[name]), False) for name in ("RSS", "USS") if name in by_name]
    if p.trend_line is not None:
        (t0, y0), (t1, y1) = p.trend_line
        memory.append(("fitted RSS trend", "trend-" + p.verdict, [(t0, y0 / _MIB), (t1, y1 / _MIB)], True))
    charts = [line_chart("memory (MiB)", "MiB", memory, origin, x_span)]
    for name, css in (("Python heap blocks", "heap"), ("open fds", "fds")):
        if name in by_name:
            series = by_name[name]
            unit = _unit_label(series.unit)
            charts.append(line_chart(name, unit, [(name, css, _scaled(series), False)], origin, x_span,
                                     size=(545, 150)))
    return [c for c in charts if c is not None]


def type_charts(p: ProcessDiagnosis, origin: float, x_span: float) -> list[tuple[Series, LineChart]]:
    """One small chart per reported growing type (each on its own scale)."""
    out = []
    for series in p.type_series:
        chart = line_chart(series.unit, series.unit, [(series.name, "type", _scaled(series), False)], origin,
                           x_span, size=(360, 130), compact=True)
        if chart is not None:
            out.append((series, chart))
    return out


def growth_bars(d: Diagnosis) -> list[Bar]:
    """The growth-by-task rows: a diverging bar of bytes per call around zero."""
    if not d.task_growth:
        return []
    # What a call keeps, as the findings count it (RSS or heap blocks, whichever says more).
    kept = {g.task: kept_per_call(g) for g in d.task_growth}
    reach = max(abs(v) for v in kept.values()) or 1.0
    has_negative = any(v < 0 for v in kept.values())
    zero, scale = (50.0, 50.0) if has_negative else (0.0, 100.0)
    reported = {f.task for f in d.findings}
    bars = []
    for g in d.task_growth:
        width = abs(kept[g.task]) / reach * scale
        bars.append(Bar(task=g.task, calls=count(g.calls), bytes_per_call=human_bytes(kept[g.task]),
                        blocks_per_call=count(g.blocks_per_call), score="%.1f" % g.score,
                        offset=round(zero - width if kept[g.task] < 0 else zero, 2), width=round(width, 2),
                        negative=kept[g.task] < 0, reported=g.task in reported))
    return bars


def cost_runs(p: ProcessDiagnosis, origin: float) -> list[tuple[str, StageRun]]:
    """The process's budgeted runs, each with its start as time since the run started."""
    return [(clock(r.started - origin), r) for r in p.cost.runs]


def _x_range(d: Diagnosis) -> tuple[float, float]:
    """(origin, span): the run's start and the seconds every process chart covers."""
    times = [t for p in d.processes for s in (*p.series, *p.type_series) for t, _ in s.points]
    origin = d.run.started if d.run.started else min(times, default=0.0)
    if not times:
        return origin, 1.0
    origin = min(origin, min(times))
    return origin, max(max(times) - origin, 1.0)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("bilge.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["bytes"] = human_bytes
    env.filters["dash"] = lambda value: "—" if value is None or value == "" else value
    env.filters["utc"] = lambda t: "—" if t is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
    env.filters["signed_bytes"] = lambda n: "—" if n is None else ("+" if n >= 0 else "") + human_bytes(n)
    env.filters["count"] = count
    env.filters["duration"] = duration
    env.filters["seconds"] = lambda value: "%.3f" % value
    env.filters["breakable"] = breakable
    env.globals["novelty"] = signature.novelty
    return env


class HtmlReporter:
    """Writes the HTML report: one self-contained page, no network needed to view it.

    Args:
        out: the text stream to write to.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def render(self, diagnosis: Diagnosis) -> None:
        """Write the whole page."""
        template = _environment().get_template("report.html.j2")
        self.out.write(template.render(**_context(diagnosis)))


def live_page(diagnosis: Diagnosis, refresh: float, generated: float, now: Sequence[Mapping[str, object]],
              main_only: bool = False) -> str:
    """The report as a live page (``bilge run --http``, ``bilge serve``): the live processes ``now`` (role,
    slot, pid, rss, fds, tasks, verdict) above the same content, no embedded JSON, and ``/live.js`` swapping
    in ``main_only`` renderings every ``refresh`` seconds."""
    context = _context(diagnosis, live="%g" % refresh, generated=generated)
    context["now"] = now
    return _page("report.html.j2", context, main_only)


def fleet_page(fleet: Fleet, refresh: float, main_only: bool = False) -> str:
    """The fleet page (``bilge fleet``): every node's findings by signature, nodes and live processes, with
    ``/live.js`` swapping in ``main_only`` renderings every ``refresh`` seconds."""
    context = {"f": fleet, "live": "%g" % refresh, "version": __version__,
               "processes": [p for n in fleet.nodes for p in n.processes]}
    return _page("fleet.html.j2", context, main_only)


def _page(name: str, context: dict[str, object], main_only: bool) -> str:
    """A live page whole, or only its ``main`` block (what ``/live.js`` swaps in)."""
    template = _environment().get_template(name)
    if not main_only:
        return template.render(**context)
    return "".join(template.blocks["main"](template.new_context(context)))


def _context(diagnosis: Diagnosis, live: str | None = None, generated: float = 0.0) -> dict[str, object]:
    origin, x_span = _x_range(diagnosis)
    processes = [
        {"p": p, "memory": memory_charts(p, origin, x_span), "types": type_charts(p, origin, x_span),
         "runs": cost_runs(p, origin)}
        for p in diagnosis.processes
    ]
    holders = [(f, holder_chain(f.holder)) for f in diagnosis.findings if f.holder]
    report_json = to_dict(diagnosis) if live is None else {}
    if report_json:
        report_json["run"]["command"] = redact_command(diagnosis.run.command)
    return {"d": diagnosis, "version": __version__, "command": redact_command(diagnosis.run.command),
            "processes": processes, "bars": growth_bars(diagnosis), "holders": holders, "report_json": report_json,
            "live": live, "generated": generated, "now": ()}
