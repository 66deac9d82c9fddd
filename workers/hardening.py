"""Deterministic failure hardening: recognise common failure shapes before any LLM "Doctor" call.

`match_failure` reads a failed attempt's build/validation output and, when a known pattern fits, returns a
`Mitigation`: which pattern, concrete advice for the next attempt (naming the module, file or path), and the
line that proved it. Patterns are small functions tried in `PATTERNS` order; the first match wins.
After the built-in six, the rules operators accepted from mined failures (`shared.patterns`) are tried in
the order they were accepted: each is an RE2 regex searched line by line, so it is linear-time too.

Every pattern runs in time linear in the output's size, and the output is cut to `MAX_SCAN_CHARS` and each
line to `MAX_LINE_CHARS` first: `re` holds the GIL for a whole search, so one backtracking search over a
long line (minified JS, a progress bar, a dumped blob) would starve the lease heartbeat thread for minutes.
A pattern that needs "X, and later on the line Y" is written as string searches plus anchored regexes,
never as `X.*Y` with a backtracking group in between.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath

from shared.patterns.regex import CompiledRule


class FailurePattern(StrEnum):
    MISSING_PYTHON_DEPENDENCY = "missing_python_dependency"
    MISSING_NODE_MODULE = "missing_node_module"
    NO_TESTS_COLLECTED = "no_tests_collected"
    WRONG_WORKING_DIRECTORY = "wrong_working_directory"
    SCOPE_MISMATCH = "scope_mismatch"
    PERMISSION_ERROR = "permission_error"


@dataclass(frozen=True)
class Mitigation:
    pattern: str
    """A `FailurePattern`, or `rule:<name>` for an accepted rule."""
    advice: str
    evidence: str
    rule_id: int | None = None
    rule_version: int | None = None


MAX_SCAN_CHARS = 2 * 2**20
"""Output examined: its first quarter and last three quarters of this (a failure's evidence sits near the
start, like `collected 0 items`, or near the end, like a traceback). Validation output is capped far below
this already; a builder's raw answer or a pasted log may not be."""

MAX_LINE_CHARS = 4096
"""Characters of one line examined: its head and tail. Evidence lines are short; longer lines are blobs."""


