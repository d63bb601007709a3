"""Tests for bilge.analysis.findings: each step of the findings pipeline alone, then the pipeline."""

from __future__ import annotations

from dataclasses import replace

from bilge.analysis import kind
from bilge.analysis.findings import (
    Draft,
    FindingsPipeline,
    Leak,
    container_holders,
    emit,
    growing_container,
    growing_holders,
    locate,
    name_holders,
    native_owner,
    rank,
    same_bar,
)
from bilge.model import AllocationSite, AllocationWindow, ContainerGrowth, Holder, TaskGrowth, TypeGrowth

SEARCH = TaskGrowth(task="shop.search", calls=500, bytes_per_call=4096.0, blocks_per_call=30.0, score=12.0)


def grew(name: str, count: int = 500, steady: bool = True) -> TypeGrowth:
    return TypeGrowth(type=name, count_delta=count, bytes_delta=count * 100, count_per_call=count / 500,
                      bytes_per_call=count * 100 / 500, steady=steady)


def held(name: str, path: str, targets: int, t: float = 1.0, length: int = 100) -> Holder:
    return Holder(t=t, started=t - 0.1, type=name, path=path, root_kind="module-global", container_type="list",
                  container_len=length, targets=targets)


def container(path: str, element: str, first: int = 100, last: int = 600) -> ContainerGrowth:
    return ContainerGrowth(path=path, container_type="list", element_type=element, first=first, last=last,
                           tasks=1500, scans=6)


def draft(types: tuple[TypeGrowth, ...], leak_kind: str = kind.PYTHON_OBJECTS, groups: tuple[tuple[Holder, ...], ...]
          = (), grown: tuple[ContainerGrowth, ...] = ()) -> Draft:
    leak = Leak(leaky=SEARCH, types=types, kind=leak_kind, pids=(7,), evidence=("grows",), holder_groups=groups,
                grown=grown)
    return Draft(leak=leak, evidence=leak.evidence)


def through(d: Draft, *steps: object) -> Draft:
    for step in steps:
        d = step(d)  # type: ignore[operator]
    return d


def test_a_type_held_by_a_path_seen_growing_leads_a_bigger_generic_one() -> None:
    """dict grew most in the census, but only shop.Order's holder was seen holding more at the later search."""
    groups = ((held("shop.Order", "shop._ORDERS", 40), held("shop.Order", "shop._ORDERS", 90, t=2.0, length=300),
               held("dict", "lib.TABLE", 5000), held("dict", "lib.TABLE", 5000, t=2.0)),)
    d = through(draft((grew("dict", 2000), grew("shop.Order", 500)), groups=groups), growing_holders, name_holders,
                rank)
    assert d.held_growing == {"shop.Order"}
    assert [t.type for t in d.ranked] == ["shop.Order", "dict"]


def test_uncollectable_cycles_keep_the_census_order() -> None:
    d = through(draft((grew("dict", 2000), grew("shop.Node", 500)), leak_kind=kind.UNCOLLECTABLE), growing_holders,
                name_holders, rank)
    assert [t.type for t in d.ranked] == ["dict", "shop.Node"]


def test_a_second_finding_must_be_held_by_a_growing_path_too() -> None:
    """pygments' style lists grow a little and sit in a static table: not a second leak."""
    d = replace(draft(()), held_growing=frozenset({"shop.Order"}), ranked=(grew("shop.Order"), grew("list")))
    assert [t.type for t in same_bar(d).ranked] == ["shop.Order"]
    assert [t.type for t in same_bar(replace(d, held_growing=frozenset())).ranked] == ["shop.Order", "list"]


def test_native_bytes_are_owned_by_a_specific_held_type_or_by_what_a_container_gains() -> None:
    base = draft((), leak_kind=kind.NATIVE, grown=(container("app._CTX", "str"), container("app._IMGS", "PIL.Image")))
    d = native_owner(replace(base, held_growing=frozenset({"app.Context"}),
                             ranked=(grew("dict"), grew("app.Context"))))
    assert [t.type for t in d.ranked] == ["app.Context"] and d.owner is None
    d = native_owner(replace(base, ranked=(grew("dict"),)))
    # No held type: the container's elements, never a scalar's (a str owns no native memory).
    assert d.ranked == () and d.owner is not None and d.owner.path == "app._IMGS"


