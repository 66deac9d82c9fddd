"""Failures about where files are: a path that is missing because commands run from the repository root
(the file exists, but deeper), and an error raised in a repository file outside the phase's scope. The
first is fixed by naming paths from the root; the second cannot be fixed where it is reported, so the
builder is told to adapt the in-scope code instead of retrying an edit it may not make.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import PurePosixPath

from workers.hardening.scan import (
    Failure,
    FailurePattern,
    Finder,
    Mitigation,
    NameIndex,
    first_line,
    relative_path,
)

# --- wrong working directory -----------------------------------------------------------------------

_CANT_OPEN = re.compile(r"can't open file '([^']+)'")
_PYTEST_NOT_FOUND = re.compile(r"ERROR: file or directory not found: (\S+)")
# A token that ends in package.json, matched only from a token's start: `ENOENT.*?([^\s'"]*package\.json)`
# took cubic time (every ENOENT x every later start x the token's length), about a minute on one 64 KB line.
_PACKAGE_JSON_TOKEN = re.compile(r"(?<![^\s'\"])([^\s'\"]*package\.json)")
_NO_SUCH_FILE = re.compile(
    r"No such file or directory: '([^']+)'"  # Python FileNotFoundError
    r"|(?:^|\s)([^\s:'\"]+): No such file or directory"  # bash/cat/ls style
    r"|ENOENT: no such file or directory, \w+ '([^']+)'"  # Node
)


def _enoent_package_json(line: str) -> re.Match[str] | None:
    """A `...package.json` path somewhere after `ENOENT` on the line (npm's missing-manifest error)."""
    enoent = line.find("ENOENT")
    return None if enoent < 0 else _PACKAGE_JSON_TOKEN.search(line, enoent + len("ENOENT"))


def _under_subdirectory(rel: str, names: NameIndex) -> str | None:
    """The repo-relative path of a file `<subdir>/<rel>` when `rel` itself is missing at the root."""
    if (names.worktree / rel).exists():
        return None
    return next((p for p in names.paths(PurePosixPath(rel).name) if p.endswith("/" + rel)), None)


def _deeper(path: str, failure: Failure) -> tuple[str, str] | None:
    """(repo-relative path, where it really is) when `path` is missing at the root but exists deeper."""
    rel = relative_path(path, failure.worktree)
    if rel is None or failure.names is None:
        return None
    found = _under_subdirectory(rel, failure.names)
    return None if found is None else (rel, found)


def _cwd_advice(path: str, deeper: tuple[str, str] | None) -> str:
    if deeper is None:
        where = f"'{path}' does not exist relative to the repository root, where validation commands run"
    else:
        rel, found = deeper
        where = f"'{rel}' is not at the repository root (validation's working directory) but at '{found}'"
    return (
        f"{where}. Refer to files by their path from the repository root, and in code resolve data files "
        "relative to the module (Path(__file__).parent / ...) instead of the current directory."
    )


def wrong_working_directory(failure: Failure) -> Mitigation | None:
    finders: tuple[re.Pattern[str] | Finder, ...] = (_CANT_OPEN, _PYTEST_NOT_FOUND, _enoent_package_json)
    for finder in finders:
        found = first_line(failure.lines, finder)
        if found:
            path = found[1].group(1)
            advice = _cwd_advice(path, _deeper(path, failure))
            return Mitigation(FailurePattern.WRONG_WORKING_DIRECTORY, advice, found[0])
    # A bare "No such file or directory" is a working-directory problem only if the file lives deeper.
    tried: set[str] = set()  # a log repeating one missing path thousands of times costs one lookup
    for line in failure.lines:
        match = _NO_SUCH_FILE.search(line)
        path = next((g for g in match.groups() if g), None) if match else None
        if path is None or path in tried:
            continue
        tried.add(path)
        deeper = _deeper(path, failure)
        if deeper:
            return Mitigation(FailurePattern.WRONG_WORKING_DIRECTORY, _cwd_advice(path, deeper), line.strip())
    return None


# --- scope mismatch --------------------------------------------------------------------------------

_PATH = r"(\.?/?[\w./-]+\.[A-Za-z]\w*)"
_LOCATION = re.compile(rf"^{_PATH}:\d+(?::\d+)?: (?!in )(?!\w*Warning\b)\S")  # pytest last frame, linters
_ARROW = re.compile(rf"^\s*--> {_PATH}:\d+")  # ruff's full format, rustc
_PY_FRAME = re.compile(r'^\s*File "([^"]+)", line \d+')
_EXCEPTION_LINE = re.compile(r"^[\w.]*(?:Error|Exception|Exit|Interrupt)\b")
_SHORT_FRAME = re.compile(rf"^{_PATH}:\d+: in \S")  # pytest --tb=short and collection tracebacks
_SHORT_SEPARATOR = re.compile(r"^(?:_ )+_?$")
_NODE_FRAME = re.compile(r"^\s+at (?:.*\()?(?:file://)?(/?[\w./-]+\.[cm]?[jt]sx?):\d+:\d+\)?$")
_LIBRARY_MARKERS = ("site-packages", "dist-packages", "node_modules", "<frozen", "/lib/python")
_TEST_NAME = re.compile(r"(^test_.*\.py$|_test\.(py|go)$|\.(test|spec)\.[cm]?[jt]sx?$)")
_TEST_DIRS = {"tests", "test", "__tests__", "spec", "testing"}

Origin = tuple[str, str]  # (path, evidence line)


def _diagnostic_locations(lines: list[str]) -> Iterator[Origin]:
    """`path:line: message` lines: pytest's innermost frame, ruff/flake8/mypy/go/rustc diagnostics."""
    for line in lines:
        if found := (_LOCATION.match(line.strip()) or _ARROW.match(line)):
            yield found.group(1), line.strip()


def _python_tracebacks(lines: list[str]) -> Iterator[Origin]:
    """The innermost `File "...", line N` frame of each Python traceback."""
    frame: Origin | None = None
    for line in lines:
        if found := _PY_FRAME.match(line):
            frame = (found.group(1), line.strip())
        elif frame and _EXCEPTION_LINE.match(line):
            yield frame
            frame = None


def _pytest_short_tracebacks(lines: list[str]) -> Iterator[Origin]:
    """The `path:N: in func` frame directly above pytest's `E   ...` lines."""
    frame: Origin | None = None
    for line in lines:
        if found := _SHORT_FRAME.match(line.strip()):
            frame = (found.group(1), line.strip())
        elif _SHORT_SEPARATOR.match(line.strip()):
            frame = None  # a long-format frame follows; its location line comes after its E lines
        elif frame and line.startswith("E "):
            yield frame
            frame = None


def _node_stacks(lines: list[str]) -> Iterator[Origin]:
    """The first `at ... (file:line:col)` frame after a JavaScript error line."""
    after_error = False
    for line in lines:
        if _EXCEPTION_LINE.match(line):
            after_error = True
        elif after_error and (found := _NODE_FRAME.match(line)):
            after_error = False
            yield found.group(1), line.strip()


def _origins(lines: list[str]) -> Iterator[Origin]:
    """Each place an error was raised or reported, innermost frame only."""
    for finder in (_diagnostic_locations, _python_tracebacks, _pytest_short_tracebacks, _node_stacks):
        yield from finder(lines)


def _is_test_file(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return bool(_TEST_NAME.search(parts[-1])) or bool(_TEST_DIRS.intersection(parts[:-1]))


def _in_scope(rel: str, scope: list[str]) -> bool:
    return any(rel == s.rstrip("/") or rel.startswith(s.rstrip("/") + "/") for s in scope)


def scope_mismatch(failure: Failure) -> Mitigation | None:
    """An error raised in (or a diagnostic about) a non-test repository file the phase may not change."""
    if not failure.scope:
        return None
    for path, line in _origins(failure.lines):
        if any(marker in path for marker in _LIBRARY_MARKERS) or path.startswith("<"):
            continue  # `<string>`, `<stdin>`, `<frozen …>` are code, not files anyone could change
        rel = relative_path(path, failure.worktree)
        if rel is None or _is_test_file(rel) or _in_scope(rel, failure.scope):
            continue
        advice = (
            f"The failure is reported in '{rel}', which is outside this phase's scope {failure.scope}; you "
            f"cannot change it. Make the fix inside the scope — adapt the in-scope code to what '{rel}' "
            "expects (names, signatures, return types) instead of editing that file."
        )
        return Mitigation(FailurePattern.SCOPE_MISMATCH, advice, line)
    return None
