"""The live page, health and Prometheus metrics over HTTP: ``bilge run --http`` and ``bilge serve``; the fleet
page: ``bilge fleet``.

The server runs in the ``bilge run`` supervisor, never inside the worker:
the agent stays standard-library only and the worker's processes pay
nothing for scrapes. Every process of the worker (main process and each
prefork child) writes its readings to the shared store, so one endpoint
covers them all, and prefork is safe by construction (no per-process
metric files to merge).

- ``GET /``: the live page, the HTML report of the latest diagnosis; its
  ``/live.js`` swaps in ``/?part=main`` every few seconds (no reload, no
  external reference, nothing but this server fetched).
- ``GET /health``: the health JSON (``analysis.health``); HTTP 200 when
  healthy or degraded, 503 when failing.
- ``GET /metrics``: Prometheus text format (``metrics``: conventional
  process and gc metrics per live process, labelled ``hostname``, ``role``
  and ``slot``; verdicts, growth, findings by signature, recycles and
  bilge's own cost under ``bilge_``).

The run is re-read and re-diagnosed at bounded rates, whatever the scrape
rate (``monitor.RunView``).

``bilge fleet`` serves ``/`` (the fleet page: findings by leak signature,
nodes, live processes, from every node's ``/metrics`` or a Prometheus,
``fleet``) and ``/fleet.json`` (the same data), read at most every few
seconds whatever the number of viewers.

Read-only: no endpoint changes anything. ``--http`` binds 127.0.0.1 unless
told otherwise (``bilge run`` warns when it is bound wider); with a token
(``--http-token`` or ``BILGE_HTTP_TOKEN``) every request must carry
``Authorization: Bearer <token>`` (Prometheus: ``authorization:`` in the
scrape config), compared in constant time.
"""

from __future__ import annotations

import base64
import hmac
import importlib.resources
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from bilge.errors import BilgeError, ServeError
from bilge.integrations.fleet import Fleet
from bilge.integrations.metrics import StoreCollector, live_processes, slot
from bilge.integrations.monitor import RunView
from bilge.model import Diagnosis, RunData

# Seconds between the live page's refreshes (the diagnosis behind it is redone at most every 10 s).
REFRESH = 5.0
LIVE_JS = importlib.resources.files("bilge.report").joinpath("static/live.js").read_bytes()
# The page loads nothing but itself and /live.js, and fetches only its own server.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Response:
    code: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


# What a path answers, given its query string.
Route = Callable[[str], Response]


class HttpServer:
    """Routes on one address, in a daemon thread, each request behind the token when there is one.

    Raises:
        ServeError: the address cannot be bound (in use, not local, no permission).
    """

    def __init__(self, routes: Mapping[str, Route], host: str, port: int, token: str | None = None) -> None:
        handler = _handler(routes, token)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ServeError("cannot serve on %s:%d: %s; pick a free port with --http HOST:PORT"
                             % (host, port, exc.strerror or exc)) from exc
        self._server.daemon_threads = True
        bound_host, bound_port = self._server.server_address[:2]
        self.address = "%s:%d" % (str(bound_host), int(bound_port))
        self._thread = threading.Thread(target=self._server.serve_forever, name="bilge-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class MonitorServer(HttpServer):
    """One run's live page, ``/health`` and ``/metrics``."""

    def __init__(self, view: RunView, host: str, port: int, token: str | None = None) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StoreCollector(view))
        pages = LivePages(view)

        def health(_: str) -> Response:
            answer = view.health()
            return Response(503 if answer["status"] == "failing" else 200, "application/json",
                            json.dumps(answer).encode())

        super().__init__({
            "/": lambda query: _html(pages.get(query == "part=main")),
            "/live.js": _live_js,
            "/health": health,
            "/metrics": lambda _: Response(200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(registry)),
        }, host, port, token)


class FleetServer(HttpServer):
    """The fleet page (``bilge fleet``) and its data as JSON, read from the nodes at most every ``refresh`` s."""

    def __init__(self, read: Callable[[], Fleet], host: str, port: int, token: str | None = None,
                 refresh: float = REFRESH) -> None:
        pages = FleetPages(read, refresh)
        super().__init__({
            "/": lambda query: _html(pages.get(query == "part=main")),
            "/live.js": _live_js,
            "/fleet.json": lambda _: Response(200, "application/json", json.dumps(asdict(pages.fleet())).encode(),
                                              PAGE_HEADERS),
        }, host, port, token)


def _html(page: str) -> Response:
    return Response(200, "text/html; charset=utf-8", page.encode(), PAGE_HEADERS)


