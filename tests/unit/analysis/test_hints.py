"""Hints: one actionable sentence per finding."""

from __future__ import annotations

from bilge.analysis.hints import hint
from bilge.analysis.kind import NATIVE
from bilge.model import Holder


def test_native_memory_kept_in_a_cache_says_to_remove_the_owners_from_it() -> None:
    """numpy arrays memoised in a dict: their native bytes go with each array, so the fix is the cache, not a
    close() the arrays do not have."""
    cache = Holder(t=1.0, started=0.9, type="numpy.ndarray", path="app._EMBEDDINGS", root_kind="module-global",
                   container_type="dict", container_len=484, targets=484)
    text = hint(NATIVE, "search.index_order", "numpy.ndarray", 1.0, cache)
    assert text.startswith("Each call of search.index_order keeps numpy.ndarray objects in app._EMBEDDINGS (484")
    assert "remove them from app._EMBEDDINGS when done or bound it" in text


def test_a_list_in_another_threads_frame_is_a_list_to_drain_not_memory_held_from_c() -> None:
    """reporter_thread_samples: a reporter thread's run() keeps every sample in a local list. Its path is
    bracketed like the interpreter's registries, but a frame's locals are a Python container: the hint says to
    drain or bound the list, never that C code holds the objects. A registry the search names stays C-held."""
    local = Holder(t=1.0, started=0.9, type="dict", path="<thread metrics-reporter> frame MetricsReporter.run() "
                   "local 'samples'", root_kind="thread-stack", container_type="list", container_len=484,
                   targets=484)
    text = hint("python-objects", "shop.render_invoice", "dict", 1.0, local)
    assert "held from C code" not in text
    assert text.startswith("Each call of shop.render_invoice appends dict objects to <thread metrics-reporter> "
                           "frame MetricsReporter.run() local 'samples', which nothing drains (484 items)")
    registry = Holder(t=1.0, started=0.9, type="dict", path="<held from C>", root_kind="unknown",
                      container_type="list", container_len=10, targets=10)
    assert "held from C code" in hint("python-objects", "shop.render_invoice", "dict", 1.0, registry)
