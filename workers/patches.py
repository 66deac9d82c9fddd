r"""Read a Builder's answer as a change, and resolve it against a worktree into the final bytes per file.

`parse_change(text)` turns the answer into `FileEdit`s (or raises `PatchParseError` with a reason meant
for the next attempt's prompt); `resolve(change, worktree)` reads the files the diffs change, applies
their hunks in memory (all or nothing) and returns `FileWrite`s for `workers.apply.apply_writes`.

The answer format is `ANSWER_FORMAT` below; the builder prompt cites it verbatim.

How diffs are applied: each hunk's context and removed lines are looked for at the line its header
names (shifted by how far the previous hunk moved), then at the nearest lines above and below; an exact
match anywhere wins over a match that ignores line endings, which wins over one that ignores trailing
whitespace. Kept lines keep the file's own bytes; added lines take the file's line ending (CRLF files stay
CRLF). Hunks must be in file order and may not overlap. An answer sent with CRLF line ends throughout
(its header lines end in CR) is read as LF.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

from shared.errors import PatchParseError
from workers.apply import FileWrite, unsafe_path_reason

ANSWER_FORMAT = r"""Answer with your change in one of two forms; you may mix them, naming each file once.

1. A unified diff, as `git diff` prints it, optionally inside a ```diff fenced block. Each file starts
   with `--- a/path` and `+++ b/path` (`--- /dev/null` creates a file, `+++ /dev/null` deletes one),
   followed by hunks `@@ -start,count +start,count @@`. Context lines start with a space, removed
   lines with `-`, added lines with `+`. Each count is exact: context plus removed lines (old), context
   plus added lines (new). Context and removed lines must match the current file. A last line without
   a newline is followed by the line `\ No newline at end of file`.

2. Whole-file blocks, best for new or small files. Everything between the two lines is the complete
   new content of the file, written verbatim (no code fences inside), ending with a newline:

<<<FILE path/to/file.py
...complete file content...
FILE>>>

   Delete a file with one line:

<<<DELETE path/to/file.py>>>

   These lines start at column 0. A block's content cannot contain a line that starts with `<<<FILE`
   or `<<<DELETE` or is exactly `FILE>>>`; change such a file with a diff.

Paths are relative to the repository root and use `/`."""

_OPEN = "<<<FILE"
_DELETE = "<<<DELETE"
_CLOSE = "FILE>>>"
_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_GIT_META = (
    "old mode ",
    "new mode ",
    "deleted file mode ",
    "new file mode ",
    "copy from ",
    "copy to ",
    "rename from ",
    "rename to ",
    "similarity index ",
    "dissimilarity index ",
    "index ",
)
_BINARY = ("Binary files ", "GIT binary patch")
_HEADERS = ("diff --git ", "--- ", "+++ ", "@@ -", _OPEN, _DELETE, _CLOSE)
_C_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}

Op = Literal[" ", "-", "+"]


@dataclass(frozen=True)
class HunkLine:
    op: Op
    text: str
    r"""The line with its terminator (`\n`, or `\r\n` in a CRLF file's diff); none at a file's end."""


@dataclass(frozen=True)
class Hunk:
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    lines: tuple[HunkLine, ...]

    @property
    def old_lines(self) -> list[str]:
        return [line.text for line in self.lines if line.op != "+"]

    @property
    def new_lines(self) -> list[str]:
        return [line.text for line in self.lines if line.op != "-"]


@dataclass(frozen=True)
class FileEdit:
    """One path's edit. A write has `content` (the whole new text) or `hunks` to apply to the current
    text of `source` (a rename's or copy's origin) or else of `path`. `creates`: the path must not exist."""

    path: str
    kind: Literal["write", "delete"]
    content: str | None = None
    hunks: tuple[Hunk, ...] = ()
    source: str | None = None
    creates: bool = False


Change: TypeAlias = list[FileEdit]

__all__ = [
    "ANSWER_FORMAT",
    "Change",
    "FileEdit",
    "FileWrite",
    "Hunk",
    "HunkLine",
    "PatchParseError",
    "apply_hunks",
    "parse_change",
    "resolve",
]
_Located = tuple[int, FileEdit]


# ---------------------------------------------------------------------------------------------- parse


def parse_change(text: str) -> Change:
    """The edits `text` asks for, in answer order, or PatchParseError saying why there are none."""
    if not text.strip():
        raise PatchParseError("the answer is empty: it must contain a unified diff or whole-file blocks")
    lines = _normalise_newlines(text).split("\n")
    if lines[-1] == "":
        lines.pop()
    located, rest = _split_blocks(lines)
    located += _parse_diffs(_Cursor(rest))
    if not located:
        raise PatchParseError(_nothing_found(lines))
    located.sort(key=lambda item: item[0])
    _check_unique(located)
    return [edit for _, edit in located]


def _normalise_newlines(text: str) -> str:
    """An answer sent with CRLF throughout has CR on its header lines; a CRLF file's diff does not."""
    for line in text.split("\n"):
        if line.startswith(_HEADERS):
            return text.replace("\r\n", "\n") if line.endswith("\r") else text
    return text


def _nothing_found(lines: list[str]) -> str:
    first = next((line.strip() for line in lines if line.strip()), "")
    return (
        "no change found in the answer: expected a unified diff ('--- a/path', '+++ b/path', then "
        "'@@ -start,count +start,count @@' hunks) or whole-file blocks ('<<<FILE path' ... 'FILE>>>', "
        f"'<<<DELETE path>>>'); the answer starts with {_show(first)}"
    )


def _check_unique(located: list[_Located]) -> None:
    seen: dict[str, int] = {}
    for line, edit in located:
        if edit.path in seen:
            raise PatchParseError(
                f"{edit.path} is changed twice (at lines {seen[edit.path]} and {line} of the answer); "
                "give each file one diff or one block"
            )
        seen[edit.path] = line


def _show(line: str, limit: int = 100) -> str:
    text = line[:-1] if line.endswith("\n") else line
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ------------------------------------------------------------------------------------ whole-file blocks


def _split_blocks(lines: list[str]) -> tuple[list[_Located], list[tuple[int, str]]]:
    """Whole-file and delete blocks, and every other line (with its 1-based number) for the diff parser."""
    edits: list[_Located] = []
    rest: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(_DELETE):
            edits.append((i + 1, _delete_block(line, i + 1)))
            i += 1
        elif line.startswith(_OPEN):
            edit, after = _file_block(lines, i)
            edits.append((i + 1, edit))
            i = after
        elif line.rstrip() == _CLOSE:
            raise PatchParseError(f"line {i + 1}: '{_CLOSE}' without an opening '<<<FILE path' line")
        else:
            rest.append((i + 1, line))
            i += 1
    return edits, rest


def _delete_block(line: str, number: int) -> FileEdit:
    match = re.fullmatch(r"<<<DELETE (.+)>>>", line.rstrip())
    path = match.group(1).strip() if match else ""
    if not path:
        raise PatchParseError(f"line {number}: a deletion is one line '<<<DELETE path>>>'; got {_show(line)}")
    return FileEdit(path, "delete")


def _block_path(header: str, number: int) -> str:
    rest = header[len(_OPEN) :]
    path = rest.strip()
    if not rest.startswith(" ") or not path:
        raise PatchParseError(f"line {number}: open a block with '<<<FILE path'; got {_show(header)}")
    if path.endswith(">>>"):
        raise PatchParseError(
            f"line {number}: {_show(header)} must not end with '>>>': write '<<<FILE path', the "
            f"content on the next lines, then a line '{_CLOSE}'"
        )
    return path


def _file_block(lines: list[str], start: int) -> tuple[FileEdit, int]:
    """The block opened at `lines[start]` and the index after its closing line."""
    number = start + 1
    path = _block_path(lines[start], number)
    for j in range(start + 1, len(lines)):
        line = lines[j]
        if line.rstrip() == _CLOSE:
            body = lines[start + 1 : j]
            _reject_fenced_content(body, path, number)
            return FileEdit(path, "write", content="".join(text + "\n" for text in body)), j + 1
        if line.startswith((_OPEN, _DELETE)):
            raise PatchParseError(
                f"whole-file block for {path} (line {number}) is truncated: no '{_CLOSE}' line closes "
                f"it before the next block at line {j + 1}"
            )
    raise PatchParseError(
        f"whole-file block for {path} (line {number}) is truncated: the answer ends after "
        f"{len(lines) - number} content lines without the closing '{_CLOSE}' line"
    )


def _reject_fenced_content(body: list[str], path: str, number: int) -> None:
    """A fence opening and closing the content is a formatting slip that would land in the file."""
    if len(body) >= 2 and body[0].startswith("```") and body[-1].rstrip() == "```":
        raise PatchParseError(
            f"whole-file block for {path} (line {number}) wraps its content in a ``` code fence; the "
            "content is written verbatim, so put any fence around the whole block or leave it out"
        )


