"""The fenced writes that end or advance a delivery: an attempt, the phase's success, completion,
pause, skip, hand-back, escalation or failure, the run's cancel; each proves the lease first, in the
same transaction (see the package docstring for the merged ones)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from shared.approvals.store import Requested, request
from shared.approvals.webhook import enqueue as enqueue_webhook
from shared.db import engine_for, insert_unless_present, transaction
from shared.errors import InvalidTransition
from shared.models import Attempt, EscalationEvent, Phase, Run, utcnow
from shared.runs import finish_cancelled, finish_if_done, move_phase, move_run
from shared.settings import Settings
from shared.states import ApprovalState, FailureKind, PhaseState, RunState
from shared.telemetry import record_phase_efficiency, record_phase_metrics
from workers.lease import Lease
from workers.record.job import AttemptRecord, PhaseJob, load

if TYPE_CHECKING:
    from workers.recovery import Recovery

AUTO = ApprovalState.AUTO_APPROVED
PHASES = cast(Table, Phase.__table__)


def attempt(lease: Lease, job: PhaseJob, rec: AttemptRecord) -> None:
    with transaction(lease.db_url) as session:
        lease.fence(session)
        _add_attempt(session, lease, job, rec)


def _add_attempt(
    session: Session, lease: Lease, job: PhaseJob, rec: AttemptRecord, *, counted: bool = False
) -> None:
    """`counted`: the caller sets the phase's `attempts_used` itself, with its other changes."""
    row = {"run_id": job.run_id, "phase_id": job.phase_id, "worker": lease.owner, "lease_epoch": lease.epoch}
    if not insert_unless_present(session, Attempt, {**row, **asdict(rec)}, KEY):
        return  # recorded already (a redelivery after the commit): the first record stands
    if not counted:  # a plain UPDATE: loading the phase to set one column cost a SELECT more
        session.execute(update(PHASES).where(PHASES.c.id == job.phase_id).values(attempts_used=rec.number))


KEY = ["phase_id", "number"]
"""An attempt's unique key."""


def succeed(
    lease: Lease,
    job: PhaseJob,
    rec: AttemptRecord,
    sha: str,
    auto: Requested | None = None,
    branch_sha: str | None = None,
) -> int | None:
    """Record the successful attempt and the phase's completion in ONE transaction: a crash (or a
    database restart) between two separate writes made the next holder redo a recorded success.
    When a phase follows, the same transaction claims its outbox entry and releases the lease (see the
    module docstring, 2): returns that phase, for the caller to enqueue after this commit. None: this
    was the last phase, and the lease is still held for the branch move and `wrap_up`. `branch_sha`:
    this attempt's push moved the run branch to the head recorded before it, noted here. `auto`: the
    change's ruled paths were all low-risk `auto`, recorded as an auto-approved approval.

    Core statements, no load: the fence also records the new head (and the branch note, whose CASE
    reads the head as it was), then the attempt, the phase's completion, its efficiency row and the
    next phase's claim. Loading the run and its phases to change them through the ORM cost a SELECT,
    two UPDATEs more and ~2 ms of Python on every phase."""
    with transaction(lease.db_url) as session:
        lease.fence(session, head=sha, branch=branch_sha)
        if auto is not None:
            run, phase = load(session, job.run_id, job.phase_id)
            request(session, run, phase, auto, timeout_seconds=0, timeout_action="approve", state=AUTO)
            session.flush()
        _add_attempt(session, lease, job, rec, counted=True)
        following = _complete(session, job, rec.number, sha)
        if following is not None:
            lease.give_up(session)  # ours: fenced above, in this transaction
    if following is not None:
        lease.released = True
    return following


