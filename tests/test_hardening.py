"""Failure hardening on real-world tool output: each pattern, their priority order, and no false match."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from workers.hardening import PATTERNS, FailurePattern, Mitigation, match_failure

SCOPE = ["src/greet.py"]

PYTEST_MISSING_REQUESTS = """\
============================= test session starts ==============================
platform linux -- Python 3.11.7, pytest-8.3.4, pluggy-1.5.0
rootdir: /tmp/wt
collected 0 items / 1 error

==================================== ERRORS ====================================
_____________________ ERROR collecting tests/test_fetch.py _____________________
ImportError while importing test module '/tmp/wt/tests/test_fetch.py'.
Hint: make sure your test modules/packages have valid Python names.
Traceback:
/usr/lib/python3.11/importlib/__init__.py:126: in import_module
    return _bootstrap._gcd_import(name[level:], package)
tests/test_fetch.py:1: in <module>
    from src.fetch import get_json
src/fetch.py:1: in <module>
    import requests
E   ModuleNotFoundError: No module named 'requests'
=========================== short test summary info ============================
ERROR tests/test_fetch.py
!!!!!!!!!!!!!!!!!!!! Interrupted: 1 error during collection !!!!!!!!!!!!!!!!!!!!!
=============================== 1 error in 0.08s ===============================
"""

PYTHON_CANNOT_IMPORT = """\
Traceback (most recent call last):
  File "/tmp/wt/app.py", line 1, in <module>
    from src.greeting import greet
ImportError: cannot import name 'greet' from 'src.greeting' (/tmp/wt/src/greeting.py)
"""

NODE_MISSING_LODASH = """\
node:internal/modules/cjs/loader:1228
  throw err;
  ^

Error: Cannot find module 'lodash'
Require stack:
- /tmp/wt/src/index.js
    at Module._resolveFilename (node:internal/modules/cjs/loader:1225:15)
    at Module._load (node:internal/modules/cjs/loader:1051:27)
    at Object.<anonymous> (/tmp/wt/src/index.js:1:11) {
  code: 'MODULE_NOT_FOUND',
  requireStack: [ '/tmp/wt/src/index.js' ]
}

