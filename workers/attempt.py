"""One attempt of a phase: provision, (baseline), build, govern, validate, commit. No retry logic here."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.approvals.rules import RulePolicy, Verdict, classify
from shared.approvals.store import Decision, Requested
from shared.errors import DiskFull, GitError, HostFault, PatchParseError, WorkspaceError
from shared.git import git
from shared.models import utcnow
from shared.specs import PhaseSpec
from shared.states import AttemptOutcome
from workers import governed, steps, validation_cache
from workers.apply import apply_writes
from workers.builders import BuildRequest, BuildResult, get_builder
from workers.builders.tools import ToolLimits
from workers.change import parse_change, resolve
from workers.publish import phase_ref, publish, publish_phase
from workers.record import AttemptRecord, PhaseJob
from workers.validation import ValidationRun, compare, infer_validation, run_validation
from workers.workspace import Worktree, is_disk_full, reports_disk_full

if TYPE_CHECKING:
    from workers.executor import WorkerContext
    from workers.lease import Lease
    from workers.llm.gateway import LlmGateway


@dataclass
class Plan:
    """What this attempt is asked to do, decided by the retry loop."""

    number: int
    previous_failure: str | None
    advice: str | None
    model: str | None
    max_tokens: int | None
    gateway: LlmGateway | None
    baseline: dict[str, ValidationRun] = field(default_factory=dict)
    """Validation at the phase's starting commit, keyed by that commit (computed once per execution)."""


@dataclass(frozen=True)
class Attempted:
    record: AttemptRecord
    built: BuildResult | None
    failure_output: str = ""
    exit_code: int | None = None
    pause: Requested | None = None
    """The change needs a person's approval: kept on a fenced ref, not validated yet."""
    auto: Requested | None = None
    """The change touched only low-risk `auto` paths: recorded as auto-approved with the success."""
    branch_moved: bool = False
    """The success's push also moved the run branch to the previous recorded head (`job.branch_lag`)."""


def run_attempt(ctx: WorkerContext, lease: Lease, job: PhaseJob, plan: Plan) -> Attempted:
    """One attempt in a pooled worktree. Raises HostFault (DiskFull when it is the disk) when this host
    - its disk, its git state, its mirror or its network to the origin - and not the phase is at fault:
    such a failure spends no attempt, since any other host might have run the phase fine."""
    decision = job.decision if job.decision and job.decision.attempt_number == plan.number else None
    if decision is not None and not decision.approved:
        return Attempted(governed.rejected(decision), None)  # nothing to run: the reviewer said no
    started = utcnow()
    min_free = ctx.settings.min_free_disk_mb * 2**20
    ctx.workspace.require_free(min_free)
    try:
        with ctx.workspace.worktree(job.repo, job.head_sha) as wt:
            return _in_worktree(ctx, lease, job, plan, wt, started, min_free, decision)
    except (WorkspaceError, GitError, OSError) as exc:
        if _disk_full(ctx, exc, min_free):
            raise DiskFull(str(exc)) from exc
        what = str(exc) if isinstance(exc, WorkspaceError) else f"worker git/OS error: {exc}"
        raise HostFault(what) from exc


def _in_worktree(
    ctx: WorkerContext,
    lease: Lease,
    job: PhaseJob,
    plan: Plan,
    wt: Worktree,
    started: datetime,
    min_free: int,
    decision: Decision | None = None,
) -> Attempted:
    try:
        if decision is not None:
            attempted = _resume_in(ctx, lease, job, plan, wt, decision)
        else:
            attempted = _attempt_in(ctx, lease, job, plan, wt.path, wt.mirror.path, started)
    except (GitError, OSError) as exc:
        if _disk_full(ctx, exc, min_free):
            steps.discard(wt.path)
            raise DiskFull(f"{exc}") from exc
        if not wt.intact():  # the phase's commands deleted or rewrote `.git`: their fault, not git's
            reason = f"the phase's commands broke the worktree's .git link; nothing committed: {exc}"
            return Attempted(_rec(plan, AttemptOutcome.SCOPE_VIOLATION, started, reason[:4000]), None)
        raise
    if attempted.record.outcome != AttemptOutcome.SUCCESS:
        _blame_a_full_disk(ctx, wt.path, attempted, min_free)
    return attempted


