"""Two kinds of lock a workspace meets: our own `flock`s, and the `*.lock` files git leaves behind.

A `flock` is released by the kernel when its holder dies, so our slots and mirrors never need a
janitor. Git's lock files are plain files created with O_EXCL: a git process killed mid-update leaves
its lock behind, and every later git call that needs that ref, index or config fails until it is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar

from shared.errors import GitError

T = TypeVar("T")


@contextmanager
def flock(path: Path, blocking: bool = True) -> Iterator[IO[str] | None]:
    """Hold an exclusive flock on `path`; yields None when `blocking=False` and someone else holds it.

    Released with an explicit LOCK_UN, not just by closing: a process forked while we hold it (the
    prefork pool respawns a child while the worker's main process holds a mirror's lock for its
    reconciler) inherits the descriptor, and the lock lives as long as any copy of it is open, so
    closing ours alone left the mirror locked for good and that child waiting on its own copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+")
    try:
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fh, flags)
        except BlockingIOError:
            yield None
            return
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


def git_lock_files(git_dir: Path) -> Iterator[Path]:
    """Every git lock file of a repository's own state: refs, packed-refs, HEAD, config, index, shallow.
    Object and pack temporaries are not locks: git ignores them and gc removes them."""
    yield from (git_dir / "refs").rglob("*.lock")
    yield from (git_dir / "logs").rglob("*.lock")
    yield from git_dir.glob("*.lock")


def drop_locks(locks: Iterable[Path], older_than: float | None = None) -> list[Path]:
    """Remove lock files (only those older than `older_than` seconds, when given); returns what went."""
    now = time.time()
    dropped = []
    for lock in locks:
        with contextlib.suppress(FileNotFoundError):
            if older_than is None or now - lock.stat().st_mtime > older_than:
                lock.unlink()
                dropped.append(lock)
    return dropped


STALE_REF_LOCK_SECONDS = 10.0
"""A live git process holds a ref lock for milliseconds (and waits at most a second for one, see
shared/git.py): a lock file this old belongs to a process that died."""


def is_lock_conflict(exc: GitError) -> bool:
    """Git could not take a lock: a live update racing ours, or a dead process's leftover."""
    text = str(exc)
    return "cannot lock ref" in text or ("Unable to create" in text and ".lock" in text)


def retrying_locks(fn: Callable[[], T], git_dirs: Callable[[], Sequence[Path]], tries: int = 7) -> T:
    """Run `fn` (a git call that takes locks in the repositories `git_dirs()` names, asked only after a
    conflict); when it loses a lock, back off, drop the locks old enough to be a dead process's, and
    try again. Gives up after ~13 s, by when a dead process's lock is old enough to go."""
    for n in range(1, tries + 1):
        try:
            return fn()
        except GitError as exc:
            if not is_lock_conflict(exc) or n == tries:
                raise
            time.sleep(min(0.1 * 2**n, 2.0))
            for git_dir in git_dirs():
                drop_locks(git_lock_files(git_dir), older_than=STALE_REF_LOCK_SECONDS)
    raise AssertionError("unreachable")
