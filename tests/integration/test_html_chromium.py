"""The HTML report of a real demo run, opened in a real headless Chromium.

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install -y chromium``);
the tests skip, saying so, when it is absent. The screenshot is kept in
``test-artifacts/html/report.png`` at the repository root (git-ignored).
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.chromium import CHROMIUM, RSS_BLUE, chromium, console_problems, count_colour, png_pixels

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "html"
DEMO_TASKS = 1500

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="needs Chromium at /usr/bin/chromium: apt-get update && apt-get install -y chromium"),
]


def bilge(*args: str, timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run the bilge CLI of this checkout in a subprocess."""
    return subprocess.run([sys.executable, "-m", "bilge", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The HTML report of a fresh ``bilge demo`` run, written by ``bilge report --format html -o``."""
    workdir = tmp_path_factory.mktemp("html-demo")
    demo = bilge("demo", "--tasks", str(DEMO_TASKS), "--workdir", str(workdir), timeout=600)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    page = workdir / "report.html"
    written = bilge("report", "--data-dir", str(workdir / "data"), "--format", "html", "-o", str(page))
    assert written.returncode == 0, written.stderr
    assert written.stdout == ""
    yield page


def test_report_is_one_self_contained_file(report: Path) -> None:
    """The page references nothing outside itself and stays small (inline SVG, no chart library)."""
    page = report.read_text(encoding="utf-8")
    assert not re.search(r"""\b(src|href)\s*=\s*["']?\s*(https?:|//)""", page)
    assert "<link" not in page and "@import" not in page
    assert 10_000 < report.stat().st_size < 1_000_000
    assert page.count('<svg class="plot"') >= 3


def test_chromium_renders_the_plots(report: Path, tmp_path: Path) -> None:
    """Headless Chromium screenshots a non-trivial page with the plots drawn, and the console stays silent."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    screenshot.unlink(missing_ok=True)
    result = chromium(report, tmp_path / "profile", "--screenshot=%s" % screenshot, "--window-size=1280,2400")
    assert result.returncode == 0, result.stderr
    assert console_problems(result.stderr) == []
    assert screenshot.stat().st_size > 50_000
    width, height, rows, bpp = png_pixels(screenshot)
    assert (width, height) == (1280, 2400)
    # The RSS line is drawn in this exact blue; hundreds of its pixels mean the plots are on screen.
    assert count_colour(rows, bpp, RSS_BLUE) > 500


def test_chromium_dom_holds_the_plots(report: Path, tmp_path: Path) -> None:
    """The DOM Chromium builds has every plot as SVG, with drawn lines, and the embedded JSON report."""
    result = chromium(report, tmp_path / "profile", "--dump-dom")
    assert result.returncode == 0, result.stderr
    assert console_problems(result.stderr) == []
    dom = result.stdout
    plots = dom.count('<svg class="plot"')
    assert plots >= 3
    lines = re.findall(r'<polyline class="line [^"]*" points="([^"]*)"', dom)
    assert len(lines) >= plots and all(len(points.split()) >= 2 for points in lines)
    assert '<script type="application/json" id="bilge-report">' in dom


def test_console_check_catches_a_broken_page(tmp_path: Path) -> None:
    """The console check is not vacuous: a page that throws is caught."""
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>", encoding="utf-8")
    result = chromium(page, tmp_path / "profile", "--dump-dom")
    assert any("Uncaught" in line for line in console_problems(result.stderr))


def test_html_goes_to_redirected_stdout(report: Path) -> None:
    """Without -o the page is written to standard output when it is not a terminal."""
    result = bilge("report", "--data-dir", str(report.parent / "data"), "--format", "html")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<!DOCTYPE html>")


def test_html_is_not_written_to_a_terminal(report: Path) -> None:
    """Without -o, on a terminal, the command refuses with a usage error and writes nothing."""
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "bilge", "report", "--data-dir", str(report.parent / "data"),
                                 "--format", "html"], stdout=terminal, stderr=subprocess.PIPE, text=True,
                                timeout=60, check=False)
        os.set_blocking(controller, False)
        try:
            written = os.read(controller, 65536)
        except (BlockingIOError, OSError):
            written = b""
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 2
    assert "not written to a terminal: give -o report.html" in result.stderr
    assert b"<html" not in written
