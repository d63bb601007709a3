"""A live view of every Celery worker process on this host: memory, growth, tasks, verdict so far.

Processes under bilge answer through their agent (see `bilge snapshot`);
Celery workers without bilge are shown from /proc. Keys: q quit, s change
the sort (RSS, growth per hour, tasks per second, pid), up/down (or j/k)
select a process, enter show or hide its detail: memory sparkline, memory
left per call of each task name, what the agent found so far. Not a
terminal (or --once): one table, printed once.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bilge.report.terminal import human_bytes, sparkline
from bilge.top import GROWING, NO_AGENT, NOT_ANSWERING, SORTS, ProcessRow, Watcher, ordered, task_growth

_VERDICT_STYLE = {GROWING: "bold red", NOT_ANSWERING: "yellow", NO_AGENT: "dim"}
_SORT_CYCLE = list(SORTS)
_ARROWS = {"\x1b[A": "up", "\x1b[B": "down", "\x1bOA": "up", "\x1bOB": "down"}


@click.command("top", help=__doc__)
@click.option("--data-dir", default=None, help="Only the workers recording into this data dir.")
@click.option("--once", is_flag=True, help="Print one table and exit (the default when not on a terminal).")
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--sort", type=click.Choice(_SORT_CYCLE), default="rss", show_default=True)
def top(data_dir: str | None, once: bool, interval: float, sort: str) -> int:
    """Show the workers, live or once."""
    watcher = Watcher(data_dir)
    console = Console(highlight=False)
    if once or not (sys.stdin.isatty() and sys.stdout.isatty()):
        watcher.poll()
        time.sleep(min(interval, 1.0))  # a second reading, so the rates have two points
        console.print(_table(ordered(watcher.poll(), sort), None, sort, console.width))
        return 0
    _live(watcher, console, interval, sort)
    return 0


def _live(watcher: Watcher, console: Console, interval: float, sort: str) -> None:
    selected: int | None = None
    detail = False
    rows = ordered(watcher.poll(), sort)
    with _keys() as read_keys, Live(console=console, screen=True, auto_refresh=False) as view:
        next_poll = time.monotonic() + interval
        while True:
            pids = [r.pid for r in rows]
            if selected not in pids:
                selected = pids[0] if pids else None
            view.update(_screen(rows, selected, sort, detail, console), refresh=True)
            for key in read_keys(max(0.0, next_poll - time.monotonic())):
                if key in ("q", "Q", "\x03"):
                    return
                if key == "s":
                    sort = _SORT_CYCLE[(_SORT_CYCLE.index(sort) + 1) % len(_SORT_CYCLE)]
                    rows = ordered(rows, sort)
                    pids = [r.pid for r in rows]
                elif key in ("down", "j", "up", "k") and pids and selected is not None:
                    step = 1 if key in ("down", "j") else -1
                    selected = pids[max(0, min(len(pids) - 1, pids.index(selected) + step))]
                elif key in ("\r", "\n"):
                    detail = not detail
            if time.monotonic() >= next_poll:
                rows = ordered(watcher.poll(), sort)
                next_poll = time.monotonic() + interval


@contextmanager
def _keys() -> Iterator[Callable[[float], list[str]]]:
    """A reader of single key presses (arrows as 'up'/'down') with a timeout; the terminal restored after."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read_keys(timeout: float) -> list[str]:
        """The keys pressed, in order (several may arrive in one read), or [] after ``timeout`` seconds."""
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return []
        data = os.read(fd, 64).decode(errors="replace")
        found = []
        while data:
            for sequence, name in _ARROWS.items():
                if data.startswith(sequence):
                    found.append(name)
                    data = data[len(sequence):]
                    break
            else:
                found.append(data[0])
                data = data[1:]
        return found

    try:
        yield read_keys
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _screen(rows: Sequence[ProcessRow], selected: int | None, sort: str, detail: bool,
            console: Console) -> RenderableType:
    parts: list[RenderableType] = [_table(rows, selected, sort, console.width)]
    chosen = next((r for r in rows if r.pid == selected), None)
    if detail and chosen is not None:
        parts.append(_detail(chosen, console.width))
    parts.append(Text("q quit  s sort (%s)  ↑/↓ select  enter detail" % sort, style="dim"))
    return Group(*parts)


def _table(rows: Sequence[ProcessRow], selected: int | None, sort: str, width: int) -> RenderableType:
    if not rows:
        return Text("No Celery worker processes found on this host (nor bilge agents); start one under "
                    "`bilge run -- celery -A proj worker`.")
    table = Table(title="bilge top: %d process%s, by %s" % (len(rows), "" if len(rows) == 1 else "es", sort),
                  title_justify="left", box=None, pad_edge=False, expand=False, header_style="bold")
    wide = width >= 110
    table.add_column("PID", justify="right")
    table.add_column("ROLE")
    table.add_column("RSS", justify="right")
    table.add_column("USS", justify="right")
    table.add_column("+/TASK", justify="right")
    table.add_column("+/HOUR", justify="right")
    table.add_column("TASKS", justify="right")
    table.add_column("T/S", justify="right")
    table.add_column("VERDICT")
    if wide:
        table.add_column("GROWING TYPE", overflow="ellipsis", no_wrap=True, max_width=40)
    for r in rows:
        cells: list[RenderableType] = [
                 str(r.pid), r.role.replace("celery-", ""), human_bytes(r.rss) if r.rss is not None else "—",
                 human_bytes(r.uss) if r.uss is not None else "—", _signed(r.growth_per_task),
                 _signed(r.growth_per_hour), "—" if r.tasks is None else str(r.tasks),
                 "—" if r.tasks_per_second is None else "%.1f" % r.tasks_per_second,
                 Text(r.verdict + (" ♻" if r.recycle else ""), style=_VERDICT_STYLE.get(r.verdict, ""))]
        if wide:
            cells.append(r.growing_type or "")
        table.add_row(*cells, style="reverse" if r.pid == selected else "")
    return table


def _detail(row: ProcessRow, width: int) -> RenderableType:
    lines = [Text.assemble(("%d %s" % (row.pid, row.role), "bold"), "  " + row.command[: max(20, width - 30)])]
    lines.append(Text.assemble("RSS  ", (sparkline([float(v) for v in row.rss_history], width=min(60, width - 10)),
                                         "cyan")))
    if row.growing_type:
        lines.append(Text("growing type: %s" % row.growing_type))
    if row.data_dir:
        growth = task_growth(row.data_dir, row.pid)
        if growth:
            lines.append(Text("change per call, mean of the latest tasks (`bilge report` has the verdict):",
                              style="dim"))
            for g in growth:
                lines.append(Text("  %-28s %5d calls %10s RSS %8s blocks" % (
                    g.name[-28:], g.calls, _signed(g.rss_per_call),
                    "—" if g.blocks_per_call is None else "%+.1f" % g.blocks_per_call)))
    if row.recycle:
        lines.append(Text("recycle: %s" % row.recycle, style="yellow"))
    for finding in row.findings[:6]:
        lines.append(Text(finding, overflow="fold"))
    return Group(*lines)


def _signed(n: float | None) -> str:
    return "—" if n is None else ("+" if n >= 0 else "") + human_bytes(n)
