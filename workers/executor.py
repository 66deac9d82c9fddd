"""Execute one phase: the domain function behind the Celery task. Safe to run twice for the same phase."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

from shared.approvals.store import Requested
from shared.approvals.webhook import deliver_due
from shared.budget import BudgetExceeded
from shared.campaigns.caps import CampaignBudgetExceeded, note_cap_reached
from shared.campaigns.flow import advance
from shared.dispatch import Dispatcher
from shared.errors import Drained, HostFault, LeaseLost, LlmAuthError, LlmInfraError
from shared.models import EscalationEvent
from shared.outbox import claim_and_enqueue, enqueue_claimed
from shared.settings import Settings
from shared.states import AttemptOutcome, FailureKind
from workers import drain, record
from workers.attempt import Attempted, Plan, run_attempt
from workers.builders import LLM_BUILDERS
from workers.doctor import DoctorAction
from workers.escalation import escalate, trigger
from workers.host.guard import GUARD_PERIOD_SECONDS
from workers.host.health import HostHealth
from workers.lease import Lease, heartbeat
from workers.llm.client import LlmClient, client_for
from workers.llm.gateway import LlmGateway
from workers.publish import move_branch, phase_ref
from workers.record import AttemptRecord, PhaseJob
from workers.recovery import Recovery, analyse
from workers.validation import ValidationRun
from workers.workspace import WorkspaceManager

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    workspace: WorkspaceManager
    dispatcher: Dispatcher
    health: HostHealth

    @classmethod
    def build(cls, settings: Settings, dispatcher: Dispatcher) -> WorkerContext:
        workspace = WorkspaceManager(Path(settings.workspace_dir), settings.worktrees_per_repo)
        threshold = 0 if settings.is_embedded else settings.host_fault_threshold
        return cls(settings, workspace, dispatcher, HostHealth(Path(settings.workspace_dir), threshold))

    def owner(self) -> str:
        return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"

    def llm_client_missing(self) -> bool:
        key = self.settings.anthropic_api_key
        return key is None or not key.get_secret_value()

    def llm_client(self) -> LlmClient | None:
        return client_for(self.settings)


def execute_phase(ctx: WorkerContext, run_id: int, phase_id: int) -> str:
    """Run the phase under the run's lease; return what happened, in words, for logs and tests."""
    s = ctx.settings
    if ctx.health.read().sick:
        # Hand it on untouched (no lease, no delivery), but only once the guard has stopped this worker
        # consuming: re-enqueued at once, it would come straight back here.
        time.sleep(GUARD_PERIOD_SECONDS * 1.5)
        ctx.dispatcher.enqueue(run_id, phase_id)
        return "handed on: this host is sick"
    # One transaction takes the lease and marks the phase EXECUTING (see record.begin).
    owner, ttl = ctx.owner(), s.lease_ttl_seconds
    lease, job = record.begin(s.database_url, run_id, phase_id, owner, ttl, s.max_deliveries)
    if lease is None:
        return str(job)
    then: list[int] = []  # the next phase, enqueued only once our lease is released
    try:
        if isinstance(job, str):
            return job  # the lease went back in the same transaction
        with heartbeat(lease, s.lease_heartbeat_seconds):
            outcome = _execute(ctx, lease, job, then)
        if outcome.startswith(("failed", "cancelled")):
            _settle_branch(ctx, job)
        return outcome
    except LeaseLost as exc:
        log.warning("%s; this execution records nothing more", exc)
        return f"fenced: {exc}"
    finally:
        try:
            lease.release()
        except Exception as exc:  # the lease expires on its own; never mask the real outcome
            log.warning("run %s: lease release failed: %s", run_id, exc)
        for next_phase in then:
            claim_and_enqueue(s.database_url, ctx.dispatcher, run_id, next_phase, stale_after=None)
        if isinstance(job, PhaseJob) and job.campaign_id is not None:
            _advance_campaign(ctx, job.campaign_id)


