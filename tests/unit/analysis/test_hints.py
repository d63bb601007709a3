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
