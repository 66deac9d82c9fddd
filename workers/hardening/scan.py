"""What every hardening pattern reads and returns: the failed attempt's output as capped, ANSI-free lines
with the facts around it (exit code, phase scope, worktree and its name index), and the `Mitigation` a
pattern answers with. The caps are applied here, once, so that no pattern can be handed a blob it would
spend minutes on while `re` holds the GIL; the helpers every pattern shares (first matching line, a
path made repo-relative) live here too so the pattern modules never import one another.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath


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

SKIP_DIRS = {".git", "node_modules", ".venv", "venv", "__pycache__"}


class NameIndex:
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
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
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
    names: NameIndex | None = None


Pattern = Callable[[Failure], Mitigation | None]
Finder = Callable[[str], re.Match[str] | None]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def first_line(lines: list[str], find: re.Pattern[str] | Finder) -> tuple[str, re.Match[str]] | None:
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


def capped_lines(output: str) -> list[str]:
    """The output as ANSI-free lines, within the scan and line caps (so every pattern stays cheap)."""
    text = _cap(output, MAX_SCAN_CHARS, MAX_SCAN_CHARS // 4, "\n[... output cut ...]\n")
    half = MAX_LINE_CHARS // 2
    # The marker has spaces around it, so a token cut in two never joins its head and tail into a path.
    return [_cap(_ANSI.sub("", line), MAX_LINE_CHARS, half, " [...] ") for line in text.splitlines()]


def relative_path(path: str, worktree: Path | None) -> str | None:
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
