"""Runs and views the metrics tests build: a worker's processes, and a RunView that answers fixed values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bilge.integrations.metrics import StoreCollector
from bilge.model import Diagnosis, ProcessData, ProcessInfo, RunData, RunInfo, Sample

RUN = RunInfo(id=1, started=1000.0, ended=None, command="celery -A shop worker", exit_code=None, hostname="box")


def process(id_: int, pid: int, role: str, started: float, pool_index: int | None = None,
            ended: float | None = None) -> ProcessData:
    info = ProcessInfo(id=id_, pid=pid, ppid=1, parent_id=None, role=role, started=started, ended=ended, argv="",
                       pool_index=pool_index)
    return ProcessData(info=info, samples=(Sample(started + 1, 50 * 2**20, 40 * 2**20, None, 1000, 3, 12, 2, 5),),
                       tasks=(), censuses=(), gc_generations=((40, 900, 0), (3, 100, 0), (1, 20, 1)))


@dataclass
class FixedView:
    """What the collector reads from a RunView, fixed."""

    data: RunData
    answer: Diagnosis
    hard_limit: int | None = None
    horizon: float = 3600.0

    def run(self) -> RunData:
        return self.data

    def diagnosis(self) -> Diagnosis:
        return self.answer


def scrape(view: Any) -> dict[str, list[Any]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(view))
    text = generate_latest(registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}