def _disk_full(ctx: WorkerContext, exc: Exception, min_free: int) -> bool:
    """The error says the disk is full, or the disk is (nearly) full now, whatever the error says."""
    return is_disk_full(exc) or ctx.workspace.free_bytes() < min_free


def _blame_a_full_disk(ctx: WorkerContext, wt: Path, attempted: Attempted, min_free: int) -> None:
    """A command that failed while the disk is (nearly) full most likely failed for that reason (a
    `No space left on device` inside its own output): discard what it wrote and hand the phase on."""
    try:
        ctx.workspace.require_free(min_free, after=f"attempt failed: {attempted.record.failure_reason}")
    except DiskFull:
        steps.discard(wt)
        raise


def _validation_commands(phase: PhaseSpec, wt: Path) -> tuple[list[str], str]:
    if phase.validation:
        return list(phase.validation), ""
    inferred = infer_validation(wt)
    if inferred is None:
        return [], "no validation given and none could be inferred\n"
    return [inferred.command], f"no validation given; {inferred.reason}: {inferred.command}\n"


def _baseline(ctx: WorkerContext, job: PhaseJob, plan: Plan, wt: Path, commands: list[str]) -> ValidationRun:
    """Validation at the starting commit: remembered (this execution's earlier attempt, or any worker's
    validation of the same tree, see workers/validation_cache.py), else run here and recorded."""
    if job.head_sha not in plan.baseline:
        plan.baseline[job.head_sha] = _baseline_at(ctx, job, wt, commands)
    return plan.baseline[job.head_sha]


def _baseline_at(ctx: WorkerContext, job: PhaseJob, wt: Path, commands: list[str]) -> ValidationRun:
    s, network = ctx.settings, job.phase.network
    use_store = s.validation_cache and bool(commands)
    tree: str | None = None
    if use_store:
        tree, remembered = validation_cache.cached_baseline(s, wt, commands, network)
        if remembered is not None:
            return remembered
    run = run_validation(
        commands, wt, timeout=s.command_timeout_seconds, max_bytes=s.max_log_bytes, network=network
    )
    steps.reset(wt, job.head_sha)  # whatever the baseline left behind is not the builder's change
    if use_store:
        validation_cache.remember(s, tree, run, network)
    return replace(run, tree=tree)


def _build(ctx: WorkerContext, job: PhaseJob, plan: Plan, wt: Path) -> BuildResult:
    s = ctx.settings
    request = BuildRequest(
        job.run_id,
        job.phase_id,
        job.phase,
        plan.number,
        wt,
        plan.previous_failure,
        s.command_timeout_seconds,
        s.max_log_bytes,
        advice=plan.advice,
        model=plan.model,
        max_tokens=plan.max_tokens,
        context_budget_tokens=int(job.config.get("context_budget_tokens", 20000)),
        gateway=plan.gateway,
        tools=_tool_limits(job.config),
        recorded_output=job.recorded_outputs.get(plan.number)
        or job.recorded_outputs.get(max(job.recorded_outputs, default=0)),
    )
    return get_builder(str(job.config.get("builder", "script"))).build(request)


def _tool_limits(config: dict[str, Any]) -> ToolLimits | None:
    if not config.get("builder_tools"):
        return None
    defaults = ToolLimits()
    return ToolLimits(
        max_calls=int(config.get("tool_max_calls", defaults.max_calls)),
        max_bytes=int(config.get("tool_max_bytes", defaults.max_bytes)),
        max_seconds=float(config.get("tool_max_seconds", defaults.max_seconds)),
    )


def _apply(
    ctx: WorkerContext, job: PhaseJob, built: BuildResult, wt: Path
) -> tuple[AttemptOutcome, str] | None:
    """Apply a builder's patch under governance; the failure (outcome, reason), or None when applied."""
    assert built.patch is not None
    try:
        writes = resolve(parse_change(built.patch), wt)
    except PatchParseError as exc:
        return AttemptOutcome.BUILD_FAILED, f"the answer is not a change that applies: {exc.reason}"
    applied = apply_writes(
        wt,
        writes,
        job.phase,
        max_deletions=ctx.settings.max_deletions,
        allow_deletions=job.phase.allow_deletions,
    )
    if not applied.ok:
        return AttemptOutcome.SCOPE_VIOLATION, f"change rejected, nothing written: {applied.reason}"
    return None


