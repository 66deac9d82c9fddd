"""What an execution carries: the job read once under the lease, the record of one attempt, and the
one SELECT every fenced write starts from (the run joined to its phases)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, joinedload

from shared.approvals.store import Decision
from shared.campaigns.caps import CampaignCaps
from shared.models import Phase, Run
from shared.specs import PhaseSpec
from shared.states import AttemptOutcome
from workers.publish import BranchLag


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


def load(session: Session, run_id: int, phase_id: int) -> tuple[Run, Phase]:
    """The run and the phase, in one SELECT (the run joined to its phases): the phase comes out of
    `run.phases`, which every caller needs anyway. A get and the lazy load of `phases` were two."""
    run = session.scalars(_LOAD, {"j_run": run_id}).unique().one()
    phase = next(p for p in run.phases if p.id == phase_id)
    return run, phase


_LOAD = select(Run).where(Run.id == bindparam("j_run")).options(joinedload(Run.phases))
"""Built once (see workers/lease.py, `RUNS`): every delivery loads with it at least once."""