def _live_js(_: str) -> Response:
    return Response(200, "text/javascript; charset=utf-8", LIVE_JS, PAGE_HEADERS)


def loopback(host: str) -> bool:
    """Whether ``host`` (an address or name) only reaches this machine."""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (OSError, ValueError):
        return False


def authorized(header: str, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token``: as a bearer token (Prometheus, probes) or as the
    password of HTTP basic auth, any user name (a browser's own prompt)."""
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            credentials = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


class LivePages:
    """The live page and its ``main`` part, rendered once per reading of the store whatever the number of viewers.

    The page is the report of the latest diagnosis (redone at most every 10 s) under a table of the live
    processes as the store has them now (re-read at most every 5 s).
    """

    def __init__(self, view: RunView, refresh: float = REFRESH) -> None:
        self.view = view
        self.refresh = refresh
        self._lock = threading.Lock()
        self._cached: tuple[tuple[float, float], dict[bool, str]] | None = None

    def get(self, main_only: bool) -> str:
        from bilge.report.html import live_page
        from bilge.report.redaction import hide_values

        # Values captured under --show-values stay in the store: nothing served over HTTP shows them.
        diagnosis = hide_values(self.view.diagnosis())
        run = self.view.run()
        with self._lock:
            key = (self.view.read_at, self.view.diagnosed_at)
            if self._cached is None or self._cached[0] != key:
                self._cached = (key, {})
            # Rendered when first asked for: a page open in a browser asks only for its main part after loading.
            pages = self._cached[1]
            if main_only not in pages:
                pages[main_only] = live_page(diagnosis, self.refresh, key[0], now_rows(run, diagnosis),
                                             main_only=main_only)
            return pages[main_only]


def now_rows(run: RunData, diagnosis: Diagnosis) -> list[dict[str, Any]]:
    """The live processes as the store has them now, for the live page's first table."""
    verdicts = {(d.pid, d.role): d.verdict for d in diagnosis.processes}
    rows = []
    for p in live_processes(run):
        last = p.samples[-1] if p.samples else None
        rows.append({"role": p.info.role, "slot": slot(p.info), "pid": p.info.pid, "rss": last.rss if last else None,
                     "fds": last.fds if last else None, "tasks": len(p.tasks),
                     "verdict": verdicts.get((p.info.pid, p.info.role), "inconclusive")})
    return rows


class FleetPages:
    """The fleet page and its ``main`` part, from one reading of the nodes at most every ``refresh`` seconds
    whatever the number of viewers (a viewer arriving during a reading waits for it)."""

    def __init__(self, read: Callable[[], Fleet], refresh: float = REFRESH) -> None:
        self.read = read
        self.refresh = refresh
        self._lock = threading.Lock()
        self._fleet: Fleet | None = None
        self._read_at = 0.0
        self._pages: dict[bool, str] = {}

    def fleet(self) -> Fleet:
        with self._lock:
            return self._fresh()

    def get(self, main_only: bool) -> str:
        from bilge.report.html import fleet_page

        with self._lock:
            fleet = self._fresh()
            if main_only not in self._pages:
                self._pages[main_only] = fleet_page(fleet, self.refresh, main_only=main_only)
            return self._pages[main_only]

    def _fresh(self) -> Fleet:
        """The fleet, read again when older than ``refresh`` (the lock held)."""
        if self._fleet is None or time.monotonic() - self._read_at >= self.refresh:
            self._fleet = self.read()
            self._read_at = time.monotonic()
            self._pages = {}
        return self._fleet


def _handler(routes: Mapping[str, Route], token: str | None) -> type[BaseHTTPRequestHandler]:
    served = ", ".join(sorted(p for p in routes if p != "/live.js"))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
            if token and not authorized(self.headers.get("Authorization", ""), token):
                self._send(Response(401, "text/plain", b"bilge: this server needs its token (--http-token): "
                                    b"Authorization: Bearer TOKEN, or any user name with the token as password\n",
                                    {"WWW-Authenticate": 'Basic realm="bilge", charset="UTF-8"'}))
                return
            path, _, query = self.path.partition("?")
            route = routes.get("/" if path == "/index.html" else path)
            if route is None:
                self._send(Response(404, "text/plain", ("bilge serves %s\n" % served).encode()))
                return
            try:
                self._send(route(query))
            except BilgeError as exc:
                # No run recorded yet, a store being created, a fleet not read: say so, do not crash the server.
                self._send(Response(503, "application/json",
                                    json.dumps({"status": "unknown", "reason": str(exc)}).encode()))

        def _send(self, response: Response) -> None:
            self.send_response(response.code)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # scrapes every few seconds would flood the worker's log

    return Handler