# ------------------------------------------------------------------------------------------ diffs


class _Cursor:
    def __init__(self, lines: list[tuple[int, str]]) -> None:
        self.lines = lines
        self.pos = 0

    def peek(self, ahead: int = 0) -> str | None:
        i = self.pos + ahead
        return self.lines[i][1] if i < len(self.lines) else None

    def lineno(self) -> int:
        if self.pos < len(self.lines):
            return self.lines[self.pos][0]
        return self.lines[-1][0] + 1 if self.lines else 1

    def take(self) -> str:
        line = self.lines[self.pos][1]
        self.pos += 1
        return line

    def at_file_header(self) -> bool:
        old, new = self.peek(), self.peek(1)
        return old is not None and new is not None and old.startswith("--- ") and new.startswith("+++ ")


def _parse_diffs(cur: _Cursor) -> list[_Located]:
    """Every file section of every diff in the lines; prose, fences and blank lines between are skipped."""
    edits: list[_Located] = []
    while (line := cur.peek()) is not None:
        start = cur.lineno()
        if line.startswith("diff --git "):
            edits += [(start, edit) for edit in _git_section(cur)]
        elif cur.at_file_header():
            edits += [(start, edit) for edit in _file_section(cur, {})]
        elif line.startswith("@@"):
            raise PatchParseError(
                f"line {start}: hunk header {_show(line)} has no '--- a/path' and '+++ b/path' lines "
                "before it"
            )
        else:
            cur.take()
    return edits


