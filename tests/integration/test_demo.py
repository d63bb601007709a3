"""``bilge demo`` end to end, as a user runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support.workers import BILGE

pytestmark = pytest.mark.integration


def test_demo_finds_the_invoice_leak(artifacts: Path, tmp_path: Path) -> None:
    """``bilge demo --tasks 1500`` exits 0 and its report says LEAK in shop.render_invoice."""
    done = subprocess.run([*BILGE, "demo", "--tasks", "1500", "--workdir", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    (artifacts / "demo-output.txt").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    worker_log = tmp_path / "demo" / "worker.log"
    if worker_log.exists():
        (artifacts / "worker.log").write_bytes(worker_log.read_bytes())

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "LEAK" in done.stdout
    assert "shop.render_invoice" in done.stdout
    assert "Traceback" not in done.stderr
