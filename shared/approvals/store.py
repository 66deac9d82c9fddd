"""The approval record: a paused change's request, the decision on it, the timeout, and reads.

A decision is one conditional UPDATE (`WHERE state = 'pending'`): of two concurrent deciders exactly one
matches a row, the other gets `Conflict`. In the same transaction the phase goes back to QUEUED with a
pending outbox entry; the caller enqueues it after commit (the reconciler does if that is lost). The
worker that then takes the phase's lease reads the decision (`decision_for`) and resumes the kept
commit or records the rejected attempt: attempts are only ever written by a lease holder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from shared.approvals.rules import Verdict
from shared.db import transaction
from shared.errors import Conflict, NotFound
from shared.keys import Caller, owned_by
from shared.models import Approval, Phase, Run, utcnow
from shared.states import ApprovalState, PhaseState, check_phase_move

Q = TypeVar("Q", bound=Select[*tuple[Any, ...]])
DECIDED = (ApprovalState.APPROVED, ApprovalState.REJECTED)


@dataclass(frozen=True)
class Decision:
    """What a resumed phase needs of its decided approval."""

    approval_id: int
    attempt_number: int
    approved: bool
    decided_by: str
    reason: str | None
    commit_sha: str | None
    patch: str | None
    paths: list[str]
    attempt: dict[str, Any]

    @property
    def rejection(self) -> str:
        """The failure the next attempt's prompt is given."""
        why = self.reason or "no reason given"
        return f"the change was rejected by {self.decided_by} (approval {self.approval_id}): {why}"[:4000]


@dataclass(frozen=True)
class Requested:
    """A paused attempt's change, as the worker kept it."""

    attempt_number: int
    verdict: Verdict
    patch: str | None
    commit_sha: str | None
    ref: str | None
    attempt: dict[str, Any]
    requested_by: str


def paths_of(verdict: Verdict) -> list[dict[str, str]]:
    return [
        {"path": m.path, "pattern": m.pattern, "tier": m.tier, "policy": m.policy} for m in verdict.matches
    ]


def request(
    session: Session,
    run: Run,
    phase: Phase,
    req: Requested,
    *,
    timeout_seconds: float,
    timeout_action: str,
    state: ApprovalState = ApprovalState.PENDING,
) -> Approval:
    """Store the approval of (phase, attempt); a second call (a redelivered task) returns the first."""
    found = session.scalars(
        select(Approval).where(Approval.phase_id == phase.id, Approval.attempt_number == req.attempt_number)
    ).first()
    if found is not None:
        return found
    now = utcnow()
    auto = state == ApprovalState.AUTO_APPROVED
    row = Approval(
        run_id=run.id,
        phase_id=phase.id,
        attempt_number=req.attempt_number,
        owner=run.owner,
        state=state,
        paths=paths_of(req.verdict),
        patch=req.patch,
        commit_sha=req.commit_sha,
        ref=req.ref,
        attempt=req.attempt,
        requested_by=req.requested_by,
        requested_at=now,
        expires_at=None if auto else now + timedelta(seconds=timeout_seconds),
        timeout_action=timeout_action,
        decided_at=now if auto else None,
        decided_by="auto" if auto else None,
    )
    session.add(row)
    session.flush()
    return row


def visible_to(query: Q, caller: Caller | None) -> Q:
    """Only the approvals of the caller's own runs, unless it is an admin (or internal code)."""
    return owned_by(query, caller, Approval.owner)


def get_approval(session: Session, approval_id: int, caller: Caller | None) -> tuple[Approval, Phase]:
    """The approval and its phase; NotFound also when it belongs to another owner."""
    query = visible_to(select(Approval, Phase).join(Phase, Phase.id == Approval.phase_id), caller)
    row = session.execute(query.where(Approval.id == approval_id)).first()
    if row is None:
        raise NotFound(f"approval {approval_id} not found")
    return row[0], row[1]


def list_approvals(
    session: Session, caller: Caller | None, state: ApprovalState | None, limit: int, cursor: int | None
) -> tuple[Sequence[tuple[Approval, Phase]], int | None]:
    """Newest first; `cursor` is the id to continue below."""
    query = visible_to(select(Approval, Phase).join(Phase, Phase.id == Approval.phase_id), caller)
    if state is not None:
        query = query.where(Approval.state == state)
    if cursor is not None:
        query = query.where(Approval.id < cursor)
    rows = [(a, p) for a, p in session.execute(query.order_by(Approval.id.desc()).limit(limit + 1))]
    page = rows[:limit]
    return page, (page[-1][0].id if len(rows) > limit else None)


