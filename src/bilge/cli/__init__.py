"""The ``bilge`` command line: a thin shell over the core.

This is the one place where errors become exit codes: a ``BilgeError``
prints one line, ``bilge: error: …``, and exits with its code; users never
see a traceback for an expected failure.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from bilge import __version__
from bilge.cli.attach import attach, detach
from bilge.cli.check import check
from bilge.cli.demo import demo
from bilge.cli.fleet import fleet
from bilge.cli.guard import guard
from bilge.cli.report import report
from bilge.cli.run import run
from bilge.cli.serve import serve
from bilge.cli.snapshot import snapshot
from bilge.cli.systemd import systemd
from bilge.cli.top import top
from bilge.errors import BilgeError


@click.group(help="Find, explain and stop memory leaks in long-running Python workers.")
@click.version_option(__version__, prog_name="bilge")
def cli() -> None:
    """The bilge command group."""


cli.add_command(run)
cli.add_command(report)
cli.add_command(demo)
cli.add_command(check)
cli.add_command(systemd)
cli.add_command(guard)
cli.add_command(snapshot)
cli.add_command(top)
cli.add_command(attach)
cli.add_command(detach)
cli.add_command(serve)
cli.add_command(fleet)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bilge`` console script."""
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="bilge",
                          standalone_mode=False)
    except BilgeError as exc:
        click.echo("bilge: error: %s" % exc, err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("bilge: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
