"""One cached bare mirror per repository per host, fetched only when a commit is missing.

A mirror never reads every ref of its origin, which holds a branch per run (and a phase ref per
fenced holder): a missing commit is fetched by its SHA alone (protocol v2: no ref listing at all) and
kept reachable under one of 256 `refs/autopack/fetched/<first two hex digits>` refs; the clone and the
fallback fetch (a server that refuses SHA wants) take branches and tags but not `autopack/` branches.
Run branches in a mirror are only those this host published, and retention (workers/retention.py)
drops them.

Every fetch, clone and worktree change in a mirror happens under the mirror's flock; ref updates from
publishing phases do not, so a lock file in the mirror is dropped only once it is old enough to be a
dead process's (see locks.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from shared.errors import GitError, WorkspaceError
from shared.git import git, is_local
from shared.git_native import has_commit_and_tree
from workers.workspace.disk import is_disk_full
from workers.workspace.locks import STALE_REF_LOCK_SECONDS, drop_locks, flock, git_lock_files, retrying_locks

FETCH_REFSPECS = (
    "+refs/heads/*:refs/heads/*",
    "^refs/heads/autopack/*",
    "+refs/tags/*:refs/tags/*",
)
"""What a clone and the fallback fetch take: never the run branches (`^` is a negative refspec)."""
RESULT_REFSPECS = ("+refs/heads/autopack/*:refs/heads/autopack/*",)
"""The last resort for a commit the origin refuses to send by SHA: every run branch (the old way)."""
FETCHED_PREFIX = "refs/autopack/fetched/"


def repo_key(repo: str) -> str:
    source = str(Path(repo).resolve()) if is_local(repo) else repo
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def workspace_error(what: str, exc: Exception) -> WorkspaceError:
    if is_disk_full(exc):
        return WorkspaceError(f"{what}: workspace disk is full (ENOSPC): {exc}")
    return WorkspaceError(f"{what}: {exc}")


@dataclass
class Mirror:
    """A bare mirror of one repository on this host, refreshed with fetch when a commit is missing."""

    repo: str
    path: Path

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def ensure(self, sha: str) -> None:
        """Make sure the mirror exists and holds `sha`."""
        if self.has(sha):
            return
        with flock(self.lock_path):
            try:
                if not (self.path / "HEAD").exists():
                    self._clone()
                if not self.has(sha):
                    drop_locks(git_lock_files(self.path), older_than=STALE_REF_LOCK_SECONDS)
                    self._fetch_missing(sha)
            except (GitError, OSError) as exc:
                raise workspace_error(f"refreshing mirror of {self.repo}", exc) from exc
        if not self.has(sha):
            raise WorkspaceError(f"commit {sha} is not in {self.repo} (was the result branch pushed?)")

    def _fetch_missing(self, sha: str) -> None:
        """The commit alone when the origin sends it by SHA (any reachable commit, over protocol v2);
        else branches and tags; else, last, the run branches too."""
        with contextlib.suppress(GitError):  # e.g. a v0-only server that allows no SHA wants
            self._fetch(f"+{sha}:{FETCHED_PREFIX}{sha[:2]}")
        if not self.has(sha):
            self._fetch(*FETCH_REFSPECS)
        if not self.has(sha):
            self._fetch(*RESULT_REFSPECS)

    def _fetch(self, *refspecs: str) -> None:
        """Fetch from origin, retrying a lost ref lock: a phase on this host may move a run branch while
        the fetch updates it ("is at X but expected Y"), and a process SIGKILLed mid-update leaves a
        `.lock` that only ages out (seen in the chaos batch)."""
        # No --prune: result refs may live only here (push_results off). unpackLimit=1: what a fetch
        # brings is kept as one pack, which appears whole (index-pack renames it into place) or not at
        # all. Unpacked into loose objects (git's default below 100 objects), a fetch SIGKILLed midway
        # left the new commit without its tree; `has` then found the commit, nothing fetched again,
        # and every provisioning on the host failed "unable to read tree" (the slot-kills test).
        options = ("-c", "fetch.unpackLimit=1", "fetch", "--quiet", "--no-tags", "--no-write-fetch-head")
        fetch = (*options, "origin", *refspecs)
        retrying_locks(lambda: git(*fetch, git_dir=self.path), lambda: [self.path])

    def _clone(self) -> None:
        """`clone --bare` would copy every run branch: init, then fetch branches and tags only."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # a clone killed half-way
        git("init", "--quiet", "--bare", str(tmp))
        git("config", "remote.origin.url", self.repo, git_dir=tmp)
        for spec in FETCH_REFSPECS:
            git("config", "--add", "remote.origin.fetch", spec, git_dir=tmp)
        git("config", "protocol.version", "2", git_dir=tmp)  # fetch by SHA lists no refs
        # Phase commits are only reachable from worktrees until pushed; never let gc prune them.
        git("config", "gc.auto", "0", git_dir=tmp)
        git("config", "core.logAllRefUpdates", "false", git_dir=tmp)  # see drop_reflogs
        git("fetch", "--quiet", "origin", git_dir=tmp)
        tmp.rename(self.path)

    def has(self, sha: str) -> bool:
        """The commit and its root tree are here. A commit without its tree is what a fetch killed
        while unpacking loose objects left behind (mirrors fetched before unpackLimit=1); asking for
        the tree makes the next `ensure` fetch again, and the fetch's own connectivity check then
        brings whatever else is missing."""
        if not (self.path / "HEAD").exists():
            return False
        return has_commit_and_tree(self.path, sha)  # in-process: a `cat-file` was a process a phase