def _git_section(cur: _Cursor) -> list[FileEdit]:
    start = cur.lineno()
    header = cur.take()
    meta: dict[str, str] = {}
    while (line := cur.peek()) is not None:
        if line.startswith(_BINARY):
            raise PatchParseError(
                f"line {cur.lineno()}: binary diffs are not supported ({header[len('diff --git ') :]}); "
                "change text files with a diff or a whole-file block"
            )
        key = next((k for k in _GIT_META if line.startswith(k)), None)
        if key is None:
            break
        meta[key.strip()] = line[len(key) :]
        cur.take()
    if cur.at_file_header():
        return _file_section(cur, meta)
    return _hunkless(header, meta, start)


def _hunkless(header: str, meta: dict[str, str], start: int) -> list[FileEdit]:
    """A git section without hunks: a pure rename or copy, an empty new file, a deletion, a mode change."""
    for how in ("rename", "copy"):
        if f"{how} from" in meta and f"{how} to" in meta:
            old, new = _unquote(meta[f"{how} from"]), _unquote(meta[f"{how} to"])
            edit = FileEdit(new, "write", source=old, creates=True)
            return [edit, FileEdit(old, "delete")] if how == "rename" else [edit]
    names = _git_header_paths(header[len("diff --git ") :])
    if names is None:
        raise PatchParseError(f"line {start}: cannot read the file names in {_show(header)}")
    if "new file mode" in meta:
        return [FileEdit(names[1], "write", content="", creates=True)]
    if "deleted file mode" in meta:
        return [FileEdit(names[0], "delete")]
    if "new mode" in meta:
        return []  # a mode change alone: modes are not applied
    raise PatchParseError(
        f"line {start}: the diff for {names[1]} has no '--- a/path' / '+++ b/path' lines and no hunks"
    )


