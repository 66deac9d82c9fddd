"""A throwaway copy of a worktree's git metadata, for commands that run `git status`/`git diff` inside.

A pooled worktree's `.git` is a file naming `<mirror>/worktrees/slot-N`, whose `commondir` is the bare
mirror the worker itself fetches, commits and pushes with. Binding those writable would let a command
plant config, hooks, filters or remotes that the worker's next git call obeys. Instead the box gets:

* the `.git` file (or directory entry) bound read-only, so it cannot be re-pointed at a git dir the
  command wrote itself;
* at the mirror's path, a fresh directory holding copies of HEAD, packed-refs, refs/ and the
  worktree's admin dir (HEAD, index), and a config of our own with only the repository format;
* an empty, writable `objects/` whose `info/alternates` names the mirror's real objects, bound
  read-only elsewhere: reads see every object, writes (`git add`, `git stash`) land in the copy.

The copy is deleted when the command ends; nothing written there ever reaches the worker's repository.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OBJECTS_IN_BOX = "/run/autopack/git-objects"
_COPIED = ("HEAD", "packed-refs", "shallow", "info")
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


def _config(common: Path) -> str:
    done = subprocess.run(
        ["git", "config", "--file", str(common / "config"), "--get-regexp", _KEPT_CONFIG],
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
    return "".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items())


def build_view(layout: GitLayout, into: Path) -> Path:
    """Fill `into` (an empty directory) with the throwaway common dir; returns it."""
    common = layout.common
    into.mkdir(parents=True, exist_ok=True)
    for name in _COPIED:
        _copy(common / name, into / name)
    (into / "refs").mkdir()
    _copy(common / "refs", into / "refs")
    if layout.admin is None:  # a plain repository keeps its index next to HEAD
        for name in ("index", "ORIG_HEAD"):
            if (common / name).is_file():
                shutil.copy2(common / name, into / name)
    else:
        admin_copy = into / "worktrees" / layout.admin.name
        admin_copy.mkdir(parents=True)
        for name in _ADMIN:
            if (layout.admin / name).is_file():
                shutil.copy2(layout.admin / name, admin_copy / name)
    (into / "config").write_text(_config(common))
    (into / "objects" / "info").mkdir(parents=True)
    (into / "objects" / "info" / "alternates").write_text(OBJECTS_IN_BOX + "\n")
    return into


def _copy(src: Path, dst: Path) -> None:
    """Copy a file or a tree that other phases on this host change while we read it: a loose ref
    packed (deleted) mid-walk is skipped, lock files are never copied."""
    if not src.is_dir():
        with contextlib.suppress(FileNotFoundError):
            shutil.copy2(src, dst)
        return
    for directory, _, files in os.walk(src):
        target = dst / Path(directory).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            if not name.endswith(".lock"):
                with contextlib.suppress(FileNotFoundError):
                    shutil.copy2(os.path.join(directory, name), target / name)


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
