"""The fleet page's data: nodes read from the /metrics bilge serves (or a Prometheus's API), grouped by signature."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from runs import RUN, FixedView, process

from bilge.analysis import diagnose
from bilge.errors import FleetError
from bilge.integrations import fleet
from bilge.integrations.metrics import StoreCollector
from bilge.integrations.serve import FleetPages, HttpServer, Response
from bilge.model import Finding, RunData
from bilge.report.html import fleet_page

LEAK = Finding(task="shop.render", type="dict", kind="python-objects", bytes_per_call=512.0, count_per_call=1.0,
               hint="", pids=(), holder="shop.cache._R[...]", signature="0123456789ab", new=False)


def exposition(hostname: str, finding: Finding | None) -> bytes:
    """What `bilge run --http` serves on /metrics for a worker with a main process and two children."""
    me = os.getpid()
    data = RunData(run=replace(RUN, hostname=hostname),
                   processes=(process(1, me, "celery-main", 1.0), process(2, me, "celery-child", 2.0, pool_index=0),
                              process(3, me, "celery-child", 3.0, pool_index=1)))
    answer = diagnose(data)
    if finding is not None:
        answer = replace(answer, findings=(replace(finding, pids=(me,)),))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(FixedView(data, answer, hard_limit=2**30)))
    return generate_latest(registry)


Serve = Callable[..., str]  # (path, body[, content type]) -> the address serving it


@pytest.fixture
def serve() -> Iterator[Serve]:
    servers: list[HttpServer] = []

    def start(path: str, body: bytes, content_type: str = "text/plain") -> str:
        server = HttpServer({path: lambda _: Response(200, content_type, body)}, "127.0.0.1", 0)
        server.start()
        servers.append(server)
        return server.address

    yield start
    for server in servers:
        server.close()


def closed_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1:%d" % s.getsockname()[1]


def test_nodes_read_from_their_metrics_group_one_leak_by_signature(serve: Serve) -> None:
    """Two nodes with the same leak, one clean, one down: the leak is on 2 of the 3 that answered."""
    start = serve
    a = start("/metrics", exposition("host-a", LEAK))
    b = start("/metrics", exposition("host-b", replace(LEAK, bytes_per_call=640.0)))
    c = start("/metrics", exposition("host-c", None))
    down = closed_port()
    readings = fleet.read_nodes([fleet.node_url(n) for n in (a, b, "http://%s/" % c, down)])
    built = fleet.build(readings, source="4 nodes", now=1.0)

    assert [n.hostname for n in built.nodes] == ["host-a", "host-b", "host-c", None]
    assert built.answered == 3 and "connection refused" in (built.nodes[3].error or "")
    (leak,) = built.findings
    assert (leak.signature, leak.task, leak.holder, leak.nodes) == ("0123456789ab", "shop.render",
                                                                    "shop.cache._R[...]", (a, b))
    assert leak.bytes_per_call == 640.0 and leak.processes == 2 and leak.new is False
    node = built.nodes[0]
    assert [(p.role, p.slot, p.pid) for p in node.processes] == [
        ("celery-child", "0", os.getpid()), ("celery-child", "1", os.getpid()), ("celery-main", "main", os.getpid())]
    assert node.rss == 3 * 50 * 2**20 and node.memory_limit == 2**30 and node.recycles == 0
    assert node.link == "http://%s/" % a


def test_a_prometheus_answer_is_split_by_scrape_target(serve: Serve) -> None:
    """Prometheus's /api/v1/query result (the same series, with job and instance added) gives the same fleet."""
    start = serve
    result = []
    for instance, finding in (("10.0.0.1:9808", LEAK), ("10.0.0.2:9808", None)):
        text = exposition("host-" + instance[7], finding).decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                result.append({"metric": {"__name__": s.name, **s.labels, "job": "bilge", "instance": instance},
                               "value": [1.0, repr(s.value)]})
    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
    prometheus = start("/api/v1/query", body, "application/json")
    built = fleet.build(fleet.read_prometheus("http://%s" % prometheus), source="prometheus")
    assert [(n.node, n.hostname, len(n.processes)) for n in built.nodes] == [
        ("10.0.0.1:9808", "host-1", 3), ("10.0.0.2:9808", "host-2", 3)]
    assert [(f.signature, f.nodes) for f in built.findings] == [("0123456789ab", ("10.0.0.1:9808",))]

    down = closed_port()
    with pytest.raises(FleetError, match=re.escape("Prometheus at http://%s: connection refused" % down)):
        fleet.read_prometheus("http://%s" % down)
    not_prometheus = start("/api/v1/query", b"<html>hello</html>", "text/html")
    with pytest.raises(FleetError, match="did not answer like Prometheus"):
        fleet.read_prometheus("http://%s" % not_prometheus)


def test_node_addresses() -> None:
    assert fleet.node_url("w1:9808") == "http://w1:9808/metrics"
    assert fleet.node_url("https://w1:9808/bilge/") == "https://w1:9808/bilge/metrics"
    assert fleet.node_url("http://w1:9808/metrics") == "http://w1:9808/metrics"
    with pytest.raises(FleetError, match="not a node's address"):
        fleet.node_url("ftp://w1")


def test_something_else_on_a_node_port_is_named(serve: Serve) -> None:
    start = serve
    other = start("/metrics", b"<html>\n<body>not metrics</body>", "text/html")
    (reading,) = fleet.read_nodes([fleet.node_url(other)])
    assert reading.error and "not Prometheus metrics" in reading.error


def test_the_page_reads_the_nodes_once_per_refresh_whatever_the_viewers() -> None:
    reads = []

    def read() -> fleet.Fleet:
        reads.append(1)
        return fleet.build([fleet.Reading(node="n1", link=None, error="down")], source="1 node", now=5.0)

    pages = FleetPages(read, refresh=60.0)
    for main_only in (False, True, True, False):
        pages.get(main_only)
    assert len(reads) == 1
    assert "unreachable: down" in pages.get(True) and "<html" not in pages.get(True)
    pages.refresh = 0.0
    pages.get(True)
    assert len(reads) == 2


def test_the_page_shows_the_leak_its_spread_and_each_node(serve: Serve) -> None:
    start = serve
    a = start("/metrics", exposition("host-a", LEAK))
    c = start("/metrics", exposition("host-c", None))
    built = fleet.build(fleet.read_nodes([fleet.node_url(a), fleet.node_url(c)]), source="2 nodes")
    page = fleet_page(built, refresh=5.0)
    assert '<body data-refresh="5">' in page and '<script src="/live.js"></script>' in page
    assert "0123456789ab" in page and '<b class="spread">1 of 2</b>' in page
    assert page.count('<tr class="node">') == 2 and page.count('<span class="badge v-') == 6
    assert '<span class="badge big v-leak">1 leak</span>' in page
    assert '<a href="http://%s/">' % a in page
