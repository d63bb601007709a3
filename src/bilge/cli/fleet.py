"""Serve one page for a fleet of workers, each under `bilge run --http`: leaks by signature, nodes, processes.

Examples:

  bilge fleet worker-1:9808 worker-2:9808 worker-3:9808

  bilge fleet --prometheus http://prometheus:9090

The nodes are read from the /metrics each one serves (directly, or from a
Prometheus that scrapes them: the series of its scrape targets that carry
bilge's labels), every few seconds while the page is open; a node that
does not answer is listed with the reason. The page refreshes itself;
/fleet.json has the same data. Nothing is written anywhere. Stop with Ctrl-C.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from bilge.cli.run import address, warn_if_wide
from bilge.cli.serve import serve_until_stopped

if TYPE_CHECKING:
    from bilge.integrations.fleet import Fleet


@click.command("fleet", help=__doc__)
@click.argument("nodes", nargs=-1, metavar="[NODE]...")
@click.option("--prometheus", metavar="URL", default=None,
              help="Read the nodes from this Prometheus (its HTTP API) instead of from each node.")
@click.option("--token", envvar="BILGE_FLEET_TOKEN", default=None, metavar="TOKEN",
              help="Bearer token sent to the nodes (their --http-token) or to Prometheus (or set BILGE_FLEET_TOKEN).")
@click.option("--http", "http", metavar="HOST:PORT", default="127.0.0.1:9809", show_default=True,
              help="Where to serve the page (a bare port binds 127.0.0.1).")
@click.option("--http-token", envvar="BILGE_HTTP_TOKEN", default=None, metavar="TOKEN",
              help="Require this token to see the page, as `bilge run --http-token` does (or set BILGE_HTTP_TOKEN).")
@click.option("--json", "as_json", is_flag=True, help="Print the fleet once as JSON and exit, serving nothing.")
def fleet(nodes: tuple[str, ...], prometheus: str | None, token: str | None, http: str, http_token: str | None,
          as_json: bool) -> int:
    """Serve the fleet page until interrupted (or print it once with --json)."""
    from bilge.errors import FleetError
    from bilge.integrations import fleet as source
    from bilge.integrations.serve import FleetServer

    if bool(nodes) == bool(prometheus):
        raise click.UsageError("give the nodes' addresses (HOST:PORT of each `bilge run --http`) or --prometheus URL, "
                               "not both and not neither")
    host, port = address(http)
    if prometheus:
        source.read_prometheus(prometheus, token)  # unreachable, or not Prometheus: fails here, in one line
        read = functools.partial(_from_prometheus, prometheus, token)
    else:
        urls = [source.node_url(n) for n in nodes]
        read = functools.partial(_from_nodes, urls, token)
    first = read()
    for node in first.nodes:
        if node.error:
            click.echo("bilge: warning: %s is unreachable: %s" % (node.node, node.error), err=True)
    if as_json:
        click.echo(json.dumps(asdict(first), indent=2))
        return 0
    if prometheus and not first.nodes:
        raise FleetError("%s holds no bilge series (no scrape target with a `hostname` label): point it at each "
                         "node's `bilge run --http` address" % prometheus)
    warn_if_wide(host, port, http_token, "the fleet page")
    server = FleetServer(read, host, port, token=http_token or None)
    return serve_until_stopped(server, "serving the fleet page of %d nodes on http://%s/ (Ctrl-C to stop)"
                               % (len(first.nodes), server.address))


def _from_nodes(urls: list[str], token: str | None) -> Fleet:
    from bilge.integrations import fleet as source

    return source.build(source.read_nodes(urls, token), source="%d nodes" % len(urls))


def _from_prometheus(url: str, token: str | None) -> Fleet:
    from bilge.errors import FleetError
    from bilge.integrations import fleet as source

    try:
        readings = source.read_prometheus(url, token)
    except FleetError as exc:  # gone while the page is served: the page says so
        readings = [source.Reading(node=url, link=None, error=str(exc))]
    return source.build(readings, source=url)
