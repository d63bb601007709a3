"""The ``bilge`` command line run in a subprocess: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bilge.model import INCONCLUSIVE, LEAK, NO_LEAK


def bilge(*args: str, timeout: float = 60, extra_env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bilge ARGS`` with bilge's own variables cleared from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILGE_")}
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "bilge", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding one finished run of a Python command that did nothing."""
    data_dir = tmp_path_factory.mktemp("short") / "d"
    done = bilge("run", "--data-dir", str(data_dir), "--", sys.executable, "-c", "pass")
    assert done.returncode == 0, done.stderr
    return data_dir


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int, prefix: str) -> None:
    """Exit ``code``, nothing on stdout, and exactly one stderr line starting with ``prefix``."""
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(prefix), done.stderr


def test_version() -> None:
    """--version prints the version and exits 0."""
    from bilge import __version__

    done = bilge("--version")
    assert done.returncode == 0
    assert done.stdout == "bilge, version %s\n" % __version__


def test_unknown_subcommand_fails_without_traceback() -> None:
    """An unknown subcommand is a usage error: exit 2 and click's message, no traceback."""
    done = bilge("frobnicate")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "No such command 'frobnicate'" in done.stderr


def test_run_of_a_missing_command_exits_127(tmp_path: Path) -> None:
    """bilge run -- no-such-command-xyz: exit 127, one line "command not found", and no data dir created."""
    data_dir = tmp_path / "d"
    done = bilge("run", "--data-dir", str(data_dir), "--", "no-such-command-xyz")
    assert_one_line_error(done, 127, "bilge: error: command not found")
    assert done.stderr == "bilge: error: command not found: no-such-command-xyz (check the name and your PATH)\n"
    assert not data_dir.exists()


def test_run_without_a_command_exits_127(tmp_path: Path) -> None:
    """bilge run with nothing to run says how to call it."""
    done = bilge("run", "--data-dir", str(tmp_path / "d"))
    assert_one_line_error(done, 127, "bilge: error: no command given; usage: bilge run --data-dir DIR -- COMMAND")


def test_run_with_a_file_as_data_dir_exits_2(tmp_path: Path) -> None:
    """A data dir that is a file is refused before the command starts: exit 2, one line."""
    target = tmp_path / "file"
    target.write_text("x")
    done = bilge("run", "--data-dir", str(target), "--", sys.executable, "-c", "print('ran')")
    assert_one_line_error(done, 2, "bilge: error: data dir %s is a file" % target)


def test_report_on_an_empty_directory(tmp_path: Path) -> None:
    """bilge report on a directory with no store: exit 2 and a message naming the missing database."""
    done = bilge("report", "--data-dir", str(tmp_path))
    assert_one_line_error(done, 2, "bilge: error: no bilge store in %s" % tmp_path)


def test_report_on_a_corrupt_store(tmp_path: Path) -> None:
    """bilge report on random bytes named bilge.db: exit 3, one line saying it is damaged or not a store."""
    rng = np.random.default_rng(3)
    (tmp_path / "bilge.db").write_bytes(rng.integers(0, 256, size=8192, dtype=np.uint8).tobytes())
    done = bilge("report", "--data-dir", str(tmp_path))
    assert_one_line_error(done, 3, "bilge: error: reading store %s failed: " % (tmp_path / "bilge.db"))
    assert "or not a bilge store: keep it for inspection" in done.stderr


def test_report_on_an_empty_store_file(tmp_path: Path) -> None:
    """bilge report on a zero-byte bilge.db: exit 4 (empty store), one line."""
    (tmp_path / "bilge.db").write_bytes(b"")
    done = bilge("report", "--data-dir", str(tmp_path), "--format", "json")
    assert_one_line_error(done, 4, "bilge: error: store %s is empty" % (tmp_path / "bilge.db"))


