"""A per-repository pool of reusable worktrees on this host.

Provisioning a pooled worktree is `reset --hard` + `clean` on an existing checkout, far cheaper than
`git worktree add` (let alone a clone). Slots are guarded by `flock`, which the kernel releases when a
process dies, so a crashed worker's slot is reusable at once; what its git left half-done is put right
by repair.py before the slot is used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.errors import DiskFull, GitError
from shared.git import git
from workers.workspace import repair
from workers.workspace.locks import STALE_REF_LOCK_SECONDS, drop_locks, flock, git_lock_files
from workers.workspace.mirror import Mirror, compact_refs, local_origin, repo_key, workspace_error


@dataclass
class Worktree:
    path: Path
    mirror: Mirror

    def intact(self) -> bool:
        """The worktree and its record in the mirror still name each other: a command that deleted or
        rewrote `.git` broke that, and the git calls after it fail for the phase's reason, not the host's."""
        return repair.linked_record(self.mirror.path, self.path) is not None


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
        with self._slot(pool, sha) as slot:
            try:
                self._provision(mirror, slot, sha)
            except (GitError, OSError) as exc:
                raise workspace_error(f"provisioning worktree {slot.name}", exc) from exc
            yield Worktree(slot, mirror)

    @contextmanager
    def _slot(self, pool: Path, sha: str) -> Iterator[Path]:
        for n in self._preferred_order(pool, sha):
            with flock(pool / f"slot-{n}.lock", blocking=False) as held:
                if held is not None:
                    yield pool / f"slot-{n}"
                    return
        # Every slot is busy (more concurrent phases than slots): wait for one, by pid to spread waiters.
        n = os.getpid() % self.slots
        with flock(pool / f"slot-{n}.lock"):
            yield pool / f"slot-{n}"

    def _preferred_order(self, pool: Path, sha: str) -> list[int]:
        """Slots already checked out at `sha` first: a run's next phase starts where its previous phase
        committed, and that slot's reset has nothing to rewrite (bench (j), 2,100 files: ~80-110 ms, against
        ~300-500 ms across 20 commits). Read without the lock: a stale answer only costs a longer reset."""
        at_sha = [n for n in range(self.slots) if slot_head(pool / f"slot-{n}") == sha]
        return at_sha + [n for n in range(self.slots) if n not in at_sha]

    def _provision(self, mirror: Mirror, slot: Path, sha: str) -> None:
        record = repair.linked_record(mirror.path, slot)
        if record is not None:
            repair.drop_record_locks(record)  # we hold the slot: these are a dead holder's
            try:
                git("reset", "--quiet", "--hard", sha, cwd=slot)
                git("clean", "-ffdxq", cwd=slot)
                return
            except GitError:
                pass  # e.g. HEAD names a commit the mirror lacks: rebuild below
        with flock(mirror.lock_path):
            repair.forget(mirror.path, slot)
            repair.prune(mirror.path)
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
        for mirror_dir in self._mirror_dirs():
            origin = self.local_origin(mirror_dir)
            targets = [mirror_dir, *([origin] if origin is not None and origin.is_dir() else [])]
            packed += sum(compact_refs(t) for t in targets)
        return packed

    def tend_origins(self) -> None:
        """What receive-pack did after every push, for the local origins this host now writes
        in-process (workers/local_push.py): `git gc --auto`, which packs their loose objects once the
        origin's own `gc.auto` says there are many, and otherwise returns at once."""
        for mirror_dir in self._mirror_dirs():
            origin = self.local_origin(mirror_dir)
            if origin is not None and origin.is_dir():
                git("gc", "--auto", "--quiet", git_dir=origin)

    def local_origin(self, mirror_dir: Path) -> Path | None:
        """The mirror's origin when it is a local path; read once per mirror (this runs every pass)."""
        if mirror_dir not in self._origins:
            self._origins[mirror_dir] = local_origin(mirror_dir)
        return self._origins[mirror_dir]

    def prune(self) -> None:
        """Drop what crashed workers left: records of deleted worktrees (locked ones too) and git lock
        files old enough to be a dead process's."""
        for mirror_dir in self._mirror_dirs():
            with flock(mirror_dir.with_suffix(".lock")):
                drop_locks(git_lock_files(mirror_dir), older_than=STALE_REF_LOCK_SECONDS)
                repair.prune(mirror_dir)

    def _mirror_dirs(self) -> list[Path]:
        mirrors = self.root / "mirrors"
        return sorted(d for d in mirrors.glob("*.git") if (d / "HEAD").exists()) if mirrors.is_dir() else []


def slot_head(slot: Path) -> str | None:
    """The commit a pooled worktree's HEAD names (it is always detached), read from its admin dir
    without a git process; None when the slot does not exist or is not a detached linked worktree."""
    try:
        link = (slot / ".git").read_text()
        if not link.startswith("gitdir: "):
            return None
        admin = slot / link.removeprefix("gitdir: ").strip()  # an absolute gitdir replaces `slot`
        return (admin / "HEAD").read_text().strip()
    except (OSError, ValueError):  # a damaged slot (garbage in .git) is repair.py's business, not ours
        return None
