"""One cached bare mirror per repository per host, fetched only when a commit is missing.

Every fetch, clone and worktree change in a mirror happens under the mirror's flock; ref updates from
publishing phases do not, so a lock file in the mirror is dropped only once it is old enough to be a
dead process's (see locks.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from shared.errors import GitError, WorkspaceError
from shared.git import git, is_local
from workers.workspace.disk import is_disk_full
from workers.workspace.locks import STALE_REF_LOCK_SECONDS, drop_locks, flock, git_lock_files, retrying_locks

FETCH_REFSPECS = (
    "+refs/heads/*:refs/heads/*",
    "+refs/tags/*:refs/tags/*",
    "+refs/autopack/*:refs/autopack/*",
)


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
                    self._fetch()
            except (GitError, OSError) as exc:
                raise workspace_error(f"refreshing mirror of {self.repo}", exc) from exc
        if not self.has(sha):
            raise WorkspaceError(f"commit {sha} is not in {self.repo} (was the result branch pushed?)")

    def _fetch(self) -> None:
        """Fetch from origin, retrying a lost ref lock: a phase on this host may move a run branch while
        the fetch updates it ("is at X but expected Y"), and a process SIGKILLed mid-update leaves a
        `.lock` that only ages out (seen in the chaos batch)."""
        # No --prune: result refs may live only here (push_results off).
        fetch = ("fetch", "--quiet", "origin", *FETCH_REFSPECS)
        retrying_locks(lambda: git(*fetch, git_dir=self.path), lambda: [self.path])

    def _clone(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # a clone killed half-way
        git("clone", "--quiet", "--bare", "--", self.repo, str(tmp))
        git("config", "remote.origin.fetch", FETCH_REFSPECS[0], git_dir=tmp)
        for spec in FETCH_REFSPECS[1:]:
            git("config", "--add", "remote.origin.fetch", spec, git_dir=tmp)
        # Phase commits are only reachable from worktrees until pushed; never let gc prune them.
        git("config", "gc.auto", "0", git_dir=tmp)
        tmp.rename(self.path)

    def has(self, sha: str) -> bool:
        if not (self.path / "HEAD").exists():
            return False
        try:
            git("cat-file", "-e", f"{sha}^{{commit}}", git_dir=self.path, timeout=30)
            return True
        except GitError:
            return False


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
    """Pack the repository's refs once more than `limit` are loose files. Every push and fetch reads
    every ref of the repository it talks to; with each run adding a phase ref and a branch, 4,000
    loose refs made a phase's pushes ~3.6x slower (measured). Git retries its ref locks, so a push
    racing this waits instead of failing."""
    if loose_refs(repo) <= limit:
        return False
    git("pack-refs", "--all", git_dir=git_dir_of(repo))
    return True
