"""Serve the live page, /health and /metrics of a data dir: a run in progress, or a finished one.

Example: bilge serve --data-dir ./bilge-data --http 127.0.0.1:9808

The page is the HTML report of the run's latest diagnosis and refreshes
itself while the run goes on; /metrics and /health are what `bilge run
--http` serves. Nothing is written to the data dir. Stop with Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from bilge.cli.run import address, monitor_server


@click.command("serve", help=__doc__)
@click.option("--data-dir", default="bilge-data", show_default=True, help="The data dir given to `bilge run`.")
@click.option("--run", "run_id", type=click.IntRange(min=1), default=None, help="Run id (default: the latest).")
@click.option("--http", "http", metavar="HOST:PORT", default="127.0.0.1:9808", show_default=True,
              help="Where to serve (a bare port binds 127.0.0.1).")
@click.option("--http-token", envvar="BILGE_HTTP_TOKEN", default=None, metavar="TOKEN",
              help="Require this token: `Authorization: Bearer TOKEN`, or any user name and the token as password "
                   "in a browser (or set BILGE_HTTP_TOKEN).")
def serve(data_dir: str, run_id: int | None, http: str, http_token: str | None) -> int:
    """Serve one run until interrupted."""
    from bilge.integrations.monitor import RunView
    from bilge.store import sqlite as store

    host, port = address(http)
    run = store.load_run(data_dir, run_id)  # a missing or unreadable store fails here, in one line
    server = monitor_server(RunView(data_dir, run_id=run.run.id, record=False), host, port, http_token)
    return serve_until_stopped(server, "serving run %d of %s on http://%s/ (Ctrl-C to stop)"
                               % (run.run.id, data_dir, server.address))


def serve_until_stopped(server: Any, saying: str) -> int:
    """Start ``server``, say ``saying`` on stderr, serve until Ctrl-C or SIGTERM, close it; exit code 0."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    click.echo("bilge: " + saying, err=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
    return 0