def _attempt_in(
    ctx: WorkerContext, lease: Lease, job: PhaseJob, plan: Plan, wt: Path, mirror: Path, started: datetime
) -> Attempted:
    s, phase = ctx.settings, job.phase
    commands, note = _validation_commands(phase, wt)
    baseline = _baseline(ctx, job, plan, wt, commands)
    built = _build(ctx, job, plan, wt)
    if built.llm is None and built.patch is None and reports_disk_full(built.output):
        # A write that hit ENOSPC can leave an empty or cut file while the command still exits 0
        # (`echo x > f; next`), and the disk may be free again by the commit (seen in the chaos
        # batch): what the commands left is not the phase's result. The caller discards it and hands
        # the phase back. (A script whose output mentions a full disk for another reason is handed
        # back too, until max deliveries names the disk.)
        raise OSError(errno.ENOSPC, f"the phase's command reported a full disk: {built.output[-500:]}")
    if not built.ok:
        return Attempted(_rec(plan, AttemptOutcome.BUILD_FAILED, started, built.failure_reason, built), built)
    if built.patch is not None:
        failed = _apply(ctx, job, built, wt)
        if failed is not None:
            return Attempted(_rec(plan, failed[0], started, failed[1], built), built)
    steps.undo_builder_commits(wt, job.head_sha)
    status = steps.worktree_status(wt)
    paths = status.paths
    violations = steps.scope_violations(paths, phase)
    verdict = classify(paths, governed.rules_of(job, s))
    if verdict is not None and verdict.policy == RulePolicy.DENY:
        violations.append(f"denied by approval rules: {verdict.reason()}")
    if violations:
        reason = "scope violation, nothing committed: " + "; ".join(violations[:20])
        return Attempted(_rec(plan, AttemptOutcome.SCOPE_VIOLATION, started, reason, built, paths), built)
    steps.stage(wt, paths)
    patch = steps.staged_diff(wt, s.max_log_bytes * 4) if paths else ""  # status saw nothing: no diff
    if verdict is not None and verdict.policy == RulePolicy.ASK:
        rec = _rec(plan, AttemptOutcome.SUCCESS, started, None, built, paths, patch=patch)
        return _keep_for_approval(ctx, lease, job, wt, mirror, rec, verdict, built)
    # The tree validation runs on, taken before it runs: recorded for the next phase if this one succeeds.
    tree = validation_cache.staged_tree(wt, status.ignored) if s.validation_cache and commands else None
    after = validation_cache.passed_before(s, tree, commands, phase.network, baseline) or run_validation(
        commands, wt, timeout=s.command_timeout_seconds, max_bytes=s.max_log_bytes, network=phase.network
    )
    checked = _checked(phase, wt, plan, started, baseline, after, note, built, paths, patch)
    if isinstance(checked, Attempted):
        return checked
    lease.check()
    sha = steps.commit(wt, _message(job), s.git_author)
    ref = phase_ref(job.run_id, job.phase_index, lease.epoch)
    moved = publish_phase(mirror, job.run_id, ref, sha, s.push_results, job.branch_lag)
    if tree is not None:  # a fact about a tree, not a write of the run's: it needs no fencing
        validation_cache.remember_after(s, wt, tree, after, phase.network)
    rec = _rec(plan, AttemptOutcome.SUCCESS, started, None, built, paths, checked, sha, patch)
    auto = governed.requested(rec, verdict, lease.owner) if verdict is not None else None
    return Attempted(rec, built, auto=auto, branch_moved=moved)


def _message(job: PhaseJob) -> str:
    return f"autopack: run {job.run_id} phase {job.phase_index} {job.phase.name}\n\n{job.phase.goal}".strip()


