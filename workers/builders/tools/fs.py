"""read_range, grep and list_dir over the phase's own files: read-only, confined, bounded. Nothing runs.

A path a tool is given must be relative, free of `..` and `.git`, and its real location (every symlink
resolved) must lie inside the worktree *and* inside one of the phase's scope, read-only context or
deliverable entries. Every result is cut to the bytes left in the attempt's allowance; every call counts
against the call allowance and is checked against the attempt's deadline. A refusal is a `ToolError`,
which the loop turns into an error result the model reads.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from shared.specs import PhaseSpec
from workers.context.load import BINARY_SNIFF_BYTES, HARD_CAP_BYTES, expand_entry, inside

MAX_LINES_PER_READ = 400
MAX_GREP_MATCHES = 50
MAX_GREP_LINE_CHARS = 300
"""Grep looks at a line's first characters only: bounded work per line, whatever the file holds."""
MAX_PATTERN_CHARS = 200
MAX_DIR_ENTRIES = 200
_NESTED_QUANTIFIER = re.compile(r"\([^)]*[+*}][^)]*\)\s*[+*{]")
"""`(a+)+` and the like can take exponential time in Python's `re`: refused rather than timed out."""


class ToolError(Exception):
    """A tool call refused or failed; its message is what the model is told."""


@dataclass(frozen=True)
class ToolLimits:
    """One attempt's allowance: tool calls, result bytes in total, wall-clock seconds of tool work."""

    max_calls: int = 12
    max_bytes: int = 65536
    max_seconds: float = 30.0