def pause(lease: Lease, job: PhaseJob, req: Requested, settings: Settings) -> int:
    """The change needs a person: keep it (the caller pushed its commit to a fenced ref), store the
    approval and its notification, move the phase to AWAITING_APPROVAL and release the lease, in ONE
    fenced transaction. No message is queued: a decision re-queues the phase. Returns the approval id."""
    with transaction(lease.db_url) as session:
        lease.fence(session)
        run, phase = load(session, job.run_id, job.phase_id)
        seconds = job.config.get("approval_timeout_seconds") or settings.approval_timeout_seconds
        action = job.config.get("approval_timeout_action") or settings.approval_timeout_action
        approval = request(session, run, phase, req, timeout_seconds=float(seconds), timeout_action=action)
        if phase.state == PhaseState.EXECUTING:
            move_phase(phase, PhaseState.AWAITING_APPROVAL)
            phase.dispatched_at = utcnow()
            phase.deliveries = max(0, phase.deliveries - 1)  # this delivery ended well: it does not count
        enqueue_webhook(session, approval, phase, settings)
        lease.give_up(session)
        approval_id = approval.id
    lease.released = True
    return approval_id


def _complete(session: Session, job: PhaseJob, attempts: int, sha: str) -> int | None:
    """The phase COMPLETE at `sha`, its efficiency row, and the next phase's outbox claim (its id);
    None when this was the last phase: the run ends DONE_SUCCESS in `wrap_up`, once its branch moved.
    Only an EXECUTING phase completes (the state machine's one way into COMPLETE)."""
    now = utcnow()
    params = {"p_id": job.phase_id, "p_attempts": attempts, "p_sha": sha, "p_now": now}
    started = session.execute(_COMPLETE, params).first()
    if started is None:
        state = session.scalar(select(PHASES.c.state).where(PHASES.c.id == job.phase_id))
        raise InvalidTransition(f"phase cannot go from {state} to {PhaseState.COMPLETE}")
    wall = int((now - started[0]).total_seconds() * 1000) if started[0] else None
    record_phase_efficiency(session, job.run_id, job.phase_id, "COMPLETE", wall)
    claim = {"p_run": job.run_id, "p_index": job.phase_index, "p_now": now}
    return session.execute(_CLAIM_NEXT, claim).scalar_one_or_none()  # sent once this commits


_P = PHASES.c
_NOW = bindparam("p_now", type_=_P.finished_at.type)
_COMPLETE = (
    update(PHASES)
    .where(_P.id == bindparam("p_id"), _P.state == PhaseState.EXECUTING)
    .values(state=PhaseState.COMPLETE, attempts_used=bindparam("p_attempts"), finished_at=_NOW)
    .values(commit_sha=bindparam("p_sha"), failure_reason=None)  # a hand-back's reason is history now
    .returning(_P.started_at)
)
_NEXT = (
    select(_P.id)
    .where(_P.run_id == bindparam("p_run"), _P.index > bindparam("p_index"))
    .order_by(_P.index)
    .limit(1)
    .scalar_subquery()
)
_CLAIM_NEXT = update(PHASES).where(_P.id == _NEXT).values(dispatched_at=_NOW).returning(_P.id)
"""The next phase's outbox claim. These statements are built once (see workers/lease.py, `RUNS`)."""


def wrap_up(lease: Lease, job: PhaseJob, branch_sha: str | None) -> None:
    """After the last phase's branch move, in ONE fenced transaction (the module docstring, 3): note
    where the branch now is, finish the run, and release the lease. A lost lease skips all three (the
    reconciler notes lagging branches and finishes runs)."""
    with transaction(lease.db_url) as session:
        if lease.give_up(session, branch_sha):
            run, _ = load(session, job.run_id, job.phase_id)
            if run.state == RunState.RUNNING:
                finish_if_done(run)  # after the note above: DONE_SUCCESS waits for the branch
    lease.released = True


def skip(lease: Lease, job: PhaseJob, reason: str) -> int | None:
    """The Doctor said to skip: the run goes on without this phase's change."""
    with transaction(lease.db_url) as session:
        lease.fence(session)
        run, phase = load(session, job.run_id, job.phase_id)
        move_phase(phase, PhaseState.SKIPPED)
        phase.failure_reason = reason
        phase.finished_at = utcnow()
        _efficiency(session, run.id, phase, "SKIPPED")
        return _advance(run, phase)


