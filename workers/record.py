"""Fenced writes of a phase's progress. Every function proves the lease first, in the same transaction.

Writes are idempotent: attempts are unique per (phase, number), state moves are checked, so a task
that runs twice (redelivery, cold shutdown mid-commit) ends with the same rows as one that ran once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import transaction
from shared.models import Attempt, Phase, Run, utcnow
from shared.runs import finish_cancelled
from shared.specs import PhaseSpec
from shared.states import (
    PHASE_TERMINAL,
    AttemptOutcome,
    PhaseState,
    RunState,
    check_phase_move,
    check_run_move,
)
from workers.lease import Lease


@dataclass(frozen=True)
class PhaseJob:
    """Everything an execution needs, read once under the lease."""

    run_id: int
    phase_id: int
    phase_index: int
    phase: PhaseSpec
    repo: str
    head_sha: str
    config: dict[str, Any]
    attempts_used: int
    last_failure: str | None


@dataclass(frozen=True)
class AttemptRecord:
    number: int
    outcome: AttemptOutcome
    started_at: Any
    finished_at: Any
    failure_reason: str | None
    builder_output: str | None
    patch: str | None
    changed_paths: list[str]
    validation_output: str | None
    commit_sha: str | None


def _load(session: Session, run_id: int, phase_id: int) -> tuple[Run, Phase]:
    run = session.get(Run, run_id)
    phase = session.get(Phase, phase_id)
    assert run is not None and phase is not None and phase.run_id == run_id
    return run, phase


def move_phase(phase: Phase, new: PhaseState) -> None:
    check_phase_move(PhaseState(phase.state), new)
    phase.state = new


def move_run(run: Run, new: RunState) -> None:
    check_run_move(RunState(run.state), new)
    run.state = new


def start(lease: Lease, phase_id: int, max_deliveries: int) -> PhaseJob | str:
    """Mark the phase EXECUTING and return its job, or a reason why this delivery has nothing to do."""
    with transaction(lease.db_url) as session:
        lease.fence(session)
        run, phase = _load(session, lease.run_id, phase_id)
        if RunState(run.state).terminal or PhaseState(phase.state) in PHASE_TERMINAL:
            return f"stale delivery: run {run.state}, phase {phase.state}"
        if run.cancel_requested:
            finish_cancelled(session, run)
            return "cancelled"
        nxt = next(p for p in run.phases if PhaseState(p.state) not in PHASE_TERMINAL)
        if nxt.id != phase.id:
            return f"out of order: phase {nxt.index} comes first"
        phase.deliveries += 1
        if phase.deliveries > max_deliveries:
            reason = f"delivered {phase.deliveries - 1} times without finishing (worker died each time)"
            _fail(session, run, phase, reason)
            return "gave up: " + reason
        if phase.state == PhaseState.QUEUED:
            move_phase(phase, PhaseState.EXECUTING)
            phase.started_at = utcnow()
        if run.state == RunState.QUEUED:
            move_run(run, RunState.RUNNING)
            run.started_at = utcnow()
        last = phase.attempts[-1].failure_reason if phase.attempts else None
        return PhaseJob(
            run_id=run.id,
            phase_id=phase.id,
            phase_index=phase.index,
            phase=PhaseSpec.model_validate(phase.spec),
            repo=run.repo,
            head_sha=run.head_sha,
            config=dict(run.config),
            attempts_used=len(phase.attempts),
            last_failure=last,
        )


def attempt(lease: Lease, job: PhaseJob, rec: AttemptRecord) -> None:
    with transaction(lease.db_url) as session:
        lease.fence(session)
        exists = session.scalar(
            select(Attempt.id).where(Attempt.phase_id == job.phase_id, Attempt.number == rec.number)
        )
        if exists is not None:
            return
        session.add(
            Attempt(
                run_id=job.run_id,
                phase_id=job.phase_id,
                number=rec.number,
                worker=lease.owner,
                lease_epoch=lease.epoch,
                started_at=rec.started_at,
                finished_at=rec.finished_at,
                outcome=rec.outcome,
                failure_reason=rec.failure_reason,
                builder_output=rec.builder_output,
                patch=rec.patch,
                changed_paths=rec.changed_paths,
                validation_output=rec.validation_output,
                commit_sha=rec.commit_sha,
            )
        )
        phase = session.get(Phase, job.phase_id)
        assert phase is not None
        phase.attempts_used = rec.number


def complete(lease: Lease, job: PhaseJob, sha: str) -> int | None:
    """Record the phase's commit as the run's new head; return the next phase's id (its outbox entry)."""
    with transaction(lease.db_url) as session:
        lease.fence(session)
        run, phase = _load(session, job.run_id, job.phase_id)
        move_phase(phase, PhaseState.COMPLETE)
        phase.commit_sha = sha
        phase.finished_at = utcnow()
        run.head_sha = sha
        following = [p for p in run.phases if p.index > phase.index]
        if following:
            following[0].dispatched_at = None  # outbox: dispatch pending until the broker has it
            return following[0].id
        move_run(run, RunState.DONE_SUCCESS)
        run.finished_at = utcnow()
        return None


def fail(lease: Lease, job: PhaseJob, reason: str) -> None:
    with transaction(lease.db_url) as session:
        lease.fence(session)
        run, phase = _load(session, job.run_id, job.phase_id)
        _fail(session, run, phase, reason)


def _fail(session: Session, run: Run, phase: Phase, reason: str) -> None:
    now = utcnow()
    move_phase(phase, PhaseState.FAILED)
    phase.failure_reason = reason
    phase.finished_at = now
    for later in run.phases:
        if later.index > phase.index and PhaseState(later.state) == PhaseState.QUEUED:
            move_phase(later, PhaseState.SKIPPED)
    move_run(run, RunState.DONE_FAILED)
    run.failure_reason = f"phase {phase.index} ({phase.name}) failed: {reason}"[:4000]
    run.finished_at = now


def cancel(lease: Lease, job: PhaseJob) -> None:
    with transaction(lease.db_url) as session:
        lease.fence(session)
        run, _ = _load(session, job.run_id, job.phase_id)
        finish_cancelled(session, run)


def cancel_requested(db_url: str, run_id: int) -> bool:
    with transaction(db_url) as session:
        return bool(session.scalar(select(Run.cancel_requested).where(Run.id == run_id)))
