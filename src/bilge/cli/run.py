"""Run COMMAND with the bilge agent in every Python process it starts.

Example: bilge run --data-dir ./bilge-data -- celery -A proj worker -P prefork -c 2

Signals are passed on to the command and bilge exits with its exit code.
Then see the diagnosis with: bilge report --data-dir ./bilge-data
"""

from __future__ import annotations

import click

from bilge import runner


@click.command(
    "run", help=__doc__, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option("--data-dir", default="bilge-data", show_default=True, type=click.Path(file_okay=True),
              help="Directory for the store (created if missing).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(data_dir: str, command: tuple[str, ...]) -> int:
    """Run COMMAND under the agent."""
    return runner.run(data_dir, command)
