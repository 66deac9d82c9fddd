"""Runs as a user sees them: submit, read, list, cancel. Used by the API and the embedded demo."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload

from shared.approvals.store import cancel_pending
from shared.errors import GitError, InvalidSpec, NotFound
from shared.git import is_local, resolve_ref
from shared.keys import Caller, owned_by
from shared.models import Attempt, Phase, Run, utcnow
from shared.run_insert import StoredRun, insert_run
from shared.specs import RunSpec, spec_hash_of
from shared.states import (
    PHASE_TERMINAL,
    FailureKind,
    PhaseState,
    RunState,
    check_phase_move,
    check_run_move,
)

log = logging.getLogger(__name__)
Q = TypeVar("Q", bound=Select[*tuple[Any, ...]])


def new_run_columns(spec: RunSpec) -> dict[str, Any]:
    """The columns every new run takes from its spec, whoever creates it (`POST /runs`, a campaign)."""
    body = spec.model_dump(mode="json")  # once: the hash, the config and the phases' specs are its parts
    return {
        "spec": body,
        "spec_hash": spec_hash_of(body),
        "config": dict(body["config"]),
        "state": RunState.QUEUED,
        "lease_epoch": 0,
        "cancel_requested": False,
    }


def create_run(
    session: Session,
    spec: RunSpec,
    *,
    owner: str | None = None,
    campaign_id: int | None = None,
    parent_run_id: int | None = None,
    claim_first: bool = False,
) -> StoredRun:
    """Resolve the base ref and store the run with its phases (not yet committed, not yet dispatched).

    `claim_first`: the first phase's outbox entry is won in this transaction (shared/outbox.py), as
    `claim` would win it, without its UPDATE; the caller sends it with `enqueue_claimed` after commit.

    No ORM objects (shared/run_insert.py): the unit of work cost more CPU than everything else
    `POST /runs` does in Python. Whoever needs the `Run` loads it by id."""
    try:
        base_sha = resolve_ref(spec.repo, spec.base_ref)
    except GitError as exc:
        field = "repo" if "does not exist" in str(exc) or "repository" in str(exc) else "base_ref"
        raise InvalidSpec(field, f"cannot resolve {spec.base_ref!r} in {spec.repo}: {exc}") from exc
    repo = os.path.realpath(spec.repo) if is_local(spec.repo) else spec.repo
    columns = new_run_columns(spec)
    run = {
        "name": spec.name,
        "repo": repo,
        "base_ref": spec.base_ref,
        "base_sha": base_sha,
        "head_sha": base_sha,
        **columns,
        "owner": owner,
        "campaign_id": campaign_id,
        "parent_run_id": parent_run_id,
    }
    claimed_at = utcnow() if claim_first else None
    return insert_run(session.connection(), run, columns["spec"]["phases"], claimed_at)


def submit(session: Session, spec: RunSpec, *, owner: str | None) -> StoredRun:
    """`create_run` with its first phase claimed, committed on its own. On Postgres that is one
    statement in autocommit (shared/run_insert.py): 1 round trip where BEGIN, INSERT, INSERT, COMMIT
    were 4. The caller must not have used the session yet."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    stored = create_run(session, spec, owner=owner, claim_first=True)
    session.commit()
    return stored


def visible_to(query: Q, caller: Caller | None) -> Q:
    """Only the caller's own runs, unless it is an admin (or internal code, `caller` None)."""
    return owned_by(query, caller, Run.owner)


def get_run(session: Session, run_id: int, caller: Caller | None = None) -> Run:
    """The run with its phases and attempts; NotFound also when it belongs to another owner."""
    query = select(Run).where(Run.id == run_id)
    query = visible_to(query, caller).options(selectinload(Run.phases).selectinload(Phase.attempts))
    run = session.scalars(query).first()
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def require_visible(session: Session, run_id: int, caller: Caller | None) -> None:
    """NotFound unless the run exists and the caller may see it."""
    if session.scalars(visible_to(select(Run), caller).where(Run.id == run_id)).first() is None:
        raise NotFound(f"run {run_id} not found")


def run_attempts(
    session: Session, run_id: int, caller: Caller | None, phase_index: int | None = None
) -> list[tuple[Phase, Attempt]]:
    """Every recorded attempt of a run (or of its phase `phase_index`) with its phase, in phase then
    attempt order, full texts included. NotFound for another owner's run or a phase the run lacks."""
    require_visible(session, run_id, caller)
    query = select(Phase, Attempt).join(Attempt, Attempt.phase_id == Phase.id).where(Phase.run_id == run_id)
    if phase_index is not None:
        found = select(Phase.id).where(Phase.run_id == run_id, Phase.index == phase_index)
        if session.scalars(found).first() is None:
            raise NotFound(f"run {run_id} has no phase {phase_index}")
        query = query.where(Phase.index == phase_index)
    return [
        (phase, attempt) for phase, attempt in session.execute(query.order_by(Phase.index, Attempt.number))
    ]


