"""Fenced writes of a phase's progress. Every function proves the lease first, in the same transaction.

Writes are idempotent: attempts are unique per (phase, number), state moves are checked, so a task
that runs twice (redelivery, cold shutdown mid-commit) ends with the same rows as one that ran once.

A successful no-op phase costs two transactions of this module if another phase follows it, three if
it is the run's last (it cost seven: acquire, start, a cancel check, success, the branch note, release,
the next phase's claim). Why each merge keeps the fencing contract (a result write commits only while
`runs.lease_epoch` is the writer's, checked in the same transaction):

1. `begin` = acquire + `start`. The grant is `UPDATE runs … SET lease_epoch = lease_epoch + 1 WHERE the
   lease is free RETURNING lease_epoch`: it holds the run row's write lock until this transaction
   commits, so no one can take the lease over between the grant and start's writes, which therefore
   carry the new epoch as surely as a separate `fence` would (that fence would re-check a value the
   same transaction just wrote). A takeover before the grant makes the grant match zero rows and start
   never runs. A delivery with nothing to do (stale, cancelled, out of order) releases in it too.
   When the run branch trails the head (one push per phase, workers/publish.py), one SELECT more
   reads the epoch whose phase ref that phase's push deletes.
2. `succeed`: fence + the attempt + the phase's completion, and when a phase follows, that phase's
   outbox claim + the lease release. Nothing has to happen between the completion and the release
   then: a phase that is not the last moves no branch (its head rides on the next phase's push), so
   the release commits with the completion, fenced by the same transaction's `fence`, and the next
   phase's message is sent after that commit, once the run is free for whoever receives it. The claim
   needs no race: the holder of the live lease is the only one who may dispatch the run's next phase
   (the reconciler skips leased runs). A crash after the commit, before the send, leaves the claim
   to go stale and the reconciler re-dispatches, as after a crash between a claim and its send.
3. The last phase only: `wrap_up` = the branch note + finishing the run + the lease release, all in
   one UPDATE of the run row `WHERE lease_epoch = :mine AND lease_owner = :me` (`Lease.give_up`),
   after the branch move: the run branch may move only after the database names the commit, and the
   run may finish only after the branch moved. A holder taken over since 2 matches zero rows: nothing
   of the note, the finish or the release is written (the reconciler notes lagging branches and
   finishes runs). A crash before 3 commits leaves the lease to expire and the reconciler finishes.

A phase whose change needs a person's approval ends its delivery with `pause`: fence + the approval
(and its webhook outbox row) + the phase's move to AWAITING_APPROVAL + the lease release, in one
transaction, so no holder can pause a phase it lost, and a paused phase never keeps a lease. The
decision that re-queues it is the API's (shared/approvals/store.py); `_start` then hands the decision
to the next holder in `PhaseJob.decision`.

Cancel checks cost no query: the fencing UPDATE returns `cancel_requested` (`Lease.cancel_seen`), and
`start` refuses a cancelled run; see workers/lease.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, joinedload

from shared.approvals.store import Decision, Requested, decision_for, request
from shared.approvals.webhook import enqueue as enqueue_webhook
from shared.campaigns.caps import CampaignCaps, caps_of
from shared.db import engine_for, insert_unless_present, transaction
from shared.models import Attempt, EscalationEvent, Phase, Run, utcnow
from shared.runs import finish_cancelled, finish_if_done, move_phase, move_run
from shared.settings import Settings
from shared.specs import PhaseSpec
from shared.states import (
    PHASE_TERMINAL,
    ApprovalState,
    AttemptOutcome,
    FailureKind,
    PhaseState,
    RunState,
)
from shared.telemetry import record_phase_efficiency, record_phase_metrics
from workers.lease import Lease, grant
from workers.publish import BranchLag, phase_ref

if TYPE_CHECKING:
    from workers.recovery import Recovery

AUTO = ApprovalState.AUTO_APPROVED


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
    last_advice: str | None = None
    recorded_outputs: dict[int, str] = field(default_factory=dict)
    """Replay only: the source run's builder output (or patch) per attempt number for this phase."""
    escalated_max_tokens: int | None = None
    """The phase's one output-budget escalation, if it already happened (it survives redelivery)."""
    campaign_id: int | None = None
    campaign_caps: CampaignCaps | None = None
    """The caps the run shares with its campaign's other children."""
    branch_lag: BranchLag | None = None
    """The run branch trails the recorded head (the previous phase's commit): this phase's push moves it."""
    decision: Decision | None = None
    """The decided approval of the next attempt: its kept change is resumed, or its rejection recorded."""


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
    model: str | None = None
    max_tokens: int | None = None
    prompt_summary: str | None = None
    context: dict[str, Any] | None = None
    mitigation: dict[str, Any] | None = None
    doctor: dict[str, Any] | None = None
    infra_failures: list[Any] = field(default_factory=list)


