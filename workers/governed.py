"""Governed changes on the worker: which rules apply to a job, what a paused attempt keeps, and the
attempt a decision ends (see shared/approvals for the record and the decisions)."""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import datetime
from typing import Any

from shared.approvals.rules import PathRule, Verdict
from shared.approvals.store import Decision, Requested
from shared.models import utcnow
from shared.settings import Settings
from shared.states import AttemptOutcome
from workers.record import AttemptRecord, PhaseJob

KEPT = ("builder_output", "prompt_summary", "model", "max_tokens", "context", "infra_failures")
"""What a paused attempt's record keeps for the attempt its decision ends (JSON on the approval)."""


def rules_of(job: PhaseJob, settings: Settings) -> list[PathRule]:
    """The run's own rules first, then the fleet's."""
    own = [PathRule.model_validate(r) for r in job.config.get("approval_rules") or []]
    return own + settings.path_rules


def approval_ref(run_id: int, phase_index: int, epoch: int) -> str:
    """Where a paused change's commit waits: fenced by epoch like a phase ref, so a holder that was
    taken over never overwrites the one a newer holder kept."""
    return f"refs/autopack/run-{run_id}/approval-{phase_index}-e{epoch}"


def requested(
    rec: AttemptRecord, verdict: Verdict, owner: str, sha: str | None = None, ref: str | None = None
) -> Requested:
    kept = {k: v for k, v in asdict(rec).items() if k in KEPT}
    kept["started_at"] = rec.started_at.isoformat()
    return Requested(rec.number, verdict, rec.patch, sha, ref, kept, owner)


def restored(rec: AttemptRecord, decision: Decision) -> AttemptRecord:
    """The record of the attempt a decision ends: the paused attempt's builder facts, this end."""
    kept: dict[str, Any] = {k: v for k, v in decision.attempt.items() if k in KEPT}
    started = datetime.fromisoformat(decision.attempt["started_at"])
    return replace(rec, started_at=started, patch=rec.patch or decision.patch, **kept)


def rejected(decision: Decision) -> AttemptRecord:
    """A rejected change is a failed attempt whose reason is the reviewer's."""
    rec = AttemptRecord(
        number=decision.attempt_number,
        outcome=AttemptOutcome.REJECTED,
        started_at=utcnow(),
        finished_at=utcnow(),
        failure_reason=decision.rejection,
        builder_output=None,
        patch=decision.patch,
        changed_paths=decision.paths,
        validation_output=None,
        commit_sha=None,
    )
    return restored(rec, decision)
