"""Tests for bilge.analysis.holders: which path keeps a leak alive."""

from __future__ import annotations

from bilge.analysis.holders import from_container, holder_for
from bilge.model import ContainerGrowth, Holder


def test_holder_is_the_container_that_grew_not_a_static_table() -> None:
    """Per process, a path that held more (targets, or container length when targets are sampled) at a later
    search is the holder; a table seen twice unchanged is not; paths of different processes are not compared."""
    def h(t: float, path: str, targets: int, length: int) -> Holder:
        return Holder(t=t, started=t - 0.1, type="list", path=path, root_kind="module-global",
                      container_type="list", container_len=length, targets=targets)

    first = [h(1.0, "lib.TABLE[...]", 80, 80), h(1.0, "app._BATCH[...]", 46, 120)]
    later = [h(2.0, "lib.TABLE[...]", 80, 80), h(2.0, "app._BATCH[...]", 46, 400)]
    holder = holder_for("list", [first + later])
    assert holder is not None and holder.path == "app._BATCH[...]"
    assert holder_for("list", [[h(1.0, "lib.TABLE[...]", 80, 80), h(2.0, "lib.TABLE[...]", 80, 80)]]) is None
    # One search in each of two processes: nothing to compare, the most-sampled path stands.
    other = [h(1.5, "app._BATCH[...]", 40, 100)]
    holder = holder_for("list", [[h(1.0, "app._BATCH[...]", 46, 120)], other])
    assert holder is not None and holder.path == "app._BATCH[...]"


def test_a_container_holder_is_named_with_its_root_kind() -> None:
    """A container the scans followed names the holder as the holder search would: a thread's local is on a
    thread's stack, the exit callbacks a registry kept in C, anything else reached from a module."""
    def g(path: str) -> ContainerGrowth:
        return ContainerGrowth(path=path, container_type="list", element_type="dict", first=100, last=400, tasks=900,
                               scans=5)

    assert from_container(g("<thread metrics-reporter> frame MetricsReporter.run() local 'samples'"),
                          "dict").root_kind == "thread-stack"
    assert from_container(g("<atexit callbacks>"), "method").root_kind == "registry"
    held = from_container(g("app.tax_table<lru_cache>"), "dict")
    assert (held.root_kind, held.container_len, held.targets) == ("module-global", 400, 300)


def test_a_path_inside_a_growing_container_holds_the_type_before_a_bigger_one_seen_once() -> None:
    """One search saw cells in a library's closure (348, static) and below the tracebacks a module-level list
    keeps (29): the list grew at every scan, so the path through it is the holder."""
    def cell(path: str, targets: int) -> Holder:
        return Holder(t=1.0, started=0.9, type="cell", path=path, root_kind="module-global", container_type="list",
                      container_len=targets, targets=targets)

    static = cell("celery.app.trace.build_tracer.<locals>.trace_task closure 'trace_ok_t'", 348)
    kept = cell("app._RECENT_FAILURES[...]->traceback.tb_frame.f_back->cell", 29)
    assert holder_for("cell", [[static, kept]]) == static  # nothing else to go by: the most-sampled
    assert holder_for("cell", [[static, kept]], ["app._RECENT_FAILURES"]) == kept


def test_the_holder_is_the_path_that_gained_most_not_a_bigger_table_whose_sample_wobbled() -> None:
    """Seen in a fleet test's CI run (a child's first two holder searches): the archive the leak fills went 214 ->
    324 dicts while typing's overload registry, a static table whose sampled count wobbles, went 390 -> 408.
    Both "held more at a later search"; the archive gained 110, the registry 18 (sampling noise): the archive."""
    def h(t: float, path: str, kind: str, length: int, targets: int) -> Holder:
        return Holder(t=t, started=t - 0.6, type="dict", path=path, root_kind="module-global", container_type=kind,
                      container_len=length, targets=targets)

    first = [h(30.0, "apps.billing._STATEMENT_ARCHIVE[...][...][...]", "dict", 220, 868),
             h(30.0, "typing._overload_registry[...][...]", "collections.defaultdict", 362, 390),
             h(30.0, "apps.billing._STATEMENT_ARCHIVE[...]", "dict", 220, 214)]
    second = [h(32.2, "typing._overload_registry[...][...]", "collections.defaultdict", 362, 408),
              h(32.2, "apps.billing._STATEMENT_ARCHIVE[...]", "dict", 324, 324)]
    holder = holder_for("dict", [first + second])
    assert holder is not None and holder.path == "apps.billing._STATEMENT_ARCHIVE[...]"
