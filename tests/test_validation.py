"""Validation with a baseline, on real repositories in temp dirs with real pytest runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from workers.validation import (
    PYTEST_COMMAND,
    InferredCommand,
    JUnitCounts,
    ValidationRun,
    compare,
    infer_validation,
    is_pytest_command,
    run_validation,
)

PYTEST = f"PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {sys.executable} -m pytest -q"
TIMEOUT = 60.0
MAX_BYTES = 20_000

CALC = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n"
CALC_TESTS = """\
from src.calc import add, mul


def test_add():
    assert add(2, 3) == 5


def test_mul():
    assert mul(2, 3) == 6


def test_known_bug():
    assert add(0.1, 0.2) == 0.3
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def calc_repo(root: Path) -> Path:
    """A repo whose suite has two passing tests and one that already fails (test_known_bug)."""
    return write(root, {"src/calc.py": CALC, "tests/test_calc.py": CALC_TESTS})


def validate(commands: list[str], repo: Path, timeout: float = TIMEOUT) -> ValidationRun:
    return run_validation(commands, repo, timeout=timeout, max_bytes=MAX_BYTES)


def all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if "__pycache__" not in p.parts}


# --- inference -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"pyproject.toml": '[project]\nname = "x"\n\n[tool.pytest.ini_options]\naddopts = "-q"\n'},
            InferredCommand(PYTEST_COMMAND, "inferred pytest from pyproject.toml [tool.pytest]"),
        ),
        ({"pytest.ini": "[pytest]\n"}, InferredCommand(PYTEST_COMMAND, "inferred pytest from pytest.ini")),
        (
            {"setup.cfg": "[metadata]\nname = x\n\n[tool:pytest]\ntestpaths = tests\n"},
            InferredCommand(PYTEST_COMMAND, "inferred pytest from setup.cfg [tool:pytest]"),
        ),
        (
            {"tox.ini": "[tox]\nenvlist = py311\n"},
            InferredCommand(PYTEST_COMMAND, "inferred pytest from tox.ini"),
        ),
        ({"conftest.py": ""}, InferredCommand(PYTEST_COMMAND, "inferred pytest from conftest.py")),
        ({"tests/test_x.py": ""}, InferredCommand(PYTEST_COMMAND, "inferred pytest from tests/test_*.py")),
        (
            {"package.json": json.dumps({"scripts": {"test": "jest"}})},
            InferredCommand("npm test", "inferred npm test from package.json scripts.test"),
        ),
        (
            {"go.mod": "module example.com/x\n\ngo 1.22\n"},
            InferredCommand("go test ./...", "inferred go test ./... from go.mod"),
        ),
        (
            {"Cargo.toml": '[package]\nname = "x"\nversion = "0.1.0"\n'},
            InferredCommand("cargo test", "inferred cargo test from Cargo.toml"),
        ),
        ({"pom.xml": "<project/>\n"}, InferredCommand("mvn -q test", "inferred mvn -q test from pom.xml")),
    ],
    ids=[
        "pyproject",
        "pytest.ini",
        "setup.cfg",
        "tox.ini",
        "conftest",
        "tests-dir",
        "npm",
        "go",
        "cargo",
        "maven",
    ],
)
def test_infers_the_test_command_from_the_toolchain_file(
    tmp_path: Path, files: dict[str, str], expected: InferredCommand
) -> None:
    assert infer_validation(write(tmp_path, files)) == expected


@pytest.mark.parametrize(
    "files",
    [
        {},
        {"README.md": "# nothing to test\n"},
        {"pyproject.toml": '[project]\nname = "x"\n\n[tool.ruff]\nline-length = 100\n'},
        {"setup.cfg": "[metadata]\nname = x\n"},
        {"package.json": json.dumps({"scripts": {"test": 'echo "Error: no test specified" && exit 1'}})},
        {"package.json": json.dumps({"scripts": {"build": "tsc"}})},
    ],
    ids=[
        "empty",
        "readme",
        "pyproject-without-pytest",
        "setup.cfg-without-pytest",
        "npm-init-stub",
        "no-test",
    ],
)
def test_infers_nothing_without_a_recognised_test_setup(tmp_path: Path, files: dict[str, str]) -> None:
    assert infer_validation(write(tmp_path, files)) is None


