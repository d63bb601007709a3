"""The live page of a running worker (`bilge run --http`) and of a finished run (`bilge serve`).

The page is loaded in Debian's headless Chromium (``apt-get install -y
chromium``; .ci/run installs it, and the test skips, saying so, without
it). Screenshots at desktop and phone widths are kept in the test's
artifacts folder.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.brokers import producer_app, send_all, unique_queue
from support.chromium import CHROMIUM, RSS_BLUE, chromium, console_problems, count_colour, png_pixels
from support.jobs import billing_env, billing_jobs
from support.net import BilgeServer, fetch, free_port
from support.workers import BILGE, Launcher, celery_command, worker_environment

pytestmark = pytest.mark.integration
# The verdict badges' colours (leak, no-leak, inconclusive), as the pages' stylesheet has them.
VERDICT_COLOURS = ((0xC6, 0x28, 0x28), (0x2E, 0x7D, 0x32), (0xA1, 0x5C, 0x00))
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium: apt-get update && apt-get install -y chromium")


def screenshot(url: str, artifacts: Path, name: str, size: str) -> tuple[list[bytes], int]:
    """The page at ``url`` in a ``size`` ("width,height") window, kept as ``name`` in the artifacts: its pixel
    rows and bytes per pixel, once Chromium took it without a console problem at exactly that size."""
    shot = artifacts / name
    taken = chromium(url, artifacts / "profile", "--screenshot=%s" % shot, "--window-size=%s" % size,
                     "--hide-scrollbars", "--virtual-time-budget=3000")
    assert taken.returncode == 0 and console_problems(taken.stderr) == [], taken.stderr
    width, height, rows, bpp = png_pixels(shot)
    assert (width, height) == tuple(int(n) for n in size.split(","))
    return rows, bpp


def tasks_now(dom: str) -> int:
    """The tasks the live processes ran, as the page's "Processes now" table shows them."""
    return sum(int(n.replace(",", "")) for n in re.findall(r'<td class="num tasks-now">([\d,]+)</td>', dom))


