"""Score bilge on our own harder leak cases with the public zoo's harness.

The public zoo (``../shared/zoo``) is a floor: bilge is judged on more cases
than it holds (loggers, closures, tracebacks, ORM identity maps, cycles with
gc disabled …). ``benchmarks/zoo_extra/`` holds such cases in the zoo's own
format; this script copies the harness to a scratch directory, adds those
cases next to the public ones, and runs the harness's ``run_all.py`` there, so
the scoring is exactly the public one.

    python benchmarks/zoo_extra.py                                   # extra cases, bilge mode
    python benchmarks/zoo_extra.py --cases per_job_logger --tasks 1500
    python benchmarks/zoo_extra.py --with-public --modes bilge,plain  # all cases
    python benchmarks/zoo_extra.py --with-public --repeat 5           # flake rate per cell
    python benchmarks/zoo_extra.py --rescore /tmp/bilge-zoo-extra     # this interpreter's analysis, kept runs

Run it with the project's interpreter (``.venv/bin/python``): the harness
starts workers with it, and ``bilge`` must be on PATH (the venv's bin is put
first). Results go to ``$ZOO_RESULTS_DIR`` (default: a ``bilge-zoo-extra``
directory in the system temp dir).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXTRA = HERE / "zoo_extra"
PUBLIC = HERE.parent.parent / "shared" / "zoo"


def extra_cases() -> list[str]:
    return sorted(d.name for d in EXTRA.iterdir() if (d / "truth.json").is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=PUBLIC, help="the public zoo (harness and cases)")
    parser.add_argument("--cases", help="comma-separated case names (default: every extra case)")
    parser.add_argument("--with-public", action="store_true", help="also run the public cases")
    parser.add_argument("--modes", default="bilge")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every case this many times; writes flakes.md/flakes.json (cells that differ)")
    parser.add_argument("--rescore", type=Path, metavar="DIR",
                        help="re-diagnose the runs kept under DIR (a results folder or a --repeat root) with "
                             "this checkout's analysis and score them again; the agent's data stay as recorded")
    args = parser.parse_args()
    if args.rescore:
        return rescore(args.rescore, args.zoo)
    if args.repeat > 1:
        return repeat(args)

    if not (args.zoo / "run_all.py").is_file():
        print("zoo_extra: no zoo harness at %s (pass --zoo)" % args.zoo, file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="bilge-zoo-extra-"))
    try:
        harness = scratch / "zoo"
        shutil.copytree(args.zoo, harness, ignore=shutil.ignore_patterns("__pycache__", "results"))
        if not args.with_public:
            for case in (harness / "zoo").iterdir():
                if (case / "truth.json").is_file():
                    shutil.rmtree(case)
        for case in extra_cases():
            shutil.copytree(EXTRA / case, harness / "zoo" / case)
        cases = args.cases or ",".join(sorted(d.name for d in (harness / "zoo").iterdir()
                                              if (d / "truth.json").is_file()))
        env = dict(os.environ)
        env["PATH"] = "%s%s%s" % (Path(sys.executable).parent, os.pathsep, env.get("PATH", ""))
        env.setdefault("ZOO_RESULTS_DIR", os.path.join(tempfile.gettempdir(), "bilge-zoo-extra"))
        argv = [sys.executable, str(harness / "run_all.py"), "--modes", args.modes, "--cases", cases,
                "--tasks", str(args.tasks)]
        return subprocess.run(argv, env=env).returncode
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def repeat(args: argparse.Namespace) -> int:
    """Run the whole selection ``--repeat`` times, each into its own results folder, and tabulate the flakes."""
    root = Path(os.environ.get("ZOO_RESULTS_DIR", os.path.join(tempfile.gettempdir(), "bilge-zoo-extra")))
    argv = [sys.executable, __file__, "--zoo", str(args.zoo), "--modes", args.modes, "--tasks", str(args.tasks)]
    argv += (["--cases", args.cases] if args.cases else []) + (["--with-public"] if args.with_public else [])
    for n in range(1, args.repeat + 1):
        subprocess.run(argv, env=dict(os.environ, ZOO_RESULTS_DIR=str(root / ("repeat-%d" % n))))
    runs = [json.loads((root / ("repeat-%d" % n) / "summary.json").read_text())
            for n in range(1, args.repeat + 1) if (root / ("repeat-%d" % n) / "summary.json").is_file()]
    _write_flakes(root, runs)
    return 0


def _write_flakes(root: Path, runs: list[object], name: str = "flakes") -> None:
    """The flake table of these runs, as ``<name>.json`` and ``<name>.md`` under root (and printed)."""
    table = flakes(runs)
    (root / (name + ".json")).write_text(json.dumps(table, indent=2))
    lines = ["| case | mode | cell | right in | flake rate |", "|---|---|---|---|---|"]
    lines += ["| %s | %s | %s | %d of %d | %.0f %% |" % (r["case"], r["mode"], r["cell"], r["right"], r["runs"],
                                                      100 * r["flake_rate"])
              for r in table["cells"] if r["right"] < r["runs"]]
    lines.append("")
    lines.append("%d runs; %d scored cells; %d always right; %d wrong in every run; %d flaky." % (
        len(runs), table["scored"], table["always_right"], table["always_wrong"], table["flaky"]))
    (root / (name + ".md")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def rescore(root: Path, zoo: Path) -> int:
    """Score the kept bilge runs under root again, with the analysis of this interpreter's ``bilge`` (as the
    harness runs ``bilge`` from this interpreter's bin directory).

    An analysis change is judged on the very data the agent recorded in
    earlier runs (every repeat of every case), without re-running workers:
    the harness's own scoring, the case's truth. Writes ``rescored.json``
    (and ``rescored-flakes.*`` for several runs) under root.
    """
    sys.path.insert(0, str(zoo))
    from benchlib import scoring  # the harness's scoring, unchanged

    folders = sorted(p.parent for p in root.glob("**/summary.json"))
    if not folders:
        print("zoo_extra: no results folder (summary.json) under %s" % root, file=sys.stderr)
        return 2
    runs = []
    for folder in folders:
        rows = []
        for data in sorted(folder.glob("artifacts/*.bilge/bilge-data")):
            case = data.parent.name[:-len(".bilge")]
            case_dir = EXTRA / case if (EXTRA / case).is_dir() else zoo / "zoo" / case
            truth = json.loads((case_dir / "truth.json").read_text())
            argv = [sys.executable, "-m", "bilge", "report", "--data-dir", str(data), "--format", "json"]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            try:
                report = json.loads(proc.stdout)
                # The run's case folder was a scratch copy, gone now: a location
                # in it counts as in the case's folder, as it did for the run.
                where = str(((report.get("findings") or [{}])[0]).get("location") or "")
                origin = Path(where).parent if where.startswith("/") and Path(where).parent.name == case else case_dir
                score = scoring.score_bilge(truth, str(origin), report)
            except ValueError:
                print("zoo_extra: %s: bilge report failed: %s" % (data, proc.stderr[-500:]), file=sys.stderr)
                score = {}
            rows.append({"case": case, "mode": "bilge", "score": score})
            wrong = [c for c in CELLS if isinstance(score.get(c), dict) and score[c].get("correct") is False]
            print("%s %s: %s" % (folder.name, case, "wrong " + ", ".join(
                "%s=%s" % (c, score[c].get("predicted")) for c in wrong) if wrong else "right"))
        runs.append({"folder": str(folder), "rows": rows})
    (root / "rescored.json").write_text(json.dumps(runs, indent=1))
    if len(runs) > 1:
        _write_flakes(root, runs, "rescored-flakes")
    return 0


CELLS = ("verdict", "kind", "task", "type", "holder", "location")


def flakes(runs: list[object]) -> dict[str, object]:
    """Per (case, mode, cell): in how many runs it was right; flaky cells are right in some runs only."""
    seen: dict[tuple[str, str, str], list[bool]] = {}
    for summary in runs:
        for row in _rows(summary):
            for cell in CELLS:
                score = (row.get("score") or {}).get(cell)
                correct = score.get("correct") if isinstance(score, dict) else score
                if correct is not None:
                    seen.setdefault((row["case"], row["mode"], cell), []).append(bool(correct))
    cells = [{"case": c, "mode": m, "cell": cell, "runs": len(v), "right": sum(v),
              "flake_rate": min(sum(v), len(v) - sum(v)) / len(v)} for (c, m, cell), v in sorted(seen.items())]
    return {"cells": cells, "scored": len(cells),
            "always_right": sum(1 for r in cells if r["right"] == r["runs"]),
            "always_wrong": sum(1 for r in cells if r["right"] == 0),
            "flaky": sum(1 for r in cells if 0 < r["right"] < r["runs"])}


def _rows(summary: object) -> list[dict[str, object]]:
    """The per-run rows of a harness summary.json (a list, or a dict holding one)."""
    if isinstance(summary, list):
        return [r for r in summary if isinstance(r, dict) and "case" in r]
    if isinstance(summary, dict):
        for value in summary.values():
            if isinstance(value, list) and value and isinstance(value[0], dict) and "case" in value[0]:
                return value
    return []


if __name__ == "__main__":
    sys.exit(main())
