"""Validation against a baseline: a phase passes when it introduces no new failure.

`infer_validation` picks a test command from the repository's toolchain when a phase names none.
`run_validation` runs every command (all of them, so a baseline sees each one) and, for pytest, reads its
JUnit XML for counts and failing test ids. `compare` decides, command by command, whether the run after the
change is worse than the baseline taken before it.
"""

from __future__ import annotations

import os
import shlex
import stat
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from shared.toolchain import PYTEST_COMMAND as PYTEST_COMMAND  # re-exported for the pipeline and tests
from shared.toolchain import InferredCommand as InferredCommand
from shared.toolchain import infer_toolchain
from workers.commands import CommandResult, run_command

_MAX_JUNIT_BYTES = 50_000_000
_SHELL_OPERATORS = {"&&", "||", ";", "|", "&", "|&", ";;"}


# --- inference (the rules live in shared/toolchain.py; plans use them on a tree at a ref) -------------


@dataclass(frozen=True)
class _WorktreeFiles:
    """`RepoFiles` over a checked-out worktree."""

    root: Path

    def is_file(self, path: str) -> bool:
        return (self.root / path).is_file()

    def read_text(self, path: str) -> str | None:
        try:
            return (self.root / path).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def any_match(self, directory: str, pattern: str) -> bool:
        return any((self.root / directory).glob(pattern))


def infer_validation(worktree: Path) -> InferredCommand | None:
    """A test command for the worktree's toolchain, with the file that gave it away; None if unknown."""
    return infer_toolchain(_WorktreeFiles(worktree))


# --- pytest and JUnit XML --------------------------------------------------------------------------


def _last_segment(command: str) -> list[str]:
    """The words of the command's last simple command (after the last `&&`, `;`, `|`, ...)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # keep `#` visible: arguments appended after a comment would be lost
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: not something we can safely extend
        return []
    last = max((i for i, t in enumerate(tokens) if t in _SHELL_OPERATORS), default=-1)
    return tokens[last + 1 :]


def is_pytest_command(command: str) -> bool:
    """True when the command ends by running pytest, so arguments appended to it reach pytest."""
    words = _last_segment(command)
    if any(w in ("(", ")") or w.startswith("#") for w in words):
        return False
    for i, word in enumerate(words):
        if os.path.basename(word) in ("pytest", "py.test"):
            return True
        if word == "-m" and i + 1 < len(words) and words[i + 1] == "pytest":
            return True
    return False


@dataclass(frozen=True)
class JUnitCounts:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped

    def __str__(self) -> str:
        return f"{self.passed} passed, {self.failed} failed, {self.errors} errors, {self.skipped} skipped"


@dataclass(frozen=True)
class JUnitReport:
    counts: JUnitCounts
    failing_ids: frozenset[str]


def _case_id(case: ET.Element) -> str:
    classname, name = case.get("classname", ""), case.get("name", "")
    return f"{classname}::{name}" if classname else name  # collection errors have no class name


def parse_junit(xml_text: str) -> JUnitReport:
    """Counts and failing ids (`classname::name`, failures and errors) from pytest's JUnit XML."""
    # pytest wrote this file; expat (>= 2.4) caps entity expansion and ElementTree never fetches external
    # entities, so parsing it with the stdlib is safe enough for output of code we already run.
    root = ET.fromstring(xml_text)  # noqa: S314
    tally = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failing: set[str] = set()
    for case in root.iter("testcase"):
        if case.find("failure") is not None:
            tally["failed"] += 1
            failing.add(_case_id(case))
        elif case.find("error") is not None:
            tally["errors"] += 1
            failing.add(_case_id(case))
        elif case.find("skipped") is not None:
            tally["skipped"] += 1
        else:
            tally["passed"] += 1
    return JUnitReport(JUnitCounts(**tally), frozenset(failing))