Node.js v20.11.1
"""

NODE_ESM_LOCAL = """\
node:internal/process/esm_loader:40
      internalBinding('errors').triggerUncaughtException(
                                ^

Error [ERR_MODULE_NOT_FOUND]: Cannot find module '/tmp/wt/src/utils' imported from /tmp/wt/src/index.mjs
Did you mean to import ../src/utils.js?
    at finalizeResolution (node:internal/modules/esm/resolve:264:11) {
  code: 'ERR_MODULE_NOT_FOUND',
  url: 'file:///tmp/wt/src/utils'
}
"""

PYTEST_NOTHING_COLLECTED = """\
============================= test session starts ==============================
platform linux -- Python 3.11.7, pytest-8.3.4, pluggy-1.5.0
rootdir: /tmp/wt
collected 0 items

============================ no tests ran in 0.01s =============================
"""

PYTEST_ALL_DESELECTED = "3 deselected in 0.02s\n"

PYTHON_CANT_OPEN = "python: can't open file '/tmp/wt/manage.py': [Errno 2] No such file or directory\n"

NPM_NO_PACKAGE_JSON = (
    "npm error code ENOENT\n"
    "npm error syscall open\n"
    "npm error path /tmp/wt/package.json\n"
    "npm error errno -2\n"
    "npm error enoent Could not read package.json: "
    "Error: ENOENT: no such file or directory, open '/tmp/wt/package.json'\n"
    "npm error enoent This is related to npm not being able to find a file.\n"
)

PYTEST_PATH_NOT_FOUND = """\
ERROR: file or directory not found: tests/unit

no tests ran in 0.00s
"""

PYTEST_ERROR_OUTSIDE_SCOPE = """\
F                                                                        [100%]
=================================== FAILURES ===================================
__________________________________ test_greet __________________________________

    def test_greet():
>       assert greet("Ada") == "Hello, Ada!"

tests/test_greet.py:5:
_ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _
src/greet.py:4: in greet
    return "Hello, " + format_name(name, style="title") + "!"
_ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _

name = 'Ada', style = 'title'

    def format_name(name, style):
>       return STYLES[style](name)
E       KeyError: 'title'

lib/names.py:4: KeyError
=========================== short test summary info ============================
FAILED tests/test_greet.py::test_greet - KeyError: 'title'
1 failed in 0.03s
"""

PYTEST_ASSERTION_IN_TEST = """\
F                                                                        [100%]
=================================== FAILURES ===================================
__________________________________ test_greet __________________________________

    def test_greet():
>       assert greet("Ada") == "Hello, Ada!"
E       AssertionError: assert 'Hi, Ada' == 'Hello, Ada!'
E         - Hello, Ada!
E         + Hi, Ada

tests/test_greet.py:5: AssertionError
=========================== short test summary info ============================
FAILED tests/test_greet.py::test_greet - AssertionError: assert 'Hi, Ada' == 'Hello, Ada!'
1 failed in 0.02s
"""

PYTHON_PERMISSION = """\
Traceback (most recent call last):
  File "/tmp/wt/src/greet.py", line 4, in <module>
    with open("/var/log/greet.log", "a") as log:
         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
PermissionError: [Errno 13] Permission denied: '/var/log/greet.log'
"""

SAMPLES: dict[FailurePattern, str] = {
    FailurePattern.MISSING_PYTHON_DEPENDENCY: PYTEST_MISSING_REQUESTS,
    FailurePattern.MISSING_NODE_MODULE: NODE_MISSING_LODASH,
    FailurePattern.NO_TESTS_COLLECTED: PYTEST_NOTHING_COLLECTED,
    FailurePattern.WRONG_WORKING_DIRECTORY: PYTHON_CANT_OPEN,
    FailurePattern.SCOPE_MISMATCH: PYTEST_ERROR_OUTSIDE_SCOPE,
    FailurePattern.PERMISSION_ERROR: PYTHON_PERMISSION,
}


def match(output: str, exit_code: int | None = 1, worktree: Path | None = None) -> Mitigation:
    mitigation = match_failure(output, exit_code=exit_code, scope=SCOPE, worktree=worktree)
    assert mitigation is not None, "expected a pattern to match"
    return mitigation


# --- one pattern at a time -------------------------------------------------------------------------


def test_missing_python_module_names_the_module_and_a_stdlib_alternative() -> None:
    m = match(PYTEST_MISSING_REQUESTS, exit_code=2)
    assert m.pattern is FailurePattern.MISSING_PYTHON_DEPENDENCY
    assert "'requests' is not installed" in m.advice
    assert "urllib.request" in m.advice
    assert m.evidence == "E   ModuleNotFoundError: No module named 'requests'"


def test_missing_python_submodule_is_reported_by_its_top_level_package() -> None:
    m = match("ModuleNotFoundError: No module named 'yaml.constructor'\n")
    assert m.pattern is FailurePattern.MISSING_PYTHON_DEPENDENCY
    assert "'yaml'" in m.advice and "json" in m.advice


def test_missing_module_that_is_part_of_the_repo_is_an_import_path_problem(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    m = match("E   ModuleNotFoundError: No module named 'src'\n", exit_code=2, worktree=tmp_path)
    assert m.pattern is FailurePattern.MISSING_PYTHON_DEPENDENCY
    assert "'src' is part of this repository (at 'src')" in m.advice
    assert "not installed" not in m.advice


def test_cannot_import_name_names_the_symbol_and_the_module_file() -> None:
    m = match(PYTHON_CANNOT_IMPORT)
    assert m.pattern is FailurePattern.MISSING_PYTHON_DEPENDENCY
    assert "'src.greeting' does not define 'greet'" in m.advice
    assert "src/greeting.py" in m.advice
    assert m.evidence.startswith("ImportError: cannot import name 'greet'")


def test_missing_node_package_says_not_to_depend_on_it() -> None:
    m = match(NODE_MISSING_LODASH)
    assert m.pattern is FailurePattern.MISSING_NODE_MODULE
    assert "'lodash' is not installed" in m.advice
    assert "package.json" in m.advice
    assert m.evidence == "Error: Cannot find module 'lodash'"


def test_esm_module_not_found_for_a_local_file_asks_for_the_extension() -> None:
    m = match(NODE_ESM_LOCAL)
    assert m.pattern is FailurePattern.MISSING_NODE_MODULE
    assert "local module '/tmp/wt/src/utils'" in m.advice
    assert "'/tmp/wt/src/utils.js'" in m.advice
    assert "ERR_MODULE_NOT_FOUND" in m.evidence


def test_pytest_exit_5_with_nothing_collected_explains_test_discovery() -> None:
    m = match(PYTEST_NOTHING_COLLECTED, exit_code=5)
    assert m.pattern is FailurePattern.NO_TESTS_COLLECTED
    assert "test_*.py" in m.advice
    assert m.evidence == "collected 0 items"


def test_pytest_exit_5_when_a_filter_deselects_everything_is_no_tests_collected() -> None:
    m = match(PYTEST_ALL_DESELECTED, exit_code=5)
    assert m.pattern is FailurePattern.NO_TESTS_COLLECTED
    assert m.evidence == "3 deselected in 0.02s"


def test_script_missing_at_root_but_present_in_a_subdirectory_names_where_it_is(tmp_path: Path) -> None:
    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / "manage.py").write_text("print('hi')\n")
    output = PYTHON_CANT_OPEN.replace("/tmp/wt", str(tmp_path))
    m = match(output, exit_code=2, worktree=tmp_path)
    assert m.pattern is FailurePattern.WRONG_WORKING_DIRECTORY
    assert "'manage.py' is not at the repository root" in m.advice
    assert "'backend/manage.py'" in m.advice


def test_npm_enoent_for_package_json_is_a_wrong_working_directory(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "package.json").write_text("{}\n")
    output = NPM_NO_PACKAGE_JSON.replace("/tmp/wt", str(tmp_path))
    m = match(output, exit_code=254, worktree=tmp_path)
    assert m.pattern is FailurePattern.WRONG_WORKING_DIRECTORY
    assert "'web/package.json'" in m.advice
    assert "ENOENT" in m.evidence


def test_pytest_usage_error_for_a_missing_path_is_wrong_directory_not_no_tests() -> None:
    m = match(PYTEST_PATH_NOT_FOUND, exit_code=4)
    assert m.pattern is FailurePattern.WRONG_WORKING_DIRECTORY
    assert "'tests/unit' does not exist relative to the repository root" in m.advice


def test_file_not_found_for_a_data_file_that_lives_in_a_subdirectory_advises_module_relative_paths(
    tmp_path: Path,
) -> None:
    (tmp_path / "src" / "data").mkdir(parents=True)
    (tmp_path / "src" / "data" / "names.json").write_text("[]\n")
    output = "FileNotFoundError: [Errno 2] No such file or directory: 'data/names.json'\n"
    m = match(output, worktree=tmp_path)
    assert m.pattern is FailurePattern.WRONG_WORKING_DIRECTORY
    assert "'src/data/names.json'" in m.advice
    assert "Path(__file__).parent" in m.advice


def test_file_not_found_that_exists_nowhere_in_the_repo_is_not_a_working_directory_problem(
    tmp_path: Path,
) -> None:
    output = "cat: fixtures/input.csv: No such file or directory\n"
    assert match_failure(output, exit_code=1, scope=SCOPE, worktree=tmp_path) is None


def test_error_raised_in_a_file_outside_scope_is_a_scope_mismatch() -> None:
    m = match(PYTEST_ERROR_OUTSIDE_SCOPE)
    assert m.pattern is FailurePattern.SCOPE_MISMATCH
    assert "'lib/names.py', which is outside this phase's scope ['src/greet.py']" in m.advice
    assert m.evidence == "lib/names.py:4: KeyError"


def test_traceback_with_absolute_paths_is_resolved_against_the_worktree(tmp_path: Path) -> None:
    output = f"""\
Traceback (most recent call last):
  File "{tmp_path}/src/greet.py", line 3, in <module>
    load()
  File "{tmp_path}/config/settings.py", line 7, in load
    raise KeyError("GREETING")
KeyError: 'GREETING'
"""
    m = match(output, worktree=tmp_path)
    assert m.pattern is FailurePattern.SCOPE_MISMATCH
    assert "'config/settings.py'" in m.advice
    assert m.evidence == f'File "{tmp_path}/config/settings.py", line 7, in load'


def test_linter_diagnostic_about_a_file_outside_scope_is_a_scope_mismatch() -> None:
    output = "lib/util.py:1:8: F401 [*] `os` imported but unused\nFound 1 error.\n"
    m = match(output)
    assert m.pattern is FailurePattern.SCOPE_MISMATCH
    assert "'lib/util.py'" in m.advice


def test_short_pytest_traceback_names_the_frame_that_raised() -> None:
    output = """\
__________________________________ test_greet __________________________________
tests/test_greet.py:5: in test_greet
    assert greet("Ada") == "Hello, Ada!"
src/greet.py:4: in greet
    return "Hello, " + format_name(name, style="title") + "!"
lib/names.py:4: in format_name
    return STYLES[style](name)
E   KeyError: 'title'
=========================== short test summary info ============================
FAILED tests/test_greet.py::test_greet - KeyError: 'title'
"""
    m = match(output)
    assert m.pattern is FailurePattern.SCOPE_MISMATCH
    assert m.evidence == "lib/names.py:4: in format_name"


def test_javascript_error_thrown_in_a_file_outside_scope_is_a_scope_mismatch(tmp_path: Path) -> None:
    output = f"""\
{tmp_path}/lib/format.js:3
  return STYLES[style](name);
                      ^

TypeError: STYLES[style] is not a function
    at formatName ({tmp_path}/lib/format.js:3:23)
    at greet ({tmp_path}/src/greet.js:4:10)
"""
    m = match(output, worktree=tmp_path)
    assert m.pattern is FailurePattern.SCOPE_MISMATCH
    assert "'lib/format.js'" in m.advice


def test_warnings_about_files_outside_scope_are_not_a_scope_mismatch() -> None:
    output = PYTEST_ASSERTION_IN_TEST.replace(
        "1 failed in 0.02s",
        "=============================== warnings summary ===============================\n"
        "tests/test_greet.py::test_greet\n"
        "  /tmp/wt/lib/legacy.py:3: DeprecationWarning: datetime.datetime.utcnow() is deprecated\n"
        "    stamp = datetime.utcnow()\n\n"
        "lib/legacy.py:3: DeprecationWarning: datetime.datetime.utcnow() is deprecated\n"
        "1 failed, 1 warning in 0.02s",
    )
    assert match_failure(output, exit_code=1, scope=SCOPE) is None


def test_permission_error_outside_the_worktree_advises_a_temp_directory() -> None:
    m = match(PYTHON_PERMISSION)
    assert m.pattern is FailurePattern.PERMISSION_ERROR
    assert "'/var/log/greet.log'" in m.advice
    assert "tempfile.mkdtemp()" in m.advice
    assert m.evidence == "PermissionError: [Errno 13] Permission denied: '/var/log/greet.log'"


def test_script_without_executable_bit_advises_running_it_through_its_interpreter() -> None:
    m = match("bash: line 1: ./scripts/check.sh: Permission denied\n", exit_code=126)
    assert m.pattern is FailurePattern.PERMISSION_ERROR
    assert "bash scripts/check.sh" in m.advice


def test_node_eacces_is_a_permission_error() -> None:
    output = "Error: EACCES: permission denied, open '/usr/lib/node_modules/.cache/x.json'\n"
    m = match(output)
    assert m.pattern is FailurePattern.PERMISSION_ERROR
    assert "'/usr/lib/node_modules/.cache/x.json'" in m.advice


def test_ansi_colour_codes_do_not_hide_a_pattern() -> None:
    m = match("\x1b[31mE   ModuleNotFoundError: No module named 'numpy'\x1b[0m\n")
    assert m.pattern is FailurePattern.MISSING_PYTHON_DEPENDENCY
    assert "'numpy'" in m.advice


# --- priority and no match -------------------------------------------------------------------------


def test_patterns_are_tried_in_the_documented_priority_order() -> None:
    assert [p.__name__ for p in PATTERNS] == [p.value for p in FailurePattern]


@pytest.mark.parametrize("higher", list(FailurePattern)[:-1], ids=str)
def test_higher_priority_pattern_wins_when_two_match(higher: FailurePattern) -> None:
    patterns = list(FailurePattern)
    lower = patterns[patterns.index(higher) + 1]
    assert match(SAMPLES[lower], exit_code=None).pattern is lower  # each sample matches on its own
    combined = SAMPLES[lower] + "\n" + SAMPLES[higher]  # the lower one comes first in the text
    assert match(combined, exit_code=None).pattern is higher


def test_missing_dependency_outranks_a_permission_error_in_the_same_output() -> None:
    combined = PYTHON_PERMISSION + PYTEST_MISSING_REQUESTS
    assert match(combined, exit_code=2).pattern is FailurePattern.MISSING_PYTHON_DEPENDENCY


def test_plain_assertion_failure_in_a_test_file_matches_no_pattern() -> None:
    assert match_failure(PYTEST_ASSERTION_IN_TEST, exit_code=1, scope=SCOPE) is None


def test_error_inside_the_scope_matches_no_pattern() -> None:
    output = PYTEST_ERROR_OUTSIDE_SCOPE.replace("lib/names.py", "src/greet.py")
    assert match_failure(output, exit_code=1, scope=SCOPE) is None


def test_empty_output_matches_no_pattern() -> None:
    assert match_failure("", exit_code=1, scope=SCOPE) is None


def test_a_traceback_from_inline_code_is_not_a_scope_mismatch() -> None:
    output = (
        "Traceback (most recent call last):\n"
        '  File "<string>", line 1, in <module>\n'
        "AssertionError: greeting is wrong\n"
    )
    assert match_failure(output, exit_code=1, scope=["src/"]) is None


# --- linear time: a huge log never starves the lease heartbeat -----------------------------------


class Ticker:
    """A thread that wakes every 5 ms and records the longest it was kept from running (by the GIL)."""

    def __init__(self) -> None:
        self.longest_gap = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.005):
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def timed_match(label: str, output: str, **kw: Any) -> tuple[Mitigation | None, float, float]:
    with Ticker() as ticker:
        started = time.monotonic()
        found = match_failure(output, **kw)
        took = time.monotonic() - started
    size = len(output) / 2**20
    print(f"\n{label}: {size:.1f} MiB in {took:.2f} s, longest GIL hold {ticker.longest_gap:.3f} s")
    return found, took, ticker.longest_gap


# Each piece once sent a pattern into super-linear backtracking: `ENOENT.*?([^\s'"]*package\.json)` (cubic),
# `\d+ deselected` over a digit run and `collected 0 items(?!.*error)` repeated (quadratic).
WORST_PIECES = ("ENOENT", "1" * 4096, "collected 0 items ", "a" * 4096, "x: ", "'", "(", "at ", "/tmp/wt/")
MAX_GIL_HOLD = 0.5  # seconds: the lease heartbeat runs every few seconds, so a hold this short is harmless


def test_one_megabyte_line_is_matched_quickly_without_holding_the_gil(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "package.json").write_text("{}")
    blob = "".join(WORST_PIECES) * (2**20 // len("".join(WORST_PIECES)))
    line = f"npm error code ENOENT {blob} error path {tmp_path}/package.json"
    found, took, hold = timed_match(
        "1 MB single line", line, exit_code=254, scope=["web/"], worktree=tmp_path
    )
    assert took < 10 and hold < MAX_GIL_HOLD
    assert (
        found is not None and found.pattern is FailurePattern.WRONG_WORKING_DIRECTORY
    )  # the tail still counts
    assert "'package.json'" in found.advice and len(found.evidence) <= 4096 + 7


def test_ten_megabyte_log_is_matched_quickly_and_its_last_line_still_counts(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    noisy = [
        "cat: data.csv: No such file or directory",  # a missing file that is nowhere deeper either
        "collected 0 items / 1 error",
        "1" * 3000 + " passed",
        "    at Object.<anonymous> (" + "(" * 2000 + "/tmp/wt/x.js:1:2",
        "ENOENT " + "b" * 5000,
        "src/greet.py:1: in <module>",
    ]
    lines = noisy * (10 * 2**20 // len("\n".join(noisy)) + 1)
    # The lowest-priority pattern's evidence comes last, so every pattern scans the whole log first.
    output = "\n".join(lines) + "\nPermissionError: [Errno 13] Permission denied: '/etc/app.conf'\n"
    assert len(output) > 10 * 2**20
    found, took, hold = timed_match("10 MB log", output, exit_code=5, scope=SCOPE, worktree=tmp_path)
    assert took < 20 and hold < MAX_GIL_HOLD
    assert found is not None and found.pattern is FailurePattern.PERMISSION_ERROR
    assert "'/etc/app.conf'" in found.advice
