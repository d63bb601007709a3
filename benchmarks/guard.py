"""bilge's pytest check against pytest-memray's ``limit_leaks``, on the zoo's tasks called in-process.

For every case of the public zoo and of ``benchmarks/zoo_extra``, every one
of its three tasks becomes a test (the leaky task is a leak to catch, the
others, and every task of a benign case, are benign: a failure there is a
false alarm). Each case runs in its own pytest process per tool (one case
disables the collector at import), the task function called directly with
the zoo's own payloads and unique ids:

- **bilge**: ``@pytest.mark.no_leak(calls=N, target=call)`` under ``--bilge-no-leak``;
- **memray**: ``@pytest.mark.limit_leaks(LIMIT)`` on a test that loops the
  same call N times itself (as its docs ask), under ``--memray``, once per
  limit given (a per-stack byte threshold the user has to pick).

Per test: caught or not, false alarm or not, wall time (pytest's own, from
JUnit XML), calls bilge needed (``confirmed after``), and whether the failure
message names the truth's type, holder and line (±2).

    python benchmarks/guard.py                       # all cases, both tools
    python benchmarks/guard.py --cases dict_cache --calls 300 --memray-limits "1 KB,100 KB"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXTRA = HERE / "zoo_extra"
PUBLIC = HERE.parent.parent / "shared" / "zoo"

TEST_FILE = '''
import itertools
import random
import sys

import pytest

sys.path[:0] = [{case_dir!r}, {support_dir!r}, {zoo_dir!r}]
import app as case_app  # noqa: E402
from benchlib.payloads import make_item_id, make_payload  # noqa: E402

_RNG = random.Random(7)
_IDS = itertools.count()


def _caller(name):
    task = case_app.app.tasks[name]

    def call():
        i = next(_IDS)
        item_id = make_item_id(_RNG, i)
        task(item_id, make_payload(_RNG, item_id, i))
    return call

{tests}
'''

BILGE_TEST = '''
@pytest.mark.no_leak(calls={calls}, target=_caller({task!r}))
def test_{n}():
    pass
'''

MEMRAY_TEST = '''
_call_{n} = _caller({task!r})


@pytest.mark.limit_leaks({limit!r})
def test_{n}():
    for _ in range({calls}):
        _call_{n}()
'''


def cases() -> list[tuple[str, Path]]:
    found = [(d.name, d) for d in sorted((PUBLIC / "zoo").iterdir()) if (d / "truth.json").is_file()]
    return found + [(d.name, d) for d in sorted(EXTRA.iterdir()) if (d / "truth.json").is_file()]


def run_case(tool: str, case: str, case_dir: Path, calls: int, limit: str, scratch: Path) -> list[dict[str, object]]:
    truth = json.loads((case_dir / "truth.json").read_text())
    template = BILGE_TEST if tool == "bilge" else MEMRAY_TEST
    tests = "".join(template.format(calls=calls, task=task, n=n, limit=limit) for n, task in enumerate(truth["tasks"]))
    where = scratch / ("%s_%s_%s" % (tool, case, re.sub(r"\W", "", limit)))
    where.mkdir()
    (where / "test_case.py").write_text(TEST_FILE.format(case_dir=str(case_dir), support_dir=str(PUBLIC / "zoo"),
                                                         zoo_dir=str(PUBLIC), tests=tests))
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", str(where / "junit.xml"),
            "-o", "junit_family=xunit2", str(where / "test_case.py")]
    args += ["--bilge-no-leak", "-p", "no:memray"] if tool == "bilge" else ["--memray"]
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=where, timeout=900,
                          env=dict(os.environ, BENCH_BROKER_URL="memory://"))
    wall = time.perf_counter() - started
    sections = _failure_sections(proc.stdout)
    rows = []
    tree = ET.parse(where / "junit.xml")
    for testcase in tree.iter("testcase"):
        n = int(testcase.get("name", "test_0").split("_")[-1])
        task = truth["tasks"][n]
        failure = testcase.find("failure")
        error = testcase.find("error")
        # What the user reads: the failure and its report sections (memray
        # prints its leaked stacks there).
        message = ((failure.get("message", "") + "\n" + sections.get(testcase.get("name", ""), ""))
                   if failure is not None else "")
        leaky = bool(truth["leak"]) and task == truth["task"]
        rows.append({
            "tool": tool if tool == "bilge" else "memray %s" % limit, "case": case, "task": task, "leaky": leaky,
            "failed": failure is not None, "error": error.get("message") if error is not None else None,
            "seconds": round(float(testcase.get("time", "0")), 3),
            "calls_needed": _confirmed(message) if tool == "bilge" else None,
            "names_type": _names_type(message, truth) if leaky and failure is not None else None,
            "names_holder": _names_holder(message, truth) if leaky and failure is not None else None,
            "names_line": _names_line(message, truth) if leaky and failure is not None else None,
            "message": message.strip()[:8000],
        })
    if not rows:
        rows.append({"tool": tool, "case": case, "error": (proc.stdout + proc.stderr)[-1500:]})
    for row in rows:
        row["pytest_process_seconds"] = round(wall, 2)
    return rows


def _failure_sections(stdout: str) -> dict[str, str]:
    """Each failed test's part of pytest's FAILURES section, by test name."""
    out: dict[str, str] = {}
    name = None
    for line in stdout.splitlines():
        header = re.fullmatch(r"_{3,} (\S+) _{3,}", line)
        if header:
            name = header.group(1)
            out[name] = ""
        elif line.startswith("====="):
            name = None
        elif name:
            out[name] += line + "\n"
    return out


def _confirmed(message: str) -> int | None:
    m = re.search(r"confirmed after:\s+(\d+) calls", message)
    return int(m.group(1)) if m else None


def _without_paths(message: str) -> str:
    """The message without file paths: a case's directory name (``closure_listeners``) is not a holder named."""
    return re.sub(r"\S*/\S+", " ", message)