def test_pytest_wins_over_npm_when_a_repo_has_both(tmp_path: Path) -> None:
    write(tmp_path, {"package.json": json.dumps({"scripts": {"test": "jest"}}), "pytest.ini": "[pytest]\n"})
    inferred = infer_validation(tmp_path)
    assert inferred is not None and inferred.command == PYTEST_COMMAND


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("pytest", True),
        ("python -m pytest -q tests/unit", True),
        ("PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 /usr/bin/python3 -m pytest -x", True),
        ("cd backend && .venv/bin/pytest -q", True),
        ("python -m pytest -q || true", False),
        ("python -m pytest | tee log.txt", False),
        ("(cd backend && pytest)", False),
        ("pytest -q  # the unit tests", False),
        ("npm test", False),
        ("python -m mypy src", False),
    ],
)
def test_recognises_commands_that_end_by_running_pytest(command: str, expected: bool) -> None:
    assert is_pytest_command(command) is expected


# --- running and JUnit counts ----------------------------------------------------------------------


def test_pytest_run_reports_junit_counts_and_failing_ids_and_leaves_no_files_behind(tmp_path: Path) -> None:
    repo = calc_repo(tmp_path)
    write(
        repo,
        {
            "tests/test_more.py": """\
import pytest


@pytest.fixture
def broken():
    raise RuntimeError("fixture setup failed")


def test_uses_broken_fixture(broken):
    pass


@pytest.mark.skip(reason="not yet")
def test_later():
    pass
""",
        },
    )
    before = all_files(repo)
    (result,) = validate([PYTEST], repo).results
    assert all_files(repo) == before, "the JUnit file and .pytest_cache must stay out of the worktree"
    assert result.exit_code == 1 and not result.ok
    assert result.counts == JUnitCounts(passed=2, failed=1, errors=1, skipped=1)
    assert result.failing_ids == {
        "tests.test_calc::test_known_bug",
        "tests.test_more::test_uses_broken_fixture",
    }
    assert result.command == PYTEST
    assert "1 failed, 2 passed, 1 skipped, 1 error" in result.output


def test_non_pytest_command_is_judged_by_exit_code_only(tmp_path: Path) -> None:
    (result,) = validate(["echo checking; exit 3"], tmp_path).results
    assert (result.exit_code, result.counts, result.failing_ids) == (3, None, frozenset())
    assert result.output == "checking\n"


def test_every_command_runs_even_after_one_fails(tmp_path: Path) -> None:
    run = validate(["exit 1", "echo second"], tmp_path)
    assert [r.exit_code for r in run.results] == [1, 0]
    assert not run.ok


def test_long_output_is_capped(tmp_path: Path) -> None:
    (result,) = run_validation(
        ["yes line | head -c 50000"], tmp_path, timeout=TIMEOUT, max_bytes=1000
    ).results
    assert len(result.output.encode()) < 1100
    assert "bytes cut" in result.output


# --- comparing with the baseline -------------------------------------------------------------------


def test_test_already_failing_at_baseline_is_not_a_regression(tmp_path: Path) -> None:
    repo = calc_repo(tmp_path)
    baseline = validate([PYTEST], repo)
    greet_test = "from src.greet import greet\n\n\ndef test_greet():\n    assert greet('A')\n"
    write(
        repo,
        {"src/greet.py": "def greet(n):\n    return f'Hello, {n}!'\n", "tests/test_greet.py": greet_test},
    )
    verdict = compare(baseline, validate([PYTEST], repo))
    assert verdict.ok
    assert verdict.new_failures == []
    assert verdict.preexisting_failures == [f"{PYTEST}: tests.test_calc::test_known_bug"]
    assert "no new failures" in verdict.summary


def test_new_failing_test_is_a_regression_next_to_the_preexisting_one(tmp_path: Path) -> None:
    repo = calc_repo(tmp_path)
    baseline = validate([PYTEST], repo)
    write(repo, {"src/calc.py": CALC.replace("a * b", "a ** b")})  # breaks test_mul
    verdict = compare(baseline, validate([PYTEST], repo))
    assert not verdict.ok
    assert verdict.new_failures == [f"{PYTEST}: tests.test_calc::test_mul"]
    assert verdict.preexisting_failures == [f"{PYTEST}: tests.test_calc::test_known_bug"]
    assert "1 new failure(s)" in verdict.summary


