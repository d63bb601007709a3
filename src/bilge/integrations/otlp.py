"""The same metrics pushed to an OpenTelemetry collector over OTLP/HTTP: ``bilge run --otlp URL``.

Needs the ``otlp`` extra (``pip install 'bilge[otlp]'``: the OpenTelemetry
SDK and its OTLP/HTTP exporter); it runs in the ``bilge run`` supervisor,
never in the worker. Every Prometheus family of ``metrics.StoreCollector``
becomes one observable instrument of the same name (a counter for a
counter, else a gauge; a counter's name without ``_total``, which the
collector's Prometheus exporter adds back), its labels the data point's
attributes, its unit read from the name's suffix. One reading of the store
serves every instrument of an export.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from bilge.errors import BilgeError, ServeError
from bilge.integrations.metrics import StoreCollector
from bilge.integrations.monitor import RunView

# Seconds a reading of the store serves the instruments of one export (they are called one after another).
SNAPSHOT_TTL = 1.0
UNITS = (("_bytes", "By"), ("_seconds", "s"), ("_blocks", "{block}"))


class OtlpExporter:
    """Pushes the run's metrics to ``endpoint`` (``http://host:4318/v1/metrics``) every ``interval`` seconds."""

    def __init__(self, view: RunView, endpoint: str, interval: float = 15.0) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.resources import Resource
        except ImportError as exc:
            raise ServeError("--otlp needs the OpenTelemetry SDK: pip install 'bilge[otlp]' (%s)" % exc) from exc
        self.collector = StoreCollector(view)
        self._lock = threading.Lock()
        self._snapshot: tuple[float, dict[str, Any]] = (0.0, {})
        reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint, timeout=10),
                                               export_interval_millis=interval * 1000)
        self._provider = MeterProvider(metric_readers=[reader], resource=Resource.create(
            {"service.name": "bilge", "host.name": socket.gethostname()}))
        self._started = False

    def start(self) -> None:
        """Declare one instrument per family (the run is recorded by now) and start pushing."""
        from opentelemetry.metrics import CallbackOptions, Observation

        try:
            families = self._families()
        except BilgeError as exc:
            # The worker runs whatever happens to the export.
            sys.stderr.write("bilge: warning: no OTLP export: %s\n" % exc)
            return
        meter = self._provider.get_meter("bilge")
        for family in families.values():
            name = family.name
            unit = next((u for suffix, u in UNITS if name.endswith(suffix)), "1")

            def observe(_: CallbackOptions, name: str = name) -> Iterable[Observation]:
                family = self._families().get(name)
                return [Observation(s.value, dict(s.labels)) for s in (family.samples if family else ())
                        if s.name in (name, name + "_total")]

            if family.type == "counter":
                meter.create_observable_counter(name, callbacks=[observe], unit=unit, description=family.documentation)
            else:
                meter.create_observable_gauge(name, callbacks=[observe], unit=unit, description=family.documentation)
        self._started = True

    def close(self) -> None:
        """Push once more and stop (bounded by the exporter's timeout)."""
        if self._started:
            self._provider.shutdown()

    def _families(self) -> dict[str, Any]:
        with self._lock:
            if time.monotonic() - self._snapshot[0] > SNAPSHOT_TTL:
                self._snapshot = (time.monotonic(), {f.name: f for f in self.collector.collect()})
            return self._snapshot[1]


class Services:
    """Several supervisor services (the HTTP server, the OTLP exporter) started and closed as one."""

    def __init__(self, services: Sequence[Any]) -> None:
        self.services = tuple(services)

    def start(self) -> None:
        for s in self.services:
            s.start()

    def close(self) -> None:
        for s in reversed(self.services):
            s.close()
