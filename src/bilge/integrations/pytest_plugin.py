"""The pytest plugin: ``@pytest.mark.no_leak``, the ``bilge_leaks`` fixture, ``--bilge-no-leak``.

A thin shell over ``bilge.guard``. Inert unless used: pytest imports this
module at start-up (the ``pytest11`` entry point), so it imports nothing but
pytest and the standard library; ``bilge.guard`` (and numpy, through the
analysis) is imported by the first check.

- ``@pytest.mark.no_leak(calls=200)``: with ``--bilge-no-leak`` (or the ini
  option ``bilge_no_leak = true``), the test body runs once as pytest runs
  it, then ``calls`` more times in a leak check; the test fails with bilge's
  finding when it leaks. ``target=`` names a callable to check instead of
  the body. Without the option the test runs once, as usual, and the
  summary says how many marked tests were not checked.
- ``bilge_leaks``: ``bilge_leaks.check(fn, calls=…)`` returns the
  ``GuardResult`` (verdict, finding) for tests that assert on it themselves.

While a check repeats the code, pytest's own recorders are set aside: its
log-capture handlers keep every record and its warning recorder every
warning, which would be the test's "leak". The first call, run by pytest,
still shows both.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from bilge.guard import GuardPolicy, GuardResult

MARKER = "no_leak"
_RESULTS = pytest.StashKey["_Session"]()
POLICY_OPTIONS = ("calls", "max_calls", "max_seconds", "min_bytes_per_call", "explain", "frames", "show_values")


@dataclass
class _Session:
    """What the session's checks found, for the summary."""

    enabled: bool
    results: list[tuple[str, GuardResult]] = field(default_factory=list)
    unchecked: int = 0
    seconds: float = 0.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bilge", "memory leak checks (bilge)")
    group.addoption("--bilge-no-leak", action="store_true", default=None,
                    help="check the tests marked no_leak for memory leaks (repeats their body)")
    parser.addini("bilge_no_leak", type="bool", default=False,
                  help="check the tests marked no_leak for memory leaks (as --bilge-no-leak)")
    parser.addini("bilge_min_bytes_per_call", default="64",
                  help="steady growth per call below this many bytes is not a leak (default 64)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "no_leak(calls=200, target=None, min_bytes_per_call=64): fail if repeating the test body "
                   "(or target) leaks memory; checked under --bilge-no-leak")
    enabled = config.getoption("bilge_no_leak")
    if enabled is None:
        enabled = bool(config.getini("bilge_no_leak"))
    config.stash[_RESULTS] = _Session(enabled=bool(enabled))


def _policy(config: pytest.Config, options: dict[str, Any]) -> GuardPolicy:
    from bilge.guard import GuardPolicy

    unknown = sorted(set(options) - set(POLICY_OPTIONS))
    if unknown:
        raise ValueError("no_leak: unknown option(s) %s; known: %s" % (", ".join(unknown), ", ".join(POLICY_OPTIONS)))
    settings: dict[str, Any] = {"min_bytes_per_call": float(config.getini("bilge_min_bytes_per_call"))}
    settings.update(options)
    if "calls" in settings and "max_calls" not in settings:
        settings["max_calls"] = max(1000, 4 * int(settings["calls"]))
    try:
        return GuardPolicy(**settings)
    except (TypeError, ValueError) as exc:
        raise ValueError("no_leak: %s" % exc) from None