def test_a_growing_container_names_a_leak_only_a_builtin_type_nothing_holds_explains() -> None:
    grown = (container("app._SEEN", "weakref.ReferenceType"), container("app._KEYS", "str"))
    d = growing_container(replace(draft((), grown=grown), ranked=(grew("tuple"),)))
    assert d.owner is not None and d.owner.path == "app._KEYS"  # weak references keep nothing alive
    d = growing_container(replace(draft((), grown=grown), ranked=(grew("shop.Order"),)))
    assert d.owner is None


def test_a_container_growing_at_every_scan_holds_a_type_the_search_missed() -> None:
    d = replace(draft((), grown=(container("<thread reporter> frame run() local 'samples'", "dict"),)),
                ranked=(grew("dict"),), holder_of={"dict": None})
    holder = container_holders(d).holder_of["dict"]
    assert holder is not None and (holder.path, holder.root_kind) == (
        "<thread reporter> frame run() local 'samples'", "thread-stack")


def test_a_container_growing_at_every_scan_holds_a_type_one_search_found_only_in_a_constant_table() -> None:
    """Seen in CI: the first search ran out of time among library modules and found dicts only in wcwidth's
    constant table; the audit list, growing at every scan, holds them. A path seen growing keeps its place."""
    grown = (container("apps.billing._VAT_AUDIT", "dict"),)
    table = held("dict", "wcwidth.table_overrides.WIDE_OVERRIDES[...]", 24)
    d = replace(draft((), groups=((table,),), grown=grown), ranked=(grew("dict"),), holder_of={"dict": table})
    holder = container_holders(d).holder_of["dict"]
    assert holder is not None and holder.path == "apps.billing._VAT_AUDIT"
    groups = ((held("dict", "shop._ORDERS", 40), held("dict", "shop._ORDERS", 90, t=2.0, length=300)),)
    d = replace(draft((), groups=groups, grown=grown), ranked=(grew("dict"),), holder_of={"dict": groups[0][1]})
    holder = container_holders(d).holder_of["dict"]
    assert holder is not None and holder.path == "shop._ORDERS"


def test_a_container_growing_at_every_scan_names_the_leak_over_a_type_held_from_no_root() -> None:
    """retried_lookups, 1 run of 5: the retried calls' tracebacks (garbage until a full collection, and more
    at each search) led, "held" by a climb that reached no root; the invoices' dict grew at every scan. The
    container names the leak. A type held from a root keeps its place."""
    grown = (container("app._RENDERED_INVOICES", "str"),)
    rootless = replace(held("traceback", "<held from C>[...]->tuple[...].exc->traceback.tb_next", 40),
                       root_kind="unknown")
    d = replace(draft((grew("traceback"),), grown=grown), ranked=(grew("traceback"),),
                holder_of={"traceback": rootless}, held_growing=frozenset({"traceback"}))
    owner = growing_container(d).owner
    assert owner is not None and owner.path == "app._RENDERED_INVOICES"
    rooted = held("shop.Order", "shop._ORDERS", 40)
    d = replace(draft((grew("shop.Order"),), grown=grown), ranked=(grew("shop.Order"),),
                holder_of={"shop.Order": rooted}, held_growing=frozenset({"shop.Order"}))
    assert growing_container(d).owner is None


def test_the_pipeline_runs_its_steps_in_order_and_the_last_writes_the_findings() -> None:
    leak = draft((grew("shop.Order"),)).leak
    bare = FindingsPipeline(steps=(emit,))(leak)
    assert len(bare) == 1 and bare[0].type is None and bare[0].task == "shop.search"  # nothing ranked: task only
    full = FindingsPipeline()(replace(leak, holder_groups=((held("shop.Order", "shop._ORDERS", 40),),)))
    assert (full[0].type, full[0].holder) == ("shop.Order", "shop._ORDERS")
    assert full[0].bytes_per_call is not None


