"""The fleet page's data: every node's bilge, read from the metrics it already serves.

A node is one worker under ``bilge run --http``. The fleet is read either
from each node's ``/metrics`` directly (``bilge fleet URL ...``) or from a
Prometheus that scrapes them (``bilge fleet --prometheus URL``); both give
the same series (``metrics``), so one builder turns them into a ``Fleet``:
nodes, their live processes and verdicts, and the findings grouped by leak
signature ("on 2 of 3 nodes"). Nothing here runs in a worker, and nothing
is written anywhere: the page is a view over what each node exports.

Data flows one way: sources → ``Reading`` (a node's series, or why it
could not be read) → ``build`` → ``Fleet`` → the page
(``report.html.fleet_page``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from bilge.errors import FleetError

# Seconds one node (or Prometheus) has to answer before the page shows it as unreachable.
TIMEOUT = 5.0
# The series the page is built from, by their sample names (counters carry ``_total``): docs/metrics.md.
NAMES = (
    "process_resident_memory_bytes", "process_open_fds", "bilge_process_info", "bilge_process_verdict",
    "bilge_process_growth_bytes_per_hour", "bilge_process_time_to_limit_seconds", "bilge_process_tasks_total",
    "bilge_memory_limit_bytes", "bilge_finding_info", "bilge_finding_bytes_per_call", "bilge_finding_processes",
    "bilge_recycles_total", "bilge_agent_cpu_seconds_total",
)


@dataclass(frozen=True)
class Series:
    """One sample of one series, as an exposition or Prometheus's API gives it."""

    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Reading:
    """What one node exported, or why it could not be read (``error``)."""

    node: str  # how the page names the node: its URL's host:port, or Prometheus's instance label
    link: str | None  # the node's own live page
    series: tuple[Series, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class FleetProcess:
    node: str
    role: str
    slot: str
    pid: int | None
    rss: float | None
    fds: float | None
    tasks: float | None
    verdict: str
    growth_bytes_per_hour: float | None
    seconds_to_limit: float | None


@dataclass(frozen=True)
class FleetNode:
    node: str
    link: str | None
    hostname: str | None
    error: str | None
    processes: tuple[FleetProcess, ...] = ()
    recycles: float = 0.0
    agent_cpu_seconds: float = 0.0
    memory_limit: float | None = None

    @property
    def leaking(self) -> int:
        return sum(1 for p in self.processes if p.verdict == "leak")

    @property
    def rss(self) -> float:
        return sum(p.rss or 0.0 for p in self.processes)

    @property
    def soonest_to_limit(self) -> float | None:
        return min((p.seconds_to_limit for p in self.processes if p.seconds_to_limit is not None), default=None)


@dataclass(frozen=True)
class FleetFinding:
    """One leak signature and the nodes that show it."""

    signature: str
    task: str | None
    type: str | None
    kind: str | None
    holder: str | None
    new: bool | None
    nodes: tuple[str, ...]
    processes: int
    bytes_per_call: float | None


@dataclass(frozen=True)
class Fleet:
    nodes: tuple[FleetNode, ...]
    findings: tuple[FleetFinding, ...]
    read_at: float
    source: str  # what the fleet was read from, for the page's header
    answered: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "answered", sum(1 for n in self.nodes if n.error is None))

    @property
    def leaking(self) -> int:
        return sum(n.leaking for n in self.nodes)


def build(readings: Sequence[Reading], source: str, now: float | None = None) -> Fleet:
    """The fleet from what each node exported; unreadable nodes stay listed, with their error."""
    return Fleet(nodes=tuple(_node(r) for r in readings), findings=_findings(readings),
                 read_at=time.time() if now is None else now, source=source)


def _findings(readings: Sequence[Reading]) -> tuple[FleetFinding, ...]:
    """Every node's findings grouped by leak signature, the most widespread (then the largest) first."""
    labels: dict[str, Mapping[str, str]] = {}
    nodes: dict[str, list[str]] = {}
    processes: dict[str, int] = {}
    sizes: dict[str, float] = {}
    for r in readings:
        for s in _named(r.series, "bilge_finding_info"):
            signature = s.labels.get("signature", "")
            labels.setdefault(signature, s.labels)
            if r.node not in nodes.setdefault(signature, []):
                nodes[signature].append(r.node)
            processes[signature] = processes.get(signature, 0) + int(
                _value(r.series, "bilge_finding_processes", signature=signature) or 0)
            size = _value(r.series, "bilge_finding_bytes_per_call", signature=signature)
            if size is not None:
                sizes[signature] = max(size, sizes.get(signature, 0.0))
    findings = [FleetFinding(signature=signature, task=first.get("task") or None, type=first.get("type") or None,
                             kind=first.get("kind") or None, holder=first.get("holder") or None,
                             new={"true": True, "false": False}.get(first.get("new", "")),
                             nodes=tuple(nodes[signature]), processes=processes[signature],
                             bytes_per_call=sizes.get(signature))
                for signature, first in labels.items()]
    return tuple(sorted(findings, key=lambda f: (-len(f.nodes), -(f.bytes_per_call or 0.0), f.signature)))


