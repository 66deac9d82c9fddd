"""Which test command a repository's toolchain implies, read through `RepoFiles` so the same rules serve
a worker's worktree (`workers/validation.py`) and a repository tree at a ref (`shared/plans`)."""

from __future__ import annotations

import configparser
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

PYTEST_COMMAND = "python -m pytest -q"
_NPM_DEFAULT_TEST = 'echo "Error: no test specified" && exit 1'


class RepoFiles(Protocol):
    """Read access to a repository's files by repo-relative POSIX path."""

    def is_file(self, path: str) -> bool: ...

    def read_text(self, path: str) -> str | None:
        """The file's text; None when it is missing, unreadable or not text."""

    def any_match(self, directory: str, pattern: str) -> bool:
        """True when an entry directly in `directory` matches the glob `pattern`."""


@dataclass(frozen=True)
class InferredCommand:
    command: str
    reason: str


def _pyproject_configures_pytest(files: RepoFiles) -> bool:
    text = files.read_text("pyproject.toml")
    try:
        data = tomllib.loads(text) if text is not None else {}
    except tomllib.TOMLDecodeError:
        return False
    tool = data.get("tool")
    return isinstance(tool, dict) and "pytest" in tool


def _ini_has_section(files: RepoFiles, path: str, section: str) -> bool:
    text = files.read_text(path)
    if text is None:
        return False
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error:
        return False
    return parser.has_section(section)


def _pytest_reason(files: RepoFiles) -> str | None:
    if _pyproject_configures_pytest(files):
        return "pyproject.toml [tool.pytest]"
    checks: list[tuple[str, Callable[[], bool]]] = [
        ("pytest.ini", lambda: files.is_file("pytest.ini")),
        ("setup.cfg [tool:pytest]", lambda: _ini_has_section(files, "setup.cfg", "tool:pytest")),
        ("tox.ini", lambda: files.is_file("tox.ini")),
        ("conftest.py", lambda: files.is_file("conftest.py")),
        ("tests/conftest.py", lambda: files.is_file("tests/conftest.py")),
        ("tests/test_*.py", lambda: files.any_match("tests", "test_*.py")),
    ]
    return next((reason for reason, check in checks if check()), None)


def _npm_has_test_script(files: RepoFiles) -> bool:
    text = files.read_text("package.json")
    try:
        scripts = json.loads(text).get("scripts") if text is not None else None
    except (ValueError, AttributeError):
        return False
    test = scripts.get("test") if isinstance(scripts, dict) else None
    return isinstance(test, str) and bool(test.strip()) and test.strip() != _NPM_DEFAULT_TEST


def infer_toolchain(files: RepoFiles) -> InferredCommand | None:
    """A test command for the repository's toolchain, with the file that gave it away; None if unknown."""
    reason = _pytest_reason(files)
    if reason:
        return InferredCommand(PYTEST_COMMAND, f"inferred pytest from {reason}")
    if _npm_has_test_script(files):
        return InferredCommand("npm test", "inferred npm test from package.json scripts.test")
    for marker, command in (
        ("go.mod", "go test ./..."),
        ("Cargo.toml", "cargo test"),
        ("pom.xml", "mvn -q test"),
    ):
        if files.is_file(marker):
            return InferredCommand(command, f"inferred {command} from {marker}")
    return None