def list_runs(
    session: Session,
    *,
    state: RunState | None,
    limit: int,
    cursor: int | None,
    caller: Caller | None = None,
    campaign_id: int | None = None,
) -> tuple[Sequence[Run], int | None]:
    """Newest first; `cursor` is the id to continue below. Returns the page and the next cursor."""
    query = visible_to(select(Run), caller)
    query = query.options(selectinload(Run.phases)).order_by(Run.id.desc()).limit(limit + 1)
    if state is not None:
        query = query.where(Run.state == state)
    if campaign_id is not None:
        query = query.where(Run.campaign_id == campaign_id)
    if cursor is not None:
        query = query.where(Run.id < cursor)
    rows = list(session.scalars(query))
    page = rows[:limit]
    return page, (page[-1].id if len(rows) > limit else None)


def cancel_run(session: Session, run_id: int, caller: Caller | None = None) -> Run:
    """Ask a run to stop. With no live lease it stops now; otherwise its worker stops it between steps.

    Bumping the epoch fences any stale holder: it can no longer record a result for this run.
    """
    run = session.scalars(visible_to(select(Run).where(Run.id == run_id), caller).with_for_update()).first()
    if run is None:
        raise NotFound(f"run {run_id} not found")
    if RunState(run.state).terminal:
        return get_run(session, run_id)
    run.cancel_requested = True
    now = utcnow()
    lease_live = (
        run.lease_owner is not None and run.lease_expires_at is not None and run.lease_expires_at > now
    )
    if not lease_live:
        finish_cancelled(session, run)
        run.lease_epoch += 1
    session.commit()
    return get_run(session, run_id)


def move_phase(phase: Phase, new: PhaseState) -> None:
    """Every phase state change goes through here, so the state machine is never bypassed."""
    check_phase_move(PhaseState(phase.state), new)
    phase.state = new


def move_run(run: Run, new: RunState) -> None:
    """Every run state change goes through here, so the state machine is never bypassed."""
    check_run_move(RunState(run.state), new)
    run.state = new


def finish_if_done(run: Run) -> bool:
    """End a run whose phases are all terminal; False (nothing changed) while any is not, or while its
    result branch has not reached the recorded head.

    A run with a skipped phase ends DONE_FAILED, naming it: its branch lacks a change the spec asked for,
    and the states have no "partial success" (campaigns would count it a success). DONE_SUCCESS promises
    the branch is where the record says, so it waits for the branch move (the reconciler retries it)."""
    if any(PhaseState(p.state) not in PHASE_TERMINAL for p in run.phases):
        return False
    skipped = [p for p in run.phases if PhaseState(p.state) == PhaseState.SKIPPED]
    if skipped:
        first = skipped[0]
        move_run(run, RunState.DONE_FAILED)
        run.failure_reason = f"phase {first.index} ({first.name}) was skipped: {first.failure_reason}"[:4000]
        run.failure_kind = FailureKind.MODEL
    elif run.head_sha != run.base_sha and run.branch_sha != run.head_sha:
        return False
    else:
        move_run(run, RunState.DONE_SUCCESS)
    run.finished_at = utcnow()
    return True


def finish_cancelled(session: Session, run: Run) -> None:
    now = utcnow()
    cancel_pending(session, run.id)
    move_run(run, RunState.CANCELLED)
    run.finished_at = now
    run.lease_owner = None
    for phase in run.phases:
        if PhaseState(phase.state) not in PHASE_TERMINAL:
            move_phase(phase, PhaseState.CANCELLED)
            phase.finished_at = now
    session.flush()


def fail_on_branch_conflict(session: Session, run_id: int, head: str, reason: str) -> bool:
    """End a run whose result branch cannot be moved to its recorded `head`, when nobody holds it and
    the head is still the one that was refused (a holder may have recorded a newer one meanwhile)."""
    run = session.get(Run, run_id, with_for_update=True)
    now = utcnow()
    if run is None or run.state != RunState.RUNNING or run.head_sha != head:
        return False
    if run.lease_owner is not None and run.lease_expires_at is not None and run.lease_expires_at > now:
        return False
    for phase in run.phases:
        if PhaseState(phase.state) == PhaseState.QUEUED:
            move_phase(phase, PhaseState.SKIPPED)
    move_run(run, RunState.DONE_FAILED)
    run.failure_reason = reason[:4000]
    run.failure_kind = FailureKind.INFRA
    run.finished_at = now
    return True