def _settle_branch(ctx: WorkerContext, job: PhaseJob) -> None:
    """The run ended here with its branch one phase behind (one push per phase): move it to the last
    recorded head now, as the reconciler would later, so the ended run's result is on its branch."""
    lag, s = job.branch_lag, ctx.settings
    if lag is None:
        return
    try:
        mirror = ctx.workspace.mirror(job.repo)
        mirror.ensure(lag.head)
        move_branch(s.database_url, mirror.path, job.run_id, lag.head, s.push_results, lag.drop)
    except Exception as exc:  # the reconciler settles it (and reports a conflict)
        log.warning("run %s: settling the result branch failed: %s", job.run_id, exc)


def _advance_campaign(ctx: WorkerContext, campaign_id: int) -> None:
    """A child may have ended: start the campaign's next held child now rather than at the next
    reconciler pass (which does it anyway if this fails)."""
    try:
        advance(ctx.settings.database_url, ctx.dispatcher, campaign_id)
    except Exception as exc:
        log.warning("campaign %s: releasing its next children failed: %s", campaign_id, exc)


@dataclass
class Loop:
    """The retry state of one phase execution: model on the chain, output budget, advice carried over."""

    job: PhaseJob
    gateway: LlmGateway | None
    chain: list[str]
    escalate_after: int
    selected_budget: int
    max_tokens: int
    escalated: bool
    advice: str | None
    failure: str | None
    failures_on_model: int = 0
    model_index: int = 0
    baseline: dict[str, ValidationRun] = field(default_factory=dict)
    """Validation at the phase's starting commit, computed once per execution."""

    def plan(self, number: int) -> Plan:
        llm = self.gateway is not None and str(self.job.config.get("builder")) in LLM_BUILDERS
        model = self.chain[self.model_index] if llm else None
        max_tokens = self.max_tokens if llm else None
        return Plan(number, self.failure, self.advice, model, max_tokens, self.gateway, self.baseline)


def _loop(ctx: WorkerContext, lease: Lease, job: PhaseJob) -> Loop:
    cfg = job.config
    models = cfg.get("models") or {}
    client = ctx.llm_client()
    gateway = None
    if client is not None:
        usd = cfg.get("max_usd")
        gateway = LlmGateway(
            ctx.settings.database_url,
            client,
            job.run_id,
            job.phase_id,
            lease.epoch,
            cfg.get("max_tokens"),
            Decimal(str(usd)) if usd is not None else None,
            campaign=job.campaign_caps,
        )
    selected = int(cfg.get("max_output_tokens", 4096))
    return Loop(
        job=job,
        gateway=gateway,
        chain=list(models.get("builder") or ["claude-haiku-4-5"]),
        escalate_after=int(models.get("escalate_after_failures", 2)),
        selected_budget=selected,
        max_tokens=job.escalated_max_tokens or selected,
        escalated=job.escalated_max_tokens is not None,
        advice=job.last_advice,
        failure=job.last_failure,
    )


def _execute(ctx: WorkerContext, lease: Lease, job: PhaseJob, then: list[int]) -> str:
    if str(job.config.get("builder")) in LLM_BUILDERS and ctx.llm_client_missing():
        record.fail(
            lease,
            job,
            "the anthropic builder needs AUTOPACK_ANTHROPIC_API_KEY on the workers",
            FailureKind.INFRA,
        )
        return "failed: no LLM key"
    loop = _loop(ctx, lease, job)
    try:
        return _attempts(ctx, lease, job, loop, then)
    except LlmAuthError as exc:
        record.fail(
            lease, job, f"LLM provider refused the credentials; fix the key: {exc}", FailureKind.INFRA
        )
        return "failed: LLM auth"
    except BudgetExceeded as exc:
        return _fail_on_cap(ctx, lease, job, exc)
    except LlmInfraError as exc:
        # The provider is down: not the phase's fault, so no attempt is spent; try again later.
        record.hand_back(lease, job, f"LLM provider unavailable, phase handed back: {exc}")
        return "handed back: LLM provider unavailable"
    except Drained as exc:
        return _hand_over(lease, job, str(exc), then)
    except HostFault as exc:
        # The host's fault: no attempt spent. The delivery counts, so a phase that fails on every
        # host (it fills every disk, its origin is gone) still ends FAILED after max_deliveries.
        log.warning("run %s phase %s: %s; handing it back", job.run_id, job.phase_id, exc)
        record.hand_back(lease, job, f"{exc}; phase handed back")
        if ctx.health.fault(str(exc)).sick:
            log.error("this host is sick after repeated host faults; it stops taking phases")
        return f"handed back: {exc}"
    finally:
        if loop.gateway is not None:
            loop.gateway.client.close()