def _node(r: Reading) -> FleetNode:
    if r.error is not None:
        return FleetNode(node=r.node, link=r.link, hostname=None, error=r.error)
    processes = {}
    for s in _named(r.series, "bilge_process_info"):
        key = (s.labels.get("role", ""), s.labels.get("slot", ""))
        processes[key] = int(s.labels["pid"]) if s.labels.get("pid", "").isdigit() else None
    for s in _named(r.series, "process_resident_memory_bytes"):
        processes.setdefault((s.labels.get("role", ""), s.labels.get("slot", "")), None)
    rows = []
    for (role, slot), pid in sorted(processes.items()):
        where = {"role": role, "slot": slot}
        verdict = next((s.labels["verdict"] for s in _named(r.series, "bilge_process_verdict", **where)
                        if s.value == 1.0 and "verdict" in s.labels), "inconclusive")
        rows.append(FleetProcess(
            node=r.node, role=role, slot=slot, pid=pid,
            rss=_value(r.series, "process_resident_memory_bytes", **where),
            fds=_value(r.series, "process_open_fds", **where),
            tasks=_value(r.series, "bilge_process_tasks_total", **where), verdict=verdict,
            growth_bytes_per_hour=_value(r.series, "bilge_process_growth_bytes_per_hour", **where),
            seconds_to_limit=_value(r.series, "bilge_process_time_to_limit_seconds", **where)))
    hostnames = sorted({s.labels["hostname"] for s in r.series if s.labels.get("hostname")})
    return FleetNode(node=r.node, link=r.link, hostname=", ".join(hostnames) or None, error=None,
                     processes=tuple(rows), recycles=sum(s.value for s in _named(r.series, "bilge_recycles_total")),
                     agent_cpu_seconds=sum(s.value for s in _named(r.series, "bilge_agent_cpu_seconds_total")),
                     memory_limit=_value(r.series, "bilge_memory_limit_bytes"))


def _named(series: Iterable[Series], name: str, **labels: str) -> list[Series]:
    return [s for s in series if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def _value(series: Iterable[Series], name: str, **labels: str) -> float | None:
    found = _named(series, name, **labels)
    return found[0].value if found else None


# --- sources ---------------------------------------------------------------------------------------------------


def node_url(text: str) -> str:
    """A node as given on the command line (``host:port`` or a URL, with or without ``/metrics``) as the URL of
    its metrics.

    Raises:
        FleetError: not an http(s) URL or host:port.
    """
    url = text if "://" in text else "http://" + text
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FleetError("%r is not a node's address: give HOST:PORT or http://HOST:PORT of a `bilge run --http`"
                         % text)
    path = parts.path.rstrip("/")
    if not path.endswith("/metrics"):
        path += "/metrics"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def read_nodes(urls: Sequence[str], token: str | None = None, timeout: float = TIMEOUT) -> list[Reading]:
    """Each node's ``/metrics`` (URLs from ``node_url``), read at once; a node that fails is a ``Reading`` with
    its error, never an exception."""
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(urls)))) as pool:
        return list(pool.map(lambda url: _read_node(url, token, timeout), urls))


def _read_node(url: str, token: str | None, timeout: float) -> Reading:
    parts = urllib.parse.urlsplit(url)
    node = parts.netloc
    link = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path[: -len("metrics")] or "/", "", ""))
    try:
        text = _get(url, token, timeout).decode("utf-8", "replace")
        series = tuple(Series(s.name, dict(s.labels), float(s.value))
                       for family in text_string_to_metric_families(text) for s in family.samples
                       if s.name in NAMES)
    except FleetError as exc:
        return Reading(node=node, link=link, error=str(exc))
    except ValueError as exc:  # not an exposition: something else answers on that port
        return Reading(node=node, link=link, error="not Prometheus metrics (%s): is this a `bilge run --http`?" % exc)
    return Reading(node=node, link=link, series=series)


def read_prometheus(url: str, token: str | None = None, timeout: float = TIMEOUT) -> list[Reading]:
    """The bilge series a Prometheus holds now, one ``Reading`` per scrape target (its ``instance`` label).

    Raises:
        FleetError: Prometheus cannot be reached or does not answer the query.
    """
    query = '{__name__=~"%s", hostname!=""}' % "|".join(NAMES)
    base = url.rstrip("/")
    answer = _get(base + "/api/v1/query?" + urllib.parse.urlencode({"query": query}), token, timeout,
                  "Prometheus at " + base)
    try:
        data = json.loads(answer)
        result = data["data"]["result"] if data.get("status") == "success" else None
    except (ValueError, KeyError, TypeError):
        result = None
    if not isinstance(result, list):
        raise FleetError("%s did not answer like Prometheus's HTTP API (/api/v1/query)" % base)
    by_instance: dict[str, list[Series]] = {}
    for item in result:
        labels = dict(item.get("metric", {}))
        name = labels.pop("__name__", "")
        instance = labels.get("instance", "")
        try:
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        by_instance.setdefault(instance, []).append(Series(name, labels, value))
    return [Reading(node=instance, link="http://%s/" % instance if instance else None, series=tuple(series))
            for instance, series in sorted(by_instance.items())]


def _get(url: str, token: str | None, timeout: float, name: str | None = None) -> bytes:
    """The body at ``url``; ``name`` is how an error names what was asked (default: the URL)."""
    name = name or url
    request = urllib.request.Request(url, headers={"Accept": "text/plain, application/json"})
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        why = "needs a token (--token)" if exc.code == 401 else "answered HTTP %d" % exc.code
        raise FleetError("%s %s" % (name, why)) from exc
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, OSError) and reason.strerror:
            reason = reason.strerror.lower()
        raise FleetError("%s: %s" % (name, reason)) from exc