def decide(
    session: Session,
    approval_id: int,
    caller: Caller | None,
    *,
    approve: bool,
    reason: str | None,
    by: str | None = None,
) -> tuple[Approval, Phase]:
    """Approve or reject a pending approval and re-queue its phase (not committed: the caller commits,
    then enqueues the phase). Conflict when it was already decided, by anyone."""
    approval, _ = get_approval(session, approval_id, caller)  # NotFound before any write
    state = ApprovalState.APPROVED if approve else ApprovalState.REJECTED
    who = by or (caller.who if caller is not None else "system")
    won = session.execute(
        update(Approval)
        .where(Approval.id == approval_id, Approval.state == ApprovalState.PENDING)
        .values(
            state=state,
            decided_at=utcnow(),
            decided_by=who,
            decided_key_id=caller.key_id if caller is not None else None,
            reason=reason,
        )
        .execution_options(synchronize_session=False)
    )
    if not won.rowcount:  # type: ignore[attr-defined]
        session.expire_all()  # the winner's committed state, not the one read above
        current, _ = get_approval(session, approval_id, caller)
        raise Conflict(f"approval {approval_id} is already {current.state}")
    session.expire_all()
    approval, phase = get_approval(session, approval_id, caller)
    _requeue(session, phase)
    return approval, phase


def _requeue(session: Session, phase: Phase) -> None:
    locked = session.get(Phase, phase.id, with_for_update=True, populate_existing=True)
    if locked is None or locked.state != PhaseState.AWAITING_APPROVAL:
        return  # the run was cancelled meanwhile: nothing to resume
    check_phase_move(PhaseState(locked.state), PhaseState.QUEUED)
    locked.state = PhaseState.QUEUED
    locked.dispatched_at = None  # outbox: pending until the caller (or the reconciler) enqueues it


def decision_for(session: Session, phase_id: int, attempt_number: int) -> Decision | None:
    """The decided approval of the phase's next attempt, which its worker resumes or records."""
    row = session.scalars(
        select(Approval).where(
            Approval.phase_id == phase_id,
            Approval.attempt_number == attempt_number,
            Approval.state.in_(DECIDED),
        )
    ).first()
    if row is None:
        return None
    return Decision(
        approval_id=row.id,
        attempt_number=row.attempt_number,
        approved=row.state == ApprovalState.APPROVED,
        decided_by=row.decided_by or "?",
        reason=row.reason,
        commit_sha=row.commit_sha,
        patch=row.patch,
        paths=[str(p["path"]) for p in row.paths],
        attempt=dict(row.attempt),
    )


def expire_due(db_url: str, now: datetime | None = None) -> list[tuple[int, int]]:
    """The reconciler's pass: apply each expired approval's timeout action. Returns the (run, phase)
    to enqueue. Racing a person (or another reconciler) is fine: the loser's UPDATE matches nothing."""
    now = now or utcnow()
    with transaction(db_url) as session:
        due = list(
            session.scalars(
                select(Approval.id).where(Approval.state == ApprovalState.PENDING, Approval.expires_at < now)
            )
        )
    out: list[tuple[int, int]] = []
    for approval_id in due:
        try:
            with transaction(db_url) as session:
                approval, phase = _expire(session, approval_id)
                out.append((approval.run_id, phase.id))
        except Conflict:
            continue
    return out


def _expire(session: Session, approval_id: int) -> tuple[Approval, Phase]:
    approval, _ = get_approval(session, approval_id, None)
    action = approval.timeout_action
    waited = (approval.expires_at - approval.requested_at).total_seconds() if approval.expires_at else 0
    reason = f"no decision within {waited:g}s: the timeout's default action ({action}) applied"
    return decide(session, approval_id, None, approve=action == "approve", reason=reason, by="timeout")


def cancel_pending(session: Session, run_id: int) -> None:
    """A cancelled run's pending approvals can no longer be decided."""
    session.execute(
        update(Approval)
        .where(Approval.run_id == run_id, Approval.state == ApprovalState.PENDING)
        .values(state=ApprovalState.CANCELLED, decided_at=utcnow(), decided_by="run cancelled")
        .execution_options(synchronize_session=False)
    )
