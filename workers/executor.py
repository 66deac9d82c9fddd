"""Execute one phase: the domain function behind the Celery task. Safe to run twice for the same phase."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from shared.dispatch import Dispatcher
from shared.errors import GitError, LeaseLost, WorkspaceError
from shared.models import utcnow
from shared.outbox import claim_and_enqueue
from shared.settings import Settings
from shared.states import AttemptOutcome
from workers import record, steps
from workers.builders import BuildRequest, get_builder
from workers.lease import Lease, acquire, heartbeat
from workers.publish import move_branch, phase_ref, publish
from workers.record import AttemptRecord, PhaseJob
from workers.workspace import WorkspaceManager

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    workspace: WorkspaceManager
    dispatcher: Dispatcher

    @classmethod
    def build(cls, settings: Settings, dispatcher: Dispatcher) -> WorkerContext:
        workspace = WorkspaceManager(Path(settings.workspace_dir), settings.worktrees_per_repo)
        return cls(settings, workspace, dispatcher)

    def owner(self) -> str:
        return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def execute_phase(ctx: WorkerContext, run_id: int, phase_id: int) -> str:
    """Run the phase under the run's lease; return what happened, in words, for logs and tests."""
    s = ctx.settings
    lease = acquire(s.database_url, run_id, ctx.owner(), s.lease_ttl_seconds)
    if lease is None:
        return "busy: another worker holds this run"
    try:
        with heartbeat(lease, s.lease_heartbeat_seconds):
            job = record.start(lease, phase_id, s.max_deliveries)
            if isinstance(job, str):
                return job
            return _attempts(ctx, lease, job)
    except LeaseLost as exc:
        log.warning("%s; this execution records nothing more", exc)
        return f"fenced: {exc}"
    finally:
        try:
            lease.release()
        except Exception as exc:  # the lease expires on its own; never mask the real outcome
            log.warning("run %s: lease release failed: %s", run_id, exc)


def _attempts(ctx: WorkerContext, lease: Lease, job: PhaseJob) -> str:
    s = ctx.settings
    max_attempts = int(job.config.get("max_attempts", 2))
    failure = job.last_failure
    for number in range(job.attempts_used + 1, max_attempts + 1):
        lease.check()
        if record.cancel_requested(s.database_url, job.run_id):
            record.cancel(lease, job)
            return "cancelled"
        rec = run_attempt(ctx, lease, job, number, failure)
        record.attempt(lease, job, rec)
        if rec.outcome == AttemptOutcome.SUCCESS and rec.commit_sha is not None:
            return _finish_success(ctx, lease, job, rec.commit_sha)
        failure = rec.failure_reason
        if rec.outcome == AttemptOutcome.INFRA_ERROR:
            break  # a full disk or a missing repo does not get better by retrying here
    record.fail(lease, job, f"{max_attempts} attempt(s) used; last: {failure}"[:4000])
    return f"failed: {failure}"


def _finish_success(ctx: WorkerContext, lease: Lease, job: PhaseJob, sha: str) -> str:
    s = ctx.settings
    next_phase = record.complete(lease, job, sha)
    mirror = ctx.workspace.mirror(job.repo).path
    try:
        move_branch(s.database_url, mirror, job.run_id, sha, s.push_results)
    except Exception as exc:  # recorded already; the reconciler moves the branch later
        log.warning("run %s: moving result branch failed: %s", job.run_id, exc)
    if next_phase is not None:
        claim_and_enqueue(s.database_url, ctx.dispatcher, job.run_id, next_phase, stale_after=None)
    return "complete"


def run_attempt(
    ctx: WorkerContext, lease: Lease, job: PhaseJob, number: int, previous_failure: str | None
) -> AttemptRecord:
    started = utcnow()
    try:
        with ctx.workspace.worktree(job.repo, job.head_sha) as wt:
            return _attempt_in(ctx, lease, job, number, previous_failure, wt.path, wt.mirror.path, started)
    except (WorkspaceError, GitError) as exc:
        return _rec(number, AttemptOutcome.INFRA_ERROR, started, str(exc))
    except OSError as exc:  # ENOSPC while a command writes, say: name it, keep state consistent
        return _rec(number, AttemptOutcome.INFRA_ERROR, started, f"worker OS error: {exc}")


def _attempt_in(
    ctx: WorkerContext,
    lease: Lease,
    job: PhaseJob,
    number: int,
    previous_failure: str | None,
    wt: Path,
    mirror: Path,
    started: object,
) -> AttemptRecord:
    s = ctx.settings
    phase = job.phase
    builder = get_builder(str(job.config.get("builder", "script")))
    request = BuildRequest(
        job.run_id,
        job.phase_id,
        phase,
        number,
        wt,
        previous_failure,
        s.command_timeout_seconds,
        s.max_log_bytes,
    )
    built = builder.build(request)
    if not built.ok:
        return _rec(number, AttemptOutcome.BUILD_FAILED, started, built.failure_reason, built.output)
    steps.undo_builder_commits(wt, job.head_sha)
    paths = steps.changed_paths(wt)
    violations = steps.scope_violations(paths, phase)
    if violations:
        reason = "scope violation, nothing committed: " + "; ".join(violations[:20])
        return _rec(number, AttemptOutcome.SCOPE_VIOLATION, started, reason, built.output, paths)
    steps.stage(wt, paths)
    checked = steps.validate(phase, wt, timeout=s.command_timeout_seconds, max_bytes=s.max_log_bytes)
    if not checked.ok:
        return _rec(
            number,
            AttemptOutcome.VALIDATION_FAILED,
            started,
            checked.failure(),
            built.output,
            paths,
            checked.report(),
        )
    missing = steps.missing_deliverables(phase, wt)
    if missing:
        reason = f"missing deliverables: {', '.join(missing)}"
        return _rec(
            number, AttemptOutcome.MISSING_DELIVERABLE, started, reason, built.output, paths, checked.report()
        )
    lease.check()
    message = f"autopack: run {job.run_id} phase {job.phase_index} {phase.name}\n\n{phase.goal}".strip()
    sha = steps.commit(wt, message, s.git_author)
    publish(mirror, phase_ref(job.run_id, job.phase_index, lease.epoch), sha, s.push_results)
    return _rec(number, AttemptOutcome.SUCCESS, started, None, built.output, paths, checked.report(), sha)


def _rec(
    number: int,
    outcome: AttemptOutcome,
    started: object,
    reason: str | None,
    output: str | None = None,
    paths: list[str] | None = None,
    validation: str | None = None,
    sha: str | None = None,
) -> AttemptRecord:
    return AttemptRecord(
        number=number,
        outcome=outcome,
        started_at=started,
        finished_at=utcnow(),
        failure_reason=reason,
        builder_output=output,
        patch=None,
        changed_paths=paths or [],
        validation_output=validation,
        commit_sha=sha,
    )
