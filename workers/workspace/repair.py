"""Putting a worktree slot right after whatever a killed process left in it.

A slot is a directory `<pool>/slot-N` plus its record in the mirror, `<mirror>/worktrees/<name>/`
(HEAD, index, gitdir, and `locked` while `git worktree add` runs). A SIGKILL can stop any git step
half-way, and each leaves a different state (found by killing on purpose, tests/test_slot_kills.py):
- `worktree add` killed: the record is `locked` ("initializing") and the directory missing or half
  checked out. `git worktree prune` keeps locked records and `add --force` refuses them;
- `reset`, `clean`, `checkout`, `commit`, `add` killed: `index.lock` (and `HEAD.lock`) in the record;
- a mirror lost or re-cloned: the slot's `.git` names a record that is gone.

The protocol: whoever holds the slot's flock owns the slot and its record, so every lock file in the
record is a dead process's and is dropped; anything else that is wrong makes the slot be rebuilt,
under the mirror's flock (which every `worktree add` and `prune` holds), by deleting the directory and
every record that names it, locked or not.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from shared.git import git
from workers.workspace.locks import drop_locks


def linked_record(mirror: Path, slot: Path) -> Path | None:
    """The mirror's record of the worktree at `slot`, when the two still name each other."""
    try:
        pointer = (slot / ".git").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not pointer.startswith("gitdir: "):
        return None
    record = (slot / pointer.removeprefix("gitdir: ")).resolve()
    if record.parent != (mirror / "worktrees").resolve() or not (record / "HEAD").is_file():
        return None
    return record if _names(record, slot) else None


def _names(record: Path, slot: Path) -> bool:
    try:
        target = (record / "gitdir").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return Path(target).resolve() == (slot / ".git").resolve()


def drop_record_locks(record: Path) -> list[Path]:
    """Every lock in a record whose slot we hold: `index.lock`, `HEAD.lock`, and `locked` itself
    (git's "initializing" mark of an add that never finished)."""
    return drop_locks([*record.glob("*.lock"), record / "locked"])


def forget(mirror: Path, slot: Path) -> None:
    """Delete the slot's directory and every record of it (by name or by `gitdir`), locked or not.
    Call with the mirror's flock held."""
    shutil.rmtree(slot, ignore_errors=True)
    records = mirror / "worktrees"
    if not records.is_dir():
        return
    for record in records.iterdir():
        if record.name == slot.name or _names(record, slot):
            shutil.rmtree(record, ignore_errors=True)


def prune(mirror: Path) -> None:
    """Drop the records of worktrees whose directories are gone, including the ones a killed `worktree
    add` left locked, which `git worktree prune` keeps. Call with the mirror's flock held: no add runs."""
    records = mirror / "worktrees"
    if records.is_dir():
        for record in records.iterdir():
            if not _target_exists(record):
                drop_locks([record / "locked"])
    git("worktree", "prune", git_dir=mirror)


def _target_exists(record: Path) -> bool:
    try:
        return Path((record / "gitdir").read_text().strip()).exists()
    except (OSError, UnicodeDecodeError):
        return False
