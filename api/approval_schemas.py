"""Request and response bodies of the approvals API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from shared.approvals.rules import RiskTier, RulePolicy
from shared.models import Approval, Phase
from shared.states import ApprovalState


class RuledPath(BaseModel):
    path: str
    pattern: str
    """The rule that decided this path."""
    tier: RiskTier
    policy: RulePolicy
    """The effective policy (`auto` on a tier above low asks)."""


class ApprovalOut(BaseModel):
    id: int
    run_id: int
    phase_id: int
    phase_index: int
    phase_name: str
    attempt: int
    """The attempt number whose change this is."""
    state: ApprovalState
    paths: list[RuledPath]
    requested_at: datetime
    expires_at: datetime | None
    timeout_action: str
    """What the approval becomes at `expires_at` without a decision: `reject` or `approve`."""
    decided_at: datetime | None
    decided_by: str | None
    """`key <id> (<owner>)`, `timeout`, `auto` or `run cancelled`."""
    reason: str | None
    commit_sha: str | None
    """The kept, unvalidated change; `ref` names it in the origin."""
    ref: str | None

    @classmethod
    def of(cls, approval: Approval, phase: Phase) -> ApprovalOut:
        return cls(**_fields(approval, phase))


class ApprovalDetail(ApprovalOut):
    goal: str
    diff: str | None
    """The change as a diff (None when it was too large to keep)."""

    @classmethod
    def of(cls, approval: Approval, phase: Phase) -> ApprovalDetail:
        goal = str(phase.spec.get("goal", ""))
        return cls(**_fields(approval, phase), goal=goal, diff=approval.patch)


def _fields(a: Approval, phase: Phase) -> dict[str, object]:
    return {
        "id": a.id,
        "run_id": a.run_id,
        "phase_id": a.phase_id,
        "phase_index": phase.index,
        "phase_name": phase.name,
        "attempt": a.attempt_number,
        "state": a.state,
        "paths": [RuledPath.model_validate(p) for p in a.paths],
        "requested_at": a.requested_at,
        "expires_at": a.expires_at,
        "timeout_action": a.timeout_action,
        "decided_at": a.decided_at,
        "decided_by": a.decided_by,
        "reason": a.reason,
        "commit_sha": a.commit_sha,
        "ref": a.ref,
    }


class ApprovalPage(BaseModel):
    items: list[ApprovalOut]
    next_cursor: int | None


class ApproveIn(BaseModel):
    reason: str | None = Field(default=None, max_length=4000)
    """Why it may go in (optional); stored with the decision."""


class RejectIn(BaseModel):
    reason: str = Field(min_length=1, max_length=4000)
    """Why not: the next attempt's prompt is given it, as any failure."""
