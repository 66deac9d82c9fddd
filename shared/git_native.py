"""In-process git through libgit2 (pygit2) where a process per step costs more than the work: reads,
the mirror's ref updates, and the phase commit (the index as it is, written as a tree and committed on
the slot's HEAD).

A `git rev-parse` through the CLI wrapper is two processes (the repository-config scan that disarms
program-naming keys, then the command), 8-17 ms; the same read in libgit2 is under 1 ms. libgit2 runs
no hooks, filters, fsmonitor or credential helpers for a read, so there is nothing for `_SAFE` to
disarm, and no config outside the repository is read (system, XDG and global search paths are emptied,
like GIT_CONFIG_NOSYSTEM and the CLI's operator-only global config). The ownership check is off, as the
CLI's `safe.directory=*` is: the caller has already admitted the path.

The CLI stays where libgit2 is the worse choice: network transports (fetch by SHA over protocol v2,
pushes with the worker's credential helper and ssh settings; a push to an origin on this host copies
objects through libgit2 and moves refs with one `update-ref`, workers/local_push.py), `worktree`
management, checkout/reset of working trees (libgit2 does not apply every filter and attribute git
does), status and staging (they read the working tree, where the same holds), and a local origin's ref
update, the push a shim kills in the chaos tests. The mirror's refs move in-process (`set_refs`, libgit2
takes the same lock files git does). A commit killed half-way leaves at most unreferenced objects and a
`HEAD.lock` in the worktree's record, which the slot's next holder drops (workers/workspace/repair.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pygit2
from pygit2.enums import ConfigLevel, Option

from shared.errors import GitError

pygit2.option(Option.SET_OWNER_VALIDATION, 0)
for _level in (ConfigLevel.SYSTEM, ConfigLevel.XDG, ConfigLevel.GLOBAL):
    pygit2.settings.search_path[_level] = ""


def resolve_local(path: Path, ref: str) -> str:
    """The commit SHA `ref` names in the local repository at `path`, or GitError why not. `path` must be
    the repository itself (its top folder, its git dir, or a bare repository): workers clone and fetch
    `path`, which git refuses for a folder inside a repository, so such a run could never start."""
    found = pygit2.discover_repository(str(path))
    if found is None:
        raise GitError(f"{path} is not inside a git repository")
    try:
        repo = pygit2.Repository(found)
    except pygit2.GitError as exc:
        raise GitError(f"cannot open the git repository at {found}: {exc}") from exc
    here = os.stat(path)  # the same directory by identity: cheaper than resolving three paths
    if not any(os.path.samestat(here, os.stat(top)) for top in (repo.workdir, repo.path) if top):
        top = Path(repo.workdir or repo.path)
        raise GitError(f"{path} is a folder inside the git repository at {top}: name that repository")
    try:
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


def index_tree(worktree: Path) -> str:
    """The tree `worktree`'s index holds, written to the object store (what `git write-tree` prints)."""
    try:
        return str(pygit2.Repository(str(worktree)).index.write_tree())
    except (KeyError, ValueError, OSError, pygit2.GitError) as exc:
        raise GitError(f"write-tree in {worktree}: {exc}") from exc


def commit_index(worktree: Path, message: str, name: str, email: str) -> str:
    """Commit `worktree`'s index as it is (empty changes too) on its HEAD; returns the SHA.

    What `git commit --no-verify --allow-empty -m message` makes, without its two processes: the
    message cleaned up as `-m` cleans it, author and committer now in the local timezone, no hooks,
    no signing, no reflog (a slot's record keeps none either). A detached HEAD (every pool slot's)
    moves by `move_detached_head`; a branch through libgit2."""
    try:
        repo = pygit2.Repository(str(worktree))
        signature = pygit2.Signature(name, email)
        tree = repo.index.write_tree()
        parent = repo.head.target
        if not repo.head_is_detached:
            oid = repo.create_commit("HEAD", signature, signature, cleaned(message), tree, [parent])
            return str(oid)
        oid = repo.create_commit(None, signature, signature, cleaned(message), tree, [parent])
    except (KeyError, ValueError, OSError, pygit2.GitError) as exc:
        raise GitError(f"commit in {worktree}: {exc}") from exc
    move_detached_head(Path(repo.path), str(parent), str(oid))
    return str(oid)


def move_detached_head(git_dir: Path, old: str, new: str) -> None:
    """Point the detached HEAD of `git_dir` (a worktree's record, or a repository's git dir) from `old`
    to `new` as git does: create `HEAD.lock` exclusively, write the SHA, check HEAD is still `old`,
    rename the lock over HEAD. libgit2's own ref write first checks the new name against every ref of
    the repository (packed ones included) for a directory/file clash: 6.4 ms with a mirror's 20,000
    refs against 0.2 ms for the commit itself, the per-phase CPU that grew with history (bench (l))."""
    lock, head = git_dir / "HEAD.lock", git_dir / "HEAD"
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError as exc:
        raise GitError(f"cannot lock ref 'HEAD' in {git_dir}: {lock} exists") from exc
    except OSError as exc:
        raise GitError(f"commit in {git_dir}: cannot create {lock}: {exc}") from exc
    try:
        with os.fdopen(fd, "w") as out:
            out.write(f"{new}\n")
        current = head.read_text().strip()
        if current != old:
            raise GitError(f"commit in {git_dir}: HEAD moved from {old} to {current} meanwhile")
        os.replace(lock, head)
    except BaseException as exc:
        lock.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise GitError(f"commit in {git_dir}: cannot write HEAD: {exc}") from exc
        raise


def set_refs(git_dir: Path, targets: dict[str, str]) -> None:
    """Point each ref at its commit in the repository at `git_dir` (what `git update-ref --stdin` does
    with `update` lines): every ref is locked before any moves. A lock held elsewhere, or left by a
    dead process, is a GitError that says "cannot lock ref", as git's own is, so `retrying_locks` waits
    it out and drops a stale one."""
    try:
        repo = pygit2.Repository(str(git_dir))
        with repo.transaction() as tx:
            for ref, sha in targets.items():
                tx.lock_ref(ref)
                tx.set_target(ref, pygit2.Oid(hex=sha), message="autopack")
    except pygit2.GitError as exc:
        if "lock" in str(exc):
            raise GitError(f"cannot lock ref in {git_dir}: {exc}") from exc
        raise GitError(f"cannot update refs in {git_dir}: {exc}") from exc
    except (ValueError, OSError) as exc:
        raise GitError(f"cannot update refs in {git_dir}: {exc}") from exc


_TRAILING_SPACE = re.compile(r"[ \t\r\f\v]+$", re.MULTILINE)


def cleaned(message: str) -> str:
    """A commit message as `git commit -m` keeps it (`--cleanup=whitespace`): trailing whitespace off
    every line, blank lines at the ends dropped and runs of them made one, a final newline."""
    lines = _TRAILING_SPACE.sub("", message).split("\n")
    kept: list[str] = []
    for line in lines:
        if line or (kept and kept[-1]):
            kept.append(line)
    while kept and not kept[-1]:
        kept.pop()
    return "\n".join(kept) + "\n" if kept else ""
