"""In-process git through libgit2 (pygit2) for reads where a process per step costs more than the work.

A `git rev-parse` through the CLI wrapper is two processes (the repository-config scan that disarms
program-naming keys, then the command), 8-17 ms; the same read in libgit2 is under 1 ms. libgit2 runs
no hooks, filters, fsmonitor or credential helpers for a read, so there is nothing for `_SAFE` to
disarm, and no config outside the repository is read (system, XDG and global search paths are emptied,
like GIT_CONFIG_NOSYSTEM and the CLI's operator-only global config). The ownership check is off, as the
CLI's `safe.directory=*` is: the caller has already admitted the path.

The CLI stays where libgit2 is the worse choice: network transports (fetch by SHA over protocol v2,
pushes with the worker's credential helper and ssh settings), `worktree` management, checkout/reset of
working trees (libgit2 does not apply every filter and attribute git does), and anything a shim must be
able to kill in the chaos tests.
"""

from __future__ import annotations

from pathlib import Path

import pygit2
from pygit2.enums import ConfigLevel, Option

from shared.errors import GitError

pygit2.option(Option.SET_OWNER_VALIDATION, 0)
for _level in (ConfigLevel.SYSTEM, ConfigLevel.XDG, ConfigLevel.GLOBAL):
    pygit2.settings.search_path[_level] = ""


def resolve_local(path: Path, ref: str) -> str:
    """The commit SHA `ref` names in the local repository at (or above) `path`, or GitError why not."""
    found = pygit2.discover_repository(str(path))
    if found is None:
        raise GitError(f"{path} is not inside a git repository")
    try:
        repo = pygit2.Repository(found)
        commit = repo.revparse_single(ref).peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError) as exc:
        raise GitError(f"ref {ref} is not a commit in {path}: {exc}") from exc
    return str(commit.id)


def head_of(worktree: Path) -> str:
    """The commit HEAD names in `worktree` (a linked worktree reads its own HEAD), or GitError."""
    return _peeled_head(worktree, pygit2.Commit, "HEAD of")


def head_tree_of(worktree: Path) -> str:
    """The tree of the commit HEAD names in `worktree`, or GitError."""
    return _peeled_head(worktree, pygit2.Tree, "HEAD's tree in")


def _peeled_head(worktree: Path, kind: type[pygit2.Commit] | type[pygit2.Tree], what: str) -> str:
    try:
        return str(pygit2.Repository(str(worktree)).head.peel(kind).id)
    except (KeyError, ValueError, pygit2.GitError) as exc:
        raise GitError(f"cannot read {what} {worktree}: {exc}") from exc


def has_commit_and_tree(git_dir: Path, sha: str) -> bool:
    """The commit `sha` and its root tree are in the repository at `git_dir` (False for anything else,
    a missing or unreadable repository included)."""
    try:
        repo = pygit2.Repository(str(git_dir))
        commit = repo.get(sha)
        return isinstance(commit, pygit2.Commit) and repo.get(commit.tree_id) is not None
    except (KeyError, ValueError, pygit2.GitError):
        return False
