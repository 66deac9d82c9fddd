r"""A Builder's answer as a change: parsed into edits, then resolved against a worktree into the final
bytes per file, which `workers.apply.apply_writes` writes under the phase's rules.

- `answer.py`: the format (`ANSWER_FORMAT`, which the builder prompt cites verbatim) and the edits.
- `parse.py`: `parse_change(text)` turns the answer into `FileEdit`s, or raises `PatchParseError` with
  a reason meant for the next attempt's prompt; whole-file blocks are read there, diffs in `diffs.py`.
- `resolve.py`: `resolve(change, worktree)` reads the files the diffs change, applies their hunks in
  memory (all or nothing) and returns `FileWrite`s. Nothing is written.

How diffs are applied: each hunk's context and removed lines are looked for at the line its header
names (shifted by how far the previous hunk moved), then at the nearest lines above and below; an exact
match anywhere wins over a match that ignores line endings, which wins over one that ignores trailing
whitespace. Kept lines keep the file's own bytes; added lines take the file's line ending (CRLF files stay
CRLF). Hunks must be in file order and may not overlap. An answer sent with CRLF line ends throughout
(its header lines end in CR) is read as LF.
"""

from shared.errors import PatchParseError
from workers.apply import FileWrite
from workers.change.answer import ANSWER_FORMAT, Change, FileEdit, Hunk, HunkLine
from workers.change.parse import parse_change
from workers.change.resolve import apply_hunks, resolve

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
