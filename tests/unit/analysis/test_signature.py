"""What changes a leak signature, and what does not."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bilge.analysis import signature
from bilge.model import Finding

LEAK = Finding(task="shop.tasks.render_invoice", type="shop.models.Invoice", kind="python-objects",
               bytes_per_call=4096.0, count_per_call=1.0, hint="...", pids=(101,),
               holder="shop.cache._RENDERED['inv-17']", location="/srv/release-41/shop/tasks.py:42")


@pytest.mark.parametrize("change", [
    {"pids": (202, 203)},                                   # other children, another host
    {"bytes_per_call": 9000.0, "count_per_call": 3.0},      # grows faster
    {"hint": "another wording"},
    {"holder": "shop.cache._RENDERED['inv-9182']"},          # another key
    {"holder": "shop.cache._RENDERED[...]"},
    {"location": "/opt/app/release-42/shop/tasks.py:57"},   # a deploy: new path, code moved down
    {"evidence": ("grew in 3 of 3 censuses",)},
    {"kind": "native"},                                     # a child whose allocator reads it otherwise
    {"type": "list"},                                       # another census under the same holder
    {"holder": "shop.cache._RENDERED[...]['lines'][3]"},    # deeper into the same holder
], ids=["pids", "size", "hint", "key", "elided-key", "deploy", "evidence", "kind", "type-same-holder", "deeper"])
def test_what_does_not_change_a_signature(change: dict[str, object]) -> None:
    assert signature.of(replace(LEAK, **change)) == signature.of(LEAK)  # type: ignore[arg-type]


@pytest.mark.parametrize("change", [
    {"task": "shop.tasks.render_receipt"},
    {"holder": "shop.cache._SENT['inv-17']"},
    {"holder": None},
], ids=["task", "holder", "no-holder"])
def test_what_changes_a_signature(change: dict[str, object]) -> None:
    assert signature.of(replace(LEAK, **change)) != signature.of(LEAK)  # type: ignore[arg-type]


UNHELD = replace(LEAK, holder=None)


@pytest.mark.parametrize("change", [
    {"type": "shop.models.Receipt"},
    {"location": "/srv/release-41/shop/mail.py:42"},
], ids=["type", "file"])
def test_without_a_holder_type_and_site_file_tell_leaks_apart(change: dict[str, object]) -> None:
    assert signature.of(replace(UNHELD, **change)) != signature.of(UNHELD)  # type: ignore[arg-type]
    assert signature.of(replace(UNHELD, location="/opt/r42/shop/tasks.py:57")) == signature.of(UNHELD)


def test_holder_shape_strips_keys_addresses_and_thread_numbers() -> None:
    assert signature.holder_shape("a._X['k'][3]->traceback at 0x7f3a11c0") == "a._X[][]->traceback"
    assert signature.holder_shape("<thread worker-3> frame locals") == "<thread worker-#> frame locals"
    assert signature.holder_shape("myapp.v2.cache._SEEN") == "myapp.v2.cache._SEEN"  # digits in names stay


def test_holder_root_is_the_named_container() -> None:
    assert signature.holder_root("shop.cache._RENDERED['inv-17']['lines']") == "shop.cache._RENDERED"
    assert signature.holder_root("app.AuditLog.entries[...]->traceback") == "app.AuditLog.entries"
    assert signature.holder_root("<thread worker-3> frame locals") == "<thread worker-#> frame locals"
    assert signature.holder_root(None) == ""


def test_site_file_is_relative_to_its_package() -> None:
    assert signature.site_file("/x/.venv/lib/python3.11/site-packages/redis/utils.py:377") == "redis/utils.py"
    assert signature.site_file("/usr/lib/python3/dist-packages/kombu/log.py:9") == "kombu/log.py"
    assert signature.site_file("/srv/release-41/shop/tasks.py:42") == "shop/tasks.py"
    assert signature.site_file(None) == ""


def test_stamped_says_new_only_when_an_earlier_run_was_diagnosed() -> None:
    sig = signature.of(LEAK)
    (unknown,) = signature.stamped([LEAK], None)
    assert (unknown.signature, unknown.new, unknown.seen_since) == (sig, None, None)
    (new,) = signature.stamped([LEAK], {"000000000000": 1.0})
    assert (new.new, new.seen_since) == (True, None)
    (known,) = signature.stamped([LEAK], {sig: 1234.0})
    assert (known.new, known.seen_since) == (False, 1234.0)
    assert signature.novelty(new) == "new since the previous run"
    assert signature.novelty(known).startswith("seen since ")
    assert signature.novelty(unknown) == ""
