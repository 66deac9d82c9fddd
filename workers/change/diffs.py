"""Unified diffs in an answer (plain or `git diff` sections) as edits with their hunks."""

from __future__ import annotations

import re

from shared.errors import PatchParseError
from workers.change.answer import CLOSE, DELETE, OPEN, FileEdit, Hunk, HunkLine, Located, Op, show

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
HEADERS = ("diff --git ", "--- ", "+++ ", "@@ -", OPEN, DELETE, CLOSE)
_C_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


class Cursor:
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


def parse_diffs(cur: Cursor) -> list[Located]:
    """Every file section of every diff in the lines; prose, fences and blank lines between are skipped."""
    edits: list[Located] = []
    while (line := cur.peek()) is not None:
        start = cur.lineno()
        if line.startswith("diff --git "):
            edits += [(start, edit) for edit in _git_section(cur)]
        elif cur.at_file_header():
            edits += [(start, edit) for edit in _file_section(cur, {})]
        elif line.startswith("@@"):
            raise PatchParseError(
                f"line {start}: hunk header {show(line)} has no '--- a/path' and '+++ b/path' lines before it"
            )
        else:
            cur.take()
    return edits


def _git_section(cur: Cursor) -> list[FileEdit]:
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
        raise PatchParseError(f"line {start}: cannot read the file names in {show(header)}")
    if "new file mode" in meta:
        return [FileEdit(names[1], "write", content="", creates=True)]
    if "deleted file mode" in meta:
        return [FileEdit(names[0], "delete")]
    if "new mode" in meta:
        return []  # a mode change alone: modes are not applied
    raise PatchParseError(
        f"line {start}: the diff for {names[1]} has no '--- a/path' / '+++ b/path' lines and no hunks"
    )


def _file_section(cur: Cursor, meta: dict[str, str]) -> list[FileEdit]:
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
                f"lines ('+'); found {show(bad.op + bad.text)}"
            )
    content = "".join(line.text for hunk in hunks for line in hunk.lines)
    return FileEdit(path, "write", content=content, hunks=hunks, creates=True)


# ------------------------------------------------------------------------------------------ hunks


def _parse_hunks(cur: Cursor, label: str, start: int) -> tuple[Hunk, ...]:
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


def _parse_hunk(cur: Cursor, label: str, n: int) -> Hunk:
    at = cur.lineno()
    header = cur.take()
    match = _HUNK_RE.match(header)
    if match is None:
        raise PatchParseError(
            f"line {at}: hunk {n} of {label} has a malformed header {show(header)}; expected "
            "'@@ -start,count +start,count @@'"
        )
    old_start, old_count, new_start, new_count = (
        int(group) if group is not None else 1 for group in match.groups()
    )
    lines = _hunk_lines(cur, label, n, header, (old_count, new_count))
    return Hunk(old_start, old_count, new_start, new_count, tuple(lines))


def _hunk_lines(cur: Cursor, label: str, n: int, header: str, counts: tuple[int, int]) -> list[HunkLine]:
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


def _short_hunk(cur: Cursor, label: str, n: int, header: str, left: tuple[int, int]) -> PatchParseError:
    raw = cur.peek()
    found = "the end of the answer" if raw is None else f"line {cur.lineno()} {show(raw, 80)}"
    return PatchParseError(
        f"hunk {n} of {label} does not match its header {show(header, 80)}: {left[0]} old and {left[1]} "
        f"new lines were still due at {found}; the answer is truncated or the header's counts are "
        "wrong (old = context + removed lines, new = context + added lines)"
    )


def _reject_overlong(cur: Cursor, label: str, n: int) -> None:
    """A `+`/`-`/context line right after a hunk means the header undercounts: never drop it silently."""
    line = cur.peek()
    if line is None or line.startswith(("--- ", "+++ ")) or line[:1] not in ("+", "-", " "):
        return
    raise PatchParseError(
        f"hunk {n} of {label} has more lines than its header says (line {cur.lineno()} "
        f"{show(line, 80)} follows it); the counts must be old = context + removed lines, "
        "new = context + added lines"
    )
