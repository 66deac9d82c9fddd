"""A throwaway copy of a worktree's git metadata, for commands that run `git status`/`git diff` inside.

A pooled worktree's `.git` is a file naming `<mirror>/worktrees/slot-N`, whose `commondir` is the bare
mirror the worker itself fetches, commits and pushes with. Binding those writable would let a command
plant config, hooks, filters or remotes that the worker's next git call obeys. Instead the box gets:

* the `.git` file (or directory entry) bound read-only, so it cannot be re-pointed at a git dir the
  command wrote itself;
* at the mirror's path, a fresh directory holding copies of HEAD, the repository's own refs (loose and
  packed) and the worktree's admin dir (HEAD, index), and a config of our own with only the
  repository format;
* an empty, writable `objects/` whose `info/alternates` names the mirror's real objects, bound
  read-only elsewhere: reads see every object, writes (`git add`, `git stash`) land in the copy.

The copy is deleted when the command ends; nothing written there ever reaches the worker's repository.

The fleet's own refs (`refs/autopack/`, `refs/heads/autopack/`: every run's result branch and phase
refs on this host) are left out. They are other runs' work, which a phase's command has no business
reading, and copying them made every boxed command cost more as the mirror aged: a view took 100 ms
of file creation with ~1,100 of them (two views per phase). The view is now the same few files
whatever the history, and the filtered packed-refs and the kept config are cached by their source
file's identity, so an unchanged mirror costs no reparse.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

OBJECTS_IN_BOX = "/run/autopack/git-objects"
_COPIED = ("HEAD", "shallow", "info")
FLEET_REFS = ("refs/autopack/", "refs/heads/autopack/")
"""Ref namespaces the fleet writes (workers/publish.py); never shown to a boxed command."""
_ADMIN = ("HEAD", "index", "commondir", "gitdir", "ORIG_HEAD")
_KEPT_CONFIG = (
    r"^(core\.(repositoryformatversion|bare|ignorecase|precomposeunicode|filemode|symlinks)"
    r"|extensions\.objectformat)$"
)


@dataclass(frozen=True)
class GitLayout:
    """Where a worktree's git metadata lives on the host."""

    dot_git: Path
    """`<worktree>/.git`, a file (linked worktree) or a directory (plain repository)."""
    common: Path
    """The repository's common dir: the bare mirror, or `.git` itself."""
    admin: Path | None
    """The linked worktree's admin dir (`<mirror>/worktrees/slot-N`); None for a plain repository."""


def find_layout(worktree: Path) -> GitLayout | None:
    dot_git = worktree / ".git"
    if dot_git.is_dir() and not dot_git.is_symlink():
        return GitLayout(dot_git, dot_git, None)
    if not dot_git.is_file():
        return None
    text = dot_git.read_text(errors="replace").strip()
    if not text.startswith("gitdir:"):
        return None
    admin = (worktree / text.removeprefix("gitdir:").strip()).resolve()
    try:
        common_rel = (admin / "commondir").read_text().strip()
    except OSError:
        return None
    return GitLayout(dot_git, (admin / common_rel).resolve(), admin)


FileKey = tuple[str, int, int, int]
_CACHE: dict[tuple[str, FileKey], bytes] = {}
_CACHE_MAX = 64


def _cached(kind: str, path: Path, make: Callable[[Path], bytes]) -> bytes:
    """`make(path)`, reused while `path` is the same file (inode, size, mtime): both sources change
    only when git rewrites them whole (a rename into place), which changes the inode."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return b""
    key = (kind, (str(path), st.st_ino, st.st_size, st.st_mtime_ns))
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = make(path)
    return _CACHE[key]


def _own_packed_refs(path: Path) -> bytes:
    """packed-refs without the fleet's refs (and the peeled `^` lines that belong to them)."""
    kept: list[bytes] = []
    dropping = False
    for line in path.read_bytes().splitlines(keepends=True):
        if line.startswith(b"^"):
            if not dropping:
                kept.append(line)
            continue
        name = line.split(b" ", 1)[1].strip().decode(errors="replace") if b" " in line else ""
        dropping = not line.startswith(b"#") and name.startswith(FLEET_REFS)
        if not dropping:
            kept.append(line)
    return b"".join(kept)


def _config(config: Path) -> bytes:
    done = subprocess.run(
        ["git", "config", "--file", str(config), "--get-regexp", _KEPT_CONFIG],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    sections: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        section, _, name = key.partition(".")
        sections.setdefault(section, []).append(f"\t{name} = {value}")
    return "".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items()).encode()


def build_view(layout: GitLayout, into: Path) -> Path:
    """Fill `into` (an empty directory) with the throwaway common dir; returns it."""
    common = layout.common
    into.mkdir(parents=True, exist_ok=True)
    for name in _COPIED:
        _copy(common / name, into / name)
    (into / "packed-refs").write_bytes(_cached("packed-refs", common / "packed-refs", _own_packed_refs))
    (into / "refs").mkdir()
    _copy(common / "refs", into / "refs", skip=FLEET_REFS)
    if layout.admin is None:  # a plain repository keeps its index next to HEAD
        for name in ("index", "ORIG_HEAD"):
            if (common / name).is_file():
                shutil.copyfile(common / name, into / name)
    else:
        admin_copy = into / "worktrees" / layout.admin.name
        admin_copy.mkdir(parents=True)
        for name in _ADMIN:
            if (layout.admin / name).is_file():
                shutil.copyfile(layout.admin / name, admin_copy / name)
    (into / "config").write_bytes(_cached("config", common / "config", _config))
    (into / "objects" / "info").mkdir(parents=True)
    (into / "objects" / "info" / "alternates").write_text(OBJECTS_IN_BOX + "\n")
    return into


def _copy(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy a file or a tree that other phases on this host change while we read it: a loose ref
    packed (deleted) mid-walk is skipped, lock files are never copied, nor directories whose path
    relative to `src.parent` (`refs/autopack`) starts a `skip` prefix. Contents only (`copyfile`):
    copying mode, times and xattrs too was several syscalls a file on every boxed command, and a
    fresh mtime on the index copy makes git's racy-entry check no less sure."""
    if not src.is_dir():
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(src, dst)
        return
    for directory, dirs, files in os.walk(src):
        rel = Path(directory).relative_to(src.parent).as_posix()
        dirs[:] = [d for d in dirs if not f"{rel}/{d}/".startswith(skip)]
        target = dst / Path(directory).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            if not name.endswith(".lock"):
                with contextlib.suppress(FileNotFoundError):
                    shutil.copyfile(os.path.join(directory, name), target / name)


def bind_args(layout: GitLayout, view: Path) -> list[str]:
    """bwrap arguments that show `view` in place of the real metadata (after the worktree's own bind)."""
    return (
        [
            "--bind",
            str(view),
            str(layout.common),
            "--ro-bind",
            str(layout.common / "objects"),
            OBJECTS_IN_BOX,
            "--ro-bind",
            str(layout.dot_git),
            str(layout.dot_git),
        ]
        if layout.admin is not None
        else [
            "--bind",
            str(view),
            str(layout.dot_git),
            "--ro-bind",
            str(layout.common / "objects"),
            OBJECTS_IN_BOX,
        ]
    )