def _attempts(ctx: WorkerContext, lease: Lease, job: PhaseJob, loop: Loop, then: list[int]) -> str:
    max_attempts = int(job.config.get("max_attempts", 2))
    for number in range(job.attempts_used + 1, max_attempts + 1):
        lease.check()
        # No query: `start` refused a cancelled run, and the fenced writes since (the last attempt's
        # record) and the heartbeat refresh `cancel_seen` from the same UPDATE that proves the lease.
        if lease.cancel_seen:
            record.cancel(lease, job)
            return "cancelled"
        if drain.requested():
            return _hand_over(lease, job, f"the worker is stopping; attempt {number} left to another", then)
        plan = loop.plan(number)
        attempted = run_attempt(ctx, lease, job, plan)
        ctx.health.ok()
        if attempted.pause is not None:
            return _pause(ctx, lease, job, attempted.pause)
        rec = attempted.record
        if rec.outcome == AttemptOutcome.SUCCESS and rec.commit_sha is not None:
            return _finish_success(ctx, lease, job, rec, attempted.auto, attempted.branch_moved)
        # A person's rejection needs no diagnosis: their reason is the advice.
        rejected = rec.outcome == AttemptOutcome.REJECTED
        recovery = Recovery() if rejected else _recover(ctx, loop, job, attempted, number)
        record.attempt(lease, job, replace(rec, mitigation=recovery.mitigation, doctor=recovery.doctor))
        _after_failure(lease, loop, job, attempted, recovery)
        if recovery.action == DoctorAction.SKIP_PHASE:
            return _finish_skip(lease, job, recovery, then)
        if recovery.action == DoctorAction.MARK_FATAL:
            diagnosis = (recovery.doctor or {}).get("diagnosis")
            record.fail(lease, job, f"the Doctor marked the failure fatal: {diagnosis}", FailureKind.MODEL)
            return "failed: fatal"
    record.fail(lease, job, f"{max_attempts} attempt(s) used; last: {loop.failure}"[:4000], FailureKind.MODEL)
    return f"failed: {loop.failure}"


def _fail_on_cap(ctx: WorkerContext, lease: Lease, job: PhaseJob, exc: BudgetExceeded) -> str:
    """A campaign's cap fails the run as CAMPAIGN_CAP (its pair is excluded, not scored) and stops the
    campaign starting more children; the run's own cap is part of its configuration (BUDGET)."""
    if isinstance(exc, CampaignBudgetExceeded):
        record.fail(
            lease, job, f"campaign budget cap reached before an LLM call: {exc}", FailureKind.CAMPAIGN_CAP
        )
        note_cap_reached(ctx.settings.database_url, exc.campaign_id, str(exc))
        return "failed: campaign budget"
    record.fail(lease, job, f"budget cap reached before an LLM call: {exc}", FailureKind.BUDGET)
    return "failed: budget"


def _hand_over(lease: Lease, job: PhaseJob, reason: str, then: list[int]) -> str:
    """Draining: the phase goes back to the queue at once, for a worker that is not stopping."""
    then.append(record.hand_back(lease, job, reason, now=True))
    return f"handed back: {reason}"


def _recover(ctx: WorkerContext, loop: Loop, job: PhaseJob, attempted: Attempted, number: int) -> Recovery:
    # A replay re-emits fixed answers: advice could change nothing, so it would be pure spend.
    use_doctor = bool(job.config.get("doctor", True)) and job.config.get("builder") != "replay"
    model = (job.config.get("models") or {}).get("doctor", "claude-sonnet-4-6") if use_doctor else None
    recovery = analyse(job.phase, attempted, gateway=loop.gateway, doctor_model=model, attempt=number)
    if recovery.hardening_hit:  # a phase counts as a hit once any of its failures was explained
        record.phase_metrics(ctx.settings.database_url, job, recovery)
    return recovery


