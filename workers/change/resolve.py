"""Resolving edits against a worktree into the final bytes per file, in memory (all or nothing)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from shared.errors import PatchParseError
from workers.apply import FileWrite, unsafe_path_reason
from workers.change.answer import Change, FileEdit, Hunk, show


def resolve(change: Change, worktree: Path) -> list[FileWrite]:
    """The final bytes of every path the change touches (None for deletions), computed in memory.

    Nothing is written. Raises PatchParseError when a hunk does not apply, a changed file is missing,
    a created file already exists, or a path is unsafe to read (a link, `..`, inside `.git`).
    """
    return [_resolve_one(edit, worktree) for edit in change]


def _resolve_one(edit: FileEdit, worktree: Path) -> FileWrite:
    if edit.creates:
        _require_absent(worktree, edit.path)
    if edit.kind == "delete":
        if edit.hunks:
            _check_whole_file_removed(edit, _read_text(worktree, edit.path))
        else:
            _read_text(worktree, edit.path)  # it must exist, as a safe regular file
        return FileWrite(edit.path, None)
    if edit.content is not None:
        return FileWrite(edit.path, _encode(edit.content, edit.path))
    source = edit.source or edit.path
    text = apply_hunks(_read_text(worktree, source), edit.hunks, source)
    return FileWrite(edit.path, _encode(text, edit.path))


def _check_whole_file_removed(edit: FileEdit, text: str) -> None:
    left = apply_hunks(text, edit.hunks, edit.path)
    if left:
        raise PatchParseError(
            f"the diff deletes {edit.path} but its removed lines are not the whole file "
            f"({len(_split_lines(left))} lines would remain); remove every line or use "
            f"'<<<DELETE {edit.path}>>>'"
        )


def _safe(worktree: Path, path: str) -> Path:
    problem = unsafe_path_reason(worktree, path)
    if problem is not None:
        raise PatchParseError(f"{path}: {problem}")
    return worktree / path


def _require_absent(worktree: Path, path: str) -> None:
    if os.path.lexists(_safe(worktree, path)):
        raise PatchParseError(
            f"{path} already exists, but the diff creates it (from /dev/null, a rename or a copy); "
            "change it with a diff against its current content or a whole-file block"
        )


def _read_text(worktree: Path, path: str) -> str:
    target = _safe(worktree, path)
    if not os.path.lexists(target):
        raise PatchParseError(
            f"{path} does not exist, so a diff cannot change or delete it; create files with "
            f"'--- /dev/null' or a '<<<FILE {path}' block"
        )
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise PatchParseError(f"cannot read {path}: {exc.strerror}") from exc
    return data.decode("utf-8", "surrogateescape")


def _encode(text: str, path: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise PatchParseError(f"the new content of {path} is not valid text: {exc.reason}") from exc


# ------------------------------------------------------------------------------------ hunk applier


def _exact(line: str) -> str:
    return line


def _ignore_eol(line: str) -> str:
    return line.rstrip("\r\n")


def _ignore_trailing_space(line: str) -> str:
    return line.rstrip()


_MATCHERS: tuple[Callable[[str], str], ...] = (_exact, _ignore_eol, _ignore_trailing_space)


def apply_hunks(text: str, hunks: Sequence[Hunk], path: str) -> str:
    """`text` with every hunk applied, or PatchParseError naming the first hunk that does not apply."""
    lines = _split_lines(text)
    eol = _dominant_eol(lines)
    out: list[str] = []
    floor = offset = 0
    for n, hunk in enumerate(hunks, 1):
        size = len(hunk.old_lines)
        pos = _locate(lines, hunk, n, path, floor, offset)
        out += lines[floor:pos]
        out += _replacement(lines[pos : pos + size], hunk, eol)
        floor = pos + size
        offset = pos - _expected_index(hunk)
    out += lines[floor:]
    return _join(out, eol)


def _split_lines(text: str) -> list[str]:
    r"""Lines with their terminators, split on `\n` only (never on form feeds or U+2028)."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _dominant_eol(lines: list[str]) -> str:
    crlf = sum(1 for line in lines if line.endswith("\r\n"))
    lf = sum(1 for line in lines if line.endswith("\n")) - crlf
    return "\r\n" if crlf > lf else "\n"


def _expected_index(hunk: Hunk) -> int:
    """0-based index of the first old line; for a pure insertion, of the line it goes before."""
    return hunk.old_start - 1 if hunk.old_count > 0 else hunk.old_start


def _nearest(center: int, low: int, high: int) -> Iterator[int]:
    """Indexes in [low, high], nearest to `center` first."""
    if high < low:
        return
    center = min(max(center, low), high)
    yield center
    for distance in range(1, max(center - low, high - center) + 1):
        if center - distance >= low:
            yield center - distance
        if center + distance <= high:
            yield center + distance


def _locate(lines: list[str], hunk: Hunk, n: int, path: str, floor: int, offset: int) -> int:
    old = hunk.old_lines
    want = max(_expected_index(hunk) + offset, 0)
    if not old:
        if want > len(lines):
            raise PatchParseError(
                f"hunk {n} of {path} does not apply at line {want}: it inserts after line {want} "
                f"but the file has only {len(lines)} lines"
            )
        return max(want, floor)
    for key in _MATCHERS:
        wanted = [key(line) for line in old]
        have = [key(line) for line in lines]
        for pos in _nearest(want, floor, len(lines) - len(old)):
            if have[pos : pos + len(old)] == wanted:
                return pos
    raise PatchParseError(_mismatch(lines, old, n, path, max(want, floor)))


def _mismatch(lines: list[str], old: list[str], n: int, path: str, at: int) -> str:
    at = min(at, len(lines))
    k = next((i for i, line in enumerate(old) if at + i >= len(lines) or lines[at + i] != line), 0)
    found = "the end of the file" if at + k >= len(lines) else show(lines[at + k])
    where = "in the file" if n == 1 else f"in the file after hunk {n - 1}"
    return (
        f"hunk {n} of {path} does not apply at line {at + k + 1}: expected {show(old[k])}, found "
        f"{found} (its context and removed lines match nowhere {where})"
    )


def _replacement(matched: list[str], hunk: Hunk, eol: str) -> list[str]:
    """The hunk's new lines: kept lines are the file's own bytes, added lines take the file's line end."""
    kept = iter(matched)
    out = []
    for line in hunk.lines:
        if line.op == " ":
            out.append(next(kept))
        elif line.op == "-":
            next(kept)
        else:
            out.append(_with_eol(line.text, eol))
    return out


def _with_eol(text: str, eol: str) -> str:
    if eol == "\r\n" and text.endswith("\n") and not text.endswith("\r\n"):
        return text[:-1] + "\r\n"
    return text


def _join(lines: list[str], eol: str) -> str:
    """Lines joined; a line without terminator that is not the last (a fuzzy EOF match) gets one."""
    last = len(lines) - 1
    return "".join(line if i == last or line.endswith("\n") else line + eol for i, line in enumerate(lines))
