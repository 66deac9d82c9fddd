"""The answer format a Builder is asked for (the prompt cites `ANSWER_FORMAT` verbatim) and the edits
it is parsed into."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

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

OPEN = "<<<FILE"
DELETE = "<<<DELETE"
CLOSE = "FILE>>>"

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
Located = tuple[int, FileEdit]
"""An edit and the answer line it starts at."""


def show(line: str, limit: int = 100) -> str:
    """A line of the answer as an error message quotes it: without its newline, cut at `limit`."""
    text = line[:-1] if line.endswith("\n") else line
    return repr(text if len(text) <= limit else text[:limit] + "...")