@needs_chromium
def test_live_page_refreshes_itself_while_the_worker_runs(launcher: Launcher, redis_db: Any,
                                                          artifacts: Path) -> None:
    """A leaking 2-child prefork worker under bilge run --http: its page (served with a strict CSP, nothing
    external) swaps in fresh content without a reload, shows more tasks on a later look while the worker works,
    renders the processes' charts at 1280 px and at a phone's 390 px, and the console stays silent."""
    port = free_port()
    url = "http://127.0.0.1:%d/" % port
    queue = unique_queue("live")
    env = worker_environment(billing_env(redis_db.url, redis_db.url, queue))
    worker = launcher.start(celery_command("apps.billing", "prefork", 2, name="live-" + queue, queue=queue), env,
                            "worker", artifacts / "data", bilge_args=["--http", "127.0.0.1:%d" % port])
    producer = producer_app(redis_db.url, queue)
    send_all(producer, billing_jobs(3000, seed=3), queue)

    def page_has_tasks() -> bool:
        try:
            code, _, body = fetch(url)
        except OSError:
            return False
        return code == 200 and tasks_now(body) > 500 and body.count('<svg class="plot"') >= 3

    worker.wait_for(page_has_tasks, 120, "the live page to show the worker's tasks and charts", interval=1)
    code, headers, page = fetch(url)
    assert "script-src 'self'" in headers["Content-Security-Policy"] and "default-src 'none'" in headers[
        "Content-Security-Policy"]
    assert not re.search(r"""\b(src|href)\s*=\s*["']?\s*(https?:|//)""", page), "the page references the network"
    assert '<script src="/live.js"></script>' in page

    first = chromium(url, artifacts / "profile", "--dump-dom", "--virtual-time-budget=12000")
    assert first.returncode == 0, first.stderr
    assert console_problems(first.stderr) == []
    refreshes = re.search(r'<body data-refresh="5" data-refreshes="(\d+)"', first.stdout)
    assert refreshes and int(refreshes.group(1)) >= 1, "the page never swapped in a refresh:\n" + first.stdout[:800]
    assert first.stdout.count('<svg class="plot"') >= 3

    send_all(producer, billing_jobs(3000, seed=4), queue)
    time.sleep(8)  # the store is re-read at most every 5 s
    second = chromium(url, artifacts / "profile", "--dump-dom", "--virtual-time-budget=6000")
    assert second.returncode == 0 and console_problems(second.stderr) == []
    assert tasks_now(second.stdout) > tasks_now(first.stdout), "the page did not follow the worker"

    # At a phone's width the charts scale down to a third, and their 2-px lines mostly blend into the background.
    for name, size, lines in (("live-1280.png", "1280,1800", 100), ("live-phone.png", "390,6000", 40)):
        rows, bpp = screenshot(url, artifacts, name, size)
        assert count_colour(rows, bpp, RSS_BLUE) > lines, "%s: no memory chart on screen" % name

    # The fleet page over this node and one that is down: it lists both, follows the worker without a reload
    # and fits a phone.
    fleet_port = free_port()
    fleet_url = "http://127.0.0.1:%d/" % fleet_port
    down = "127.0.0.1:%d" % free_port()
    with BilgeServer(["fleet", "127.0.0.1:%d" % port, down, "--http", "127.0.0.1:%d" % fleet_port], fleet_url,
                     env=worker_environment({})) as fleet:
        code, headers, page = fetch(fleet_url)
        assert code == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
        assert '<a href="%s">' % url in page and "unreachable: " in page
        before = chromium(fleet_url, artifacts / "profile", "--dump-dom", "--virtual-time-budget=6000")
        assert before.returncode == 0 and console_problems(before.stderr) == [], before.stderr
        assert re.search(r'<body data-refresh="5" data-refreshes="[1-9]', before.stdout), before.stdout[:800]
        assert re.search(r'<b id="answered">1 of 2</b>', before.stdout)
        send_all(producer, billing_jobs(2000, seed=5), queue)
        time.sleep(8)
        after = chromium(fleet_url, artifacts / "profile", "--dump-dom", "--virtual-time-budget=6000")
        assert after.returncode == 0 and tasks_now(after.stdout) > tasks_now(before.stdout), "the fleet page is stale"
        for name, size in (("fleet-1280.png", "1280,1000"), ("fleet-phone.png", "390,2400")):
            rows, bpp = screenshot(fleet_url, artifacts, name, size)
            badges = sum(count_colour(rows, bpp, colour) for colour in VERDICT_COLOURS)
            assert badges > 200, "%s: no verdict badge on screen" % name
    assert fleet.returncode == 0, fleet.stderr
    assert worker.terminate() == 0


def test_serve_shows_a_finished_run_behind_its_token(tmp_path: Path) -> None:
    """`bilge serve` of a finished run: 401 without the token (with a Basic challenge a browser answers), the page
    with it (no live process left); SIGTERM stops it with exit 0. A missing data dir fails in one line."""
    data_dir = tmp_path / "data"
    done = subprocess.run([*BILGE, "run", "--data-dir", str(data_dir), "--", sys.executable, "-c",
                           "x = [bytearray(4096) for _ in range(2000)]"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    port = free_port()
    url = "http://127.0.0.1:%d/" % port
    with BilgeServer(["serve", "--data-dir", str(data_dir), "--http", "127.0.0.1:%d" % port], url,
                     env={**_env(), "BILGE_HTTP_TOKEN": "t0ken"}) as server:
        code, headers, _ = fetch(url)
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")
        basic = "Basic " + base64.b64encode(b"me:t0ken").decode()
        code, _, page = fetch(url, basic)
        assert code == 200 and "no live process" in page and "bilge report — run 1" in page
        assert fetch(url + "metrics", "Bearer t0ken")[0] == 200
    assert server.returncode == 0 and "serving run 1 of" in server.stderr, server.stderr
    missing = subprocess.run([*BILGE, "serve", "--data-dir", str(tmp_path / "none")], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BILGE_")}