def _advance(run: Run, phase: Phase) -> int | None:
    following = [p for p in run.phases if p.index > phase.index]
    if following:
        following[0].dispatched_at = None  # outbox: dispatch pending until the broker has it
        return following[0].id
    finish_if_done(run)  # a skipped phase: the run ends DONE_FAILED, naming it
    return None


def hand_back(lease: Lease, job: PhaseJob, reason: str, *, now: bool = False) -> int:
    """Give the phase back to the queue, spending no attempt; returns its id.

    `now=False` (the LLM provider is down): the reconciler re-dispatches it after
    `redispatch_after_seconds`. `now=True` (this worker is draining): the outbox row is left pending
    for the caller to enqueue once the lease is released, and the delivery is given back as well,
    since only deliveries whose worker died count toward `max_deliveries`."""
    with transaction(lease.db_url) as session:
        lease.fence(session)
        _, phase = load(session, job.run_id, job.phase_id)
        move_phase(phase, PhaseState.QUEUED)
        phase.failure_reason = reason
        phase.dispatched_at = None if now else utcnow()
        if now:
            phase.deliveries = max(0, phase.deliveries - 1)
        return phase.id


def escalate(lease: Lease, job: PhaseJob, event: EscalationEvent) -> bool:
    """Persist the phase's one escalation; False if it already had one (unique per phase)."""
    with transaction(lease.db_url) as session:
        lease.fence(session)
        exists = session.scalar(select(EscalationEvent.id).where(EscalationEvent.phase_id == job.phase_id))
        if exists is not None:
            return False
        session.add(event)
        return True


def fail(lease: Lease, job: PhaseJob, reason: str, kind: FailureKind) -> None:
    with transaction(lease.db_url) as session:
        lease.fence(session)
        run, phase = load(session, job.run_id, job.phase_id)
        fail_in(session, run, phase, reason, kind)


def fail_in(session: Session, run: Run, phase: Phase, reason: str, kind: FailureKind) -> None:
    now = utcnow()
    move_phase(phase, PhaseState.FAILED)
    phase.failure_reason = reason
    phase.finished_at = now
    for later in run.phases:
        if later.index > phase.index and PhaseState(later.state) == PhaseState.QUEUED:
            move_phase(later, PhaseState.SKIPPED)
    move_run(run, RunState.DONE_FAILED)
    run.failure_reason = f"phase {phase.index} ({phase.name}) failed: {reason}"[:4000]
    run.failure_kind = kind
    run.finished_at = now
    _efficiency(session, run.id, phase, "FAILED")


def cancel(lease: Lease, job: PhaseJob) -> None:
    with transaction(lease.db_url) as session:
        lease.fence(session)
        run, _ = load(session, job.run_id, job.phase_id)
        finish_cancelled(session, run)


def cancel_requested(db_url: str, run_id: int) -> bool:
    """One statement, no transaction around it (autocommit): a single round trip. The attempt loop
    reads `Lease.cancel_seen` instead, which every fenced write refreshes for free."""
    engine = engine_for(db_url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        return bool(conn.scalar(select(Run.cancel_requested).where(Run.id == run_id)))


def phase_metrics(db_url: str, job: PhaseJob, recovery: Recovery) -> None:
    """Failure-hardening and Doctor-avoidance figures of the phase (idempotent upsert)."""
    with transaction(db_url) as session:
        record_phase_metrics(
            session,
            job.run_id,
            job.phase_id,
            failure_hardening_hit=recovery.hardening_hit,
            doctor_skipped=recovery.hardening_hit,
        )


def _efficiency(session: Session, run_id: int, phase: Phase, outcome: str) -> None:
    """The phase's one efficiency row, written in the transaction that makes the phase terminal, so
    a crash cannot leave a terminal phase without one: exact tokens spent, context tokens avoided
    (an estimate), attempts and wall time. Race-safe: a second writer gets the first row. The flush
    first sends the phase's UPDATE, whose row lock `recount_phase_tokens` waits on."""
    session.flush()
    wall = None
    if phase.started_at and phase.finished_at:
        wall = int((phase.finished_at - phase.started_at).total_seconds() * 1000)
    record_phase_efficiency(session, run_id, phase.id, outcome, wall)