def test_collection_error_introduced_by_the_phase_is_a_regression(tmp_path: Path) -> None:
    repo = calc_repo(tmp_path)
    baseline = validate([PYTEST], repo)
    write(repo, {"src/calc.py": "def add(a, b)\n    return a + b\n"})  # syntax error
    after = validate([PYTEST], repo)
    verdict = compare(baseline, after)
    assert after.results[0].exit_code == 2
    assert not verdict.ok
    assert verdict.new_failures == [f"{PYTEST}: tests.test_calc"]


def test_pytest_command_passing_at_baseline_then_failing_is_a_regression(tmp_path: Path) -> None:
    repo = write(
        tmp_path, {"src/calc.py": CALC, "tests/test_calc.py": CALC_TESTS.split("\n\n\ndef test_known")[0]}
    )
    baseline = validate([PYTEST], repo)
    assert baseline.ok
    write(repo, {"src/calc.py": CALC.replace("a + b", "a - b")})
    verdict = compare(baseline, validate([PYTEST], repo))
    assert verdict.new_failures == [f"{PYTEST}: tests.test_calc::test_add"]
    assert verdict.preexisting_failures == []


def test_command_passing_at_baseline_then_failing_is_a_regression(tmp_path: Path) -> None:
    repo = calc_repo(tmp_path)
    check = f"{sys.executable} -c 'from src.calc import add; assert add(2, 2) == 4'"
    baseline = validate([check], repo)
    write(repo, {"src/calc.py": CALC.replace("a + b", "a * b + 1")})
    verdict = compare(baseline, validate([check], repo))
    assert not verdict.ok
    assert verdict.new_failures == [f"{check}: exit 1, passed at baseline"]


def test_command_failing_at_baseline_and_still_failing_is_not_a_regression(tmp_path: Path) -> None:
    repo = calc_repo(tmp_path)
    lint = "grep -rn TODO src && exit 1 || exit 0"
    write(repo, {"src/todo.py": "# TODO: remove\n"})
    baseline = validate([lint], repo)
    write(repo, {"src/greet.py": "GREETING = 'hi'\n"})
    verdict = compare(baseline, validate([lint], repo))
    assert verdict.ok
    assert verdict.preexisting_failures == [f"{lint}: exit 1, failed at baseline too (exit 1)"]


def test_tests_failing_where_baseline_could_not_even_run_them_are_regressions(tmp_path: Path) -> None:
    repo = calc_repo(tmp_path)
    command = f"{PYTEST} tests/test_new.py"
    baseline = validate([command], repo)
    assert baseline.results[0].exit_code == 4 and baseline.results[0].failing_ids == set()  # no such file yet
    write(repo, {"tests/test_new.py": "def test_new():\n    assert False\n"})
    verdict = compare(baseline, validate([command], repo))
    assert verdict.new_failures == [f"{command}: tests.test_new::test_new"]


def test_timeout_is_a_regression(tmp_path: Path) -> None:
    command = "if [ -f slow.flag ]; then sleep 30; fi"
    baseline = validate([command], tmp_path, timeout=2)
    (tmp_path / "slow.flag").write_text("")
    after = validate([command], tmp_path, timeout=0.5)
    verdict = compare(baseline, after)
    assert after.results[0].timed_out
    assert not verdict.ok
    assert len(verdict.new_failures) == 1
    assert verdict.new_failures[0].startswith(f"{command}: timed out after")


def test_timeout_is_a_regression_even_when_baseline_timed_out_too(tmp_path: Path) -> None:
    baseline = validate(["sleep 30"], tmp_path, timeout=0.3)
    verdict = compare(baseline, validate(["sleep 30"], tmp_path, timeout=0.3))
    assert not verdict.ok and verdict.preexisting_failures == []


def test_failing_command_that_baseline_never_ran_is_a_regression(tmp_path: Path) -> None:
    verdict = compare(validate([], tmp_path), validate(["exit 2"], tmp_path))
    assert verdict.new_failures == ["exit 2: exit 2, not run at baseline"]


def test_fixing_a_preexisting_failure_leaves_nothing_to_report(tmp_path: Path) -> None:
    repo = calc_repo(tmp_path)
    baseline = validate([PYTEST], repo)
    write(
        repo,
        {
            "tests/test_calc.py": CALC_TESTS.replace("== 0.3", "== pytest.approx(0.3)").replace(
                "from src", "import pytest\nfrom src"
            )
        },
    )
    verdict = compare(baseline, validate([PYTEST], repo))
    assert verdict.ok and verdict.new_failures == [] and verdict.preexisting_failures == []