def _after_failure(lease: Lease, loop: Loop, job: PhaseJob, attempted: Attempted, recovery: Recovery) -> None:
    """Carry the lesson into the next attempt: reason, advice, a bigger budget once, a stronger model."""
    loop.failure = attempted.record.failure_reason
    loop.advice = recovery.advice
    llm = attempted.built.llm if attempted.built else None
    if llm is not None and not loop.escalated:
        why = trigger(llm.truncated, llm.usage.output_tokens, loop.max_tokens)
        if why is not None:
            _escalate(lease, loop, job, attempted, why, llm.usage.output_tokens)
    loop.failures_on_model += 1
    if loop.failures_on_model >= loop.escalate_after and loop.model_index + 1 < len(loop.chain):
        loop.model_index += 1
        loop.failures_on_model = 0


def _escalate(
    lease: Lease, loop: Loop, job: PhaseJob, attempted: Attempted, why: str, used: int | None
) -> None:
    model = loop.chain[loop.model_index]
    esc = escalate(why, selected=loop.selected_budget, enforced=loop.max_tokens, used=used, model=model)
    event = EscalationEvent(
        run_id=job.run_id,
        phase_id=job.phase_id,
        attempt_number=attempted.record.number,
        reason=esc.reason,
        selected_budget=esc.selected_budget,
        enforced_max_tokens=esc.enforced_max_tokens,
        tokens_used=esc.tokens_used,
        base=esc.base,
        factor=esc.factor,
        new_max_tokens=esc.new_max_tokens,
        model_limit=esc.model_limit,
    )
    record.escalate(lease, job, event)
    loop.escalated = True
    loop.max_tokens = esc.new_max_tokens


def _pause(ctx: WorkerContext, lease: Lease, job: PhaseJob, req: Requested) -> str:
    """The change waits for a person: the lease and this worker's slot are free once this returns."""
    approval_id = record.pause(lease, job, req, ctx.settings)
    try:  # after the commit, as the outbox requires; the reconciler retries what fails here
        deliver_due(ctx.settings, approval_id)
    except Exception as exc:
        log.warning("approval %s: webhook delivery failed: %s", approval_id, exc)
    return f"awaiting approval {approval_id}"


def _finish_success(
    ctx: WorkerContext,
    lease: Lease,
    job: PhaseJob,
    rec: AttemptRecord,
    auto: Requested | None = None,
    lag_moved: bool = False,
) -> str:
    s = ctx.settings
    sha = rec.commit_sha
    assert sha is not None
    # This attempt's push moved the branch to the previous head; this head rides on the next phase's
    # push, unless this was the last phase (workers/publish.py: one push per phase).
    moved = job.branch_lag.head if lag_moved and job.branch_lag else None
    next_phase = record.succeed(lease, job, rec, sha, auto, branch_sha=moved)
    if next_phase is not None:  # claimed, and the lease released, with the completion
        background = job.campaign_id is not None
        enqueue_claimed(s.database_url, ctx.dispatcher, job.run_id, next_phase, background=background)
        return "complete"
    # Only after the move: a finished run's branch is already where it says.
    record.wrap_up(lease, job, _move_branch(ctx, job, lease, sha))
    return "complete"


def _move_branch(ctx: WorkerContext, job: PhaseJob, lease: Lease, sha: str) -> str | None:
    """The last phase's branch move; None when it failed (recorded already: the reconciler moves it)."""
    s = ctx.settings
    try:
        mirror = ctx.workspace.mirror(job.repo).path
        drop = phase_ref(job.run_id, job.phase_index, lease.epoch)
        move_branch(s.database_url, mirror, job.run_id, sha, s.push_results, drop, note=False)
    except Exception as exc:
        log.warning("run %s: moving result branch failed: %s", job.run_id, exc)
        return None
    return sha


def _finish_skip(lease: Lease, job: PhaseJob, recovery: Recovery, then: list[int]) -> str:
    reason = f"skipped on the Doctor's advice: {(recovery.doctor or {}).get('diagnosis')}"
    next_phase = record.skip(lease, job, reason[:4000])
    if next_phase is not None:
        then.append(next_phase)
    return "skipped"
