"""Recycles made visible: bilge's own, Celery's (exit code 155), and recycle storms.

Celery logs its ``worker_max_memory_per_child`` recycles only at warning
level in the child and never says why a pool churns. billiard compares the
child's *peak* RSS, shared pages included, after every task: a child that
starts above the limit (a large parent, a big import) is recycled after
every single task (celery#4125, #4809). The child's first RSS reading
against the limit it saw tells that storm apart.
"""

from __future__ import annotations

from bilge.model import RecyclingSummary, RunData

# billiard.common.EX_RECYCLE: a child that left after max tasks or max memory.
EX_RECYCLE = 155


def summarise(run: RunData) -> RecyclingSummary | None:
    """What was recycled and by whom; None when nothing was and nothing threatens to be."""
    by_bilge = tuple(r for p in run.processes for r in p.recycles)
    by_celery = tuple(p.info.pid for p in run.processes if p.info.exit_code == EX_RECYCLE)
    storming = []
    for p in run.processes:
        limit = p.info.celery_max_memory_kb
        first = next((s.rss for s in p.samples if s.rss is not None), None)
        if limit and first is not None and first >= limit * 1024:
            storming.append((p.info.pid, first, limit))
    warnings = []
    if storming:
        pid, first, limit = storming[0]
        warnings.append(
            "recycle storm: %d pool child(ren) started above worker_max_memory_per_child (%d MiB), e.g. pid %d at "
            "%d MiB; Celery compares peak RSS (shared pages included) after every task, so it recycles them after "
            "every task. Raise the limit above a fresh child's size, or let `bilge run --recycle` recycle only "
            "children that leak." % (len(storming), limit >> 10, pid, first >> 20))
    if by_celery:
        tasks = [len(p.tasks) for p in run.processes if p.info.exit_code == EX_RECYCLE]
        warnings.append("Celery recycled %d pool child(ren) (exit code 155: max tasks or max memory per child), "
                        "after %d tasks each on median" % (len(by_celery), sorted(tasks)[len(tasks) // 2]))
    if not (by_bilge or by_celery or warnings):
        return None
    return RecyclingSummary(by_bilge=by_bilge, by_celery=by_celery, warnings=tuple(warnings))
