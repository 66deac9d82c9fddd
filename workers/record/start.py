"""The start of a delivery: take the lease and mark the phase EXECUTING (`begin`, 1 in the package
docstring), or, under a lease already held, `start`; either returns the job or why there is none."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.approvals.store import decision_for
from shared.campaigns.caps import caps_of
from shared.db import transaction
from shared.models import Attempt, EscalationEvent, Phase, Run, utcnow
from shared.runs import finish_cancelled, move_phase, move_run
from shared.specs import PhaseSpec
from shared.states import PHASE_TERMINAL, AttemptOutcome, FailureKind, PhaseState, RunState
from workers.lease import Lease, grant
from workers.publish import BranchLag, phase_ref
from workers.record.job import PhaseJob, load
from workers.record.outcome import fail_in


def begin(
    db_url: str, run_id: int, phase_id: int, owner: str, ttl: float, max_deliveries: int
) -> tuple[Lease | None, PhaseJob | str]:
    """Take the run's lease and `start` the phase in ONE transaction: (None, why) when a live holder
    has the run. A delivery with nothing to do gives the lease back in that same transaction."""
    with transaction(db_url) as session:
        lease = grant(session, db_url, run_id, owner, ttl)
        if lease is None:
            return None, "busy: another worker holds this run"
        # No fence: the grant's UPDATE bumped the epoch to ours and holds the row lock to commit.
        job = _start(session, lease, phase_id, max_deliveries)
        if isinstance(job, str):
            lease.give_up(session)
    lease.released = isinstance(job, str)  # only once that commit went through
    return lease, job


def start(lease: Lease, phase_id: int, max_deliveries: int) -> PhaseJob | str:
    """Mark the phase EXECUTING and return its job, or a reason why this delivery has nothing to do."""
    with transaction(lease.db_url) as session:
        lease.fence(session)
        return _start(session, lease, phase_id, max_deliveries)


def _start(session: Session, lease: Lease, phase_id: int, max_deliveries: int) -> PhaseJob | str:
    run, phase = load(session, lease.run_id, phase_id)
    if RunState(run.state).terminal or PhaseState(phase.state) in PHASE_TERMINAL:
        return f"stale delivery: run {run.state}, phase {phase.state}"
    if run.cancel_requested:
        finish_cancelled(session, run)
        return "cancelled"
    nxt = next(p for p in run.phases if PhaseState(p.state) not in PHASE_TERMINAL)
    if nxt.id != phase.id:
        return f"out of order: phase {nxt.index} comes first"
    if phase.state == PhaseState.AWAITING_APPROVAL:  # a stale message: only a decision re-queues it
        return "awaiting approval"
    # Attempts, escalations and approval decisions each come from an earlier start of the phase: the
    # first has none to read (three SELECTs a phase, nearly every phase). Not `deliveries == 0`: a
    # pause for approval gives its delivery back.
    first = phase.started_at is None
    phase.deliveries += 1
    if phase.deliveries > max_deliveries:
        reason = f"delivered {phase.deliveries - 1} times without finishing"
        handed = phase.failure_reason  # a hand-back's reason; none when the worker died each time
        reason += f"; last: {handed}" if handed else " (worker died each time)"
        fail_in(session, run, phase, reason, FailureKind.INFRA)
        return "gave up: " + reason
    if phase.state == PhaseState.QUEUED:
        move_phase(phase, PhaseState.EXECUTING)
        phase.started_at = utcnow()
    if run.state == RunState.QUEUED:
        move_run(run, RunState.RUNNING)
        run.started_at = utcnow()
    attempts = [] if first else phase.attempts
    last = attempts[-1] if attempts else None
    return PhaseJob(
        run_id=run.id,
        phase_id=phase.id,
        phase_index=phase.index,
        phase=PhaseSpec.model_validate(phase.spec),
        repo=run.repo,
        head_sha=run.head_sha,
        config=dict(run.config),
        attempts_used=len(attempts),
        last_failure=last.failure_reason if last else None,
        last_advice=_advice_of(last),
        recorded_outputs=_recorded_outputs(session, run, phase),
        escalated_max_tokens=None if first else _escalated(session, phase),
        campaign_id=run.campaign_id,
        campaign_caps=caps_of(session, run.campaign_id),
        branch_lag=_branch_lag(session, run, phase),
        decision=None if first else decision_for(session, phase.id, len(attempts) + 1),
    )


def _escalated(session: Session, phase: Phase) -> int | None:
    return session.scalar(select(EscalationEvent.new_max_tokens).where(EscalationEvent.phase_id == phase.id))


def _branch_lag(session: Session, run: Run, phase: Phase) -> BranchLag | None:
    """Where the branch should be and the phase ref that move drops (the epoch its recorder pushed
    under; none for a phase a campaign reused). One SELECT, and only when the branch lags."""
    if run.head_sha in (run.base_sha, run.branch_sha):
        return None
    recorded = next((p for p in reversed(run.phases[: phase.index]) if p.commit_sha == run.head_sha), None)
    if recorded is None:
        return BranchLag(run.head_sha, None)
    epoch = session.scalar(
        select(Attempt.lease_epoch)
        .where(Attempt.phase_id == recorded.id, Attempt.outcome == AttemptOutcome.SUCCESS)
        .order_by(Attempt.number.desc())
        .limit(1)
    )
    drop = None if epoch is None else phase_ref(run.id, recorded.index, epoch)
    return BranchLag(run.head_sha, drop)


def _advice_of(attempt: Attempt | None) -> str | None:
    if attempt is None:
        return None
    for source in (attempt.mitigation, attempt.doctor):
        if source and source.get("advice"):
            return str(source["advice"])
    return None


def _recorded_outputs(session: Session, run: Run, phase: Phase) -> dict[int, str]:
    source_id = run.config.get("replay_of")
    if run.config.get("builder") != "replay" or source_id is None:
        return {}
    rows = session.execute(
        select(Attempt.number, Attempt.builder_output, Attempt.patch, Attempt.model)
        .join(Phase, Phase.id == Attempt.phase_id)
        .where(Phase.run_id == int(source_id), Phase.index == phase.index)
        .order_by(Attempt.number)
    ).all()
    # An LLM attempt is replayed from its raw answer; a script attempt from the diff it staged.
    return {r.number: (r.builder_output if r.model else r.patch) or "" for r in rows}