def _names_type(message: str, truth: dict[str, object]) -> bool | None:
    message = _without_paths(message)
    wanted = [t for t in [truth.get("type"), *truth.get("type_also", [])] if t]  # type: ignore[list-item]
    if not wanted:
        return None
    return any(re.search(r"(?<![\w.])(\w+\.)*%s\b" % re.escape(str(t)), message) for t in wanted)


def _names_holder(message: str, truth: dict[str, object]) -> bool | None:
    message = _without_paths(message)
    holders = truth.get("holder") or []
    return any(str(h) in message for h in holders) if holders else None  # type: ignore[union-attr]


def _names_line(message: str, truth: dict[str, object]) -> bool | None:
    if not truth.get("location"):
        return None
    wanted = [truth["location"], *truth.get("location_also", [])]  # type: ignore[list-item]
    for loc in wanted:
        base, line = str(loc).rsplit(":", 1)
        for m in re.finditer(r"%s:(\d+)" % re.escape(base), message):
            if abs(int(m.group(1)) - int(line)) <= 2:
                return True
    return False


def summarise(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for tool in sorted({str(r["tool"]) for r in rows}):
        mine = [r for r in rows if r["tool"] == tool and "leaky" in r]
        leaks = [r for r in mine if r["leaky"]]
        benign = [r for r in mine if not r["leaky"]]
        caught = [r for r in leaks if r["failed"]]
        out[tool] = {
            "leaks_caught": "%d/%d" % (len(caught), len(leaks)),
            "false_alarms": "%d/%d" % (sum(1 for r in benign if r["failed"]), len(benign)),
            "errors": sum(1 for r in mine if r["error"]),
            "names_type": "%d/%d" % (sum(1 for r in caught if r["names_type"]),
                                     sum(1 for r in caught if r["names_type"] is not None)),
            "names_holder": "%d/%d" % (sum(1 for r in caught if r["names_holder"]),
                                       sum(1 for r in caught if r["names_holder"] is not None)),
            "names_line": "%d/%d" % (sum(1 for r in caught if r["names_line"]),
                                     sum(1 for r in caught if r["names_line"] is not None)),
            "seconds_median": round(statistics.median(float(r["seconds"]) for r in mine), 2) if mine else None,  # type: ignore[arg-type]
            "seconds_max": max((float(r["seconds"]) for r in mine), default=None),  # type: ignore[arg-type]
            "calls_needed_max": max((int(r["calls_needed"]) for r in caught if r["calls_needed"]), default=None),  # type: ignore[call-overload]
        }
    return out


def plugin_cost(runs: int = 15) -> dict[str, object]:
    """What the plugin costs a pytest run that does not use it: its import, and a tiny session with and without it."""
    imports = []
    for _ in range(runs):
        code = "import pytest, bilge.integrations.pytest_plugin"
        out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                             check=True).stderr
        # Cumulative microseconds of the plugin module and the bilge packages it needs (pytest is loaded anyway).
        cumulative = [int(line.split("|")[1]) for line in out.splitlines()
                      if line.rstrip().endswith(("bilge.integrations.pytest_plugin", " bilge"))]
        imports.append(max(cumulative))
    scratch = Path(tempfile.mkdtemp(prefix="bilge-plugin-cost-"))
    (scratch / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    sessions: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(runs):
        for mode, extra in (("with", []), ("without", ["-p", "no:bilge"])):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra,
                            str(scratch / "test_nothing.py")], capture_output=True, check=True, cwd=scratch)
            sessions[mode].append(time.perf_counter() - started)
    return {
        "import_ms_median": round(statistics.median(imports) / 1000, 2),
        "import_ms_max": round(max(imports) / 1000, 2),
        "session_s_median_with": round(statistics.median(sessions["with"]), 3),
        "session_s_median_without": round(statistics.median(sessions["without"]), 3),
        "runs": runs,
    }