@contextlib.contextmanager
def _recorders_aside() -> Iterator[None]:
    """pytest's log-capture handlers and warning recorder, set aside while the code repeats."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if type(h).__module__.startswith("_pytest")]
    quiet = logging.NullHandler()  # so logging's last-resort handler does not print every record
    for h in ours:
        root.removeHandler(h)
    root.addHandler(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeHandler(quiet)
        for h in ours:
            root.addHandler(h)


def _run_check(config: pytest.Config, fn: Callable[[], object], name: str, policy: GuardPolicy) -> GuardResult:
    from bilge.guard import check

    session = config.stash[_RESULTS]
    started = time.perf_counter()
    calls = [0]

    def counted() -> object:
        calls[0] += 1
        return fn()

    with _recorders_aside():
        try:
            result = check(counted, name=name, policy=policy)
        except Exception as exc:  # the code under test failed when repeated: say so, not "leak"
            pytest.fail("no_leak: %s raised %s: %s on call %d of the leak check; the checked code must pass when "
                        "repeated (check a callable with target=… or bilge_leaks.check)"
                        % (name, type(exc).__name__, exc, calls[0]), pytrace=False)
    session.seconds += time.perf_counter() - started
    session.results.append((name, result))
    return result


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Iterator[None]:
    marker = pyfuncitem.get_closest_marker(MARKER)
    outcome = yield
    if marker is None:
        return outcome
    config = pyfuncitem.config
    session = config.stash[_RESULTS]
    if not session.enabled:
        session.unchecked += 1
        return outcome
    options = dict(marker.kwargs)
    if marker.args:
        options.setdefault("calls", marker.args[0])
    target = options.pop("target", None)
    try:
        policy = _policy(config, options)
    except ValueError as exc:
        pytest.fail(str(exc), pytrace=False)
    if target is None:
        testfunction = pyfuncitem.obj
        if _is_coroutine(testfunction):
            pytest.fail("no_leak: %s is a coroutine function; check a synchronous callable with target=… or "
                        "bilge_leaks.check" % pyfuncitem.nodeid, pytrace=False)
        args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

        def fn() -> object:
            return testfunction(**args)
    elif callable(target):
        fn = target
    else:
        pytest.fail("no_leak: target must be a callable taking no arguments (got %r)" % (target,), pytrace=False)
    result = _run_check(config, fn, pyfuncitem.nodeid, policy)
    if result.leaked:
        from bilge.guard import describe

        pytest.fail(describe(result), pytrace=False)
    return outcome


def _is_coroutine(fn: object) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


class LeakChecker:
    """The ``bilge_leaks`` fixture: leak checks a test runs and asserts on itself."""

    def __init__(self, config: pytest.Config, nodeid: str) -> None:
        self._config = config
        self._nodeid = nodeid

    def check(self, fn: Callable[[], object], calls: int = 200, name: str | None = None,
              **options: Any) -> GuardResult:
        """Call ``fn`` (no arguments) repeatedly and return bilge's verdict and finding.

        Keyword options are ``GuardPolicy``'s (``min_bytes_per_call``, ``max_calls``, ``explain`` …).
        """
        policy = _policy(self._config, {"calls": calls, **options})
        return _run_check(self._config, fn, name or "%s::%s" % (self._nodeid, getattr(fn, "__name__", "fn")),
                          policy)

    def assert_no_leak(self, fn: Callable[[], object], calls: int = 200, **options: Any) -> GuardResult:
        """``check``, failing the test with the finding when ``fn`` leaks."""
        result = self.check(fn, calls=calls, **options)
        if result.leaked:
            from bilge.guard import describe

            pytest.fail(describe(result), pytrace=False)
        return result


@pytest.fixture
def bilge_leaks(request: pytest.FixtureRequest) -> LeakChecker:
    """Leak checks of callables: ``bilge_leaks.check(fn, calls=200)`` returns the verdict and finding."""
    return LeakChecker(request.config, request.node.nodeid)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = config.stash.get(_RESULTS, None)
    if session is None or (not session.results and not session.unchecked):
        return
    write = terminalreporter.write_line
    terminalreporter.section("bilge leak checks")
    if session.results:
        leaks = [(name, r) for name, r in session.results if r.leaked]
        calls = sum(r.calls for _, r in session.results)
        write("%d checked, %d leaking, %d inconclusive; %d calls in %.1f s" % (
            len(session.results), len(leaks), sum(r.verdict == "inconclusive" for _, r in session.results),
            calls, session.seconds))
        for name, r in leaks:
            f = r.finding
            what = ", ".join(x for x in (f.type, f.holder and "held by " + f.holder,
                                         f.location and "at " + f.location) if x) if f else ""
            write("LEAK %s: %s" % (name, what or r.reason))
    if session.unchecked:
        write("%d test(s) marked no_leak ran once, unchecked: add --bilge-no-leak (or ini bilge_no_leak = true) "
              "to check them" % session.unchecked)
