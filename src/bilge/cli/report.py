"""Diagnose a recorded run: is it leaking, which task, what objects?

Exit code 0 whatever the verdict (use `--fail-on-leak` to exit 1 on a leak). A damaged store (truncated,
overwritten in part) is reported from what can still be read, with a warning saying how much, and exit code 3.

`--format html` writes one self-contained page with plots, to open in a
browser or attach to a ticket: give `-o report.html`, or redirect standard
output (it is not written to a terminal).
"""

from __future__ import annotations

import sys

import click

from bilge.errors import DataDirError, StoreError
from bilge.model import LEAK
from bilge.store import sqlite as store


@click.command("report", help=__doc__)
@click.option("--data-dir", default="bilge-data", show_default=True, help="The data dir given to `bilge run`.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the report to this file instead of standard output.")
@click.option("--run", "run_id", type=int, default=None, help="Report on this run id (default: the latest).")
@click.option("--fail-on-leak", is_flag=True, help="Exit with code 1 when the verdict is leak.")
@click.option("--show-values", is_flag=True,
              help="Show the value renderings captured by `bilge run --show-values` (hidden by default).")
def report(data_dir: str, fmt: str, output: str | None, run_id: int | None, fail_on_leak: bool,
           show_values: bool) -> int:
    """Print the diagnosis of a run."""
    # Imported here, not at module level: `bilge run` shares this CLI and
    # must start the user's worker without paying for numpy and Jinja2.
    from bilge.analysis import diagnose
    from bilge.report.html import HtmlReporter
    from bilge.report.json_report import JsonReporter
    from bilge.report.terminal import TerminalReporter

    if fmt == "html" and not output and sys.stdout.isatty():
        # A page of markup scrolling past is of no use to anyone.
        raise click.UsageError("the HTML report is not written to a terminal: give -o report.html, "
                               "or redirect standard output to a file")
    from bilge.report import redaction

    code = 0
    try:
        run = store.load_run(data_dir, run_id)
    except StoreError as exc:
        if not store.damaged(exc):
            raise
        try:
            run, found = store.load_salvaged(data_dir, run_id)
        except StoreError:
            raise exc from None  # nothing of a run readable (or not a store at all): the reading's own error
        click.echo("bilge: warning: %s This report is built from what could still be read: %s." % (
            exc, found.summary()), err=True)
        code = exc.exit_code  # the report is printed, and a script still sees that the store is damaged
    diagnosis = diagnose(run)
    if not show_values and redaction.has_values(diagnosis):
        diagnosis = redaction.hide_values(diagnosis)
        click.echo("bilge: this run captured sample values; they are hidden (pass --show-values to show them)",
                   err=True)
    try:
        out = open(output, "w", encoding="utf-8") if output else sys.stdout
    except OSError as exc:
        raise DataDirError("cannot write the report to %s: %s" % (output, exc.strerror)) from exc
    try:
        if fmt == "json":
            JsonReporter(out).render(diagnosis)
        elif fmt == "html":
            HtmlReporter(out).render(diagnosis)
        else:
            from rich.console import Console

            TerminalReporter(Console(file=out) if output else None).render(diagnosis)
    finally:
        if output:
            out.close()
    return code or (1 if fail_on_leak and diagnosis.verdict == LEAK else 0)
