"""`bilge attach PID` and `bilge detach PID`: the agent in a worker that is already running.

attach starts the agent in the process and, for a prefork pool's parent, in
each of its children (children forked later get one too); Celery's signals
are connected, so per-task accounting starts with the next task. The
worker keeps serving throughout. Python 3.10-3.13 needs gdb; 3.14+ uses
sys.remote_exec. A process that cannot be attached safely is refused with
the reason (exit code 6): `bilge top` still watches it from /proc. Then:
`bilge report --data-dir D`, `bilge snapshot PID`, `bilge top`.
"""

from __future__ import annotations

import os
import time

import click
import psutil

from bilge import attach as attacher
from bilge import live
from bilge.errors import AgentUnreachableError, AttachError
from bilge.store.sqlite import prepare_data_dir, start_run


@click.command("attach", help=__doc__)
@click.argument("pid", type=click.IntRange(min=1))
@click.option("--data-dir", default="bilge-data", show_default=True, help="Where the attached agents record.")
@click.option("--arm", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="SECONDS",
              help="A process that runs no Python within 10 s (an idle pool child waiting for a task) keeps the "
                   "payload queued this long: its agent starts with its next task. 0: refuse it.")
def attach(pid: int, data_dir: str, arm: float) -> int:
    """Attach to PID (and its pool children)."""
    target = attacher.inspect(pid)  # refusals come before anything is written
    children = _pool_children(pid)
    data_dir = prepare_data_dir(data_dir)
    try:
        command = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        command = target.exe
    run_id = start_run(data_dir, "bilge attach %d: %s" % (pid, command))
    if target.uid != os.geteuid():
        # Root attaching to another user's worker: the agents write the store as that user.
        for path in [data_dir] + [os.path.join(data_dir, name) for name in os.listdir(data_dir)]:
            os.chown(path, target.uid, -1)
    role = "celery-main" if children else ("celery-child" if _is_pool_child(pid) else "main")
    first = attacher.attach(pid, data_dir, run_id, role, arm=arm)
    _say(first)
    parent_id = _process_id(pid) if children else None
    failed = []
    for child in children:
        try:
            _say(attacher.attach(child, data_dir, run_id, "celery-child", parent_id, arm=arm))
        except AttachError as exc:
            failed.append("child %d: %s" % (child, exc))
    for failure in failed:
        click.echo("bilge: %s" % failure, err=True)
    click.echo("recording into %s: `bilge report --data-dir %s`, `bilge snapshot %d`, `bilge top`" % (
        data_dir, data_dir, pid))
    if failed:
        raise AttachError("%d of %d pool children could not be attached (see above)" % (len(failed), len(children)))
    return 0


@click.command("detach")
@click.argument("pid", type=click.IntRange(min=1))
def detach(pid: int) -> int:
    """Stop the agent in PID and in its pool children, and disconnect its Celery signals."""
    pids = [pid] + [child for child in _pool_children(pid) if _has_agent(child)]
    for each in pids:
        attacher.detach(each)
        click.echo("detached %d" % each)
    return 0


def _process_id(pid: int, wait: float = 5.0) -> int | None:
    """The store id of ``pid``'s agent (its children's parent_id), once the agent has registered."""
    deadline = time.monotonic() + wait
    while True:
        process_id = live.request(live.find(pid), "status").get("process_id")
        if process_id is not None or time.monotonic() > deadline:
            return process_id if isinstance(process_id, int) else None
        time.sleep(0.05)


def _pool_children(pid: int) -> list[int]:
    """The children of ``pid`` that run the same interpreter (a prefork pool's workers)."""
    try:
        parent = psutil.Process(pid)
        exe = parent.exe()
        return [c.pid for c in parent.children() if _same_exe(c, exe)]
    except psutil.Error:
        return []


def _same_exe(proc: psutil.Process, exe: str) -> bool:
    try:
        return bool(proc.exe() == exe)
    except psutil.Error:
        return False


def _is_pool_child(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        parent = proc.parent()
        return parent is not None and _same_exe(parent, proc.exe()) and "celery" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _has_agent(pid: int) -> bool:
    try:
        live.find(pid)
        return True
    except AgentUnreachableError:
        return False


def _say(done: attacher.Attached) -> None:
    if done.how.startswith("armed"):
        click.echo("armed %d (%s): it ran no Python within 10 s; its agent starts when it next does" % (
            done.pid, done.role))
        return
    click.echo("attached %d (%s) via %s in %.2f s%s" % (
        done.pid, done.role, done.how, done.seconds, " after %d tries" % done.tries if done.tries > 1 else ""))