def test_run_passes_the_exit_code_through(tmp_path: Path) -> None:
    """The command's exit code 7 is bilge run's exit code, and the run records it."""
    data_dir = tmp_path / "d"
    done = bilge("run", "--data-dir", str(data_dir), "--", sys.executable, "-c", "import sys; sys.exit(7)")
    assert done.returncode == 7, done.stderr
    assert "Traceback" not in done.stderr
    report = bilge("report", "--data-dir", str(data_dir), "--format", "json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["run"]["exit_code"] == 7


def test_run_reports_death_by_signal_as_128_plus_n(tmp_path: Path) -> None:
    """A command killed by SIGTERM makes bilge run exit 128 + 15."""
    done = bilge("run", "--data-dir", str(tmp_path / "d"), "--", sys.executable, "-c",
                 "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert done.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in done.stderr


LEAKY = textwrap.dedent("""
    import os, time
    print(os.getpid(), flush=True)
    hoard = []
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        hoard.append(b"x" * (256 * 1024))
        time.sleep(0.02)
""")


def test_run_then_json_report_of_a_growing_script(tmp_path: Path) -> None:
    """A plain script growing a list for a few seconds under bilge run gives a valid JSON report listing it."""
    script = tmp_path / "leaky.py"
    script.write_text(LEAKY)
    data_dir = tmp_path / "d"
    done = bilge("run", "--data-dir", str(data_dir), "--", sys.executable, str(script),
                 extra_env={"BILGE_SAMPLE_INTERVAL": "0.05"})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    pid = int(done.stdout.split()[0])
    report = bilge("report", "--data-dir", str(data_dir), "--format", "json")
    assert report.returncode == 0, report.stderr
    parsed = json.loads(report.stdout)
    assert parsed["verdict"] in (LEAK, NO_LEAK, INCONCLUSIVE)
    assert parsed["schema_version"] == 1
    assert parsed["run"]["exit_code"] == 0
    (process,) = [p for p in parsed["processes"] if p["pid"] == pid]
    assert process["role"] == "main"
    assert process["verdict"] in (LEAK, NO_LEAK, INCONCLUSIVE)
    assert process["rss_end"] - process["rss_start"] > 20 * 2**20  # it held ~30 MiB by the end
    text = bilge("report", "--data-dir", str(data_dir))
    assert text.returncode == 0, text.stderr
    assert "Verdict: " + parsed["verdict"].upper() in text.stdout


def test_report_to_an_unwritable_output_is_one_line(tmp_path: Path, short_run: Path) -> None:
    """-o into a missing directory fails with one line and exit 2, after a successful diagnosis."""
    done = bilge("report", "--data-dir", str(short_run), "-o", str(tmp_path / "missing" / "r.json"))
    assert_one_line_error(done, 2, "bilge: error: cannot write the report to ")


def test_fail_on_leak_exits_zero_without_a_leak(short_run: Path) -> None:
    """--fail-on-leak exits 0 when the verdict is not a leak (a run too short to judge)."""
    done = bilge("report", "--data-dir", str(short_run), "--fail-on-leak", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] != LEAK


def test_run_into_a_corrupt_store_does_not_start_the_command(tmp_path: Path) -> None:
    """bilge run into a data dir whose bilge.db is garbage: exit 3, one line, and the command never runs."""
    (tmp_path / "bilge.db").write_bytes(b"\x00garbage" * 1024)
    marker = tmp_path / "ran"
    done = bilge("run", "--data-dir", str(tmp_path), "--", sys.executable, "-c",
                 "import pathlib; pathlib.Path(%r).write_text('x')" % str(marker))
    assert_one_line_error(done, 3, "bilge: error: creating store %s failed: " % (tmp_path / "bilge.db"))
    assert not marker.exists()


def test_report_of_an_unknown_run_id(short_run: Path) -> None:
    """bilge report --run 99 on a store holding only run 1: exit 4, one line naming run 99."""
    done = bilge("report", "--data-dir", str(short_run), "--run", "99")
    assert_one_line_error(done, 4, "bilge: error: store %s holds no record of run 99;" % (short_run / "bilge.db"))


def test_run_with_a_health_port_in_use_fails_fast_and_starts_nothing(tmp_path: Path) -> None:
    """--http on a bound port: one line, exit 7, the command never runs and no run is recorded."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        marker = tmp_path / "ran"
        done = bilge("run", "--data-dir", str(tmp_path / "d"), "--http", "127.0.0.1:%d" % port, "--",
                     sys.executable, "-c", "open(%r, 'w')" % str(marker))
    assert_one_line_error(done, 7, "bilge: error: cannot serve on 127.0.0.1:%d: " % port)
    assert not marker.exists()
    report = bilge("report", "--data-dir", str(tmp_path / "d"))
    assert report.returncode in (2, 4) and "run" in report.stderr, report.stderr  # nothing recorded


@pytest.mark.parametrize(("host", "token", "warned"), [
    ("0.0.0.0", None, "require a token with --http-token"),
    ("0.0.0.0", "t0ken", "(never values)\n"),
    ("127.0.0.1", None, None),
])
def test_run_warns_when_metrics_are_served_beyond_this_machine(tmp_path: Path, host: str, token: str | None,
                                                               warned: str | None) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = bilge("run", "--data-dir", str(tmp_path / "d"), "--http", "%s:%d" % (host, port), "--", sys.executable,
                 "-c", "pass", extra_env={"BILGE_HTTP_TOKEN": token} if token else None)
    assert done.returncode == 0, done.stderr
    if warned is None:
        assert "warning" not in done.stderr, done.stderr
    else:
        warning = "bilge: warning: serving /, /health and /metrics on 0.0.0.0:%d, beyond this machine" % port
        assert warning in done.stderr, done.stderr
        assert warned in done.stderr, done.stderr


def test_run_with_otlp_but_without_the_sdk_fails_fast_in_one_line(tmp_path: Path) -> None:
    """--otlp without the OpenTelemetry SDK installed: exit 7 and what to install; the command never runs."""
    shadow = tmp_path / "shadow" / "opentelemetry"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no OpenTelemetry here')\n")
    marker = tmp_path / "ran"
    done = bilge("run", "--data-dir", str(tmp_path / "d"), "--otlp", "http://127.0.0.1:9/v1/metrics", "--",
                 sys.executable, "-c", "open(%r, 'w')" % str(marker),
                 extra_env={"PYTHONPATH": str(tmp_path / "shadow")})
    assert_one_line_error(done, 7, "bilge: error: --otlp needs the OpenTelemetry SDK: pip install 'bilge[otlp]'")
    assert not marker.exists()


def test_check_exit_codes_document_the_store_errors(tmp_path: Path, short_run: Path) -> None:
    """check on a missing data dir exits 2 with one line; on an ended run it says failing (6)."""
    assert_one_line_error(bilge("check", "--data-dir", str(tmp_path / "none")), 2, "bilge: error: data dir ")
    done = bilge("check", "--data-dir", str(short_run))
    assert done.returncode == 6 and done.stdout.startswith("failing: the run ended"), done.stdout


def test_run_rejects_bad_sizes_and_addresses(tmp_path: Path) -> None:
    done = bilge("run", "--data-dir", str(tmp_path / "d"), "--recycle", "--recycle-soft-limit", "lots", "--", "true")
    assert done.returncode == 2 and "not a size: 'lots'" in done.stderr and "Traceback" not in done.stderr
    done = bilge("run", "--data-dir", str(tmp_path / "d"), "--http", "localhost:http", "--", "true")
    assert done.returncode == 2 and "expected HOST:PORT" in done.stderr
