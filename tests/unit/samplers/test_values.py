"""Value renderings for --show-values: bounded, and never running user code."""

from __future__ import annotations

from bilge.samplers.values import MAX_CHARS, held_item, render


class Customer:
    def __init__(self) -> None:
        self.email = "ada@example.com"
        self.orders = list(range(10))
        self.big = 10**300

    def __repr__(self) -> str:
        raise AssertionError("user code ran")


class Secretive(str):
    def __repr__(self) -> str:
        raise AssertionError("user code ran")


def test_plain_instances_are_walked_by_hand_and_bounded() -> None:
    assert render(Customer()) == "Customer(email='ada@example.com', orders=[0, 1, 2, 3, …], big=<int of 997 bits>)"


def test_long_text_and_deep_containers_are_cut() -> None:
    text = render({"k": {"deeper": {"deepest": 1}}, "s": "x" * 1000})
    assert len(text) <= MAX_CHARS
    assert text.startswith("{'k': {'deeper': <dict>}, 's': 'xxx")


def test_subclasses_of_builtins_are_never_repr_ed() -> None:
    assert render(Secretive("s3cr3t")) == "Secretive()"  # its (empty) fields, never its text


def test_held_item_names_its_key_in_a_dict() -> None:
    item = ["a"]
    assert held_item({"order-1": item}, item) == "'order-1': ['a']"
    assert held_item([item], item) == "['a']"