def test_the_line_is_the_leaking_tasks_when_it_left_one() -> None:
    """A retried task's exception messages outweigh the leak's strings in one window (its garbage survives the
    measured call): the line is the one shop.search's calls left; without one of its own, the top line."""
    def site(line: int, size: int, task: str | None) -> AllocationSite:
        return AllocationSite(file="/srv/app/tasks.py", line=line, size=size, count=10, owner="user",
                              traceback=(), task=task)

    def located(*sites: AllocationSite) -> str | None:
        window = AllocationWindow(started=0.0, ended=1.0, tasks=12, status="done", peak_memory=0, sites=sites)
        d = draft((grew("str"),))
        return locate(replace(d, leak=replace(d.leak, windows=(window,)))).where

    assert located(site(38, 4928, "shop.convert"), site(29, 3075, "shop.search")) == "/srv/app/tasks.py:29"
    assert located(site(38, 4928, "shop.convert"), site(29, 3075, None)) == "/srv/app/tasks.py:38"


def test_a_native_leak_without_a_native_window_is_located_by_the_native_bytes_tracemalloc_saw() -> None:
    """numpy registers its array data with tracemalloc: a native leak whose only windows traced Python's
    allocators is located at the line whose traced bytes were native, not at the line that kept the most."""
    def located(*sites: AllocationSite) -> str | None:
        window = AllocationWindow(started=0.0, ended=1.0, tasks=12, status="done", peak_memory=0, sites=sites)
        d = draft((grew("numpy.ndarray"),))
        leak = replace(d.leak, windows=(window,), kind=kind.NATIVE)
        return locate(replace(d, leak=leak)).where

    dicts = AllocationSite("/srv/app/tasks.py", 12, 90_000, 400, "user", (), "shop.index")
    arrays = AllocationSite("/srv/app/tasks.py", 30, 50_000, 24, "user", (), "shop.index", native=49_152)
    assert located(dicts, arrays) == "/srv/app/tasks.py:30"
    assert located(dicts) is None  # no native bytes seen anywhere: no line rather than a Python one


def test_a_native_leak_with_a_python_owner_and_no_native_window_is_located_where_the_owners_are_made() -> None:
    """sqlite_per_call, 1 of 5 runs: no native window ran in either child (the others located the connections'
    native bytes at sqlite3.connect's line), so the finding naming sqlite3.Connection in app._OPEN_REPORTS had
    no line. The allocation window saw the leaking task keep Python allocations at that line: where the owners
    are made. A native finding naming no owner type gets no line from it (a ctypes malloc has no Python owner)."""
    connect = AllocationSite("/srv/app/tasks.py", 21, 11_776, 97, "user", (), "shop.report")
    library = AllocationSite("/srv/lib/sqlite_helpers.py", 40, 50_000, 300, "library", (), "shop.report")
    other = AllocationSite("/srv/app/tasks.py", 60, 20_000, 90, "user", (), "shop.price")
    window = AllocationWindow(started=0.0, ended=1.0, tasks=12, status="done", peak_memory=0,
                              sites=(library, other, connect))
    report = replace(SEARCH, task="shop.report")
    base = draft((grew("sqlite3.Connection"),), leak_kind=kind.NATIVE)
    d = locate(replace(base, leak=replace(base.leak, windows=(window,), leaky=report)))
    assert d.where is None and d.owner_where == "/srv/app/tasks.py:21"
    found = emit(replace(d, ranked=(grew("sqlite3.Connection"),))).findings[0]
    assert found.location == "/srv/app/tasks.py:21"
    assert any("where the Python objects owning the native memory are made" in e for e in found.evidence)
    owned = emit(replace(d, owner=container("app._OPEN", "sqlite3.Connection"))).findings[0]
    assert owned.location == "/srv/app/tasks.py:21"
    bare = emit(d).findings[0]
    assert bare.type is None and bare.location is None


def test_a_container_growing_at_every_scan_names_the_leak_over_a_type_no_search_found_held() -> None:
    """stored_tracebacks, 2 runs of 5: the kept exceptions' frames led and the one search per child found only
    tuples; the failures list grew at every scan. Frames are parts of what the code keeps: the container names
    the leak. Frames seen held as they grew keep their place."""
    grown = (container("app._RECENT_FAILURES", "app.PricingError"),)
    d = replace(draft((grew("frame"),), grown=grown), ranked=(grew("frame"),), holder_of={"frame": None})
    owner = growing_container(d).owner
    assert owner is not None and owner.path == "app._RECENT_FAILURES"
    assert growing_container(replace(d, held_growing=frozenset({"frame"}))).owner is None
