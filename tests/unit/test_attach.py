"""Tests for bilge.attach's pure parts: the spare bytes it writes into, the payload, the refusals."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bilge import attach
from bilge.errors import AttachError


def test_bss_end_of_this_interpreter_library_and_a_non_elf_file(tmp_path: Path) -> None:
    """.bss ends inside the library's image; a text file has no ELF header: None."""
    with open("/proc/self/maps") as f:
        library = next(line.split()[-1] for line in f if "libc.so" in line)
    end = attach._bss_end(library)  # noqa: SLF001
    assert end is not None and 0 < end < os.path.getsize(library) * 4
    text = tmp_path / "x.txt"
    text.write_text("not an ELF file")
    assert attach._bss_end(str(text)) is None  # noqa: SLF001


def test_scratch_is_in_a_writable_mapping_past_the_bss_and_holds_zeros() -> None:
    """In a live child: the address is inside a rw mapping, on the .bss's last page, and the bytes are zero."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)
        target = attach.inspect(child.pid)
        address = attach._scratch(target, 300)  # noqa: SLF001
        with open("/proc/%d/maps" % child.pid) as f:
            maps = f.read().splitlines()
        rw = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in maps if line.split()[1][:2] == "rw"]
        assert any(low <= address and address + 300 <= high for low, high in rw)
        assert address % 16 == 0 and (address + 300) // 4096 == address // 4096
        with open("/proc/%d/mem" % child.pid, "rb") as mem:
            mem.seek(address)
            assert mem.read(300) == b"\0" * 300
    finally:
        child.kill()
        child.wait()


def test_the_code_never_raises_and_the_payload_expires(tmp_path: Path) -> None:
    """The text PyRun_SimpleString runs swallows everything (a missing payload file included); the payload
    does nothing past its deadline."""
    code = attach._code(str(tmp_path / "missing.py"))  # noqa: SLF001
    exec(compile(code, "<code>", "exec"), {})  # noqa: S102 - the very text injected, run here
    payload = attach._payload({"BILGE_DATA_DIR": "/d", "BILGE_RUN_ID": "1"}, "main", None)  # noqa: SLF001
    assert "if _time.time() < " in payload and "_attach_here(" in payload
    expired = payload.replace("if _time.time() < ", "if 0 and _time.time() < ")
    exec(compile(expired, "<payload>", "exec"), {})  # noqa: S102


@pytest.mark.parametrize(("host", "during", "after"), [
    (0.005, attach.ATTACH_SWITCH_INTERVAL, 0.005),  # lowered while the agent starts, the host's value back
    (0.0001, 0.0001, 0.0001),  # a host already below it keeps its own
])
def test_the_payload_lowers_the_switch_interval_only_while_the_agent_starts(
        monkeypatch: pytest.MonkeyPatch, host: float, during: float, after: float) -> None:
    from bilge.agent import _runtime
    seen: list[float] = []
    monkeypatch.setattr(_runtime, "attach_here", lambda *args: seen.append(sys.getswitchinterval()))
    payload = attach._payload({"BILGE_DATA_DIR": "/d", "BILGE_RUN_ID": "1"}, "main", None)  # noqa: SLF001
    previous = sys.getswitchinterval()
    try:
        sys.setswitchinterval(host)
        exec(compile(payload, "<payload>", "exec"), {})  # noqa: S102
        assert seen == [pytest.approx(during, rel=0.01)]
        assert sys.getswitchinterval() == pytest.approx(after, rel=0.01)
    finally:
        sys.setswitchinterval(previous)


def test_a_switch_interval_the_host_sets_meanwhile_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from bilge.agent import _runtime
    monkeypatch.setattr(_runtime, "attach_here", lambda *args: sys.setswitchinterval(0.002))
    payload = attach._payload({"BILGE_DATA_DIR": "/d", "BILGE_RUN_ID": "1"}, "main", None)  # noqa: SLF001
    previous = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        exec(compile(payload, "<payload>", "exec"), {})  # noqa: S102
        assert sys.getswitchinterval() == pytest.approx(0.002, rel=0.01)
    finally:
        sys.setswitchinterval(previous)


def test_inspect_refuses_with_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    """No such process, bilge itself, not Python: AttachError each, saying what is wrong."""
    with pytest.raises(AttachError, match="no process 4194304"):
        attach.inspect(4194304)
    with pytest.raises(AttachError, match="cannot attach to itself"):
        attach.inspect(os.getpid())
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(AttachError, match="does not run Python"):
            attach.inspect(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_unsupported_python_is_refused_before_anything_is_written(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    target = attach.Target(1, os.geteuid(), "/usr/bin/python3.9", (3, 9), None, {})
    monkeypatch.setattr(attach, "inspect", lambda pid: target)
    with pytest.raises(AttachError, match="Python 3.9 is not supported"):
        attach.attach(1, str(tmp_path), 1)
    assert list(tmp_path.iterdir()) == []


def test_python_314_goes_through_remote_exec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """3.14+: the target's own interpreter is asked to sys.remote_exec the payload (faked: 3.14 is not
    installable here), and a refusal of remote debugging becomes an AttachError naming the switch."""
    target = attach.Target(4242, os.geteuid(), "/opt/python3.14/bin/python3.14", (3, 14), None, {})
    monkeypatch.setattr(attach, "inspect", lambda pid: target)
    seen: list[list[str]] = []

    def fake_run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 1, "", "RuntimeError: Remote debugging is not enabled\n")

    monkeypatch.setattr(attach.subprocess, "run", fake_run)
    with pytest.raises(AttachError, match="PYTHON_DISABLE_REMOTE_DEBUG"):
        attach.attach(4242, str(tmp_path), 1)
    assert seen[0][0] == target.exe and "sys.remote_exec(4242, " in seen[0][2]


def test_without_gdb_the_attach_is_refused_saying_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    target = attach.Target(1, os.geteuid(), "/usr/bin/python3.11", (3, 11), None, {})
    monkeypatch.setattr(attach, "inspect", lambda pid: target)
    monkeypatch.setattr(attach.shutil, "which", lambda name: None)
    with pytest.raises(AttachError, match=r"needs gdb, which is not installed \(apt-get install gdb\)"):
        attach.attach(1, str(tmp_path), 1)
