"""Run the demo: a leaky Celery shop worker on the embedded filesystem broker,
a few thousand mixed tasks, then bilge's diagnosis. Needs no server."""

from __future__ import annotations

import click

from bilge.errors import BilgeError


@click.command("demo", help=__doc__)
@click.option("--tasks", default=3000, show_default=True, type=click.IntRange(200, 100000))
@click.option("--workdir", default=None, type=click.Path(file_okay=False),
              help="Keep the data here (default: a new temporary directory).")
def demo(tasks: int, workdir: str | None) -> int:
    """Run the demo end to end."""
    try:
        import celery  # noqa: F401
    except ImportError as exc:
        raise BilgeError("the demo needs Celery: pip install 'bilge[celery]'") from exc
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bilge.analysis import diagnose
    from bilge.demo.driver import run_demo
    from bilge.report.terminal import TerminalReporter
    from bilge.store import sqlite as store

    console = Console()
    console.print("[bold]bilge demo[/]: a prefork Celery worker (2 children) on the filesystem:// broker, "
                  "started with `bilge run`; %d mixed tasks." % tasks)
    with Progress(TextColumn("tasks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        job = bar.add_task("tasks", total=tasks)
        result = run_demo(total=tasks, workdir=workdir, progress=lambda done, total: bar.update(job, completed=done))
        bar.update(job, completed=result.tasks_done)
    console.print("worker stopped (exit code %s) after %.0f s; %d tasks recorded in %s\n" % (
        result.worker_exit_code, result.seconds, result.tasks_done, result.data_dir))
    if result.tasks_done < tasks:
        raise BilgeError("the demo worker finished only %d of %d tasks; see the data in %s" % (
            result.tasks_done, tasks, result.data_dir))
    TerminalReporter(console).render(diagnose(store.load_run(result.data_dir)))
    console.print("\nJSON report: bilge report --data-dir %s --format json" % result.data_dir)
    return 0
