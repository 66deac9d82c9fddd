"""Every state a killed git step can leave in a slot or a mirror, made on a real repository: the next
provisioning of that slot must hand out a clean worktree at the commit asked for."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.errors import GitError
from shared.git import FORK_GATE
from shared.git import git as shared_git
from workers.publish import branch_ref, publish
from workers.workspace import WorkspaceManager
from workers.workspace.locks import flock, retrying_locks

Damage = Callable[[Path, Path, Path], None]
"""(slot, its record in the mirror, the mirror) -> None: leave the slot as a kill would."""


def git(repo: Path, *args: str, git_dir: bool = False) -> str:
    where = ["--git-dir", str(repo)] if git_dir else ["-C", str(repo)]
    return subprocess.run(["git", *where, *args], check=True, capture_output=True, text=True).stdout.strip()


def worktree_list(mirror: Path) -> str:
    return git(mirror, "worktree", "list", "--porcelain", git_dir=True)


def _missing_but_locked(slot: Path, record: Path, mirror: Path) -> None:
    # What `worktree add` killed before its checkout leaves (the reproduction).
    subprocess.run(["rm", "-rf", str(slot)], check=True)
    (record / "locked").write_text("initializing")


def _half_checked_out(slot: Path, record: Path, mirror: Path) -> None:
    # `worktree add` killed mid-checkout: locked, no index yet, some files written.
    (record / "locked").write_text("initializing")
    (record / "index").unlink()
    for path in list(slot.rglob("*.py"))[::2]:
        path.unlink()


def _directory_without_git_link(slot: Path, record: Path, mirror: Path) -> None:
    # Killed before the `.git` file was written: files, no link; and the record gone too.
    (slot / ".git").unlink()
    subprocess.run(["rm", "-rf", str(record)], check=True)


def _index_and_head_locks(slot: Path, record: Path, mirror: Path) -> None:
    # `reset`, `clean`, `add` or `commit` killed while holding their locks.
    (record / "index.lock").write_text("")
    (record / "HEAD.lock").write_text("")
    (slot / "src" / "calc.py").write_text("half-reset\n")


def _head_names_a_commit_the_mirror_lacks(slot: Path, record: Path, mirror: Path) -> None:
    (record / "HEAD").write_text("0123456789abcdef0123456789abcdef01234567\n")


def _record_deleted(slot: Path, record: Path, mirror: Path) -> None:
    # The mirror lost its worktree records (re-cloned, or a prune killed half-way).
    subprocess.run(["rm", "-rf", str(record)], check=True)


def _record_half_deleted(slot: Path, record: Path, mirror: Path) -> None:
    # `worktree prune` killed mid-delete: the record has no gitdir/HEAD any more.
    (record / "gitdir").unlink()
    (record / "HEAD").unlink()


def _git_link_garbage(slot: Path, record: Path, mirror: Path) -> None:
    (slot / ".git").write_bytes(b"\x00\xffnot a gitdir line")


def _corrupt_index(slot: Path, record: Path, mirror: Path) -> None:
    (record / "index").write_bytes(b"DIRC\x00\x00garbage")


DAMAGE: dict[str, Damage] = {
    "missing-but-locked": _missing_but_locked,
    "half-checked-out": _half_checked_out,
    "directory-without-git-link": _directory_without_git_link,
    "index-and-head-locks": _index_and_head_locks,
    "head-names-missing-commit": _head_names_a_commit_the_mirror_lacks,
    "record-deleted": _record_deleted,
    "record-half-deleted": _record_half_deleted,
    "git-link-garbage": _git_link_garbage,
    "corrupt-index": _corrupt_index,
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_the_next_provisioning_of_a_damaged_slot_hands_out_a_clean_worktree_at_the_sha(
    damage: Damage, sample_repo: Path, tmp_path: Path
) -> None:
    manager = WorkspaceManager(tmp_path / "workspace", slots=1)  # one slot: the damaged one is reused
    sha = git(sample_repo, "rev-parse", "HEAD")
    with manager.worktree(str(sample_repo), sha) as wt:
        slot, mirror = wt.path, wt.mirror.path
        record = Path(git(slot, "rev-parse", "--absolute-git-dir"))
    damage(slot, record, mirror)

    with manager.worktree(str(sample_repo), sha) as wt:
        assert wt.path == slot
        assert git(slot, "rev-parse", "HEAD") == sha
        assert git(slot, "status", "--porcelain", "--untracked-files=all") == ""
        assert (slot / "src" / "calc.py").read_text().startswith("def add(")
        assert wt.intact()
    listing = worktree_list(mirror)
    assert "locked" not in listing and "prunable" not in listing
    assert listing.count("worktree ") == 2  # the bare mirror and this one slot, nothing left over


def test_pruning_drops_a_locked_record_whose_worktree_a_kill_never_created(
    sample_repo: Path, tmp_path: Path
) -> None:
    manager = WorkspaceManager(tmp_path / "workspace", slots=2)
    sha = git(sample_repo, "rev-parse", "HEAD")
    with manager.worktree(str(sample_repo), sha) as wt:
        slot, mirror = wt.path, wt.mirror.path
        record = Path(git(slot, "rev-parse", "--absolute-git-dir"))
    _missing_but_locked(slot, record, mirror)
    assert "locked" in worktree_list(mirror)

    manager.prune()

    assert worktree_list(mirror).count("worktree ") == 1  # only the bare mirror itself
    assert not record.exists()


def _provisioned_mirror(repo: Path, tmp_path: Path) -> tuple[Path, str]:
    """A host's mirror of `repo` after one provisioning, and the commit it was provisioned at."""
    sha = git(repo, "rev-parse", "HEAD")
    with WorkspaceManager(tmp_path / "workspace", slots=1).worktree(str(repo), sha) as wt:
        return wt.mirror.path, sha


