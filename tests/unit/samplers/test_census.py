"""Tests for bilge.samplers.census: counting and sizing gc-tracked objects by type."""

from __future__ import annotations

import gc
import weakref

from bilge.samplers.census import Census, _keep_largest, take_census, type_name


def counts_of(result_types: tuple[tuple[str, int, int], ...]) -> dict[str, tuple[int, int]]:
    """The census rows as {type name: (count, bytes)}."""
    return {name: (count, size) for name, count, size in result_types}


def test_type_name_is_the_qualified_name() -> None:
    """Builtins keep their bare name; other classes get module.qualname."""

    class Local:
        pass

    assert type_name(dict) == "dict"
    assert type_name(weakref.ref) == "weakref.ReferenceType"
    assert type_name(Local) == "%s.test_type_name_is_the_qualified_name.<locals>.Local" % __name__


def test_counts_instances_of_a_fresh_class() -> None:
    """5000 instances of a local class appear under its qualified name with at least that count and some bytes."""

    class Order:
        def __init__(self, n: int) -> None:
            self.n = n

    orders = [Order(i) for i in range(5000)]
    result = take_census(sized=True)
    rows = counts_of(result.types)
    name = "%s.%s" % (__name__, Order.__qualname__)
    assert rows[name][0] >= 5000
    assert rows[name][1] >= 5000 * Order.__basicsize__
    assert result.sized is True
    assert result.objects >= 5000
    assert result.duration >= 0.0
    del orders


def test_counting_census_estimates_bytes_from_the_last_sizing() -> None:
    """A counting census reuses the mean size the previous sizing census measured."""

    class Item:
        pass

    items = [Item() for _ in range(2000)]
    census = Census()
    sized = counts_of(census.take(sized=True).types)
    counted = census.take(sized=False)
    rows = counts_of(counted.types)
    name = "%s.%s" % (__name__, Item.__qualname__)
    assert counted.sized is False
    assert rows[name][0] == sized[name][0]
    assert rows[name][1] == sized[name][1]
    del items


def test_keeps_no_reference_to_inspected_objects() -> None:
    """An object seen by the census dies as soon as the test drops its own reference (no gc needed)."""

    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    gc.disable()
    try:
        take_census(sized=True)
        Census().take(sized=False)
        del payload
        assert ref() is None
    finally:
        gc.enable()


def test_a_raising_sizeof_does_not_stop_the_census() -> None:
    """An object whose __sizeof__ raises is still counted, and the other types are still sized."""

    class Broken:
        def __sizeof__(self) -> int:
            raise RuntimeError("no size for you")

    class Fine:
        pass

    broken = Broken()
    fines = [Fine() for _ in range(100)]
    # No cut to the largest types: a type with one object would not survive it in a big process.
    rows = counts_of(Census(max_types=1_000_000).take(sized=True).types)
    assert rows["%s.%s" % (__name__, Broken.__qualname__)][0] == 1
    fine = rows["%s.%s" % (__name__, Fine.__qualname__)]
    assert fine[0] == 100
    assert fine[1] >= 100 * Fine.__basicsize__
    del broken, fines


def test_census_is_bounded_by_max_types() -> None:
    """With max_types=10 at most 10 type rows are kept, including the most numerous type."""

    class Many:
        pass

    many = [Many() for _ in range(200_000)]
    rows = counts_of(Census(max_types=10).take(sized=False).types)
    assert len(rows) <= 10
    assert "%s.%s" % (__name__, Many.__qualname__) in rows
    del many


def test_keep_largest_merges_names_and_keeps_top_by_count_and_bytes() -> None:
    """Rows sharing a name are added up; the cut keeps the union of the top by count and by bytes."""
    rows = [("a", 1, 1000), ("b", 100, 1), ("c", 50, 50), ("a", 2, 3), ("d", 3, 3)]
    assert sorted(_keep_largest(rows, limit=10)) == [("a", 3, 1003), ("b", 100, 1), ("c", 50, 50), ("d", 3, 3)]
    assert sorted(_keep_largest(rows, limit=2)) == [("a", 3, 1003), ("b", 100, 1)]


def test_censuses_reuse_one_string_per_type_name() -> None:
    """Two censuses name a type with the same string object (the agent keeps several censuses' counts)."""
    census = Census()
    first = {name: name for name, _, _ in census.take(sized=False).types}
    second = census.take(sized=False).types
    assert second and all(first[name] is name for name, _, _ in second if name in first)
