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

Where each part lives:

- `scan.py`: what a pattern reads and returns (`Failure`, `Mitigation`, `FailurePattern`), the caps and
  ANSI stripping that make the lines, and the helpers the patterns share.
- `modules.py`: missing Python dependency, missing Node module.
- `collection.py`: no tests collected.
- `paths.py`: wrong working directory, scope mismatch (and the traceback readers that find an error's origin).
- `permissions.py`: permission error.
- here: `PATTERNS` (their priority order), `match_failure` and the accepted rules' `match_rules`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from shared.patterns.regex import CompiledRule
from workers.hardening.collection import no_tests_collected
from workers.hardening.modules import missing_node_module, missing_python_dependency
from workers.hardening.paths import Origin, scope_mismatch, wrong_working_directory
from workers.hardening.permissions import permission_error
from workers.hardening.scan import (
    MAX_LINE_CHARS,
    MAX_SCAN_CHARS,
    Failure,
    FailurePattern,
    Finder,
    Mitigation,
    NameIndex,
    Pattern,
    capped_lines,
)

__all__ = [
    "MAX_LINE_CHARS",
    "MAX_SCAN_CHARS",
    "PATTERNS",
    "Failure",
    "FailurePattern",
    "Finder",
    "Mitigation",
    "Origin",
    "Pattern",
    "match_failure",
    "match_rules",
    "missing_node_module",
    "missing_python_dependency",
    "no_tests_collected",
    "permission_error",
    "scope_mismatch",
    "wrong_working_directory",
]

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
    names = NameIndex(worktree) if worktree is not None else None
    failure = Failure(capped_lines(output), exit_code, scope, worktree, names)
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
