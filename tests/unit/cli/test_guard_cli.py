"""``bilge guard`` in a subprocess, eager mode: exit codes, one-line errors, the verdict in text and JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

APP = textwrap.dedent('''
    from celery import Celery

    app = Celery("shop", broker="memory://")
    app.conf.task_ignore_result = True
    _RECEIPTS = {}


    @app.task(name="shop.issue_receipt")
    def issue_receipt(order_id, lines):
        _RECEIPTS[order_id] = {"order": order_id, "lines": [{"n": n, "sku": "SKU-%d" % n} for n in range(lines)]}
        return len(_RECEIPTS)


    @app.task(name="shop.total")
    def total(amounts):
        return sum(amounts)


    @app.task(name="shop.broken")
    def broken():
        raise ValueError("no such order")
''')


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    (tmp_path / "shop.py").write_text(APP)
    with (tmp_path / "calls.jsonl").open("w") as f:
        for i in range(1200):
            f.write(json.dumps({"args": ["order-%d" % i], "kwargs": {"lines": 8}}) + "\n")
    return tmp_path


def guard(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bilge", "guard", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_a_leaking_task_exits_1_with_the_finding(shop: Path) -> None:
    done = guard(shop, "-A", "shop", "--task", "shop.issue_receipt", "--args-file", "calls.jsonl", "--calls", "200",
                 "--format", "json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["mode"] == "eager" and report["verdict"] == "leak"
    finding = report["report"]["findings"][0]
    assert finding["task"] == "shop.issue_receipt"
    assert finding["holder"] == "shop._RECEIPTS[...]"
    assert finding["location"].endswith("shop.py:11")


def test_a_benign_task_exits_0(shop: Path) -> None:
    done = guard(shop, "-A", "shop", "--task", "shop.total", "--args-json", "[[1, 2, 3]]", "--calls", "100")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("shop.total: no-leak after 100 calls")


@pytest.mark.parametrize("args, message", [
    (["-A", "nosuchmodule", "--task", "x"], "bilge: error: cannot load the Celery app 'nosuchmodule'"),
    (["-A", "shop", "--task", "shop.nope"], "bilge: error: the app has no task 'shop.nope'; its tasks: shop.broken,"),
    (["-A", "shop", "--task", "shop.total", "--args-json", "[1,"], "bilge: error: --args-json is not valid JSON"),
    (["-A", "shop", "--task", "shop.total", "--args-json", "{}"], "bilge: error: --args-json must be a JSON array"),
    (["-A", "shop", "--task", "shop.broken"], "bilge: error: the task raised ValueError: no such order"),
])
def test_bad_input_is_one_line_and_exit_2(shop: Path, args: list[str], message: str) -> None:
    done = guard(shop, *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