@dataclass
class ToolBox:
    """The tools of one attempt over `root`, for the phase's scope, read-only context and deliverables."""

    root: Path
    phase: PhaseSpec
    limits: ToolLimits
    calls: int = 0
    bytes_returned: int = 0
    seconds: float = 0.0
    log: list[dict[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(os.path.realpath(self.root))
        self._entries = [e.strip("/") for e in (*self.phase.scope, *self.phase.read_only_context)]
        self._entries += [e.strip("/") for e in self.phase.deliverables]

    def run(self, name: str, arguments: object) -> str:
        """Run one tool call; raises ToolError with the reason the model should read."""
        self.calls += 1
        if self.calls > self.limits.max_calls:
            raise ToolError(f"tool call limit reached ({self.limits.max_calls}); answer with your change now")
        if self.seconds >= self.limits.max_seconds:
            raise ToolError(f"tool time limit reached ({self.limits.max_seconds:g}s); answer now")
        if not isinstance(arguments, dict):
            raise ToolError("tool input must be a JSON object")
        started = time.monotonic()
        try:
            text = self._dispatch(name, arguments, started + self.limits.max_seconds - self.seconds)
        finally:
            self.seconds += time.monotonic() - started
        return self._cut(text)

    def _dispatch(self, name: str, args: dict[str, object], deadline: float) -> str:
        if name == "read_range":
            return self.read_range(_str(args, "path"), _int(args, "start_line", 1), _int(args, "end_line", 0))
        if name == "grep":
            return self.grep(_str(args, "pattern"), str(args.get("path") or ""), deadline)
        if name == "list_dir":
            return self.list_dir(str(args.get("path") or ""))
        raise ToolError(f"unknown tool {name!r}; the tools are read_range, grep and list_dir")

    def _cut(self, text: str) -> str:
        left = self.limits.max_bytes - self.bytes_returned
        data = text.encode("utf-8")
        if len(data) > left:
            note = f"\n[cut: the attempt's {self.limits.max_bytes} tool result bytes are used up]"
            data = data[: max(0, left)]
            text = data.decode("utf-8", errors="ignore") + note
        self.bytes_returned += len(data)
        return text

    # --------------------------------------------------------------------------------------- tools

    def read_range(self, path: str, start: int, end: int) -> str:
        """Lines `start`..`end` (1-based, inclusive; end 0 = start + 199) of one file, numbered."""
        target = self.allowed(path)
        if not target.is_file():
            raise ToolError(f"{path}: not a file")
        lines = _read_lines(target, path)
        start = max(1, start)
        end = min(len(lines), end if end > 0 else start + 199, start + MAX_LINES_PER_READ - 1)
        if start > len(lines):
            raise ToolError(f"{path} has {len(lines)} lines; start_line {start} is past its end")
        body = "".join(f"{n}: {lines[n - 1]}" for n in range(start, end + 1))
        return f"{path} lines {start}-{end} of {len(lines)}:\n{body}"

    def grep(self, pattern: str, path: str, deadline: float) -> str:
        """Lines matching a regular expression in the allowed files (under `path` if given)."""
        if len(pattern) > MAX_PATTERN_CHARS or _NESTED_QUANTIFIER.search(pattern):
            raise ToolError("pattern refused: longer than 200 characters or with nested quantifiers")
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ToolError(f"invalid regular expression: {exc}") from exc
        matches: list[str] = []
        for rel in self._files(path):
            try:
                lines = _read_lines(self.root / rel, rel)
            except ToolError:
                continue  # a binary or unreadable file has nothing to match; the others still count
            for number, line in enumerate(lines, 1):
                if regex.search(line[:MAX_GREP_LINE_CHARS]):
                    matches.append(f"{rel}:{number}: {line.rstrip()[:MAX_GREP_LINE_CHARS]}")
                if len(matches) >= MAX_GREP_MATCHES or time.monotonic() > deadline:
                    return "\n".join(matches) + "\n[stopped: match or time limit]"
        return "\n".join(matches) if matches else "no match"

    def list_dir(self, path: str) -> str:
        """The entries of one directory (the repository root lists only the allowed entries)."""
        if path.strip("/") in ("", "."):
            return "\n".join(sorted(self._entries))
        target = self.allowed(path)
        if not target.is_dir():
            raise ToolError(f"{path}: not a directory")
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir() if p.name != ".git")
        more = f"\n[{len(names) - MAX_DIR_ENTRIES} more]" if len(names) > MAX_DIR_ENTRIES else ""
        return "\n".join(names[:MAX_DIR_ENTRIES]) + more

    # ------------------------------------------------------------------------------------ confinement

    def allowed(self, path: str) -> Path:
        """The real location of `path`, or ToolError if it is not one the phase may read."""
        pure = PurePosixPath(path)
        if not path or "\x00" in path or pure.is_absolute() or ".." in pure.parts or ".git" in pure.parts:
            raise ToolError(f"{path!r}: refused (a relative path without '..' or '.git' is required)")
        real = Path(os.path.realpath(self.root / pure))
        if not inside(self.root, real):
            raise ToolError(f"{path}: refused (it resolves outside the repository)")
        rel = real.relative_to(self.root).as_posix()
        if not any(rel == e or rel.startswith(e + "/") or e in ("", ".") for e in self._entries):
            raise ToolError(f"{path}: refused (not in the phase's scope or read-only context)")
        return real

    def _files(self, under: str) -> list[str]:
        base = under.strip("/")
        if base:
            self.allowed(base)
        found = {rel for e in self._entries for rel in expand_entry(self.root, e)}
        wanted = sorted(r for r in found if not base or r == base or r.startswith(base + "/"))
        return [r for r in wanted if self._readable(r)]

    def _readable(self, rel: str) -> bool:
        """Whether a listed file may be read: a symlink in scope to a file outside it may not."""
        try:
            self.allowed(rel)
        except ToolError:
            return False
        return True


def _read_lines(target: Path, shown: str) -> list[str]:
    try:
        if target.stat().st_size > HARD_CAP_BYTES:
            raise ToolError(f"{shown}: over the {HARD_CAP_BYTES} byte cap")
        data = target.read_bytes()
    except OSError as exc:
        raise ToolError(f"{shown}: unreadable ({exc.strerror or exc})") from exc
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        raise ToolError(f"{shown}: binary file")
    return data.decode("utf-8", errors="replace").splitlines(keepends=True)


def _str(args: dict[str, object], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise ToolError(f"missing or non-string {key!r}")
    return value


def _int(args: dict[str, object], key: str, default: int) -> int:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ToolError(f"{key!r} must be an integer")
    return value