def _checked(
    phase: PhaseSpec,
    wt: Path,
    plan: Plan,
    started: datetime,
    baseline: ValidationRun,
    after: ValidationRun,
    note: str,
    built: BuildResult | None,
    paths: list[str],
    patch: str | None,
) -> Attempted | str:
    """The failed attempt when validation got worse or a deliverable is missing, else the report."""
    verdict = compare(baseline, after)
    if baseline.reused:
        note += (
            f"baseline: {len(baseline.results)} result(s) reused from an earlier validation of this tree\n"
        )
    if after.reused:
        note += f"validation: this tree passed these {len(after.results)} command(s) before; not run again\n"
    report = note + verdict.summary + "\n\n" + after.report()
    if not verdict.ok:
        bad = next((r for r in after.results if not r.ok), None)
        rec = _rec(
            plan,
            AttemptOutcome.VALIDATION_FAILED,
            started,
            f"validation failed: {verdict.summary}"[:4000],
            built,
            paths,
            report,
            patch=patch,
        )
        return Attempted(rec, built, after.report(), bad.exit_code if bad else None)
    missing = steps.missing_deliverables(phase, wt)
    if missing:
        reason = f"missing deliverables: {', '.join(missing)}"
        rec = _rec(
            plan, AttemptOutcome.MISSING_DELIVERABLE, started, reason, built, paths, report, patch=patch
        )
        return Attempted(rec, built)
    return report


def _keep_for_approval(
    ctx: WorkerContext,
    lease: Lease,
    job: PhaseJob,
    wt: Path,
    mirror: Path,
    rec: AttemptRecord,
    verdict: Verdict,
    built: BuildResult | None,
) -> Attempted:
    """Commit the unvalidated change and push it to a fenced approval ref, so that any worker can
    resume it once a person approves; validation runs then, on the change as approved."""
    lease.check()
    sha = steps.commit(wt, _message(job), ctx.settings.git_author)
    ref = governed.approval_ref(job.run_id, job.phase_index, lease.epoch)
    publish(mirror, ref, sha, ctx.settings.push_results)
    return Attempted(rec, built, pause=governed.requested(rec, verdict, lease.owner, sha, ref))


def _resume_in(
    ctx: WorkerContext, lease: Lease, job: PhaseJob, plan: Plan, wt: Worktree, decision: Decision
) -> Attempted:
    """An approved change: check out its kept commit and validate it as any attempt's change. On
    success that commit is the phase's (no new commit: the reviewer approved exactly it)."""
    s, phase, started = ctx.settings, job.phase, utcnow()
    assert decision.commit_sha is not None
    commands, note = _validation_commands(phase, wt.path)
    baseline = _baseline(ctx, job, plan, wt.path, commands)
    wt.mirror.ensure(decision.commit_sha)
    git("checkout", "--quiet", "--detach", decision.commit_sha, cwd=wt.path)
    after = run_validation(
        commands, wt.path, timeout=s.command_timeout_seconds, max_bytes=s.max_log_bytes, network=phase.network
    )
    note += f"resumed the change approved by {decision.decided_by} (approval {decision.approval_id})\n"
    checked = _checked(
        phase, wt.path, plan, started, baseline, after, note, None, decision.paths, decision.patch
    )
    if isinstance(checked, Attempted):
        return replace(checked, record=governed.restored(checked.record, decision))
    lease.check()
    sha = decision.commit_sha
    ref = phase_ref(job.run_id, job.phase_index, lease.epoch)
    moved = publish_phase(wt.mirror.path, job.run_id, ref, sha, s.push_results, job.branch_lag)
    rec = _rec(
        plan, AttemptOutcome.SUCCESS, started, None, None, decision.paths, checked, sha, decision.patch
    )
    return Attempted(governed.restored(rec, decision), None, branch_moved=moved)


def _rec(
    plan: Plan,
    outcome: AttemptOutcome,
    started: datetime,
    reason: str | None,
    built: BuildResult | None = None,
    paths: list[str] | None = None,
    validation: str | None = None,
    sha: str | None = None,
    patch: str | None = None,
) -> AttemptRecord:
    llm = built.llm if built else None
    return AttemptRecord(
        number=plan.number,
        outcome=outcome,
        started_at=started,
        finished_at=utcnow(),
        failure_reason=reason,
        builder_output=built.output if built else None,
        patch=patch,
        changed_paths=paths or [],
        validation_output=validation,
        commit_sha=sha,
        model=plan.model if llm else None,
        max_tokens=plan.max_tokens if llm else None,
        prompt_summary=built.prompt_summary if built else None,
        context=built.context if built else None,
        infra_failures=[f.__dict__ for f in llm.infra_retries] if llm else [],
    )