def rescore(path: Path) -> int:
    """Score the stored failure messages again (after a change of the scoring, not of the tools)."""
    data = json.loads(path.read_text())
    truths = {case: json.loads((d / "truth.json").read_text()) for case, d in cases()}
    for row in data["rows"]:
        if row.get("leaky") and row.get("failed"):
            truth, message = truths[str(row["case"])], str(row["message"])
            row["names_type"] = _names_type(message, truth)
            row["names_holder"] = _names_holder(message, truth)
    data["summary"] = summarise(data["rows"])
    path.write_text(json.dumps(data, indent=2))
    print(json.dumps(data["summary"], indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--tools", default="bilge,memray")
    parser.add_argument("--memray-limits", default="1 KB,100 KB", help="limit_leaks thresholds, comma-separated")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "results" / "guard.json")
    parser.add_argument("--rescore", action="store_true", help="score the messages stored in --output again")
    args = parser.parse_args()
    if args.rescore:
        return rescore(args.output)
    wanted = set(args.cases.split(",")) if args.cases else None
    scratch = Path(tempfile.mkdtemp(prefix="bilge-guard-bench-"))
    rows: list[dict[str, object]] = []
    for case, case_dir in cases():
        if wanted and case not in wanted:
            continue
        for tool in args.tools.split(","):
            for limit in (args.memray_limits.split(",") if tool == "memray" else [""]):
                got = run_case(tool, case, case_dir, args.calls, limit.strip(), scratch)
                rows += got
                for r in got:
                    print("%-14s %-20s %-42s %-6s %-6s %6.2fs %s" % (
                        r["tool"], case, r.get("task"), "LEAK" if r.get("leaky") else "benign",
                        "FAIL" if r.get("failed") else ("ERROR" if r.get("error") else "pass"),
                        float(r.get("seconds", 0.0)), r.get("calls_needed") or ""), flush=True)  # type: ignore[arg-type]
    summary = summarise(rows)
    print(json.dumps(summary, indent=2))
    inert = plugin_cost()
    print("plugin when unused: %s" % json.dumps(inert))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"calls": args.calls, "python": sys.version.split()[0], "summary": summary,
                                       "plugin_unused": inert, "rows": rows}, indent=2))
    print("results: %s (scratch %s)" % (args.output, scratch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