def _load(session: Session, run_id: int, phase_id: int) -> tuple[Run, Phase]:
    """The run and the phase, in one SELECT (the run joined to its phases): the phase comes out of
    `run.phases`, which every caller needs anyway. A get and the lazy load of `phases` were two."""
    run = session.scalars(select(Run).where(Run.id == run_id).options(joinedload(Run.phases))).unique().one()
    phase = next(p for p in run.phases if p.id == phase_id)
    return run, phase


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
    run, phase = _load(session, lease.run_id, phase_id)
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
        _fail(session, run, phase, reason, FailureKind.INFRA)
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


def attempt(lease: Lease, job: PhaseJob, rec: AttemptRecord) -> None:
    with transaction(lease.db_url) as session:
        lease.fence(session)
        _add_attempt(session, lease, job, rec)


def _add_attempt(
    session: Session, lease: Lease, job: PhaseJob, rec: AttemptRecord, phase: Phase | None = None
) -> None:
    """`phase`: the phase when the caller loaded it, so the count goes out with its other changes."""
    row = {"run_id": job.run_id, "phase_id": job.phase_id, "worker": lease.owner, "lease_epoch": lease.epoch}
    if not insert_unless_present(session, Attempt, {**row, **asdict(rec)}, KEY):
        return  # recorded already (a redelivery after the commit): the first record stands
    if phase is not None:
        phase.attempts_used = rec.number
        return
    # A plain UPDATE: loading the phase to set one column cost a SELECT more.
    session.execute(update(Phase).where(Phase.id == job.phase_id).values(attempts_used=rec.number))


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
    When a phase follows, the same transaction claims its outbox entry and releases the lease, noting
    `branch_sha` as `wrap_up` would (see the module docstring, 2): returns that phase, for the caller to
    enqueue after this commit. None: this was the last phase, and the lease is still held for the
    branch move and `wrap_up`. `auto`: the change's ruled paths were all low-risk `auto`, recorded as
    an auto-approved approval."""
    with transaction(lease.db_url) as session:
        lease.fence(session)
        run, phase = _load(session, job.run_id, job.phase_id)
        _add_attempt(session, lease, job, rec, phase)
        if auto is not None:
            request(session, run, phase, auto, timeout_seconds=0, timeout_action="approve", state=AUTO)
        following = _complete(session, run, phase, sha)
        if following is not None:
            lease.give_up(session, branch_sha)  # ours: fenced above, in this transaction
    if following is not None:
        lease.released = True
    return following


def pause(lease: Lease, job: PhaseJob, req: Requested, settings: Settings) -> int:
    """The change needs a person: keep it (the caller pushed its commit to a fenced ref), store the
    approval and its notification, move the phase to AWAITING_APPROVAL and release the lease, in ONE
    fenced transaction. No message is queued: a decision re-queues the phase. Returns the approval id."""
    with transaction(lease.db_url) as session:
        lease.fence(session)
        run, phase = _load(session, job.run_id, job.phase_id)
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


def _complete(session: Session, run: Run, phase: Phase, sha: str) -> int | None:
    move_phase(phase, PhaseState.COMPLETE)
    phase.commit_sha = sha
    phase.failure_reason = None  # a hand-back reason is history once the phase completes
    phase.finished_at = utcnow()
    run.head_sha = sha
    _efficiency(session, run.id, phase, "COMPLETE")
    following = [p for p in run.phases if p.index > phase.index]
    if following:
        following[0].dispatched_at = utcnow()  # the outbox claim: sent once this commits
        return following[0].id
    # The last phase: the run ends DONE_SUCCESS in `wrap_up`, once its branch has moved.
    return None


def wrap_up(lease: Lease, job: PhaseJob, branch_sha: str | None) -> None:
    """After the last phase's branch move, in ONE fenced transaction (the module docstring, 3): note
    where the branch now is, finish the run, and release the lease. A lost lease skips all three (the
    reconciler notes lagging branches and finishes runs)."""
    with transaction(lease.db_url) as session:
        if lease.give_up(session, branch_sha):
            run, _ = _load(session, job.run_id, job.phase_id)
            if run.state == RunState.RUNNING:
                finish_if_done(run)  # after the note above: DONE_SUCCESS waits for the branch
    lease.released = True


def skip(lease: Lease, job: PhaseJob, reason: str) -> int | None:
    """The Doctor said to skip: the run goes on without this phase's change."""
    with transaction(lease.db_url) as session:
        lease.fence(session)
        run, phase = _load(session, job.run_id, job.phase_id)
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
        _, phase = _load(session, job.run_id, job.phase_id)
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
        run, phase = _load(session, job.run_id, job.phase_id)
        _fail(session, run, phase, reason, kind)


def _fail(session: Session, run: Run, phase: Phase, reason: str, kind: FailureKind) -> None:
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
        run, _ = _load(session, job.run_id, job.phase_id)
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
    session.expire(phase, ["attempts"])  # a later read sees the attempt the Core INSERT added
    wall = None
    if phase.started_at and phase.finished_at:
        wall = int((phase.finished_at - phase.started_at).total_seconds() * 1000)
    record_phase_efficiency(session, run_id, phase.id, outcome, wall)
