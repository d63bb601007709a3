"""Tests for bilge.report.html: the self-contained HTML report."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from html.parser import HTMLParser

from bilge.analysis import diagnose
from bilge.model import (
    INCONCLUSIVE,
    LEAK,
    NO_LEAK,
    STAGE_ALLOCATION_WINDOW,
    STAGE_CENSUS,
    STAGE_HOLDER_SEARCH,
    AgentCost,
    BudgetState,
    Census,
    Diagnosis,
    Finding,
    ProcessData,
    ProcessDiagnosis,
    ProcessInfo,
    RunData,
    RunInfo,
    Sample,
    Series,
    StageCost,
    StageRun,
    TaskGrowth,
    TaskRecord,
)
from bilge.report.html import HtmlReporter, clock, holder_chain, nice_ticks, redact_command, time_ticks

T0 = 1_700_000_000.0
MIB = 1024 * 1024
RUN = RunInfo(id=7, started=T0, ended=T0 + 600, hostname="box", exit_code=0,
              command="celery -A shop worker --broker redis://:hunter2-secret@cache:6379/0")

HELD = Finding(task="shop.search", type="shop.Order", kind="python-objects", bytes_per_call=4096.0,
               count_per_call=1.0, hint="Bound the shop.cache._ORDERS dict.", pids=(101,),
               evidence=("shop.Order: +500 objects over the window",), holder="shop.cache._ORDERS[...]",
               location="shop/cache.py:42")
UNEXPLAINED = Finding(task="shop.search", type="builtins.list", kind="python-objects", bytes_per_call=120.0,
                      count_per_call=1.0, hint="Something keeps lists.", pids=(101,))


def ramp(start: float, per_second: float, unit: str, name: str, n: int = 60) -> Series:
    """A series sampled every 10 s for ``n`` samples, growing linearly."""
    return Series(name=name, unit=unit, points=tuple((T0 + 10 * i, start + per_second * 10 * i) for i in range(n)))


def process(pid: int, verdict: str, **overrides: object) -> ProcessDiagnosis:
    """A pool child with every plot series; a leaking one also has a trend line and growing types."""
    leaking = verdict == LEAK
    fields: dict[str, object] = dict(
        pid=pid, role="celery-child", verdict=verdict, kind="python-objects" if leaking else None,
        confidence=0.999, growth_bytes_per_task=2048.0 if leaking else None,
        growth_bytes_per_hour=8 * MIB if leaking else None, tasks_observed=1500,
        confirmed_after_tasks=210 if leaking else None, confirmed_after_calls=70 if leaking else None,
        rss_start=60 * MIB, rss_end=64 * MIB if leaking else 60 * MIB, reason="memory grows steadily",
        findings=(HELD, UNEXPLAINED) if leaking else (), fds_start=12, fds_end=12,
        series=(ramp(60 * MIB, 7000 if leaking else 0, "bytes", "RSS"),
                ramp(40 * MIB, 7000 if leaking else 0, "bytes", "USS"),
                ramp(250_000, 5 if leaking else 0, "blocks", "Python heap blocks"),
                ramp(12, 0, "fds", "open fds")),
        trend_line=((T0 + 300, 62 * MIB), (T0 + 590, 64 * MIB)) if leaking else None,
        type_series=(ramp(1000, 2, "objects", "shop.Order"), ramp(3000, 1, "objects", "builtins.list"))
        if leaking else (),
    )
    fields.update(overrides)
    return ProcessDiagnosis(**fields)  # type: ignore[arg-type]


def leak() -> Diagnosis:
    """A leak in one child, attributed to shop.search, with one finding explained and one not."""
    growth = (TaskGrowth(task="shop.search", calls=500, bytes_per_call=4100.0, blocks_per_call=1.0, score=12.5),
              TaskGrowth(task="shop.ping", calls=1000, bytes_per_call=-300.0, blocks_per_call=0.0, score=-0.4))
    return Diagnosis(run=RUN, verdict=LEAK, kind="python-objects", confidence=0.999,
                     findings=(HELD, UNEXPLAINED), processes=(process(100, NO_LEAK), process(101, LEAK)),
                     reason="1 of 2 processes leak", task_growth=growth)


def no_leak() -> Diagnosis:
    """Two flat children."""
    return Diagnosis(run=RUN, verdict=NO_LEAK, kind=None, confidence=0.98, findings=(),
                     processes=(process(100, NO_LEAK), process(101, NO_LEAK)),
                     reason="memory is flat after warm-up in every process that ran tasks")


def inconclusive() -> Diagnosis:
    """A run in which no process recorded anything."""
    return Diagnosis(run=RUN, verdict=INCONCLUSIVE, kind=None, confidence=0.0, findings=(), processes=(),
                     reason="no process recorded any sample")


def rendered(d: Diagnosis) -> str:
    """The page the reporter writes."""
    out = io.StringIO()
    HtmlReporter(out).render(d)
    return out.getvalue()


class _Tables(HTMLParser):
    """Collects the text of each cell of each row, per table id'd by its enclosing section."""

    def __init__(self) -> None:
        super().__init__()
        self.section = ""
        self.rows: dict[str, list[list[str]]] = {}
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.section = dict(attrs).get("id") or ""
        elif tag == "tr":
            self.rows.setdefault(self.section, []).append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.rows[self.section][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def table(page: str, section: str) -> list[list[str]]:
    """The rows (header first) of the table in the section with this id."""
    parser = _Tables()
    parser.feed(page)
    return parser.rows[section]


def test_headline_shows_verdict_kind_confidence_reason_and_run() -> None:
    """The header carries the verdict, kind, confidence, reason and the run's facts."""
    page = rendered(leak())
    assert '<span class="badge big v-leak">leak</span>' in page
    assert "kind: <b>python-objects</b>" in page
    assert "confidence: <b>99.9%</b>" in page
    assert "1 of 2 processes leak" in page
    assert "run 7" in page and "box" in page
    assert "2023-11-14 22:13:20 UTC" in page


def test_findings_table_has_every_column_and_dashes_for_unknowns() -> None:
    """Each finding is a row and its hint; an unknown holder or location shows '—', never a guess."""
    header, held, held_hint, unexplained, unexplained_hint = table(rendered(leak()), "findings")
    assert header == ["#", "task", "type", "kind", "bytes/call", "objects/call", "holder", "location"]
    assert held == ["1", "shop.search", "shop.Order", "python-objects", "4.0 KiB", "1",
                    "shop.cache._ORDERS[...]", "shop/cache.py:42"]
    assert held_hint == ["hint Bound the shop.cache._ORDERS dict. evidence (1)shop.Order: +500 objects over the window"]
    assert unexplained == ["2", "shop.search", "builtins.list", "python-objects", "120 B", "1", "—", "—"]
    assert unexplained_hint == ["hint Something keeps lists."]


def test_growth_by_task_lists_each_task_with_bytes_and_score() -> None:
    """The growth-by-task chart has a row per task name, with calls, bytes per call and the score."""
    rows = table(rendered(leak()), "task-growth")
    assert [r[:3] + r[4:] for r in rows[1:]] == [["shop.search", "500", "4.0 KiB", "1", "12.5"],
                                                 ["shop.ping", "1,000", "-300 B", "0", "-0.4"]]
    assert 'class="bar reported" style="left: 50.0%; width: 50.0%"' in rendered(leak())


def test_plots_are_inline_svg_with_trend_and_types() -> None:
    """Each process gets memory, heap-block and fd plots; the leaking one a dashed trend and one plot per type."""
    page = rendered(leak())
    assert page.count('<svg class="plot"') == 3 + 3 + 2
    assert page.count('class="line trend-leak dashed"') == 2  # the plot and its legend key
    assert "confirmed after 210 tasks (70 calls of the leaking task)" in page
    assert ">shop.Order</span> <span class=\"key\">1,000 → 2,180 objects" in page


def test_holder_path_is_drawn_as_a_chain_of_boxes() -> None:
    """The holder path becomes root-to-leaf boxes ending at the leaking type."""
    page = rendered(leak())
    chain = page[page.index('<section id="holders">'):page.index("</section>", page.index('<section id="holders">'))]
    nodes = re.findall(r'<span class="node[^"]*">([^<]*)</span>', chain)
    assert nodes == ["shop", "cache", "_ORDERS", "[...]", "shop.Order"]


def test_holder_section_is_omitted_without_a_holder() -> None:
    """No finding with a holder, no holder section (and no placeholder)."""
    d = leak()
    page = rendered(Diagnosis(run=d.run, verdict=d.verdict, kind=d.kind, confidence=d.confidence,
                              findings=(UNEXPLAINED,), processes=d.processes, reason=d.reason))
    assert 'id="holders"' not in page
    assert "Who keeps it alive" not in page


def test_no_leak_page() -> None:
    """A no-leak run shows its verdict and reason, no findings, no trend line and no growth chart."""
    page = rendered(no_leak())
    assert '<span class="badge big v-no-leak">no-leak</span>' in page
    assert "No findings: memory is flat after warm-up" in page
    assert "trend" not in page.split("</style>")[1]
    assert 'id="task-growth"' not in page
    assert page.count('<svg class="plot"') == 6


def test_inconclusive_page_without_processes() -> None:
    """A run with no process still renders: verdict, reason, no plots, no confidence figure."""
    page = rendered(inconclusive())
    assert '<span class="badge big v-inconclusive">inconclusive</span>' in page
    assert "confidence: <b>—</b>" in page
    assert "no process recorded any sample" in page
    assert '<svg class="plot"' not in page


def test_page_is_self_contained() -> None:
    """Nothing is fetched from the network: no http(s) URL anywhere, no external script or stylesheet."""
    for d in (leak(), no_leak(), inconclusive()):
        page = rendered(d)
        assert "http://" not in page and "https://" not in page
        assert not re.search(r"<(script|img|iframe)[^>]*\bsrc=", page)
        assert "<link" not in page and "@import" not in page and "url(" not in page


def test_embedded_json_is_the_report_contract() -> None:
    """The page embeds the JSON report, parseable, so the attachment also carries the stable contract."""
    page = rendered(leak())
    raw = re.search(r'<script type="application/json" id="bilge-report">(.*?)</script>', page, re.S)
    assert raw is not None
    report = json.loads(raw.group(1))
    assert report["verdict"] == LEAK
    assert report["findings"][0]["holder"] == "shop.cache._ORDERS[...]"
    assert report["findings"][1]["holder"] is None


COST = AgentCost(
    stages=(StageCost(STAGE_CENSUS, 0.3, 0.0, 5), StageCost(STAGE_ALLOCATION_WINDOW, 0.1, 0.08, 2),
            StageCost(STAGE_HOLDER_SEARCH, 0.0125, 0.0, 1)),
    runs=(StageRun(STAGE_ALLOCATION_WINDOW, "rss grows", T0 + 65, T0 + 67, 0.04, 0.03, "done"),
          StageRun(STAGE_HOLDER_SEARCH, "<shop.Order> grows", T0 + 130, T0 + 130.5, 0.0125, 0.0, "found")),
    budget=BudgetState(t=T0 + 131, cpu_left=2.9, cpu_limit=6.0, cpu_period=600.0, slowed_left=0.42,
                       slowed_limit=1.0, slowed_period=3600.0))


def test_process_shows_bilge_own_cost_by_stage_and_its_budgeted_runs() -> None:
    """A process with stored cost gets a stage table, the budget left and its runs (time since start, reason)."""
    d = leak()
    page = rendered(replace(d, processes=(d.processes[0], replace(d.processes[1], cost=COST))))
    assert table(page, "pid-101") == [
        ["stage", "CPU s", "slowed s", "runs"],
        ["census", "0.300", "0.000", "5"],
        ["allocation-window", "0.100", "0.080", "2"],
        ["holder-search", "0.013", "0.000", "1"],
        ["started", "stage", "reason", "CPU s", "slowed s", "outcome"],
        ["1:05", "allocation-window", "rss grows", "0.040", "0.030", "done"],
        ["2:10", "holder-search", "<shop.Order> grows", "0.013", "0.000", "found"],
    ]
    assert ("Budget left: 2.900 of 6.000 s CPU per 600 s, 0.420 of 1.000 s slowed task time per 3600 s."
            in page)
    assert "&lt;shop.Order&gt; grows" in page
    assert "<h3>bilge's own cost</h3>" in page and "<h3>Budgeted runs</h3>" in page


def test_cost_section_is_omitted_without_cost() -> None:
    """A process whose store holds no cost (an older bilge) shows no cost table, budget or runs."""
    page = rendered(leak())
    assert "bilge's own cost" not in page
    assert "Budgeted runs" not in page and "Budget left" not in page
    assert 'class="cost' not in page


def test_credentials_in_the_command_are_masked() -> None:
    """A broker password on the command line appears neither in the page nor in its embedded JSON."""
    page = rendered(leak())
    assert "hunter2-secret" not in page
    assert "redis://***@cache:6379/0" in page


def test_markup_in_names_is_escaped() -> None:
    """Holder paths such as '<thread worker-3> frame locals' are text, not markup."""
    finding = Finding(task=None, type="shop.Order", kind="python-objects", bytes_per_call=None,
                      count_per_call=None, hint="h", pids=(1,), holder="<thread worker-3> frame locals")
    page = rendered(Diagnosis(run=RUN, verdict=LEAK, kind="python-objects", confidence=0.9,
                              findings=(finding,), processes=()))
    assert "&lt;thread worker-3&gt; frame locals" in page
    assert "<thread" not in page


def test_values_of_user_objects_never_appear() -> None:
    """The report renders a real diagnosis; a secret living only in a process's argv never reaches the page."""
    secret = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
    info = ProcessInfo(id=1, pid=4242, ppid=1, parent_id=None, role="celery-child", started=T0, ended=None,
                       argv="worker.py --api-key=%s" % secret)
    samples = tuple(Sample(t=T0 + i, rss=60 * MIB + 4096 * i, uss=40 * MIB + 4096 * i, pss=None,
                           heap_blocks=250_000 + 30 * i, gc_collections=None, fds=12, threads=3, tasks_done=i)
                    for i in range(200))
    tasks = tuple(TaskRecord(seq=i, name="shop.search", started=T0 + i, ended=T0 + i + 0.5,
                             rss_before=60 * MIB + 4096 * i, rss_after=60 * MIB + 4096 * (i + 1),
                             blocks_before=250_000 + 30 * i, blocks_after=250_000 + 30 * (i + 1), failed=False,
                             gc_runs=0) for i in range(200))
    censuses = tuple(Census(t=T0 + i, tasks_done=i, objects=1000 + 30 * i, duration=0.01,
                            types={"shop.Order": (10 + 30 * i, 560 * (10 + 30 * i))}) for i in range(0, 200, 20))
    run = RunData(run=RUN, processes=(ProcessData(info=info, samples=samples, tasks=tasks, censuses=censuses),))
    page = rendered(diagnose(run))
    assert "4242" in page
    assert secret not in page


def test_holder_chain_splits_on_dots_outside_brackets() -> None:
    """Dots split a holder path; subscripts are their own box; brackets keep their dots."""
    assert holder_chain("logging.Logger.manager.loggerDict[...]") == [
        "logging", "Logger", "manager", "loggerDict", "[...]"]
    assert holder_chain("<thread worker-3> frame locals") == ["<thread worker-3> frame locals"]
    assert holder_chain("AuditLog.entries[...][...]") == ["AuditLog", "entries", "[...]", "[...]"]
    assert holder_chain("<module a.b>.cache") == ["<module a.b>", "cache"]


def test_redact_command_masks_only_url_credentials() -> None:
    """user:password@ in URLs is masked; the rest of the command stays as it was."""
    masked = redact_command("celery --broker amqp://guest:pw@rabbit// worker")
    assert masked == "celery --broker amqp://***@rabbit// worker"
    assert redact_command("python worker.py -c 4") == "python worker.py -c 4"


def test_axis_ticks_are_round() -> None:
    """Value ticks fall on 1-2-2.5-5 steps covering the data; time ticks on clock steps from 0:00."""
    assert nice_ticks(57.3, 63.9) == [56.0, 58.0, 60.0, 62.0, 64.0]
    assert nice_ticks(17, 17, integer=True) == [16.0, 17.0, 18.0]
    assert time_ticks(26, count=8) == [0, 5, 10, 15, 20, 25, 30]
    assert [clock(s) for s in (0, 65, 3725)] == ["0:00", "1:05", "1:02:05"]


def test_growth_by_task_counts_what_a_call_keeps_like_the_findings() -> None:
    """RSS stalled (1 B per call) while each call kept 70 heap blocks: the bar says ~4.4 KiB, as the finding
    does, not 1 B."""
    from bilge.model import Diagnosis, RunInfo, TaskGrowth
    from bilge.report.html import growth_bars

    run = RunInfo(id=1, started=0.0, ended=1.0, command="celery worker", exit_code=0, hostname="h")
    growth = (TaskGrowth("shop.render_invoice", 500, 1.0, 70.0, 9.0), TaskGrowth("shop.geo_lookup", 500, 2.0, 0.0, 0.1))
    bars = growth_bars(Diagnosis(run=run, verdict="leak", kind=None, confidence=1.0, findings=(), processes=(),
                                 task_growth=growth))
    assert [b.bytes_per_call for b in bars] == ["4.4 KiB", "2 B"]
    assert bars[0].width == 100.0


def test_a_process_lists_its_snapshots_with_what_grew_and_who_holds_it() -> None:
    """Each snapshot a row: when, tasks, objects, seconds, the types that grew, the holder paths (or why none)."""
    from bilge.model import Snapshot

    grown = {"objects": 71243, "growing": [{"type": "list", "count": 3271, "change": 259}],
             "holders": [{"type": "dict", "path": "apps.billing._STATEMENT_ARCHIVE[...]", "root_kind": "module-global",
                          "container": "dict", "length": 322, "targets": 809}]}
    first = {"objects": 70000, "growing": [], "holders": [], "holders_note": "the first snapshot of a young process"}
    d = leak()
    child = replace(d.processes[0], snapshots=(Snapshot(1000.0, 10, 0.1, first), Snapshot(1060.0, 900, 0.17, grown)))
    page = rendered(replace(d, processes=(child,)))
    rows = [row for row in table(page, "pid-%d" % child.pid) if len(row) == 6]
    assert rows[0] == ["taken", "tasks", "objects", "seconds", "grew", "held by"]
    assert rows[1][1:] == ["10", "70,000", "0.100", "—", "the first snapshot of a young process"]
    assert rows[2][1:5] == ["900", "71,243", "0.170", "list +259"]
    assert rows[2][5].replace("\u200b", "") == "apps.billing._STATEMENT_ARCHIVE[...] (dict)"