def _stale(lock: Path) -> Path:
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")
    os.utime(lock, (0, 0))  # as old as a lock of a process killed long ago
    return lock


def test_a_branch_move_succeeds_past_ref_locks_a_killed_push_left_in_the_mirror_and_the_origin(
    sample_repo: Path, tmp_path: Path
) -> None:
    mirror, sha = _provisioned_mirror(sample_repo, tmp_path)
    ref = branch_ref(7)
    locks = [
        _stale(mirror / f"{ref}.lock"),
        _stale(sample_repo / ".git" / f"{ref}.lock"),
        _stale(sample_repo / ".git" / "packed-refs.lock"),
    ]

    publish(mirror, ref, sha, push=True, force=False)

    assert git(sample_repo, "rev-parse", ref) == sha
    assert git(mirror, "rev-parse", ref, git_dir=True) == sha
    assert [lock for lock in locks if lock.exists()] == []


def test_a_young_ref_lock_of_a_live_update_is_waited_on_not_dropped(
    sample_repo: Path, tmp_path: Path
) -> None:
    mirror, sha = _provisioned_mirror(sample_repo, tmp_path)
    live = mirror / f"{branch_ref(8)}.lock"
    live.parent.mkdir(parents=True, exist_ok=True)
    live.write_text("")
    calls: list[int] = []

    def update() -> str:
        calls.append(1)
        os.utime(live)  # the live holder keeps it young
        return shared_git("update-ref", branch_ref(8), sha, git_dir=mirror)

    with pytest.raises(GitError, match="cannot lock ref"):
        retrying_locks(update, lambda: [mirror], tries=2)
    assert live.exists()
    assert len(calls) == 2


def test_a_flock_is_free_once_released_even_if_a_process_forked_meanwhile_keeps_the_descriptor(
    tmp_path: Path,
) -> None:
    """The prefork pool respawns a child while the worker's main process holds a mirror's flock (its
    reconciler compacts the mirror): the child inherits the descriptor, which must not keep it locked."""
    lock = tmp_path / "mirror.lock"
    read, write = os.pipe()
    with flock(lock):
        child = os.fork()
        if child == 0:  # holds the inherited descriptor until the parent has checked
            os.close(write)
            os.read(read, 1)
            os._exit(0)
    try:
        with flock(lock, blocking=False) as held:
            assert held is not None, "the released flock stayed held through the forked child's copy"
    finally:
        os.close(read)
        os.write(write, b"x")
        os.close(write)
        os.waitpid(child, 0)


def test_a_fork_waits_until_no_git_call_has_its_pipes_open(tmp_path: Path) -> None:
    """A child forked while a git call of another thread runs would inherit that call's pipes, and the
    call would wait for their EOF as long as the child lives (the prefork pool's main process hung
    so, holding a mirror's flock): the fork waits for the call instead."""
    entered, leave = threading.Event(), threading.Event()

    def git_call() -> None:
        with FORK_GATE.pipes():
            entered.set()
            leave.wait(5)

    thread = threading.Thread(target=git_call)
    thread.start()
    entered.wait(5)
    threading.Timer(0.5, leave.set).start()
    started = time.monotonic()
    child = os.fork()
    if child == 0:
        os._exit(0)
    waited = time.monotonic() - started
    os.waitpid(child, 0)
    thread.join(5)
    assert waited >= 0.4, f"forked after {waited:.2f}s, while the git call was still open"
    with FORK_GATE.pipes():  # and the gate is open again afterwards
        pass
