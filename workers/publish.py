"""Where results land: refs in this host's mirror and, when `push_results`, in the run's own repository.

A phase's commit is first pushed under a ref keyed by (run, phase, lease epoch) — harmless to repeat,
and it makes the commit reachable from other hosts before the database names it as the run's head.
Only after the database recorded it may the run branch `autopack/run-<id>` move there, deleting that
phase ref, whose job the branch then does.

One push per phase: that move rides on the NEXT phase's push (`publish_phase`, one atomic push of the
new phase ref, the branch to the previous recorded head, and the previous phase ref's deletion), so
the branch trails the head by one phase while a run executes. Only the last phase pushes twice (its
phase ref, then the branch once recorded); a run that ends otherwise (failed, cancelled) has its branch
moved by the worker that ended it, right after, with the reconciler (`lagging_branches`) as backup.
Fencing still holds: the branch only ever moves, fast-forward, to a commit the database already named
as the head, which no later holder can un-name; a stale holder's move is therefore a move a current
holder would make too. A push to an origin on this host copies
the objects in-process and updates the refs with one `git update-ref` there (workers/local_push.py).
`git push`, used for any other origin, reads every ref of the remote (git 2.39 pushes over protocol v0
only: the origin advertises all its refs, the pushing side walks back from each one it has, and
receive-pack checks connectivity against all of them), so result refs are bounded by retention
(workers/retention.py) and commit-graphs make each tip cheap to read (workers/workspace/mirror.py
`compact_refs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import update

from shared.db import transaction
from shared.errors import BranchConflict, GitError
from shared.git import git
from shared.git_native import set_refs
from shared.models import Run
from workers import local_push
from workers.local_push import RefUpdate
from workers.workspace.locks import retrying_locks
from workers.workspace.mirror import local_origin


def phase_ref(run_id: int, phase_index: int, epoch: int) -> str:
    return f"refs/autopack/run-{run_id}/phase-{phase_index}-e{epoch}"


def branch_ref(run_id: int) -> str:
    return f"refs/heads/autopack/run-{run_id}"


def publish(
    mirror: Path, ref: str, sha: str, push: bool, drop: str | None = None, force: bool = True
) -> None:
    """Point `ref` at `sha` here and, when `push`, in the origin; `drop` is a remote ref deleted in the
    same all-or-nothing push (one already gone is no error, so a retried move still moves).
    `force=False` refuses to move the remote ref anywhere but forward (GitError)."""
    retrying_locks(lambda: set_refs(mirror, {ref: sha}), lambda: [mirror])
    if push:
        push_refs(mirror, [RefUpdate(ref, sha, force), *([RefUpdate(drop, None)] if drop else [])])


@dataclass(frozen=True)
class BranchLag:
    """The run branch is behind the recorded head `head`; moving it there drops phase ref `drop`."""

    head: str
    drop: str | None


def publish_phase(mirror: Path, run_id: int, ref: str, sha: str, push: bool, lag: BranchLag | None) -> bool:
    """Point phase ref `ref` at `sha` and, when the branch lags, move it to the recorded head in the same
    atomic push. True when the branch moved. A refused move (the origin's branch holds other commits)
    falls back to the phase ref alone: the branch is then the reconciler's to settle or report."""
    if lag is None:
        publish(mirror, ref, sha, push)
        return False
    branch = branch_ref(run_id)
    retrying_locks(lambda: set_refs(mirror, {ref: sha, branch: lag.head}), lambda: [mirror])
    if not push:
        return True
    updates = [RefUpdate(ref, sha), RefUpdate(branch, lag.head, force=False)]
    try:
        push_refs(mirror, [*updates, *([RefUpdate(lag.drop, None)] if lag.drop else [])])
    except GitError as exc:
        if "[rejected]" not in str(exc):
            raise
        publish(mirror, ref, sha, push)
        return False
    return True


def push_refs(mirror: Path, updates: list[RefUpdate]) -> None:
    """Make `updates` in the mirror's origin, all or none: in-process when it is on this host
    (workers/local_push.py), else `git push`. A non-fast-forward raises GitError with "[rejected]"."""
    origin = local_push.local_target(mirror)
    if origin is not None:
        local_push.push(mirror, origin, updates)
        return
    specs = [f":{u.ref}" if u.new is None else f"{'+' if u.force else ''}{u.new}:{u.ref}" for u in updates]
    flags = ["--atomic"] if len(updates) > 1 else []
    push_args = ("push", "--quiet", "--no-verify", *flags, "origin", *specs)
    retrying_locks(lambda: git(*push_args, git_dir=mirror), lambda: _repos(mirror))


def _repos(mirror: Path) -> list[Path]:
    """Where a push takes locks that a killed push may have left: the mirror and a local origin."""
    origin = local_origin(mirror)
    return [mirror, *([origin] if origin is not None else [])]


def move_branch(
    db_url: str,
    mirror: Path,
    run_id: int,
    sha: str,
    push: bool,
    drop: str | None = None,
    *,
    note: bool = True,
) -> None:
    """Point the run branch at the recorded head, then note that it does (idempotent). `note=False`:
    the caller notes it in a transaction of its own (the executor's `record.wrap_up`).

    Fast-forward only: a holder frozen between recording phase i and moving the branch, then taken
    over, would otherwise move the branch back from phase i+1 when it wakes (seen in the chaos batch).
    A refusal raises BranchConflict."""
    try:
        publish(mirror, branch_ref(run_id), sha, push, drop, force=False)
    except GitError as exc:
        if "[rejected]" not in str(exc):
            raise
        raise BranchConflict(
            f"the origin's autopack/run-{run_id} holds commits that {sha[:12]} does not descend from"
        ) from exc
    if not note:
        return
    with transaction(db_url) as session:
        session.execute(update(Run).where(Run.id == run_id, Run.head_sha == sha).values(branch_sha=sha))
