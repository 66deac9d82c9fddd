"""The answer as edits, in answer order: whole-file blocks here, diffs in `diffs.py`."""

from __future__ import annotations

import re

from shared.errors import PatchParseError
from workers.change.answer import CLOSE, DELETE, OPEN, Change, FileEdit, Located, show
from workers.change.diffs import HEADERS, Cursor, parse_diffs


def parse_change(text: str) -> Change:
    """The edits `text` asks for, in answer order, or PatchParseError saying why there are none."""
    if not text.strip():
        raise PatchParseError("the answer is empty: it must contain a unified diff or whole-file blocks")
    lines = _normalise_newlines(text).split("\n")
    if lines[-1] == "":
        lines.pop()
    located, rest = _split_blocks(lines)
    located += parse_diffs(Cursor(rest))
    if not located:
        raise PatchParseError(_nothing_found(lines))
    located.sort(key=lambda item: item[0])
    _check_unique(located)
    return [edit for _, edit in located]


def _normalise_newlines(text: str) -> str:
    """An answer sent with CRLF throughout has CR on its header lines; a CRLF file's diff does not."""
    for line in text.split("\n"):
        if line.startswith(HEADERS):
            return text.replace("\r\n", "\n") if line.endswith("\r") else text
    return text


def _nothing_found(lines: list[str]) -> str:
    first = next((line.strip() for line in lines if line.strip()), "")
    return (
        "no change found in the answer: expected a unified diff ('--- a/path', '+++ b/path', then "
        "'@@ -start,count +start,count @@' hunks) or whole-file blocks ('<<<FILE path' ... 'FILE>>>', "
        f"'<<<DELETE path>>>'); the answer starts with {show(first)}"
    )


def _check_unique(located: list[Located]) -> None:
    seen: dict[str, int] = {}
    for line, edit in located:
        if edit.path in seen:
            raise PatchParseError(
                f"{edit.path} is changed twice (at lines {seen[edit.path]} and {line} of the answer); "
                "give each file one diff or one block"
            )
        seen[edit.path] = line


# ------------------------------------------------------------------------------------ whole-file blocks


def _split_blocks(lines: list[str]) -> tuple[list[Located], list[tuple[int, str]]]:
    """Whole-file and delete blocks, and every other line (with its 1-based number) for the diff parser."""
    edits: list[Located] = []
    rest: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(DELETE):
            edits.append((i + 1, _delete_block(line, i + 1)))
            i += 1
        elif line.startswith(OPEN):
            edit, after = _file_block(lines, i)
            edits.append((i + 1, edit))
            i = after
        elif line.rstrip() == CLOSE:
            raise PatchParseError(f"line {i + 1}: '{CLOSE}' without an opening '<<<FILE path' line")
        else:
            rest.append((i + 1, line))
            i += 1
    return edits, rest


def _delete_block(line: str, number: int) -> FileEdit:
    match = re.fullmatch(r"<<<DELETE (.+)>>>", line.rstrip())
    path = match.group(1).strip() if match else ""
    if not path:
        raise PatchParseError(f"line {number}: a deletion is one line '<<<DELETE path>>>'; got {show(line)}")
    return FileEdit(path, "delete")


def _block_path(header: str, number: int) -> str:
    rest = header[len(OPEN) :]
    path = rest.strip()
    if not rest.startswith(" ") or not path:
        raise PatchParseError(f"line {number}: open a block with '<<<FILE path'; got {show(header)}")
    if path.endswith(">>>"):
        raise PatchParseError(
            f"line {number}: {show(header)} must not end with '>>>': write '<<<FILE path', the "
            f"content on the next lines, then a line '{CLOSE}'"
        )
    return path


def _file_block(lines: list[str], start: int) -> tuple[FileEdit, int]:
    """The block opened at `lines[start]` and the index after its closing line."""
    number = start + 1
    path = _block_path(lines[start], number)
    for j in range(start + 1, len(lines)):
        line = lines[j]
        if line.rstrip() == CLOSE:
            body = lines[start + 1 : j]
            _reject_fenced_content(body, path, number)
            return FileEdit(path, "write", content="".join(text + "\n" for text in body)), j + 1
        if line.startswith((OPEN, DELETE)):
            raise PatchParseError(
                f"whole-file block for {path} (line {number}) is truncated: no '{CLOSE}' line closes "
                f"it before the next block at line {j + 1}"
            )
    raise PatchParseError(
        f"whole-file block for {path} (line {number}) is truncated: the answer ends after "
        f"{len(lines) - number} content lines without the closing '{CLOSE}' line"
    )


def _reject_fenced_content(body: list[str], path: str, number: int) -> None:
    """A fence opening and closing the content is a formatting slip that would land in the file."""
    if len(body) >= 2 and body[0].startswith("```") and body[-1].rstrip() == "```":
        raise PatchParseError(
            f"whole-file block for {path} (line {number}) wraps its content in a ``` code fence; the "
            "content is written verbatim, so put any fence around the whole block or leave it out"
        )