def local_origin(mirror: Path) -> Path | None:
    """The git directory of the mirror's origin when that is a local path (a spawn: cache it)."""
    try:
        url = git("config", "--get", "remote.origin.url", git_dir=mirror).strip()
    except GitError:
        return None
    return git_dir_of(Path(url)) if url and is_local(url) else None


LOOSE_REFS_LIMIT = 256


def git_dir_of(repo: Path) -> Path:
    return repo / ".git" if (repo / ".git").is_dir() else repo


def loose_refs(repo: Path) -> int:
    # os.walk skips directories that vanish mid-walk: another host's pack-refs prunes them.
    walk = os.walk(git_dir_of(repo) / "refs")
    return sum(1 for _, _, files in walk for name in files if not name.endswith(".lock"))


def compact_refs(repo: Path, limit: int = LOOSE_REFS_LIMIT) -> bool:
    """Pack the repository's refs once more than `limit` are loose files, and bring its commit-graph
    up to date. A push (protocol v0 even in git 2.39: there is no v2 push) reads every ref of the
    remote; the pushing side then walks back from every advertised tip it has, and the receiving side
    checks connectivity against every ref (`rev-list --not --all`). With 10,000 run branches one push
    cost 150-170 ms of CPU against 17 ms with none; parsing those tips from a commit-graph instead of
    inflating each commit takes ~40% of it off (measured: `tests/bench/history.py`). Git retries its ref
    locks, so a push racing this waits instead of failing."""
    if loose_refs(repo) <= limit:
        return False
    git_dir = git_dir_of(repo)
    git("pack-refs", "--all", git_dir=git_dir)
    write_commit_graph(git_dir)
    return True


def write_commit_graph(git_dir: Path) -> None:
    """An incremental (`--split`) commit-graph of every commit a ref reaches: each call adds a layer of
    the commits new since the last, and git merges small layers as it goes."""
    git("commit-graph", "write", "--reachable", "--split", "--no-progress", git_dir=git_dir, timeout=600)


LOOSE_OBJECTS_LIMIT = 2048
PACKS_LIMIT = 8
"""Every git process opens every pack's index and every libgit2 open does too: with 16 packs (a few
fetches) `read-tree` cost 4.3 ms against 2.7 ms after a geometric repack left 2."""


def object_counts(git_dir: Path) -> tuple[int, int]:
    """(loose objects, packs) of a repository."""
    out = git("count-objects", "-v", git_dir=git_dir)
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return int(fields.get("count", "0")), int(fields.get("packs", "0"))


def loose_objects(git_dir: Path) -> int:
    return object_counts(git_dir)[0]


def compact_objects(git_dir: Path, limit: int = LOOSE_OBJECTS_LIMIT, packs: int = PACKS_LIMIT) -> bool:
    """Roll loose objects into packs once more than `limit` are loose, or packs together once there
    are more than `packs`: a mirror never runs gc (an unpushed phase commit must not be pruned); each
    phase leaves a few loose objects and each fetch a pack (see `Mirror._fetch`). `repack -d` deletes
    only loose objects it packed (the reachable ones) and never prunes; `--geometric=2` keeps the
    number of packs logarithmic."""
    loose, packed = object_counts(git_dir)
    if loose <= limit and packed <= packs:
        return False
    git("repack", "-d", "-q", "--geometric=2", git_dir=git_dir, timeout=600)
    return True


def drop_reflogs(git_dir: Path) -> None:
    """Stop the reflogs of a mirror's worktrees growing: each pooled slot's `logs/HEAD` gained two lines
    per phase (its commit and the next reset), forever, since a mirror never runs gc to expire them.
    With `core.logAllRefUpdates` false git writes a reflog only when one exists, so the existing ones
    (of mirrors cloned before this setting) go; nothing reads them. Writes the config only when it
    says otherwise (two reconcilers on a host would race for its lock every pass)."""
    try:
        current = git("config", "--get", "core.logAllRefUpdates", git_dir=git_dir).strip()
    except GitError:  # unset
        current = ""
    if current != "false":
        git("config", "core.logAllRefUpdates", "false", git_dir=git_dir)
    for logs in (git_dir / "worktrees").glob("*/logs"):
        shutil.rmtree(logs, ignore_errors=True)
