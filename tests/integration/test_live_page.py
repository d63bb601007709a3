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
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.brokers import producer_app, send_all, unique_queue
from support.chromium import CHROMIUM, RSS_BLUE, chromium, console_problems, count_colour, png_pixels
from support.jobs import billing_env, billing_jobs
from support.net import free_port
from support.workers import BILGE, Launcher, celery_command, worker_environment

pytestmark = pytest.mark.integration
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium: apt-get update && apt-get install -y chromium")


def fetch(url: str, authorization: str | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url)
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def tasks_now(dom: str) -> int:
    """The tasks the live processes ran, as the page's "Processes now" table shows them."""
    return sum(int(n) for n in re.findall(r'<td class="num tasks-now">(\d+)</td>', dom))


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
        shot = artifacts / name
        taken = chromium(url, artifacts / "profile", "--screenshot=%s" % shot, "--window-size=%s" % size,
                         "--hide-scrollbars", "--virtual-time-budget=3000")
        assert taken.returncode == 0 and console_problems(taken.stderr) == [], taken.stderr
        width, height, rows, bpp = png_pixels(shot)
        assert (width, height) == tuple(int(n) for n in size.split(","))
        assert count_colour(rows, bpp, RSS_BLUE) > lines, "%s: no memory chart on screen" % name
    assert worker.terminate() == 0


def test_serve_shows_a_finished_run_behind_its_token(tmp_path: Path) -> None:
    """`bilge serve` of a finished run: 401 without the token (with a Basic challenge a browser answers), the page
    with it (no live process left); SIGTERM stops it with exit 0. A missing data dir fails in one line."""
    data_dir = tmp_path / "data"
    done = subprocess.run([*BILGE, "run", "--data-dir", str(data_dir), "--", sys.executable, "-c",
                           "x = [bytearray(4096) for _ in range(2000)]"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    port = free_port()
    server = subprocess.Popen([*BILGE, "serve", "--data-dir", str(data_dir), "--http", "127.0.0.1:%d" % port],
                              env={**_env(), "BILGE_HTTP_TOKEN": "t0ken"}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                code, headers, _ = fetch("http://127.0.0.1:%d/" % port)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "bilge serve did not come up"
                time.sleep(0.2)
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")
        basic = "Basic " + base64.b64encode(b"me:t0ken").decode()
        code, _, page = fetch("http://127.0.0.1:%d/" % port, basic)
        assert code == 200 and "no live process" in page and "bilge report — run 1" in page
        assert fetch("http://127.0.0.1:%d/metrics" % port, "Bearer t0ken")[0] == 200
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0 and "serving run 1 of" in err, err
    missing = subprocess.run([*BILGE, "serve", "--data-dir", str(tmp_path / "none")], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BILGE_")}
