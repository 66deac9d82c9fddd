"""Git workspaces: one cached bare mirror per repo per host, and a pool of reusable worktrees.

Provisioning a pooled worktree is `reset --hard` + `clean` on an existing checkout, far cheaper than
`git worktree add` (let alone a clone). Slots are guarded by `flock`, which the kernel releases when a
process dies, so a crashed worker's slot is reusable at once and nothing needs a janitor to unlock it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shared.errors import DiskFull, GitError, WorkspaceError
from shared.git import git, is_local

FETCH_REFSPECS = (
    "+refs/heads/*:refs/heads/*",
    "+refs/tags/*:refs/tags/*",
    "+refs/autopack/*:refs/autopack/*",
)


def repo_key(repo: str) -> str:
    source = str(Path(repo).resolve()) if is_local(repo) else repo
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@contextmanager
def _flock(path: Path, blocking: bool = True) -> Iterator[IO[str] | None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+")
    try:
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fh, flags)
        except BlockingIOError:
            yield None
            return
        yield fh
    finally:
        fh.close()


_DISK_FULL_WORDS = ("No space left", "Out of diskspace", "Disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT raised here, or reported by a git child process in its stderr (git says both
    "No space left on device" and "write error. Out of diskspace")."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(word in str(exc) for word in _DISK_FULL_WORDS)


def _workspace_error(what: str, exc: Exception) -> WorkspaceError:
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
        with _flock(self.lock_path):
            try:
                if not (self.path / "HEAD").exists():
                    self._clone()
                if not self.has(sha):
                    self._drop_stale_ref_locks()
                    self._fetch()
            except (GitError, OSError) as exc:
                raise _workspace_error(f"refreshing mirror of {self.repo}", exc) from exc
        if not self.has(sha):
            raise WorkspaceError(f"commit {sha} is not in {self.repo} (was the result branch pushed?)")

    def _fetch(self, tries: int = 7) -> None:
        """Fetch from origin, retrying a lost ref lock: a phase on this host may move a run branch while
        the fetch updates it ("is at X but expected Y"), and a process SIGKILLed mid-update leaves a
        `.lock` that only ages out (seen in the chaos batch). Gives up after ~12 s."""
        for n in range(1, tries + 1):
            try:
                # No --prune: result refs may live only here (push_results off).
                git("fetch", "--quiet", "origin", *FETCH_REFSPECS, git_dir=self.path)
                return
            except GitError as exc:
                if "cannot lock ref" not in str(exc) or n == tries:
                    raise
                time.sleep(min(0.1 * 2**n, 2.0))
                self._drop_stale_ref_locks()

    def _drop_stale_ref_locks(self, older_than: float = 10.0) -> None:
        """A process killed mid-fetch or mid-update leaves `*.lock` files that fail every later fetch on
        this host. We hold the mirror's flock, so no fetch of ours is running, and a live ref update
        holds its lock for milliseconds: a lock this old is a dead process's."""
        now = time.time()
        candidates = [*(self.path / "refs").rglob("*.lock"), self.path / "packed-refs.lock"]
        for lock in candidates:
            with contextlib.suppress(FileNotFoundError):
                if now - lock.stat().st_mtime > older_than:
                    lock.unlink()

    def _clone(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
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


LOOSE_REFS_LIMIT = 256


def _git_dir(repo: Path) -> Path:
    return repo / ".git" if (repo / ".git").is_dir() else repo


def loose_refs(repo: Path) -> int:
    # os.walk skips directories that vanish mid-walk: another host's pack-refs prunes them.
    return sum(
        1 for _, _, files in os.walk(_git_dir(repo) / "refs") for name in files if not name.endswith(".lock")
    )


def compact_refs(repo: Path, limit: int = LOOSE_REFS_LIMIT) -> bool:
    """Pack the repository's refs once more than `limit` are loose files. Every push and fetch reads
    every ref of the repository it talks to; with each run adding a phase ref and a branch, 4,000
    loose refs made a phase's pushes ~3.6x slower (measured). Git retries its ref locks, so a push
    racing this waits instead of failing."""
    if loose_refs(repo) <= limit:
        return False
    git("pack-refs", "--all", git_dir=_git_dir(repo))
    return True


@dataclass
class Worktree:
    path: Path
    mirror: Mirror


class WorkspaceManager:
    """Hands out worktrees checked out at a commit, from a per-repo pool on this host."""

    def __init__(self, root: Path, slots: int) -> None:
        self.root = root
        self.slots = slots
        self._origins: dict[Path, Path | None] = {}

    def mirror(self, repo: str) -> Mirror:
        return Mirror(repo, self.root / "mirrors" / f"{repo_key(repo)}.git")

    @contextmanager
    def worktree(self, repo: str, sha: str) -> Iterator[Worktree]:
        """A worktree at `sha` (detached), clean, owned by this process until the block ends."""
        mirror = self.mirror(repo)
        mirror.ensure(sha)
        pool = self.root / "worktrees" / repo_key(repo)
        with self._slot(pool) as slot:
            try:
                self._provision(mirror, slot, sha)
            except (GitError, OSError) as exc:
                raise _workspace_error(f"provisioning worktree {slot.name}", exc) from exc
            yield Worktree(slot, mirror)

    @contextmanager
    def _slot(self, pool: Path) -> Iterator[Path]:
        for n in range(self.slots):
            with _flock(pool / f"slot-{n}.lock", blocking=False) as held:
                if held is not None:
                    yield pool / f"slot-{n}"
                    return
        # Every slot is busy (more concurrent phases than slots): wait for one, by pid to spread waiters.
        n = os.getpid() % self.slots
        with _flock(pool / f"slot-{n}.lock"):
            yield pool / f"slot-{n}"

    def _provision(self, mirror: Mirror, slot: Path, sha: str) -> None:
        if (slot / ".git").is_file():
            try:
                git("reset", "--quiet", "--hard", sha, cwd=slot)
                git("clean", "-ffdxq", cwd=slot)
                return
            except GitError:
                shutil.rmtree(slot, ignore_errors=True)  # a broken leftover: rebuild it below
        shutil.rmtree(slot, ignore_errors=True)
        with _flock(mirror.lock_path):
            git("worktree", "prune", git_dir=mirror.path)
            git("worktree", "add", "--quiet", "--detach", "--force", str(slot), sha, git_dir=mirror.path)

    def free_bytes(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free

    def require_free(self, min_bytes: int, after: str = "") -> None:
        """Raise DiskFull, naming the directory and the figures, when less than `min_bytes` is free."""
        free = self.free_bytes()
        if free < min_bytes:
            detail = f"{self.root} has {free // 2**20} MiB free (< {min_bytes // 2**20} MiB)"
            raise DiskFull(f"{detail}{'; ' + after if after else ''}")

    def compact_refs(self) -> int:
        """Pack refs in this host's mirrors and in their origins when those are local paths (the
        origins of remote URLs are their servers' business). Returns how many repositories it packed."""
        packed = 0
        for mirror_dir in sorted((self.root / "mirrors").glob("*.git")):
            if not (mirror_dir / "HEAD").exists():
                continue
            origin = self._local_origin(mirror_dir)
            targets = [mirror_dir, *([origin] if origin is not None and origin.is_dir() else [])]
            packed += sum(compact_refs(t) for t in targets)
        return packed

    def _local_origin(self, mirror_dir: Path) -> Path | None:
        """The mirror's origin when it is a local path; read once per mirror (this runs every pass)."""
        if mirror_dir not in self._origins:
            url = None
            with contextlib.suppress(GitError):
                url = git("config", "--get", "remote.origin.url", git_dir=mirror_dir).strip()
            self._origins[mirror_dir] = Path(url) if url and is_local(url) else None
        return self._origins[mirror_dir]

    def prune(self) -> None:
        """Drop worktree records whose directories are gone (a crashed worker's leftovers)."""
        mirrors = self.root / "mirrors"
        if not mirrors.is_dir():
            return
        for mirror_dir in mirrors.glob("*.git"):
            with _flock(mirror_dir.with_suffix(".lock")):
                git("worktree", "prune", git_dir=mirror_dir)