def _file_section(cur: _Cursor, meta: dict[str, str]) -> list[FileEdit]:
    start = cur.lineno()
    old_raw = _header_path(cur.take()[4:])
    new_raw = _header_path(cur.take()[4:])
    old, new = _strip_prefixes(old_raw, new_raw)
    label = new or old or "/dev/null"
    hunks = _parse_hunks(cur, label, start)
    return _edits_for(old, new, hunks, meta, start)


def _header_path(raw: str) -> str | None:
    path = _unquote(raw) if raw.startswith('"') else raw.split("\t", 1)[0].rstrip()
    return None if path == "/dev/null" else path


def _strip_prefixes(old: str | None, new: str | None) -> tuple[str | None, str | None]:
    """Drop git's `a/` and `b/` when both sides carry them (like `patch -p1`); else keep paths as given."""
    if (old is None or old.startswith("a/")) and (new is None or new.startswith("b/")):
        return (old[2:] if old else None), (new[2:] if new else None)
    return old, new


def _git_header_paths(names: str) -> tuple[str, str] | None:
    """The two paths of `diff --git a/X b/Y` (quoted or not), without their prefixes."""
    if names.startswith('"'):
        old, rest = _unquote_rest(names)
        rest = rest.lstrip(" ")
        new = _unquote(rest) if rest.startswith('"') else rest
    else:
        half = (len(names) - 1) // 2
        old, new = names[:half], names[half + 1 :]
        if names[half : half + 1] != " " or old[2:] != new[2:]:
            return None
    stripped_old, stripped_new = _strip_prefixes(old, new)
    return (stripped_old or old), (stripped_new or new)


def _unquote(raw: str) -> str:
    return _unquote_rest(raw)[0] if raw.startswith('"') else raw


