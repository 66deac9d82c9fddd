"""Governed, all-or-nothing application of a resolved change to a worktree.

`apply_writes` checks every path before it touches the disk, and writes nothing when any check fails:

- the path is relative, uses `/`, has no `..`, `.` or empty component and no control character;
- no component is `.git` in any case, Unicode form or filesystem alias (`.GIT`, `.git.`, `git~1`, ...);
- no existing component (parent directory or the target itself) is a symbolic link, every existing parent
  is a directory, an existing target is a regular file, and the resolved path stays inside the worktree;
- the path is inside `phase.scope` and outside `phase.protected_paths`. Protected paths are also
  compared after NFKC normalisation and case-folding, so `SRC/calc.py`, a fullwidth-letter variant or a
  decomposed `é` cannot alias a protected file; nor may a new file differ from an existing sibling only
  by case or normalisation;
- at most `max_deletions` files are deleted unless `allow_deletions`; deleted files must exist.

Writes then go to a temporary file in the target's directory that is renamed over the target (the file
mode of a replaced file is kept). The previous bytes of every changed file are held in memory: if any
write fails (ENOSPC, EACCES, ...), every file already changed is restored, directories this call created
are removed, and the result says which error stopped it.

Checks and writes assume nothing else changes the worktree meanwhile (the builder has finished); a
rename counts as one deletion towards `max_deletions`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shared.specs import PhaseSpec

# Code points HFS+ ignores in names (as git's verify_path does), so `.g\u200cit` is `.git` on macOS.
_IGNORABLE: dict[int, None] = dict.fromkeys(
    [0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF]
)
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class FileWrite:
    """The final state of one repository path: its new bytes, or `data=None` to delete it."""

    path: str
    data: bytes | None

    @property
    def is_delete(self) -> bool:
        return self.data is None


@dataclass(frozen=True)
class ApplyResult:
    """`ok` with the paths whose bytes changed (sorted), or not `ok` with a reason and nothing changed."""

    ok: bool
    reason: str | None = None
    changed_paths: list[str] = field(default_factory=list)


def apply_writes(
    worktree: Path,
    writes: Sequence[FileWrite],
    phase: PhaseSpec,
    *,
    max_deletions: int,
    allow_deletions: bool,
) -> ApplyResult:
    """Check every write against the worktree and the phase, then apply all of them or none."""
    root = Path(os.path.realpath(worktree))
    problems = check_writes(root, writes, phase, max_deletions=max_deletions, allow_deletions=allow_deletions)
    if problems:
        return ApplyResult(False, "change rejected, nothing was written: " + "; ".join(problems))
    return _write_all(root, writes)


def check_writes(
    worktree: Path,
    writes: Sequence[FileWrite],
    phase: PhaseSpec,
    *,
    max_deletions: int,
    allow_deletions: bool,
) -> list[str]:
    """Every reason the writes may not be applied (one string each, naming the path); empty if none."""
    root = Path(os.path.realpath(worktree))
    problems = _duplicate_problems(writes)
    for write in writes:
        reasons = path_problems(root, write.path, phase, deleting=write.is_delete)
        problems += [f"{write.path}: {reason}" for reason in reasons]
    deletions = sum(1 for write in writes if write.is_delete)
    if deletions > max_deletions and not allow_deletions:
        problems.append(
            f"the change deletes {deletions} files, more than the limit of {max_deletions} "
            "(this phase does not allow more deletions)"
        )
    return problems


def path_problems(worktree: Path, path: str, phase: PhaseSpec, *, deleting: bool) -> list[str]:
    """Why `path` may not be written (or deleted) in `worktree` by `phase`; empty when it may."""
    root = Path(os.path.realpath(worktree))
    syntax = _syntax_problem(path)
    if syntax is not None:
        return [syntax]
    problems = _policy_problems(path, phase)
    on_disk = _filesystem_problem(root, path, must_exist=deleting)
    if on_disk is None and not deleting:
        on_disk = _collision_problem(root, path)
    if on_disk is not None:
        problems.append(on_disk)
    return problems


def unsafe_path_reason(worktree: Path, path: str) -> str | None:
    """Why reading or writing `path` in `worktree` would be unsafe, regardless of any phase; None if safe.

    A path that does not exist yet is safe. Used before reading a file a diff changes, so a hostile
    path can never make the reader follow a link out of the worktree.
    """
    root = Path(os.path.realpath(worktree))
    return _syntax_problem(path) or _filesystem_problem(root, path, must_exist=False)


def fold_path(path: str) -> str:
    """The form two paths share when one could alias the other: NFKC, case-folded, ignorables removed."""
    text = unicodedata.normalize("NFKC", path.translate(_IGNORABLE))
    return unicodedata.normalize("NFKC", text.casefold())


def _is_dotgit(component: str) -> bool:
    folded = fold_path(component).split(":", 1)[0].rstrip(". ")
    return folded in (".git", "git~1")


def _syntax_problem(path: str) -> str | None:
    if not path:
        return "empty path"
    if any(ord(char) < 32 or ord(char) == 127 for char in path):
        return "contains a control character"
    if "\\" in path:
        return "contains a backslash; paths use '/'"
    if path.startswith("/") or _DRIVE.match(path):
        return "absolute path; paths are relative to the repository root"
    parts = path.split("/")
    if ".." in parts:
        return "contains '..'; paths may not leave the repository"
    if any(part in ("", ".") or fold_path(part) in (".", "..") for part in parts):
        return "not a normalised relative path (empty, '.' or look-alike '..' component)"
    if any(_is_dotgit(part) for part in parts):
        return "inside .git; git's own files are never written"
    return None


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


def _policy_problems(path: str, phase: PhaseSpec) -> list[str]:
    problems = []
    folded = fold_path(path)
    for protected in phase.protected_paths:
        if _under(path, protected):
            problems.append(f"protected path ({protected})")
        elif _under(folded, fold_path(protected)):
            problems.append(
                f"aliases protected path {protected} (differs only by case or Unicode normalisation)"
            )
    if not any(_under(path, scope) for scope in phase.scope):
        problems.append(f"outside scope {phase.scope}")
    return problems


def _component_problem(shown: str, mode: int, *, last: bool) -> str | None:
    if stat.S_ISLNK(mode):
        return f"{shown} is a symbolic link; writing through links is refused"
    if not last and not stat.S_ISDIR(mode):
        return f"{shown} is not a directory"
    if last and not stat.S_ISREG(mode):
        return f"{shown} exists and is not a regular file"
    return None


def _filesystem_problem(root: Path, path: str, *, must_exist: bool) -> str | None:
    parts = path.split("/")
    current = root
    for i, part in enumerate(parts):
        current = current / part
        shown = "/".join(parts[: i + 1])
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return "does not exist" if must_exist else _escape_problem(root, path)
        except OSError as exc:
            return f"cannot inspect {shown}: {exc.strerror}"
        problem = _component_problem(shown, mode, last=i == len(parts) - 1)
        if problem is not None:
            return problem
    return _escape_problem(root, path)


def _escape_problem(root: Path, path: str) -> str | None:
    real = os.path.realpath(root / path)
    if os.path.commonpath([str(root), real]) != str(root):
        return "resolves outside the worktree"
    return None


def _collision_problem(root: Path, path: str) -> str | None:
    """A new name that differs from an existing sibling only by case/normalisation would alias it."""
    parts = path.split("/")
    current = root
    for i, part in enumerate(parts):
        if os.path.lexists(current / part):
            current = current / part
            continue
        try:
            names = os.listdir(current)
        except OSError:
            return None
        twin = next((name for name in names if fold_path(name) == fold_path(part)), None)
        if twin is None:
            return None
        existing = "/".join([*parts[:i], twin])
        return f"would alias existing {existing} (differs only by case or Unicode normalisation)"
    return None


def _duplicate_problems(writes: Sequence[FileWrite]) -> list[str]:
    seen: dict[str, str] = {}
    problems = []
    for write in writes:
        key = fold_path(write.path)
        if key in seen:
            same = seen[key] == write.path
            how = "appears twice" if same else f"and {seen[key]} differ only by case or normalisation"
            problems.append(f"{write.path}: {how} in the change")
        else:
            seen[key] = write.path
    return problems


@dataclass(frozen=True)
class _Backup:
    path: str
    data: bytes | None  # None: the file did not exist
    mode: int | None


def _write_all(root: Path, writes: Sequence[FileWrite]) -> ApplyResult:
    done: list[_Backup] = []
    created: list[Path] = []
    current = ""
    try:
        for write in writes:
            current = write.path
            backup = _backup(root, write.path)
            if backup.data == write.data:
                continue
            done.append(backup)
            _perform(root, write, backup, created)
    except OSError as exc:
        return _rolled_back(root, done, created, current, exc)
    return ApplyResult(True, None, sorted(backup.path for backup in done))


def _backup(root: Path, path: str) -> _Backup:
    target = root / path
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return _Backup(path, None, None)
    fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        return _Backup(path, fh.read(), stat.S_IMODE(mode))


def _perform(root: Path, write: FileWrite, backup: _Backup, created: list[Path]) -> None:
    target = root / write.path
    if write.data is None:
        os.unlink(target)
        return
    _make_parents(root, write.path, created)
    _write_atomic(target, write.data, backup.mode)


def _make_parents(root: Path, path: str, created: list[Path]) -> None:
    current = root
    for part in path.split("/")[:-1]:
        current = current / part
        if not os.path.lexists(current):
            os.mkdir(current)
            created.append(current)


def _fill(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_atomic(target: Path, data: bytes, mode: int | None) -> None:
    """Write `data` to a temporary sibling and rename it over `target`; the temporary never outlives this."""
    tmp = target.parent / f".autopack-{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o666)  # the umask applies, as for any new file
    try:
        try:
            _fill(fd, data)
        finally:
            os.close(fd)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _restore(root: Path, done: list[_Backup], created: list[Path]) -> list[str]:
    failures = []
    for backup in reversed(done):
        target = root / backup.path
        try:
            if backup.data is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
            else:
                _write_atomic(target, backup.data, backup.mode)
        except OSError as exc:
            failures.append(f"{backup.path} ({exc.strerror})")
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(directory)
    return failures


def _rolled_back(
    root: Path, done: list[_Backup], created: list[Path], path: str, exc: OSError
) -> ApplyResult:
    code = errno.errorcode.get(exc.errno or 0, "error")
    reason = f"writing {path} failed: {code}: {exc.strerror or exc}"
    failures = _restore(root, done, created)
    if failures:
        reason += f"; restoring the files already changed also failed for {', '.join(failures)}"
    else:
        reason += "; the files it had already changed were restored, so nothing was applied"
    return ApplyResult(False, reason)
