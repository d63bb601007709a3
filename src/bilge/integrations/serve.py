"""Health and Prometheus metrics over HTTP, served by ``bilge run --http``.

The server runs in the ``bilge run`` supervisor, never inside the worker:
the agent stays standard-library only and the worker's processes pay
nothing for scrapes. Every process of the worker (main process and each
prefork child) writes its readings to the shared store, so one endpoint
covers them all, and prefork is safe by construction (no per-process
metric files to merge).

- ``GET /health``: the health JSON (``analysis.health``); HTTP 200 when
  healthy or degraded, 503 when failing.
- ``GET /metrics``: Prometheus text format (``metrics``: conventional
  process and gc metrics per live process, labelled ``hostname``, ``role``
  and ``slot``; verdicts, growth, findings by signature, recycles and
  bilge's own cost under ``bilge_``).

The run is re-read and re-diagnosed at bounded rates, whatever the scrape
rate (``monitor.RunView``).

Read-only: no endpoint changes anything. ``--http`` binds 127.0.0.1 unless
told otherwise (``bilge run`` warns when it is bound wider); with a token
(``--http-token`` or ``BILGE_HTTP_TOKEN``) every request must carry
``Authorization: Bearer <token>`` (Prometheus: ``authorization:`` in the
scrape config), compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from bilge.errors import BilgeError, ServeError
from bilge.integrations.metrics import StoreCollector
from bilge.integrations.monitor import RunView


class MonitorServer:
    """``/health`` and ``/metrics`` on one address, in a daemon thread.

    Raises:
        ServeError: the address cannot be bound (in use, not local, no permission).
    """

    def __init__(self, view: RunView, host: str, port: int, token: str | None = None) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StoreCollector(view))
        handler = _handler(view, registry, token)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ServeError("cannot serve health and metrics on %s:%d: %s; pick a free port with --http HOST:PORT"
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


def loopback(host: str) -> bool:
    """Whether ``host`` (an address or name) only reaches this machine."""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (OSError, ValueError):
        return False


def _handler(view: RunView, registry: CollectorRegistry, token: str | None) -> type[BaseHTTPRequestHandler]:
    expected = ("Bearer " + token).encode() if token else None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
            if expected is not None and not hmac.compare_digest(
                    self.headers.get("Authorization", "").encode(), expected):
                self._send(401, "text/plain", b"bilge: a bearer token is required (Authorization: Bearer ...)\n",
                           {"WWW-Authenticate": 'Bearer realm="bilge"'})
                return
            try:
                if self.path.split("?")[0] == "/health":
                    health = view.health()
                    self._send(503 if health["status"] == "failing" else 200, "application/json",
                               json.dumps(health).encode())
                elif self.path.split("?")[0] == "/metrics":
                    self._send(200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(registry))
                else:
                    self._send(404, "text/plain", b"bilge serves /health and /metrics\n")
            except BilgeError as exc:
                # No run recorded yet, a store being created: say so, do not crash the server.
                self._send(503, "application/json", json.dumps({"status": "unknown", "reason": str(exc)}).encode())

        def _send(self, code: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # scrapes every few seconds would flood the worker's log

    return Handler
