"""``bilge systemd`` prints units that systemd itself accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bilge.cli.systemd import systemd

CELERY = str(Path(sys.executable).with_name("celery"))


def units(*args: str) -> dict[str, str]:
    result = CliRunner().invoke(systemd, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    parts = re.split(r"^# --- /etc/systemd/system/(\S+) ---\n", result.output, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_units_carry_limits_recycling_health_and_warm_shutdown(tmp_path: Path) -> None:
    out = units("--name", "shop-worker", "--workdir", str(tmp_path), "--user", "celery", "--memory-high", "1536M",
                "--memory-max", "2G", "--", CELERY, "-A", "shop", "worker", "-c", "4")
    assert set(out) == {"shop-worker.service", "shop-worker-health.service", "shop-worker-health.timer"}
    service = out["shop-worker.service"]
    assert "MemoryHigh=%d" % (1536 << 20) in service and "MemoryMax=%d" % (2 << 30) in service
    # Each of the 4 children and the main process get a fifth of MemoryHigh before bilge recycles a leaking child.
    assert "--recycle --recycle-hard-limit %d --http 127.0.0.1:9808 -- %s -A shop worker -c 4" % (
        (1536 << 20) // 5, CELERY) in service
    assert "KillSignal=SIGTERM" in service and "Restart=always" in service and "User=celery" in service
    assert "check --data-dir /var/lib/bilge/shop-worker --degraded-ok" in out["shop-worker-health.service"]
    assert "systemctl restart --no-block shop-worker.service" in out["shop-worker-health.service"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    for name, body in units("--name", "shop-worker", "--workdir", str(tmp_path), "--memory-high", "1G",
                            "--memory-max", "2G", "--", CELERY, "-A", "shop", "worker").items():
        (tmp_path / name).write_text(body)
    done = subprocess.run(["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.glob("shop-worker*"))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_bad_limits_and_names_are_usage_errors() -> None:
    result = CliRunner().invoke(systemd, ["--name", "w", "--memory-high", "3G", "--memory-max", "2G", "--", "x"])
    assert result.exit_code == 2 and "--memory-high must not exceed --memory-max" in result.output
    result = CliRunner().invoke(systemd, ["--name", "a b", "--memory-high", "1G", "--memory-max", "2G", "--", "x"])
    assert result.exit_code == 2 and "unit name" in result.output
