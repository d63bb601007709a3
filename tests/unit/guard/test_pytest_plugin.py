"""The pytest plugin, run by pytest itself (pytester, in a subprocess: a check freezes and collects the heap)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest_plugins = ("pytester",)

LEAKY_AND_BENIGN = '''
import functools
import itertools
import logging
import warnings

import pytest

_IDS = itertools.count()
_SEEN = {}
log = logging.getLogger("shop")


class Invoice:
    def __init__(self, number):
        self.number = number
        self.lines = [{"sku": "SKU-%d" % n, "qty": n} for n in range(8)]


def render(number):
    _SEEN[number] = Invoice(number)  # kept forever


@pytest.mark.no_leak(calls=200)
def test_render_leaks():
    render(next(_IDS))


@functools.lru_cache(maxsize=64)
def rates(region):
    return [region] * 30


@pytest.mark.no_leak(calls=200)
def test_warm_cache_only():
    rates(next(_IDS))


@pytest.mark.no_leak(calls=200)
def test_logs_and_warns():
    log.warning("rendered %d", next(_IDS))
    warnings.warn("old api", DeprecationWarning)


@pytest.mark.no_leak(calls=200, target=lambda: render(next(_IDS)))
def test_target_leaks():
    pass
'''


def test_a_leaky_test_fails_with_type_holder_and_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_shop=LEAKY_AND_BENIGN)
    result = pytester.runpytest_subprocess("--bilge-no-leak", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "*test_render_leaks: leak after*",
        "*growing type:     test_shop.Invoice (+1.00 per call)*",
        "*held by:          test_shop._SEEN[[]...[]]*",
        "*allocated at:     *test_shop.py:20*",
        "*bilge leak checks*",
        "4 checked, 2 leaking, 0 inconclusive;*",
        "LEAK test_shop.py::test_render_leaks: test_shop.Invoice, held by test_shop._SEEN[[]...[]], at *"
        "test_shop.py:20",
    ])
    assert "test_warm_cache_only" not in "\n".join(line for line in result.stdout.lines if "FAILED" in line)


def test_marked_tests_run_once_unchecked_without_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_shop=LEAKY_AND_BENIGN)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["4 test(s) marked no_leak ran once, unchecked: add --bilge-no-leak*"])


def test_the_ini_option_turns_checks_on(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_shop=LEAKY_AND_BENIGN)
    pytester.makeini("[pytest]\nbilge_no_leak = true\n")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2, failed=2)


def test_the_fixture_returns_findings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fixture='''
import itertools

_IDS = itertools.count()
_KEPT = []


def keep():
    _KEPT.append({"id": next(_IDS), "tags": ["a", "b"]})


def test_check_returns_the_finding(bilge_leaks):
    result = bilge_leaks.check(keep, calls=150)
    assert result.leaked
    assert result.finding.holder == "test_fixture._KEPT[...]"
    assert result.finding.type == "dict"
    assert result.confirmed_after_calls <= 300


def test_benign_returns_no_leak(bilge_leaks):
    result = bilge_leaks.check(lambda: sorted(range(100)), calls=100)
    assert result.verdict == "no-leak" and result.finding is None
''')
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_bad_marker_options_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad='''
import pytest

@pytest.mark.no_leak(calls=5)
def test_too_few():
    pass

@pytest.mark.no_leak(cals=200)
def test_typo():
    pass

_STOCK = [3]

@pytest.mark.no_leak(calls=100)
def test_not_repeatable():
    assert _STOCK.pop() == 3
''')
    result = pytester.runpytest_subprocess("--bilge-no-leak", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*no_leak: calls must be at least 32*", "*no_leak: unknown option(s) cals; known:*",
                                 "*no_leak: test_bad.py::test_not_repeatable raised IndexError: pop from empty list "
                                 "on call 1 of the leak check; the checked code must pass when repeated*"])


def test_the_plugin_is_inert_when_unused() -> None:
    # pytest imports the plugin at every start: it must not pull in the analysis (numpy) or the guard.
    code = ("import sys, bilge.integrations.pytest_plugin; "
            "print(sorted(m for m in ('numpy', 'bilge.guard', 'bilge.analysis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
