"""A test run that collected nothing: pytest's `collected 0 items` / `no tests ran`, or its exit code 5.
The tests exist but the runner does not see them (misnamed files or functions, the wrong directory, a
filter that deselects them all), so the advice is about naming and placement rather than the code.
A collection that failed with an error is not this pattern: that error is the failure to explain.
"""

from __future__ import annotations

import re

from workers.hardening.scan import Failure, FailurePattern, Mitigation, first_line

_COLLECTED_ZERO = re.compile(r"collected 0 items")
_NO_TESTS_RAN = re.compile(r"no tests ran")
_DESELECTED = re.compile(r"\d deselected")  # one digit is proof enough; `\d+` backtracks over digit runs


def _collected_none(line: str) -> re.Match[str] | None:
    """`collected 0 items` with no `error` after it on the line (`collected 0 items / 1 error` is a failed
    collection), or `no tests ran`. Only the last `collected 0 items` can qualify: `error` after an earlier
    one is after the last one too. A `(?!.*error)` lookahead would rescan the line at every occurrence."""
    last = line.rfind("collected 0 items")
    if last >= 0 and "error" not in line[last + len("collected 0 items") :]:
        return _COLLECTED_ZERO.match(line, last)
    return _NO_TESTS_RAN.search(line)


_PYTEST_HINT = re.compile(r"pytest|test session starts", re.IGNORECASE)


def no_tests_collected(failure: Failure) -> Mitigation | None:
    if failure.exit_code not in (None, 5):
        return None  # 5 is pytest's "nothing collected"; any other code failed for another reason
    found = first_line(failure.lines, _collected_none)
    if found is None and failure.exit_code == 5:
        found = first_line(failure.lines, _DESELECTED) or first_line(failure.lines, _PYTEST_HINT)
    if found is None:
        return None
    advice = (
        "The test runner collected no tests. Name test files test_*.py (or *_test.py), test functions "
        "test_*, and test classes Test* without an __init__; put them where the validation command looks "
        "(e.g. tests/), and make sure no -k/-m filter deselects them all."
    )
    return Mitigation(FailurePattern.NO_TESTS_COLLECTED, advice, found[0])
