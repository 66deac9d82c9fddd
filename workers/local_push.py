"""A push to an origin on this host without git's transfer pair (send-pack + receive-pack).

`git push` to a local path runs two gits that negotiate, pack, unpack and check connectivity: ~56 ms of
CPU per phase on the 2-core bench machine, more than half of a no-op phase. When the origin is a
repository on this host, the same end state is reached with:
1. objects: every object the pushed commits reach and the origin lacks is copied through libgit2,
   children before parents, so an object present in the origin always has its whole closure there
   (what receive-pack's connectivity check guarantees). A copy killed half-way leaves unreferenced
   objects only, and the next copy resumes below them.
2. refs: one `git update-ref` in the origin, all-or-nothing, in which every update that must be a
   fast-forward names the value it was checked against, so the check and the write are one atomic step
   (receive-pack's lock gives the same). A racing writer in between fails the update and the check is
   made again.

Outcomes are `git push --atomic`'s: a non-fast-forward is refused with "[rejected]", deleting a ref
already gone is no error, no hook runs (the worker's CLI pushes disarm hooks on both sides, `_SAFE`).
The ref update stays a process: it is where a crash lands in the chaos tests' git shim. receive-pack
also ran `git gc --auto` in the origin after each push; the reconciler's pass does that instead
(`WorkspaceManager.tend_origins`), so the origin's loose objects are still packed by its own rules.

`local_target` says when this applies: an origin that is a local path whose config asks receive-pack
for nothing (`receive.*` checks, `core.sharedRepository` modes, `transfer.fsckObjects`), which only the
CLI honours; every other push goes through `git push`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pygit2
from pygit2.enums import ObjectType

from shared.errors import GitError
from shared.git import git, is_local
from workers.workspace.locks import retrying_locks

ZERO = "0" * 40
_CLI_ONLY_KEYS = ("receive.", "transfer.fsckobjects", "core.sharedrepository")


@dataclass(frozen=True)
class RefUpdate:
    """Point `ref` at `new` (None: delete it). `force=False`: only a fast-forward, or a new ref."""

    ref: str
    new: str | None
    force: bool = True


_Identity = tuple[int, int, int] | None
_TARGETS: dict[Path, tuple[_Identity, Path | None, _Identity]] = {}
"""mirror -> (its config's identity, its target, the target's config identity): the answer is read
again only when either config file was rewritten (git rewrites one whole, by rename, so the inode
changes). Opening both repositories and reading every config entry was ~0.5 ms a push."""


def _identity(config: Path) -> _Identity:
    try:
        st = config.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def local_target(mirror: Path) -> Path | None:
    """The git directory `git push origin` from `mirror` would write to, when this module can write it
    instead; None when the push must go through the CLI."""
    mine = _identity(mirror / "config")
    known = _TARGETS.get(mirror)
    if known is not None and known[0] == mine:
        target = known[1]
        if target is None or _identity(target / "config") == known[2]:
            return target
    target = _local_target(mirror)
    _TARGETS[mirror] = (mine, target, None if target is None else _identity(target / "config"))
    return target


def _local_target(mirror: Path) -> Path | None:
    try:
        remote = pygit2.Repository(str(mirror)).remotes["origin"]
    except (KeyError, pygit2.GitError):
        return None
    url = remote.push_url or remote.url
    if not url or not is_local(url):
        return None
    try:
        origin = pygit2.Repository(url)
    except pygit2.GitError:
        return None
    if any(entry.name.lower().startswith(_CLI_ONLY_KEYS) for entry in origin.config):
        return None
    return Path(origin.path)


def push(mirror: Path, origin: Path, updates: list[RefUpdate]) -> None:
    """Make `updates` in the origin, all or none (GitError; "[rejected]" for a non-fast-forward)."""
    try:
        src, dst = pygit2.Repository(str(mirror)), pygit2.Repository(str(origin))
        for new in {u.new for u in updates if u.new is not None}:
            copy_missing(src, dst, pygit2.Oid(hex=new))
    except (pygit2.GitError, OSError, KeyError) as exc:
        raise GitError(f"cannot copy objects from {mirror} to {origin}: {exc}") from exc
    for tries_left in range(2, -1, -1):
        write = partial(_update_refs, origin, "".join(_command(dst, u) for u in updates))
        try:
            retrying_locks(write, lambda: [origin])
            return
        except _Moved as exc:
            if not tries_left:
                raise GitError(f"! [remote rejected] a ref moved while it was updated: {exc}") from exc


class _Moved(Exception):
    """A checked ref was not at the value it was checked at: another writer moved it in between."""


_MOVED = ("but expected", "reference already exists", "unable to resolve reference")


def _update_refs(origin: Path, stdin: str) -> None:
    # git says "cannot lock ref" for a moved ref too: told apart here, so it is not waited out as a lock.
    try:
        git("update-ref", "--stdin", git_dir=origin, stdin=stdin)
    except GitError as exc:
        if any(text in str(exc) for text in _MOVED):
            raise _Moved(str(exc)) from exc
        raise


def _command(dst: pygit2.Repository, update: RefUpdate) -> str:
    if update.new is None:
        return f"delete {update.ref}\n"
    if update.force:
        return f"update {update.ref} {update.new}\n"
    old = _current(dst, update.ref)
    if old is not None and old != update.new and not dst.descendant_of(update.new, old):
        raise GitError(f"! [rejected] {update.new[:12]} -> {update.ref} (non-fast-forward)")
    return f"update {update.ref} {update.new} {old or ZERO}\n"


def _current(repo: pygit2.Repository, ref: str) -> str | None:
    try:
        return str(repo.references[ref].resolve().target)
    except KeyError:
        return None


def copy_missing(src: pygit2.Repository, dst: pygit2.Repository, root: pygit2.Oid) -> int:
    """Copy into `dst` every object reachable from `root` that `dst` lacks, each after all it points
    to; a present object is taken as complete below it. Returns how many were copied."""
    copied = 0
    stack: list[tuple[pygit2.Oid, bool]] = [(root, False)]
    while stack:
        oid, children_done = stack.pop()
        if oid in dst.odb:
            continue
        kind, data = src.odb.read(oid)
        if children_done:
            dst.odb.write(kind, data)
            copied += 1
            continue
        stack.append((oid, True))
        stack.extend((child, False) for child in _children(src, oid, kind))
    return copied


def _children(repo: pygit2.Repository, oid: pygit2.Oid, kind: int) -> list[pygit2.Oid]:
    if kind == ObjectType.COMMIT:
        commit = repo[oid]
        assert isinstance(commit, pygit2.Commit)
        return [commit.tree_id, *commit.parent_ids]
    if kind == ObjectType.TREE:
        tree = repo[oid]
        assert isinstance(tree, pygit2.Tree)
        # A gitlink (submodule commit) lives in another repository: nothing to copy.
        return [entry.id for entry in tree if entry.filemode != pygit2.enums.FileMode.COMMIT]
    if kind == ObjectType.TAG:
        tag = repo[oid]
        assert isinstance(tag, pygit2.Tag)
        return [tag.target]
    return []