class _NameIndex:
    """Where each file and directory name occurs in the worktree, walked once per failure (not per line)."""

    def __init__(self, worktree: Path) -> None:
        self.worktree = worktree
        self._paths: dict[str, list[str]] | None = None

    def paths(self, name: str) -> list[str]:
        """Repo-relative paths named `name`, in the order a sorted top-down walk meets them."""
        if self._paths is None:
            self._paths = self._walk()
        return self._paths.get(name, [])

    def _walk(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for root, dirs, files in os.walk(self.worktree):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
            base = Path(root).relative_to(self.worktree)
            for name in [*sorted(files), *dirs]:
                found.setdefault(name, []).append((base / name).as_posix())
        return found


@dataclass(frozen=True)
class Failure:
    """What a pattern looks at: the output split into ANSI-free lines, plus the facts around it."""

    lines: list[str]
    exit_code: int | None
    scope: list[str]
    worktree: Path | None
    names: _NameIndex | None = None


Pattern = Callable[[Failure], Mitigation | None]
Finder = Callable[[str], re.Match[str] | None]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _first(lines: list[str], find: re.Pattern[str] | Finder) -> tuple[str, re.Match[str]] | None:
    search = find.search if isinstance(find, re.Pattern) else find
    for line in lines:
        match = search(line)
        if match:
            return line.strip(), match
    return None


def _cap(text: str, limit: int, head: int, marker: str) -> str:
    """`text` if it fits `limit`, else its first `head` and last `limit - head` characters around `marker`."""
    if len(text) <= limit:
        return text
    return text[:head] + marker + text[len(text) - (limit - head) :]


def _lines(output: str) -> list[str]:
    """The output as ANSI-free lines, within the scan and line caps (so every pattern stays cheap)."""
    text = _cap(output, MAX_SCAN_CHARS, MAX_SCAN_CHARS // 4, "\n[... output cut ...]\n")
    half = MAX_LINE_CHARS // 2
    # The marker has spaces around it, so a token cut in two never joins its head and tail into a path.
    return [_cap(_ANSI.sub("", line), MAX_LINE_CHARS, half, " [...] ") for line in text.splitlines()]


# --- missing Python dependency ---------------------------------------------------------------------

_NO_MODULE = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '?([\w.]+)'?")
_CANNOT_IMPORT = re.compile(r"ImportError: cannot import name '?(\w+)'? from '?([\w.]+)'?")
_STDLIB_INSTEAD = {
    "requests": "urllib.request",
    "httpx": "urllib.request",
    "yaml": "json (or configparser/tomllib for config files)",
    "toml": "tomllib (read-only)",
    "dateutil": "datetime",
    "pytz": "zoneinfo",
    "simplejson": "json",
    "ujson": "json",
    "attr": "dataclasses",
    "attrs": "dataclasses",
    "click": "argparse",
    "numpy": "math/statistics",
    "pandas": "csv",
    "six": "plain Python 3",
}


def _repo_module(top: str, worktree: Path | None) -> str | None:
    """Where the repository itself holds the top-level module `top`, if it does."""
    if worktree is None:
        return None
    for rel in (top, f"{top}.py", f"src/{top}", f"src/{top}.py"):
        if (worktree / rel).exists():
            return rel
    return None


def _missing_module_advice(top: str, worktree: Path | None) -> str:
    local = _repo_module(top, worktree)
    if local is not None:
        return (
            f"'{top}' is part of this repository (at '{local}') but is not importable where validation runs "
            "(the repository root): import it the way existing code and tests do — check the package "
            "__init__.py files, the src/ layout and any conftest.py path setup — instead of installing it."
        )
    instead = _STDLIB_INSTEAD.get(top, "the standard library")
    return (
        f"The module '{top}' is not installed in the validation environment; do not import it and do "
        f"not expect it to be installed — use {instead} or a module that exists in the repository. "
        f"If '{top}' is meant to be part of this repository, create it inside the phase scope."
    )


def missing_python_dependency(failure: Failure) -> Mitigation | None:
    found = _first(failure.lines, _NO_MODULE)
    if found:
        top = found[1].group(1).split(".")[0]
        return Mitigation(
            FailurePattern.MISSING_PYTHON_DEPENDENCY, _missing_module_advice(top, failure.worktree), found[0]
        )
    found = _first(failure.lines, _CANNOT_IMPORT)
    if found:
        line, match = found
        name, module = match.group(1), match.group(2)
        advice = (
            f"'{module}' does not define '{name}'. Import only names that '{module}' actually defines "
            f"(read its source), or add '{name}' to {module.replace('.', '/')}.py if that file is in scope."
        )
        if "circular import" in line:
            advice += " The message also points at a circular import: move the import inside the function."
        return Mitigation(FailurePattern.MISSING_PYTHON_DEPENDENCY, advice, line)
    return None


# --- missing Node module ---------------------------------------------------------------------------

_NODE_MODULE = re.compile(r"Cannot find (?:module|package) '([^']+)'")
_ESM_NOT_FOUND = re.compile(r"ERR_MODULE_NOT_FOUND")


def _node_advice(name: str | None) -> str:
    if name is None:
        return (
            "An ES module import could not be resolved (ERR_MODULE_NOT_FOUND): use only packages already in "
            "node_modules, and write relative imports with the full file extension (./utils.js)."
        )
    if name.startswith((".", "/")):
        return (
            f"The local module '{name}' does not exist at that path: check the path relative to the "
            f"importing file and, for ES modules, include the file extension (e.g. '{name}.js'); create "
            "it if it is in scope."
        )
    return (
        f"The package '{name}' is not installed (absent from node_modules); do not import it and do not "
        "add it to package.json expecting an install — use Node's built-in modules (node:fs, node:path, "
        "node:url, ...) or code that already exists in the repository."
    )


def missing_node_module(failure: Failure) -> Mitigation | None:
    found = _first(failure.lines, _NODE_MODULE)
    if found:
        return Mitigation(FailurePattern.MISSING_NODE_MODULE, _node_advice(found[1].group(1)), found[0])
    found = _first(failure.lines, _ESM_NOT_FOUND)
    if found:
        return Mitigation(FailurePattern.MISSING_NODE_MODULE, _node_advice(None), found[0])
    return None


# --- no tests collected ----------------------------------------------------------------------------

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
    found = _first(failure.lines, _collected_none)
    if found is None and failure.exit_code == 5:
        found = _first(failure.lines, _DESELECTED) or _first(failure.lines, _PYTEST_HINT)
    if found is None:
        return None
    advice = (
        "The test runner collected no tests. Name test files test_*.py (or *_test.py), test functions "
        "test_*, and test classes Test* without an __init__; put them where the validation command looks "
        "(e.g. tests/), and make sure no -k/-m filter deselects them all."
    )
    return Mitigation(FailurePattern.NO_TESTS_COLLECTED, advice, found[0])


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
_SKIP_DIRS = {".git", "node_modules", ".venv", "venv", "__pycache__"}


def _enoent_package_json(line: str) -> re.Match[str] | None:
    """A `...package.json` path somewhere after `ENOENT` on the line (npm's missing-manifest error)."""
    enoent = line.find("ENOENT")
    return None if enoent < 0 else _PACKAGE_JSON_TOKEN.search(line, enoent + len("ENOENT"))


def _relative(path: str, worktree: Path | None) -> str | None:
    """`path` as a repo-relative POSIX path, or None when it points outside the repository."""
    pure = PurePosixPath(path)
    if pure.is_absolute():
        if worktree is None:
            return None
        try:
            pure = pure.relative_to(worktree.as_posix())
        except ValueError:
            return None
    parts = [p for p in pure.parts if p != "."]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _under_subdirectory(rel: str, names: _NameIndex) -> str | None:
    """The repo-relative path of a file `<subdir>/<rel>` when `rel` itself is missing at the root."""
    if (names.worktree / rel).exists():
        return None
    return next((p for p in names.paths(PurePosixPath(rel).name) if p.endswith("/" + rel)), None)


def _deeper(path: str, failure: Failure) -> tuple[str, str] | None:
    """(repo-relative path, where it really is) when `path` is missing at the root but exists deeper."""
    rel = _relative(path, failure.worktree)
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
        found = _first(failure.lines, finder)
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
        rel = _relative(path, failure.worktree)
        if rel is None or _is_test_file(rel) or _in_scope(rel, failure.scope):
            continue
        advice = (
            f"The failure is reported in '{rel}', which is outside this phase's scope {failure.scope}; you "
            f"cannot change it. Make the fix inside the scope — adapt the in-scope code to what '{rel}' "
            "expects (names, signatures, return types) instead of editing that file."
        )
        return Mitigation(FailurePattern.SCOPE_MISMATCH, advice, line)
    return None


# --- permission error ------------------------------------------------------------------------------

_PERMISSION = re.compile(r"PermissionError|EACCES|Permission denied", re.IGNORECASE)
_DENIED_PATH = (
    re.compile(r"permission denied[:,]? (?:\w+ )?'([^']+)'", re.IGNORECASE),  # Python, Node
    re.compile(r"'([^']+)': Permission denied"),  # mkdir: cannot create directory '/x': Permission denied
)
_NOT_EXECUTABLE = re.compile(r"(?:^|: )([^\s'\"]+): Permission denied")  # bash: ./run.sh: Permission denied


def _permission_advice(line: str, worktree: Path | None) -> str:
    script = _NOT_EXECUTABLE.search(line)
    rel = _relative(script.group(1), worktree) if script else None
    if rel is not None:
        return (
            f"'{rel}' could not be executed: files in the validation checkout may lack the executable bit. "
            f"Invoke it through its interpreter (bash {rel}, python {rel}) instead of running it directly."
        )
    quoted = next((m for regex in _DENIED_PATH if (m := regex.search(line))), None)
    target = f"'{quoted.group(1)}'" if quoted else "a path"
    return (
        f"Validation has no permission to access {target}. Read and write only inside the repository "
        "worktree; use tempfile.mkdtemp() (os.tmpdir() in Node) for scratch files, never system or home "
        "directories, and do not rely on changing file modes."
    )


def permission_error(failure: Failure) -> Mitigation | None:
    found = _first(failure.lines, _PERMISSION)
    if found is None:
        return None
    line = found[0]
    return Mitigation(FailurePattern.PERMISSION_ERROR, _permission_advice(line, failure.worktree), line)


PATTERNS: tuple[Pattern, ...] = (
    missing_python_dependency,
    missing_node_module,
    no_tests_collected,
    wrong_working_directory,
    scope_mismatch,
    permission_error,
)
"""Priority order: the first pattern that matches names the failure."""


def match_failure(
    output: str,
    *,
    exit_code: int | None,
    scope: list[str],
    worktree: Path | None = None,
    rules: Sequence[CompiledRule] = (),
) -> Mitigation | None:
    """The highest-priority known failure pattern in `output`, or None when none applies.

    `worktree`, when given, lets path-based patterns resolve absolute paths and look for a file that is
    missing at the root but present in a subdirectory. `rules` are tried after the built-in patterns.
    """
    names = _NameIndex(worktree) if worktree is not None else None
    failure = Failure(_lines(output), exit_code, scope, worktree, names)
    for pattern in PATTERNS:
        mitigation = pattern(failure)
        if mitigation is not None:
            return mitigation
    return match_rules(failure.lines, rules)


def match_rules(lines: list[str], rules: Sequence[CompiledRule]) -> Mitigation | None:
    """The first accepted rule (in acceptance order) one of `lines` matches, as a Mitigation: each rule
    is one RE2 pass over the capped lines, whose matches never span a line."""
    if not rules:
        return None
    text = "\n".join(lines)
    for rule in rules:
        line = rule.find(text)
        if line is not None:
            return Mitigation(f"rule:{rule.name}", rule.advice, line.strip(), rule.id, rule.version)
    return None