def _read_junit(path: Path) -> JUnitReport | None:
    """The report, read only if it is a regular file of sane size: the boxed command could write the
    directory, and a symlink (to a worker's file) or a FIFO (blocking the worker) is not a report."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_JUNIT_BYTES:
                return None
            return parse_junit(fh.read(_MAX_JUNIT_BYTES + 1).decode(errors="replace"))
    except (OSError, ET.ParseError):
        return None


# --- running ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandValidation:
    """One validation command's result; `counts`/`failing_ids` are known only for pytest commands."""

    command: str
    exit_code: int
    output: str
    seconds: float
    timed_out: bool
    counts: JUnitCounts | None = None
    failing_ids: frozenset[str] = field(default_factory=frozenset)
    limit: str | None = None
    """The sandbox limit that ended the command, if one did."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def summary(self) -> str:
        status = "timed out" if self.timed_out else f"exit {self.exit_code}"
        if self.limit:
            status += f"; {self.limit}"
        tests = f"; {self.counts}" if self.counts is not None else ""
        return f"$ {self.command}  ({status}{tests}, {self.seconds:.2f}s)\n{self.output}"


@dataclass(frozen=True)
class ValidationRun:
    results: tuple[CommandValidation, ...]
    reused: bool = False
    """Read from the validation store (workers/validation_cache.py) rather than run here."""
    tree: str | None = None
    """The tree SHA the results belong to, when the store was consulted for it (else None)."""

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def report(self) -> str:
        return "\n\n".join(r.summary() for r in self.results)


def _with_pytest_args(command: str, junit: Path) -> str:
    return f"{command} -p no:cacheprovider --junitxml={shlex.quote(str(junit))}"


def _validation(result: CommandResult, command: str, report: JUnitReport | None) -> CommandValidation:
    return CommandValidation(
        command=command,
        exit_code=result.exit_code,
        output=result.output,
        seconds=result.seconds,
        timed_out=result.timed_out,
        counts=report.counts if report else None,
        failing_ids=report.failing_ids if report else frozenset(),
        limit=result.limit,
    )


def run_one(
    command: str, worktree: Path, *, timeout: float, max_bytes: int, network: bool = False
) -> CommandValidation:
    """Run one command (boxed, output capped by run_command); pytest also reports through a JUnit file."""
    if not is_pytest_command(command):
        result = run_command(command, worktree, timeout=timeout, max_bytes=max_bytes, network=network)
        return _validation(result, command, None)
    # The JUnit file lives outside the worktree so it never shows up as a changed path; its directory is
    # the one other place the box may write.
    with tempfile.TemporaryDirectory(prefix="autopack-junit-") as tmp:
        junit = Path(tmp) / "junit.xml"
        result = run_command(
            _with_pytest_args(command, junit),
            worktree,
            timeout=timeout,
            max_bytes=max_bytes,
            network=network,
            writable=[Path(tmp)],
        )
        report = None if result.timed_out else _read_junit(junit)
    return _validation(result, command, report)


def run_validation(
    commands: list[str], worktree: Path, *, timeout: float, max_bytes: int, network: bool = False
) -> ValidationRun:
    """Run every command in order, even after a failure, so baseline and after runs line up."""
    return ValidationRun(
        tuple(run_one(c, worktree, timeout=timeout, max_bytes=max_bytes, network=network) for c in commands)
    )


# --- comparing with the baseline -------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    ok: bool
    new_failures: list[str]
    preexisting_failures: list[str]
    summary: str


@dataclass
class _Tally:
    new: list[str] = field(default_factory=list)
    preexisting: list[str] = field(default_factory=list)


def _status(result: CommandValidation) -> str:
    return "timed out" if result.timed_out else f"exit {result.exit_code}"


def _compare_tests(base: CommandValidation, after: CommandValidation, tally: _Tally) -> None:
    """`after` has JUnit results: failing ids absent at baseline (or all, if it had none) are regressions."""
    cmd = after.command
    tally.new.extend(f"{cmd}: {test_id}" for test_id in sorted(after.failing_ids - base.failing_ids))
    tally.preexisting.extend(f"{cmd}: {test_id}" for test_id in sorted(after.failing_ids & base.failing_ids))
    if after.failing_ids:
        return
    if base.ok:  # failed without a failing test (nothing collected, say) where it used to pass
        tally.new.append(f"{cmd}: {_status(after)}, passed at baseline")
    else:
        tally.preexisting.append(f"{cmd}: {_status(after)}, failed at baseline too ({_status(base)})")


def _compare_command(base: CommandValidation | None, after: CommandValidation, tally: _Tally) -> None:
    cmd = after.command
    if after.ok:
        return
    if after.timed_out:
        tally.new.append(f"{cmd}: timed out after {after.seconds:.0f}s")
    elif base is None:
        tally.new.append(f"{cmd}: {_status(after)}, not run at baseline")
    elif after.counts is not None:
        _compare_tests(base, after, tally)
    elif base.ok:
        tally.new.append(f"{cmd}: {_status(after)}, passed at baseline")
    elif base.counts is not None:
        tally.new.append(f"{cmd}: {_status(after)} without the test results baseline had")
    else:  # no test ids on either side: the exit code is all there is, and it failed before too
        tally.preexisting.append(f"{cmd}: {_status(after)}, failed at baseline too ({_status(base)})")


def _summary(tally: _Tally) -> str:
    lines = [f"{len(tally.new)} new failure(s)" if tally.new else "no new failures"]
    lines += [f"  new: {f}" for f in tally.new]
    if tally.preexisting:
        lines.append(f"{len(tally.preexisting)} pre-existing failure(s), not counted against the phase")
        lines += [f"  pre-existing: {f}" for f in tally.preexisting]
    return "\n".join(lines)


def compare(baseline: ValidationRun, after: ValidationRun) -> Verdict:
    """The phase passes when `after` fails nowhere the baseline did not; timeouts always count."""
    base_by_command: dict[str, CommandValidation] = {}
    for result in baseline.results:
        base_by_command.setdefault(result.command, result)
    tally = _Tally()
    for result in after.results:
        _compare_command(base_by_command.get(result.command), result, tally)
    return Verdict(not tally.new, tally.new, tally.preexisting, _summary(tally))
