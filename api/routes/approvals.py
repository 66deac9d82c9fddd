"""Approvals: list and read governed changes waiting for a person, approve or reject them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Body, Query

from api.approval_schemas import ApprovalDetail, ApprovalOut, ApprovalPage, ApproveIn, RejectIn
from api.deps import Authed, CallerDep, DispatcherDep, SessionDep, SettingsDep
from api.schemas import MAX_ID, RunId, errors
from shared.approvals import store
from shared.outbox import claim_and_enqueue
from shared.states import ApprovalState

router = APIRouter(prefix="/approvals", tags=["approvals"], dependencies=[Authed], responses=errors(401))
ApprovalId = RunId


@router.get("")
def list_approvals(
    session: SessionDep,
    caller: CallerDep,
    state: ApprovalState | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> ApprovalPage:
    """Newest first; `state=pending` lists what waits for a decision."""
    page, next_cursor = store.list_approvals(session, caller, state, limit, cursor)
    return ApprovalPage(items=[ApprovalOut.of(a, p) for a, p in page], next_cursor=next_cursor)


@router.get("/{approval_id}", responses=errors(404))
def read_approval(approval_id: ApprovalId, session: SessionDep, caller: CallerDep) -> ApprovalDetail:
    """The change (diff), its ruled paths and tiers, the phase's goal, and the decision if any."""
    return ApprovalDetail.of(*store.get_approval(session, approval_id, caller))


@router.post("/{approval_id}/approve", responses=errors(400, 404, 409, 413))
def approve(
    approval_id: ApprovalId,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    caller: CallerDep,
    later: BackgroundTasks,
    body: Annotated[ApproveIn | None, Body()] = None,
) -> ApprovalDetail:
    """Let the change in: its phase resumes on any worker, which validates it. 409 once decided."""
    reason = body.reason if body is not None else None
    store.decide(session, approval_id, caller, approve=True, reason=reason)
    return _decided(session, settings, dispatcher, later, approval_id, caller)


@router.post("/{approval_id}/reject", responses=errors(400, 404, 409, 413))
def reject(
    approval_id: ApprovalId,
    body: RejectIn,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    caller: CallerDep,
    later: BackgroundTasks,
) -> ApprovalDetail:
    """Refuse the change: that attempt fails with `reason`, and the phase retries within its attempt
    budget with the reason in the next prompt. 409 once decided."""
    store.decide(session, approval_id, caller, approve=False, reason=body.reason)
    return _decided(session, settings, dispatcher, later, approval_id, caller)


def _decided(
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    later: BackgroundTasks,
    approval_id: int,
    caller: CallerDep,
) -> ApprovalDetail:
    session.commit()
    approval, phase = store.get_approval(session, approval_id, caller)
    # After the response, as for a new run: the pending outbox entry is the promise.
    later.add_task(claim_and_enqueue, settings.database_url, dispatcher, approval.run_id, phase.id, None)
    return ApprovalDetail.of(approval, phase)
