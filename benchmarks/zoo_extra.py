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

Run it with the project's interpreter (``.venv/bin/python``): the harness
starts workers with it, and ``bilge`` must be on PATH (the venv's bin is put
first). Results go to ``$ZOO_RESULTS_DIR`` (default: a ``bilge-zoo-extra``
directory in the system temp dir).
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()

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


if __name__ == "__main__":
    sys.exit(main())