def _unquote_rest(raw: str) -> tuple[str, str]:
    """Git's C-style quoted path at the start of `raw` (octal bytes are UTF-8), and what follows it."""
    out = bytearray()
    i = 1
    while i < len(raw):
        char = raw[i]
        if char == '"':
            return out.decode("utf-8", "surrogateescape"), raw[i + 1 :]
        if char == "\\" and re.fullmatch(r"[0-7]{3}", raw[i + 1 : i + 4]):
            out.append(int(raw[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        elif char == "\\" and i + 1 < len(raw):
            escaped = raw[i + 1]
            out += bytes([_C_ESCAPES[escaped]]) if escaped in _C_ESCAPES else escaped.encode()
            i += 2
        else:
            out += char.encode("utf-8", "surrogateescape")
            i += 1
    return raw, ""  # no closing quote: the name is taken literally


def _edits_for(
    old: str | None, new: str | None, hunks: tuple[Hunk, ...], meta: dict[str, str], start: int
) -> list[FileEdit]:
    if old is None:
        if new is None:
            raise PatchParseError(f"line {start}: the diff names /dev/null on both sides")
        return [_created(new, hunks)]
    if new is None:
        return [FileEdit(old, "delete", hunks=hunks)]
    if old == new:
        return [FileEdit(new, "write", hunks=hunks)]
    if "rename from" in meta:
        return [FileEdit(new, "write", hunks=hunks, source=old, creates=True), FileEdit(old, "delete")]
    if "copy from" in meta:
        return [FileEdit(new, "write", hunks=hunks, source=old, creates=True)]
    raise PatchParseError(
        f"line {start}: the diff header names two files ({old} and {new}) without 'rename from' / "
        "'rename to' lines; diff each file against itself"
    )


def _created(path: str, hunks: tuple[Hunk, ...]) -> FileEdit:
    for n, hunk in enumerate(hunks, 1):
        bad = next((line for line in hunk.lines if line.op != "+"), None)
        if bad is not None:
            raise PatchParseError(
                f"hunk {n} of {path}: the diff creates {path} from /dev/null, so its hunks may only add "
                f"lines ('+'); found {_show(bad.op + bad.text)}"
            )
    content = "".join(line.text for hunk in hunks for line in hunk.lines)
    return FileEdit(path, "write", content=content, hunks=hunks, creates=True)


# ------------------------------------------------------------------------------------------ hunks


def _parse_hunks(cur: _Cursor, label: str, start: int) -> tuple[Hunk, ...]:
    hunks: list[Hunk] = []
    while (line := cur.peek()) is not None and line.startswith("@@"):
        hunks.append(_parse_hunk(cur, label, len(hunks) + 1))
        _reject_overlong(cur, label, len(hunks))
    if not hunks:
        raise PatchParseError(
            f"line {start}: the diff for {label} has a file header but no "
            "'@@ -start,count +start,count @@' hunk"
        )
    return tuple(hunks)


def _parse_hunk(cur: _Cursor, label: str, n: int) -> Hunk:
    at = cur.lineno()
    header = cur.take()
    match = _HUNK_RE.match(header)
    if match is None:
        raise PatchParseError(
            f"line {at}: hunk {n} of {label} has a malformed header {_show(header)}; expected "
            "'@@ -start,count +start,count @@'"
        )
    old_start, old_count, new_start, new_count = (
        int(group) if group is not None else 1 for group in match.groups()
    )
    lines = _hunk_lines(cur, label, n, header, (old_count, new_count))
    return Hunk(old_start, old_count, new_start, new_count, tuple(lines))


def _hunk_lines(cur: _Cursor, label: str, n: int, header: str, counts: tuple[int, int]) -> list[HunkLine]:
    """Exactly the lines the header's counts promise (an empty line counts as an empty context line)."""
    old_left, new_left = counts
    lines: list[HunkLine] = []
    while old_left > 0 or new_left > 0:
        raw = cur.peek()
        if raw is not None and raw.startswith("\\"):
            cur.take()
            _mark_no_newline(lines)
            continue
        op = _op_of(raw, old_left, new_left)
        if op is None:
            raise _short_hunk(cur, label, n, header, (old_left, new_left))
        body = cur.take()
        lines.append(HunkLine(op, body[1:] + "\n"))
        old_left -= 0 if op == "+" else 1
        new_left -= 0 if op == "-" else 1
    if (raw := cur.peek()) is not None and raw.startswith("\\"):
        cur.take()
        _mark_no_newline(lines)
    return lines


def _op_of(raw: str | None, old_left: int, new_left: int) -> Op | None:
    if raw is None:
        return None
    if raw == "" or raw.startswith(" "):
        return " " if old_left > 0 and new_left > 0 else None
    if raw.startswith("-"):
        return "-" if old_left > 0 else None
    if raw.startswith("+"):
        return "+" if new_left > 0 else None
    return None


def _mark_no_newline(lines: list[HunkLine]) -> None:
    """A `No newline at end of file` marker (any line starting with a backslash, in any language) strips
    the terminator of the hunk line before it."""
    if lines and lines[-1].text.endswith("\n"):
        lines[-1] = HunkLine(lines[-1].op, lines[-1].text[:-1])


def _short_hunk(cur: _Cursor, label: str, n: int, header: str, left: tuple[int, int]) -> PatchParseError:
    raw = cur.peek()
    found = "the end of the answer" if raw is None else f"line {cur.lineno()} {_show(raw, 80)}"
    return PatchParseError(
        f"hunk {n} of {label} does not match its header {_show(header, 80)}: {left[0]} old and {left[1]} "
        f"new lines were still due at {found}; the answer is truncated or the header's counts are "
        "wrong (old = context + removed lines, new = context + added lines)"
    )


def _reject_overlong(cur: _Cursor, label: str, n: int) -> None:
    """A `+`/`-`/context line right after a hunk means the header undercounts: never drop it silently."""
    line = cur.peek()
    if line is None or line.startswith(("--- ", "+++ ")) or line[:1] not in ("+", "-", " "):
        return
    raise PatchParseError(
        f"hunk {n} of {label} has more lines than its header says (line {cur.lineno()} "
        f"{_show(line, 80)} follows it); the counts must be old = context + removed lines, "
        "new = context + added lines"
    )


# ---------------------------------------------------------------------------------------- resolve


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
    found = "the end of the file" if at + k >= len(lines) else _show(lines[at + k])
    where = "in the file" if n == 1 else f"in the file after hunk {n - 1}"
    return (
        f"hunk {n} of {path} does not apply at line {at + k + 1}: expected {_show(old[k])}, found "
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
